"""Item side: text -> vector (embedder), vector index (FAISS), reindex jobs.

Never imports Flask.
"""
