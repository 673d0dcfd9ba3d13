"""Alembic environment and versions: the only way driftrec's schema changes."""
