"""Engine and sessions: SQLite (WAL) on one machine, PostgreSQL for a fleet; schema migrated on start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers (web) never block the writer (listener, worker)
    cursor.execute("PRAGMA synchronous=FULL")  # the commit point must survive power loss
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent; concurrent starters are serialised by the DB)."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Listener, web and N workers start together in a fleet: one migrates, the others wait.
            connection.execute(text("SELECT pg_advisory_xact_lock(7254031)"))
        config = alembic_config(str(engine.url.render_as_string(hide_password=False)))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and sessions with the schema brought up to date: what every entry point (listener, worker, web,
    CLI) does first."""
    engine = make_engine(url)
    migrate(engine)
    return engine, make_session_factory(engine)
