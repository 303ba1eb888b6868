"""One instance from spool file to recorded outcome: read, check, display image, model input, score."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import make_engine, make_session_factory, migrate
from db.models import InstanceStatus
from dicom_io.checks import NO_PIXEL_DATA, UNREADABLE_PIXEL_DATA, assess
from dicom_io.display import PixelDataError, display_image
from model.checkpoint import default_checkpoint
from model.inference import Classifier
from model.preprocess import to_model_input
from worker.config import WorkerConfig

log = logging.getLogger(__name__)

FAILURE_REASONS = {NO_PIXEL_DATA, UNREADABLE_PIXEL_DATA}  # the others are "readable, but not for the model"
SPOOL_FILE_MISSING = "SPOOL_FILE_MISSING"
UNREADABLE_DICOM = "UNREADABLE_DICOM"
TOO_MANY_ATTEMPTS = "TOO_MANY_ATTEMPTS"
INTERNAL_ERROR = "INTERNAL_ERROR"


class Pipeline:
    """Built once per worker process: holds the database sessions and the loaded model."""

    def __init__(self, config: WorkerConfig, sessions: sessionmaker[Session] | None = None) -> None:
        self.config = config
        if sessions is None:
            engine = make_engine(config.database_url)
            migrate(engine)
            sessions = make_session_factory(engine)
        self.sessions = sessions
        path = config.model_path or default_checkpoint(config.model_cache_dir)
        self.classifier = Classifier(path, device=config.device)
        self.threshold = config.threshold if config.threshold is not None else self.classifier.metadata.threshold
        with self.sessions.begin() as session:
            queries.register_model(
                session,
                sha256=self.classifier.sha256,
                version=self.classifier.version,
                trained=self.classifier.metadata.trained,
                threshold=self.threshold,
                metadata=json.loads(self.classifier.metadata.to_json()),
            )

    def process(self, instance_id: int, receive_count: int | None = None) -> queries.Outcome | None:
        """Claim, analyse and record one instance; None when there was nothing to do (stale or finished)."""
        with self.sessions.begin() as session:
            work = queries.claim(session, instance_id, receive_count)
        if work is None:
            log.info("instance %d: nothing to do (finished, or superseded by a newer copy)", instance_id)
            return None
        if work.attempts > self.config.max_attempts:
            outcome = queries.Outcome(InstanceStatus.FAILED, TOO_MANY_ATTEMPTS,
                                      f"claimed {work.attempts} times without finishing")
        else:
            outcome = self.analyse(Path(work.spool_path))
        with self.sessions.begin() as session:
            recorded = queries.finish(session, work, outcome)
        log.info("instance %d: %s%s%s", instance_id, outcome.status.value,
                 f" ({outcome.reason})" if outcome.reason else "",
                 f" score {outcome.score:.3f}" if outcome.score is not None else "")
        return outcome if recorded else None

    def analyse(self, path: Path) -> queries.Outcome:
        """Never raises for bad input: every problem becomes a recorded outcome with a reason."""
        try:
            ds = dcmread(path, force=True)
        except FileNotFoundError:
            return queries.Outcome(InstanceStatus.FAILED, SPOOL_FILE_MISSING, f"{path.name} is not in the spool")
        except Exception as exc:
            return queries.Outcome(InstanceStatus.FAILED, UNREADABLE_DICOM, f"{type(exc).__name__}: {exc}")
        try:
            assessment = assess(ds)
            if not assessment.analysable:
                status = InstanceStatus.FAILED if assessment.reason in FAILURE_REASONS else InstanceStatus.NOT_ANALYSED
                return queries.Outcome(status, assessment.reason)
            display = display_image(ds)
            batch = to_model_input(display, self.classifier.preprocess)[None]
            score = float(self.classifier.score(batch)[0])
        except PixelDataError as exc:
            return queries.Outcome(InstanceStatus.FAILED, exc.reason, exc.detail[:2000])
        except Exception as exc:  # a bug or a decoder surprise must not loop forever: dead-letter it
            log.exception("instance file %s: unexpected error", path.name)
            return queries.Outcome(InstanceStatus.FAILED, INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:2000])
        return queries.Outcome(
            InstanceStatus.DONE,
            assumptions="; ".join(assessment.assumptions) or None,
            score=score,
            threshold=self.threshold,
            model_version=self.classifier.version,
            model_sha256=self.classifier.sha256,
        )

