"""One instance from spool file to recorded outcome: read, check, display image, model input, score."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.engine import open_database
from db.models import InstanceStatus
from dicom_io.display import PixelDataError
from dicom_io.reasons import NO_USABLE_PIXELS, Reason
from model.checkpoint import CheckpointMetadata, default_checkpoint
from model.inference import Classifier
from model.preparation import prepare
from worker.config import WorkerConfig
from worker.previews import PreviewWriter, write_previews, write_unscored_preview

log = logging.getLogger(__name__)
# Images the model does not score whose picture a reader still wants on the study page (marked "not scored").
PREVIEW_UNSCORED = frozenset({Reason.LATERAL_VIEW})



def checkpoint_path(config: WorkerConfig) -> Path:
    return config.model_path or default_checkpoint(config.model_cache_dir)


def register_model(sessions: sessionmaker[Session], config: WorkerConfig, metadata: CheckpointMetadata,
                   sha256: str) -> float:
    """Record the model (so the worklist knows it, untrained or not, before any result) and return the
    operating threshold: the site's override, else the checkpoint's."""
    threshold = config.threshold if config.threshold is not None else metadata.threshold
    with sessions.begin() as session:
        queries.register_model(session, sha256=sha256, version=metadata.version, trained=metadata.trained,
                               threshold=threshold, metadata=json.loads(metadata.to_json()))
    return threshold


class Pipeline:
    """Built once per worker process: holds the database sessions and the loaded model."""

    def __init__(self, config: WorkerConfig, sessions: sessionmaker[Session] | None = None) -> None:
        self.config = config
        self.sessions = sessions if sessions is not None else open_database(config.database_url)[1]
        self.classifier = Classifier(checkpoint_path(config), device=config.device)
        self.threshold = register_model(self.sessions, config, self.classifier.metadata, self.classifier.sha256)
        # Hooked before the first score, so every heat map reuses the pass that produced its score.
        self.previews = PreviewWriter(config.previews_dir, self.classifier) if config.previews_dir else None

    def process(self, instance_id: int, receive_count: int | None = None) -> queries.Outcome | None:
        """Claim, analyse and record one instance; None when there was nothing to do (stale or finished)."""
        with self.sessions.begin() as session:
            work = queries.claim(session, instance_id, receive_count)
        if work is None:
            log.info("instance %d: nothing to do (finished, or superseded by a newer copy)", instance_id)
            return None
        if work.attempts > self.config.max_attempts:
            outcome = queries.Outcome(InstanceStatus.FAILED, Reason.TOO_MANY_ATTEMPTS,
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
            return queries.Outcome(InstanceStatus.FAILED, Reason.SPOOL_FILE_MISSING, f"{path.name} is not in the spool")
        except Exception as exc:
            return queries.Outcome(InstanceStatus.FAILED, Reason.UNREADABLE_DICOM, f"{type(exc).__name__}: {exc}")
        if "SOPClassUID" not in ds and "PixelData" not in ds:  # force=True turns any bytes into a "dataset"
            return queries.Outcome(InstanceStatus.FAILED, Reason.UNREADABLE_DICOM,
                                   f"{path.name} is not a DICOM instance")
        try:
            prepared = prepare(ds, self.classifier.preprocess)
            if prepared.model_input is None:
                reason = prepared.assessment.reason
                status = InstanceStatus.FAILED if reason in NO_USABLE_PIXELS else InstanceStatus.NOT_ANALYSED
                shown = write_unscored_preview(self.previews, path.stem, ds) if reason in PREVIEW_UNSCORED else None
                return queries.Outcome(status, reason, preview_path=shown.preview if shown else None)
            score = float(self.classifier.score(prepared.model_input[None])[0])
        except PixelDataError as exc:
            return queries.Outcome(InstanceStatus.FAILED, exc.reason, exc.detail[:2000])
        except Exception as exc:  # a bug or a decoder surprise must not loop forever: dead-letter it
            log.exception("instance file %s: unexpected error", path.name)
            return queries.Outcome(InstanceStatus.FAILED, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:2000])
        assert prepared.rendering is not None
        previews = write_previews(self.previews, path.stem, prepared.rendering.image, prepared.model_input[None],
                                  score)
        return queries.Outcome(
            InstanceStatus.DONE,
            assumptions="; ".join(prepared.notes) or None,
            score=score,
            threshold=self.threshold,
            model_version=self.classifier.version,
            model_sha256=self.classifier.sha256,
            preview_path=previews.preview,
            heatmap_path=previews.heatmap,
        )

