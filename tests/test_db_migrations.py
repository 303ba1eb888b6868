"""Alembic migrations (db/migrations) keep existing rows and fill the columns they add, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, create_engine, inspect, select, text

from db.engine import alembic_config, make_engine, make_session_factory, migrate
from db.models import Base, Instance, Study, as_utc, utcnow
from db.worklist import worklist


def database_urls(backend: str, tmp_path: Path) -> Iterator[str]:
    """One empty database of ``backend``: a SQLite file, or a PostgreSQL database of its own (dropped after the
    loop over this iterator ends)."""
    from conftest import _postgres_database

    return iter([f"sqlite:///{tmp_path / 'db.sqlite3'}"]) if backend == "sqlite" else _postgres_database()


def migrated_from(url: str, revision: str, rows: list[str], values: dict[str, Any]) -> Engine:
    """The database built up to ``revision``, with ``rows`` (INSERT statements) written there, then migrated to the
    newest revision as a site's upgrade does; the engine on it."""
    command.upgrade(alembic_config(url), revision)
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in rows:
            connection.execute(text(statement), values)
    engine.dispose()
    engine = make_engine(url)
    migrate(engine)
    return engine


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0002_keeps_rows_and_backfills_time_to_flag(backend: str, tmp_path: Path) -> None:
    received = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)
    for url in database_urls(backend, tmp_path):
        engine = migrated_from(url, "0001", [
            "INSERT INTO studies (study_instance_uid, patient_name, patient_id, accession_number, "
            "study_description, received_at, updated_at, status, flag, flagged_at) VALUES "
            "('m.1', 'A', 'B', 'C', 'D', :r, :r, 'DONE', false, :f), "
            "('m.2', 'A', 'B', 'C', 'D', :r, :r, 'PENDING', false, NULL)"],
            {"r": received, "f": received + timedelta(seconds=42.5)})
        with make_session_factory(engine)() as session:
            entries = {e.study_uid: e for e in worklist(session)}
        engine.dispose()
        assert entries["m.1"].time_to_flag_s == pytest.approx(42.5)
        assert entries["m.2"].time_to_flag_s is None and not entries["m.2"].read


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0007_backfills_flag_times_and_modality(backend: str, tmp_path: Path) -> None:
    flagged_at = utcnow() - timedelta(days=1)
    for url in database_urls(backend, tmp_path):
        engine = migrated_from(url, "0006", [
            "INSERT INTO studies (id, study_instance_uid, patient_name, patient_id, accession_number, "
            "study_description, received_at, updated_at, status, flag, flagged_at) VALUES "
            "(1, 'm.flag', '', '', '', '', :f, :f, 'DONE', true, :f), "
            "(2, 'm.plain', '', '', '', '', :f, :f, 'DONE', false, :f)",
            "INSERT INTO instances (study_id, sop_instance_uid, sop_class_uid, series_instance_uid, "
            "transfer_syntax_uid, modality, body_part, view_position, spool_path, size_bytes, calling_ae, "
            "received_at, receive_count, status, attempts) VALUES "
            "(1, 'i.1', '1.2', '', '', 'DX', '', '', '/x', 1, '', :f, 1, 'DONE', 1)"], {"f": flagged_at})
        with make_session_factory(engine)() as session:
            rows = {s.study_instance_uid: s for s in session.scalars(select(Study))}
            flag_raised = as_utc(rows["m.flag"].flag_raised_at)
            assert flag_raised is not None and abs((flag_raised - flagged_at).total_seconds()) < 1
            assert rows["m.plain"].flag_raised_at is None
            assert rows["m.flag"].modality == "DX" and rows["m.plain"].modality is None
        engine.dispose()
        command.downgrade(alembic_config(url), "0006")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0011_backfills_pixels_deleted_at_and_indexes_finished_at(backend: str, tmp_path: Path) -> None:
    purged = utcnow() - timedelta(days=2)
    for url in database_urls(backend, tmp_path):
        engine = migrated_from(url, "0010", [
            "INSERT INTO studies (id, study_instance_uid, patient_name, patient_id, accession_number, "
            "study_description, received_at, updated_at, status, flag) VALUES "
            "(1, 'm.s', '', '', '', '', :p, :p, 'DONE', false)",
            "INSERT INTO instances (study_id, sop_instance_uid, sop_class_uid, series_instance_uid, "
            "transfer_syntax_uid, modality, body_part, view_position, spool_path, size_bytes, calling_ae, "
            "received_at, receive_count, status, attempts, finished_at, purged_at) VALUES "
            "(1, 'i.purged', '1.2', '', '', 'DX', '', '', '/x', 1, '', :p, 1, 'DONE', 1, :p, :p), "
            "(1, 'i.kept', '1.2', '', '', 'DX', '', '', '/y', 1, '', :p, 1, 'DONE', 1, :p, NULL)"], {"p": purged})
        with make_session_factory(engine)() as session:
            rows = {i.sop_instance_uid: i for i in session.scalars(select(Instance))}
        assert as_utc(rows["i.purged"].pixels_deleted_at) == as_utc(rows["i.purged"].purged_at)
        assert rows["i.purged"].pixels_deleted_at is not None and rows["i.kept"].pixels_deleted_at is None
        assert {"ix_instances_finished_at", "ix_instances_purge_pending"} <= {
            index["name"] for index in inspect(engine).get_indexes("instances")}
        engine.dispose()
        command.downgrade(alembic_config(url), "0010")
        engine = create_engine(url)
        assert "pixels_deleted_at" not in {column["name"] for column in inspect(engine).get_columns("instances")}
        assert not {"ix_instances_finished_at", "ix_instances_purge_pending"} & {
            index["name"] for index in inspect(engine).get_indexes("instances")}
        with engine.connect() as connection:  # the rows survive the round trip
            assert connection.execute(text("SELECT count(*) FROM instances")).scalar() == 2
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migrations_build_exactly_the_schema_the_models_declare(backend: str, tmp_path: Path) -> None:
    """A column, index or constraint added to db.models without a migration (or the other way round) shows here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    for url in database_urls(backend, tmp_path):
        engine = make_engine(url)
        migrate(engine)
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        engine.dispose()
        assert differences == []
