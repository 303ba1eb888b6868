"""Alembic migrations (db/migrations) keep existing rows and fill the columns they add, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select, text

from db.engine import alembic_config, make_engine, make_session_factory, migrate
from db.models import Study, as_utc, utcnow
from db.worklist import worklist


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0002_keeps_rows_and_backfills_time_to_flag(backend: str, tmp_path: Path) -> None:
    from alembic import command

    from conftest import _postgres_database

    urls = iter([f"sqlite:///{tmp_path / 'old.sqlite3'}"]) if backend == "sqlite" else _postgres_database()
    for url in urls:
        command.upgrade(alembic_config(url), "0001")
        engine = create_engine(url)
        received = datetime(2026, 3, 1, 8, 0, 0, tzinfo=UTC)
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO studies (study_instance_uid, patient_name, patient_id, accession_number, "
                "study_description, received_at, updated_at, status, flag, flagged_at) VALUES "
                "('m.1', 'A', 'B', 'C', 'D', :r, :r, 'DONE', false, :f), "
                "('m.2', 'A', 'B', 'C', 'D', :r, :r, 'PENDING', false, NULL)"),
                {"r": received, "f": received + timedelta(seconds=42.5)})
        engine.dispose()
        engine = make_engine(url)
        migrate(engine)
        with make_session_factory(engine)() as session:
            entries = {e.study_uid: e for e in worklist(session)}
        engine.dispose()
        assert entries["m.1"].time_to_flag_s == pytest.approx(42.5)
        assert entries["m.2"].time_to_flag_s is None and not entries["m.2"].read


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_migration_0007_backfills_flag_times_and_modality(backend: str, tmp_path: Path) -> None:
    from alembic import command

    from conftest import _postgres_database

    urls = iter([f"sqlite:///{tmp_path / 'old.sqlite3'}"]) if backend == "sqlite" else _postgres_database()
    for url in urls:
        command.upgrade(alembic_config(url), "0006")
        engine = create_engine(url)
        flagged_at = utcnow() - timedelta(days=1)
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO studies (id, study_instance_uid, patient_name, patient_id, accession_number, "
                "study_description, received_at, updated_at, status, flag, flagged_at) VALUES "
                "(1, 'm.flag', '', '', '', '', :f, :f, 'DONE', true, :f), "
                "(2, 'm.plain', '', '', '', '', :f, :f, 'DONE', false, :f)"), {"f": flagged_at})
            connection.execute(text(
                "INSERT INTO instances (study_id, sop_instance_uid, sop_class_uid, series_instance_uid, "
                "transfer_syntax_uid, modality, body_part, view_position, spool_path, size_bytes, calling_ae, "
                "received_at, receive_count, status, attempts) VALUES "
                "(1, 'i.1', '1.2', '', '', 'DX', '', '', '/x', 1, '', :f, 1, 'DONE', 1)"), {"f": flagged_at})
        engine.dispose()
        engine = make_engine(url)
        migrate(engine)
        with make_session_factory(engine)() as session:
            rows = {s.study_instance_uid: s for s in session.scalars(select(Study))}
            flag_raised = as_utc(rows["m.flag"].flag_raised_at)
            assert flag_raised is not None and abs((flag_raised - flagged_at).total_seconds()) < 1
            assert rows["m.plain"].flag_raised_at is None
            assert rows["m.flag"].modality == "DX" and rows["m.plain"].modality is None
        engine.dispose()
        command.downgrade(alembic_config(url), "0006")
