"""One instance from spool file to recorded outcome: read, check, display image, model input, score."""

from __future__ import annotations

import logging
from pathlib import Path

from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import Outcome, claim, finish
from db.models import InstanceStatus
from dicom_io.display import PixelDataError
from dicom_io.reasons import NO_USABLE_PIXELS, Reason
from model.checkpoint import CheckpointError
from model.inference import Classifier
from model.preparation import prepare
from worker.config import WorkerConfig
from worker.previews import PreviewWriter, write_previews, write_unscored_preview
from worker.served_model import ServedModel

log = logging.getLogger(__name__)
# Images the model does not score whose picture a reader still wants on the study page (marked "not scored").
PREVIEW_UNSCORED = frozenset({Reason.LATERAL_VIEW})


class Pipeline:
    """Built once per worker process from what the worker's start handed down: the database sessions and the model
    it registered (``worker.served_model``), whose weights are loaded here, on this process's device."""

    def __init__(self, config: WorkerConfig, sessions: sessionmaker[Session], model: ServedModel) -> None:
        self.config = config
        self.sessions = sessions
        self.classifier = Classifier(model.path, device=config.device)
        if self.classifier.sha256 != model.sha256:  # results must carry the identity the worklist knows
            raise CheckpointError(f"{model.path} changed after the worker registered it (sha256 {model.sha256[:12]}… "
                                  f"then, {self.classifier.sha256[:12]}… now): restart the worker")
        self.threshold = model.threshold
        # Hooked before the first score, so every heat map reuses the pass that produced its score.
        self.previews = PreviewWriter(config.previews_dir, self.classifier) if config.previews_dir else None

    def process(self, instance_id: int, receive_count: int | None = None) -> Outcome | None:
        """Claim, analyse and record one instance; None when there was nothing to do (stale or finished)."""
        with self.sessions.begin() as session:
            work = claim(session, instance_id, receive_count)
        if work is None:
            log.info("instance %d: nothing to do (finished, or superseded by a newer copy)", instance_id)
            return None
        if work.attempts > self.config.max_attempts:
            outcome = Outcome(InstanceStatus.FAILED, Reason.TOO_MANY_ATTEMPTS,
                                      f"claimed {work.attempts} times without finishing")
        else:
            outcome = self.analyse(Path(work.spool_path))
        with self.sessions.begin() as session:
            recorded = finish(session, work, outcome)
        log.info("instance %d: %s%s%s", instance_id, outcome.status.value,
                 f" ({outcome.reason})" if outcome.reason else "",
                 f" score {outcome.score:.3f}" if outcome.score is not None else "")
        return outcome if recorded else None

    def analyse(self, path: Path) -> Outcome:
        """Never raises for bad input: every problem becomes a recorded outcome with a reason."""
        try:
            ds = dcmread(path, force=True)
        except FileNotFoundError:
            return Outcome(InstanceStatus.FAILED, Reason.SPOOL_FILE_MISSING, f"{path.name} is not in the spool")
        except Exception as exc:
            return Outcome(InstanceStatus.FAILED, Reason.UNREADABLE_DICOM, f"{type(exc).__name__}: {exc}")
        if "SOPClassUID" not in ds and "PixelData" not in ds:  # force=True turns any bytes into a "dataset"
            return Outcome(InstanceStatus.FAILED, Reason.UNREADABLE_DICOM,
                                   f"{path.name} is not a DICOM instance")
        try:
            prepared = prepare(ds, self.classifier.preprocess)
            if prepared.model_input is None:
                reason = prepared.assessment.reason
                status = InstanceStatus.FAILED if reason in NO_USABLE_PIXELS else InstanceStatus.NOT_ANALYSED
                shown = write_unscored_preview(self.previews, path.stem, ds) if reason in PREVIEW_UNSCORED else None
                return Outcome(status, reason, preview_path=shown.preview if shown else None,
                               display_path=shown.display if shown else None)
            score = float(self.classifier.score(prepared.model_input[None])[0])
        except PixelDataError as exc:
            return Outcome(InstanceStatus.FAILED, exc.reason, exc.detail[:2000])
        except Exception as exc:  # a bug or a decoder surprise must not loop forever: dead-letter it
            log.exception("instance file %s: unexpected error", path.name)
            return Outcome(InstanceStatus.FAILED, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"[:2000])
        assert prepared.rendering is not None
        previews = write_previews(self.previews, path.stem, prepared.rendering.image, prepared.model_input[None],
                                  score)
        return Outcome(
            InstanceStatus.DONE,
            assumptions="; ".join(prepared.notes) or None,
            score=score,
            threshold=self.threshold,
            model_version=self.classifier.version,
            model_sha256=self.classifier.sha256,
            preview_path=previews.preview,
            heatmap_path=previews.heatmap,
            display_path=previews.display,
        )

