"""Persistence: SQLAlchemy models, engine and sessions, the reads and writes of each job, Alembic migrations."""
