"""Schemathesis against the OpenAPI schema: whatever the schema allows (and much it does not), the API never
answers 500 and its answers match what the schema promises. Runs in-process (ASGI) on SQLite and PostgreSQL,
with a few real studies so that some generated requests find data."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from db import ingest, model_registry
from db.models import InstanceStatus
from worklist.app import create_app

TOKEN = "schema-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 20  # per operation and mode


def _seed(app: FastAPI, picture: Path) -> None:
    sessions = app.state.sessions
    rows = [("1.2.3", "1.2.3.1", 0.9, InstanceStatus.DONE, None), ("1.2.4", "1.2.4.1", 0.1, InstanceStatus.DONE, None),
            ("1.2.5", "1.2.5.1", None, InstanceStatus.NOT_ANALYSED, "LATERAL_VIEW"),
            ("1.2.6", "1.2.6.1", None, InstanceStatus.FAILED, "NO_PIXEL_DATA")]
    for study, sop, score, status, reason in rows:
        record = ingest.ReceivedRecord(
            sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.1", study_instance_uid=study,
            series_instance_uid="9", transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CR", body_part="CHEST",
            view_position="PA", patient_name="O'NEIL^ZOË", patient_id="P%_1", accession_number="A\\1",
            study_date=None, study_description="XR", spool_path=f"/spool/{sop}", size_bytes=1, calling_ae="T")
        with sessions.begin() as session:
            item = ingest.record_received(session, record)
            model_registry.register_model(session, sha256="b" * 64, version="m", trained=False, threshold=0.5,
                                   metadata={"validation_metrics": {}})
        with sessions.begin() as session:
            work = ingest.claim(session, item.instance_id)
        model = dict(model_version="m", model_sha256="b" * 64, threshold=0.5) if score is not None else {}
        pictures = dict(preview_path=str(picture), heatmap_path=str(picture)) if score is not None else {}
        with sessions.begin() as session:
            assert work is not None
            ingest.finish(session, work, ingest.Outcome(status, reason, score=score, **model, **pictures))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_api_never_fails_and_keeps_to_its_schema(backend: str, tmp_path: Path) -> None:
    """Every operation, with valid inputs and with inputs the schema forbids (negative mode)."""
    from conftest import _postgres_database

    picture = tmp_path / "p.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n")
    urls = iter([f"sqlite:///{tmp_path / 'schema.sqlite3'}"]) if backend == "sqlite" else _postgres_database()
    for url in urls:
        app = create_app(url, api_token=TOKEN, model_card=tmp_path / "absent.md")
        try:
            _seed(app, picture)
            schema = schemathesis.openapi.from_asgi("/openapi.json", app,
                                                    headers={"Authorization": f"Bearer {TOKEN}"})
            operations = [result.ok() for result in schema.get_all_operations()]
            assert {op.label for op in operations} >= {"GET /api/worklist", "GET /api/studies/{study_uid}",
                                                       "PUT /api/studies/{study_uid}/read", "GET /metrics"}
            for operation in operations:
                has_parameters = bool(list(operation.iter_parameters()))
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)[:2 if has_parameters else 1]:
                    _fuzz(operation, mode)
        finally:
            app.state.engine.dispose()


def _fuzz(operation: schemathesis.APIOperation, mode: GenerationMode) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=AUTH)

    try:
        run()
    except Exception as exc:
        exc.add_note(f"operation: {operation.label}, {mode.value} inputs")
        raise
