"""worker.ingest, the commit point: a received instance is durable (spool file and database row) before the sender
hears 0x0000, and only then is its task published, once per received copy. A re-sent SOP Instance UID replaces the
file, keeps its row and is published again for the new copy. Real spool and database (SQLite and PostgreSQL), a
recording publisher; tests/test_spool_and_listener.py has the refusals, tests/test_end_to_end.py the real processes."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import WorkItem
from db.models import Instance, InstanceStatus, Study
from dicom_io.files import dataset_bytes
from dicom_io.listener import ReceivedInstance, parse_received
from dicom_io.spool import Spool
from dicom_io.synthetic import chest_dataset
from worker.ingest import Ingestor


def _received(data: bytes, calling_ae: str = "MODALITY") -> ReceivedInstance:
    return ReceivedInstance(data, parse_received(data), calling_ae, "127.0.0.1:1")


class Published(list[WorkItem]):
    """What the ingestor published, and what the database held at that moment (the commit must come first)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        super().__init__()
        self.sessions = sessions
        self.committed_before: list[bool] = []

    def __call__(self, item: WorkItem) -> None:
        with self.sessions() as session:  # a separate session: it sees only what was committed
            instance = session.get(Instance, item.instance_id)
            self.committed_before.append(instance is not None and instance.receive_count == item.receive_count)
        self.append(item)


def test_commit_makes_the_instance_durable_then_publishes_it_once(tmp_path: Path,
                                                                   sessions: sessionmaker[Session]) -> None:
    spool = Spool(tmp_path / "spool")
    published = Published(sessions)
    ingestor = Ingestor(spool, sessions, tmp_path / "rejected", published)
    ds = chest_dataset(rows=16, columns=16, patient_index=41)
    data = dataset_bytes(ds)
    item = ingestor.commit(_received(data))
    assert published == [item] and published.committed_before == [True]
    assert spool.path_for(ds.SOPInstanceUID).read_bytes() == data  # kept exactly as received
    with sessions() as session:
        instance = session.get(Instance, item.instance_id)
        assert instance is not None and instance.status == InstanceStatus.RECEIVED
        assert instance.spool_path == str(spool.path_for(ds.SOPInstanceUID)) and instance.calling_ae == "MODALITY"
        assert session.scalars(select(Study.study_instance_uid)).all() == [ds.StudyInstanceUID]


def test_a_resent_copy_replaces_the_file_keeps_the_row_and_is_published_again(
        tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    spool = Spool(tmp_path / "spool")
    published = Published(sessions)
    ingestor = Ingestor(spool, sessions, tmp_path / "rejected", published)
    first = chest_dataset(rows=16, columns=16, patient_index=42)
    ingestor.commit(_received(dataset_bytes(first)))
    second = chest_dataset(rows=16, columns=16, patient_index=42, study_uid=first.StudyInstanceUID,
                           sop_uid=first.SOPInstanceUID)
    second.StudyDescription = "XR CHEST, SENT AGAIN"
    again = dataset_bytes(second)
    ingestor.commit(_received(again, calling_ae="PACS"))
    assert [item.receive_count for item in published] == [1, 2] and published.committed_before == [True, True]
    assert published[0].instance_id == published[1].instance_id
    assert spool.path_for(first.SOPInstanceUID).read_bytes() == again
    with sessions() as session:
        (instance,) = session.scalars(select(Instance)).all()
        assert (instance.receive_count, instance.calling_ae) == (2, "PACS")


def test_the_senders_priority_rule_fills_what_the_file_does_not_say(tmp_path: Path,
                                                                     sessions: sessionmaker[Session]) -> None:
    published = Published(sessions)
    ingestor = Ingestor(Spool(tmp_path / "spool"), sessions, tmp_path / "rejected", published,
                        priority_by_calling_aet={" ER_CR ": "stat"})
    silent, ordered = (chest_dataset(rows=16, columns=16, patient_index=index) for index in (43, 44))
    ordered.RequestedProcedurePriority = "ROUTINE"
    for ds in (silent, ordered):
        ingestor.commit(_received(dataset_bytes(ds), calling_ae="ER_CR"))
    with sessions() as session:
        priorities = dict(session.execute(select(Study.study_instance_uid, Study.priority)).all())
    assert priorities == {silent.StudyInstanceUID: "STAT", ordered.StudyInstanceUID: "ROUTINE"}  # the file wins
