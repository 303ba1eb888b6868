"""A worker killed in the middle of a backlog loses nothing: every committed instance ends with a result."""

from __future__ import annotations

from pathlib import Path

from dicom_io.sender import send_files
from dicom_io.synthetic import chest_dataset

from conftest import TEST_CALLING_AETS, make_backend
from stack import Stack, wait_until

BACKLOG = 8


def test_worker_killed_mid_backlog_loses_nothing(backend_name: str, tmp_path: Path, model_path: Path) -> None:
    for backend in make_backend(backend_name):
        with Stack(tmp_path, backend, model_path, allowed_calling_aets=TEST_CALLING_AETS,
                   requeue_after_s="4") as stack:
            study_uid = "1.2.826.0.1.3680043.10.1.9" + str(stack.dicom_port)
            paths = []
            for index in range(BACKLOG):
                ds = chest_dataset(patient_index=100 + index, study_uid=study_uid, seed=index)
                paths.append(tmp_path / f"backlog-{index}.dcm")
                ds.save_as(paths[-1], enforce_file_format=True)
            results = send_files(paths, host="127.0.0.1", port=stack.dicom_port, called_aet=stack.ae_title,
                                 calling_aet="CXR_SENDER")
            assert all(result.ok for result in results)

            def done_count() -> int:
                return stack.sql("SELECT count(*) FROM instances WHERE status = 'DONE'")[0][0]

            wait_until(done_count, 120, "the first result")
            stack.kill_worker()
            left = BACKLOG - done_count()
            assert left > 0, "the backlog drained before the worker could be killed"
            stack.start_worker()

            wait_until(lambda: done_count() == BACKLOG, 180, f"all {BACKLOG} instances to be done")
            study = stack.wait_for_study(study_uid)
            assert study["status"] == "DONE" and len(study["instances"]) == BACKLOG
            results_rows = stack.sql("SELECT count(*), count(DISTINCT instance_id) FROM results")[0]
            assert results_rows[0] == results_rows[1] == BACKLOG  # redelivery never added a second result
