"""Results back into the PACS and the RIS: a DICOM SR per study result version, sent by C-STORE or STOW-RS, and an
HL7 ORU^R01, each through the delivery outbox (``db.reports``).

A study is reported once it has had no new image for ``quiet_s`` (images of one study arrive over several
associations; MONAI Deploy's gateway waits the same way), and again, as a new SR version that names the earlier one
as its predecessor, whenever its result changes later (a new image, a new model).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import reports
from dicom_io.files import dataset_bytes
from dicom_io.report_heatmap import build_heatmap_capture
from dicom_io.report_sr import Algorithm, ImageFinding, StudyResult, build_report
from dicom_io.sender import send_files
from dicom_io.spool import Spool
from worker.config import DicomDestination, HostPort, ReportingConfig
from worker.hl7_result import TriageObservation, build_oru, send_oru
from worker.periodic import PeriodicTask

log = logging.getLogger(__name__)

Sender = Callable[[reports.DeliveryJob], None]  # raises DeliveryFailed (or anything) when not delivered


class DeliveryFailed(Exception):
    """A destination did not take the report; the text is technical, never patient data."""


class Reporter:
    """Makes report versions for quiet studies and works the delivery outbox, in a thread of the ingest service."""

    def __init__(self, config: ReportingConfig, sessions: sessionmaker[Session],
                 senders: dict[str, Sender] | None = None) -> None:
        self.config = config
        self.sessions = sessions
        self.store = Spool(config.reports_dir)
        self.senders: dict[str, Sender] = senders or {"dicom": self._send_dicom, "stow": self._send_stow,
                                                      "hl7": self._send_hl7}
        self._periodic = PeriodicTask("reporter", config.interval_s, lambda: self.run_once(),
                                      join_timeout_s=config.send_timeout_s + 10)

    # --- report versions ----------------------------------------------------------------------------------------

    def make_reports(self, now: datetime | None = None) -> int:
        """A new report version for every quiet study whose result changed; returns how many were made."""
        now = now or datetime.now(UTC)
        with self.sessions() as session:
            due = reports.due_studies(session, quiet_before=now - timedelta(seconds=self.config.quiet_s))
        made = 0
        for study_id in due:
            try:
                made += self._report_study(study_id)
            except Exception:
                log.exception("report for study row %d not made; trying again later", study_id)
        return made

    def _report_study(self, study_id: int) -> int:
        with self.sessions() as session:
            result = reports.snapshot(session, study_id)
            previous = reports.previous_reports(session, study_id)
        if result is None:
            return 0
        if previous and previous[-1].signature == result.signature():
            with self.sessions.begin() as session:
                reports.clear_due(session, study_id)
            return 0
        version = previous[-1].version + 1 if previous else 1
        series_uid = previous[0].series_instance_uid if previous else generate_uid()
        sop_uid = generate_uid()
        files = self._write_files(result, version, series_uid, sop_uid, previous)
        try:
            with self.sessions.begin() as session:
                reports.add_report(session, study_id=study_id, version=version, result=result,
                                   series_instance_uid=series_uid, sop_instance_uid=sop_uid, files=files,
                                   destinations=self.config.destinations())
        except IntegrityError:  # another reporter made this version first: its files are the ones sent
            for name in files:
                Path(name).unlink(missing_ok=True)
            return 0
        log.info("study %s: report version %d (SR %s) queued for %d destination(s)", result.study_instance_uid,
                 version, sop_uid, len(self.config.destinations()))
        return 1

    def _write_files(self, result: reports.ResultSnapshot, version: int, series_uid: str, sop_uid: str,
                     previous: list[reports.PreviousReport]) -> list[str]:
        """The SR of this version, written once; no files when no image header can be read (the DICOM
        deliveries then end dead with that reason, the HL7 one still goes)."""
        findings = []
        headers: dict[str, Dataset] = {}
        for image in result.images:
            if image.spool_path is None:  # gone by the retention policy, even if its file is still being deleted
                log.info("study %s: image %s left out of the SR (removed by the retention policy)",
                         result.study_instance_uid, image.sop_instance_uid)
                continue
            try:
                header = dcmread(image.spool_path, stop_before_pixels=True)
            except Exception as exc:
                log.warning("study %s: image %s left out of the SR (%s)", result.study_instance_uid,
                            image.sop_instance_uid, type(exc).__name__)
                continue
            headers[image.sop_instance_uid] = header
            findings.append(ImageFinding(header, image.score if image.status == "DONE" else None,
                                         None if image.status == "DONE" else (image.reason or image.status)))
        if not findings:
            return []
        predecessors = []
        for earlier in previous:
            if earlier.files and Path(earlier.files[0]).is_file():
                predecessors.append(dcmread(earlier.files[0], stop_before_pixels=True))
        algorithm = Algorithm(name="cxr-triage pneumonia triage (ResNet50)",
                              version=result.model_version or "none", weights_sha256=result.model_sha256 or "",
                              software_version=self.config.software_version)
        study_result = StudyResult(score=result.score, threshold=result.threshold if result.threshold is not None
                                   else float("nan"), flagged=result.flag, images=findings)
        sr = build_report(study_result, algorithm, series_instance_uid=series_uid, sop_instance_uid=sop_uid,
                          instance_number=version, previous_versions=predecessors)
        files = [str(self.store.write(sop_uid, dataset_bytes(sr)))]
        if self.config.heatmap:
            files += self._write_heatmap(result, headers, series_uid, version)
        return files

    def _write_heatmap(self, result: reports.ResultSnapshot, headers: dict[str, Dataset], sr_series_uid: str,
                       version: int) -> list[str]:
        """The heat map of the image that gave the study its score, as a Secondary Capture (not for diagnosis).
        Its series UID is derived from the SR's, so every version lands in the same heat-map series."""
        scored = [i for i in result.images if i.status == "DONE" and i.score is not None and i.heatmap_path
                  and i.sop_instance_uid in headers and Path(i.heatmap_path).is_file()]
        if not scored:
            return []
        best = max(scored, key=lambda i: i.score or 0.0)
        with Image.open(best.heatmap_path) as picture:  # type: ignore[arg-type]
            rgb = np.asarray(picture.convert("RGB"))
        sop_uid = generate_uid()
        capture = build_heatmap_capture(headers[best.sop_instance_uid], rgb,
                                        series_instance_uid=generate_uid(entropy_srcs=[sr_series_uid, "heatmap"]),
                                        sop_instance_uid=sop_uid, instance_number=version)
        return [str(self.store.write(sop_uid, dataset_bytes(capture)))]

    # --- deliveries ---------------------------------------------------------------------------------------------

    def deliver_due(self, now: datetime | None = None) -> int:
        """Send every due delivery once; returns how many were delivered."""
        now = now or datetime.now(UTC)
        lease = timedelta(seconds=self.config.send_timeout_s * 4 + 30)
        with self.sessions.begin() as session:
            jobs = reports.claim_due(session, now=now, lease=lease)
        delivered = 0
        for job in jobs:
            error: str | None = None
            try:
                self.senders[job.kind](job)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            retry_at = None
            if error is not None and job.attempts < self.config.max_attempts:
                retry_at = datetime.now(UTC) + timedelta(seconds=self.retry_delay(job.attempts))
            with self.sessions.begin() as session:
                status = reports.record_attempt(session, job.delivery_id, error=error, retry_at=retry_at)
            delivered += status == "DELIVERED"
            if error is None:
                log.info("study %s report v%d delivered to %s %s", job.snapshot.study_instance_uid,
                         job.report_version, job.kind, job.destination)
            else:
                log.warning("study %s report v%d to %s %s: attempt %d failed (%s)%s",
                            job.snapshot.study_instance_uid, job.report_version, job.kind, job.destination,
                            job.attempts, error, "; dead-lettered" if status == "DEAD" else "")
        return delivered

    def retry_delay(self, attempts: int) -> float:
        """Exponential back-off with 10 % jitter, so a fleet does not hammer a PACS that just came back."""
        delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** max(0, attempts - 1))
        return delay * random.uniform(0.9, 1.1)

    def _files(self, job: reports.DeliveryJob) -> list[Path]:
        if not job.files:
            raise DeliveryFailed("no SR: no header of the study's images could be read")
        return [Path(name) for name in job.files]

    def _send_dicom(self, job: reports.DeliveryJob) -> None:
        target = DicomDestination.parse(job.destination)
        results = send_files(self._files(job), host=target.host, port=target.port, called_aet=target.ae_title,
                             calling_aet=self.config.calling_ae_title, timeout=self.config.send_timeout_s)
        failed = [r for r in results if not r.ok]
        if failed:
            status = failed[0].status
            raise DeliveryFailed("no association or no accepted context" if status is None
                                 else f"C-STORE status 0x{status:04X}")

    def _send_stow(self, job: reports.DeliveryJob) -> None:
        from dicomweb_client.api import DICOMwebClient

        client = DICOMwebClient(url=job.destination)
        client.store_instances([dcmread(path) for path in self._files(job)])

    def _send_hl7(self, job: reports.DeliveryJob) -> None:
        target = HostPort.parse(job.destination)
        result = job.snapshot
        observation = TriageObservation(
            accession_number=job.accession_number, patient_id=job.patient_id, patient_name=job.patient_name,
            study_instance_uid=result.study_instance_uid,
            flagged=result.flag if result.status == "DONE" and result.score is not None else None,
            score=result.score if result.status == "DONE" else None,
            threshold=result.threshold, reason=result.reason, model_version=result.model_version or "",
            model_sha256=result.model_sha256 or "", result_version=job.report_version, observed_at=job.created_at)
        message = build_oru(observation, control_id=f"CXRT{job.report_id}",
                            sending_application=self.config.calling_ae_title,
                            sending_facility=self.config.hl7_sending_facility,
                            receiving_application=self.config.hl7_receiving_application,
                            receiving_facility=self.config.hl7_receiving_facility,
                            now=job.created_at)  # a retry is the same message, byte for byte
        ack = send_oru(message, host=target.host, port=target.port, timeout=self.config.send_timeout_s)
        if not ack.accepted:  # MSA-3 is the RIS's free text and may name the patient: only the code is kept
            raise DeliveryFailed(f"HL7 ACK {ack.code}")

    # --- the thread ---------------------------------------------------------------------------------------------

    def run_once(self) -> None:
        self.make_reports()
        self.deliver_due()

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()

