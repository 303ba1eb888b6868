"""Persistence: SQLAlchemy models, engine and sessions, worklist queries, Alembic migrations."""
