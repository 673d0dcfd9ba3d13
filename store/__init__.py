"""Persistence: SQLAlchemy 2.0 models, engine/session, data access functions.

Never imports Flask, torch or FAISS.
"""
