"""The worklist a reading room keeps open all day (issue 11): each study's context read from its headers at ingest
(age, sex, modality, institution, station, the order's priority, a per-sender priority rule), the default order
under which a new flag always reaches the first screen, and the API's derived fields (borderline, outside the
validated population, waiting time) and filters. Real commit path, real files, SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db import ingest, model_registry
from db.engine import make_engine, make_session_factory
from db.models import InstanceStatus, Study, utcnow
from db.worklist import (
    OrderPriority,
    StudyDetail,
    WorklistEntry,
    WorklistFilter,
    is_borderline,
    outside_validated_population,
    set_read,
    study_detail,
    worklist,
    worklist_total,
)
from dicom_io.header import (
    PRIORITIES,
    age_from_dates,
    age_from_text,
    order_priority,
    patient_age_years,
    patient_sex,
    read_header,
)
from dicom_io.synthetic import chest_dataset
from triage.settings import Settings
from triage.wiring import listener_config, settings_env, worker_config
from worklist.app import create_app

from conftest import real_dicom_files
from db_records import MODEL, process, receive
from peers import free_port

ADULTS_ONLY = {"populations": ["adult"], "age_years": {"adult": [18, None]}, "views": ["PA", "AP"],
               "sites": ["nih"]}


# --- reading the context from a header -------------------------------------------------------------------------


@pytest.mark.parametrize(("stated", "years"), [
    ("045Y", 45), ("006M", 0), ("012M", 1), ("024M", 2), ("010W", 0), ("104W", 1), ("003D", 0), ("400D", 1),
    ("000Y", 0), ("62", 62), (" 045y ", 45), ("130Y", 130),
])
def test_patient_age_reads_every_age_string_unit(stated: str, years: int) -> None:
    assert age_from_text(stated) == years


@pytest.mark.parametrize("garbage", ["", "Y", "45 Y", "4.5Y", "-01Y", "045X", "0450Y", "131Y", "999Y", "abc",
                                     "045Y045Y"])
def test_patient_age_refuses_garbage_and_absurd_ages(garbage: str) -> None:
    assert age_from_text(garbage) is None


def test_patient_age_falls_back_to_birth_date_and_study_date() -> None:
    assert age_from_dates(date(1970, 6, 15), date(2026, 6, 14)) == 55  # the day before the birthday
    assert age_from_dates(date(1970, 6, 15), date(2026, 6, 15)) == 56
    assert age_from_dates(date(2024, 2, 29), date(2025, 2, 28)) == 0
    assert age_from_dates(date(2026, 6, 15), date(2026, 6, 14)) is None  # born after the image
    assert age_from_dates(date(1850, 1, 1), date(2026, 1, 1)) is None  # a placeholder birth date, not an age
    assert age_from_dates(date(1970, 1, 1), None) is None and age_from_dates(None, date(2026, 1, 1)) is None

    ds = Dataset()
    ds.PatientBirthDate, ds.StudyDate = "19700615", "20260615"
    assert patient_age_years(ds) == 56
    ds.PatientAge = "030Y"  # the stated age wins
    assert patient_age_years(ds) == 30
    ds.PatientAge = "unknown"  # unparseable: the dates still tell
    assert patient_age_years(ds) == 56
    ds.PatientBirthDate = "not a date"
    assert patient_age_years(ds) is None
    del ds.StudyDate
    ds.PatientBirthDate = "19700615"
    assert patient_age_years(ds) is None  # no study date: no guess from today's date


def test_sex_and_priority_keep_only_defined_terms() -> None:
    ds = Dataset()
    assert patient_sex(ds) is None and order_priority(ds) is None
    for raw, sex in (("M", "M"), ("f ", "F"), ("O", "O"), ("X", None), ("MALE", None), ("", None)):
        ds.PatientSex = raw
        assert patient_sex(ds) == sex, raw
    ds.RequestedProcedurePriority = "routine"
    assert order_priority(ds) == "ROUTINE"
    ds.RequestedProcedurePriority = "URGENT"  # not a defined term
    assert order_priority(ds) is None
    item_low, item_stat = Dataset(), Dataset()
    item_low.RequestedProcedurePriority, item_stat.RequestedProcedurePriority = "LOW", "STAT"
    ds.RequestAttributesSequence = [item_low]
    assert order_priority(ds) == "LOW"  # found in the request attributes
    ds.RequestAttributesSequence = [item_low, item_stat]
    ds.RequestedProcedurePriority = "HIGH"
    assert order_priority(ds) == "STAT"  # the most urgent of what the file says
    assert [p.value for p in OrderPriority] == list(PRIORITIES)  # db's copy of the defined terms


# --- captured at ingest, through the real commit point ------------------------------------------------------------


def _settings(tmp_path: Path, database_url: str, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "var", database_url=database_url, broker_url="", **values)


def _ingest(tmp_path: Path, database_url: str, **values: Any) -> Any:
    from worker.ingest_service import IngestService

    return IngestService(worker_config(_settings(tmp_path, database_url, **values)))


def _write(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _contextless(**kwargs: Any) -> Dataset:
    """A synthetic CR without any of the context tags (chest_dataset sets a birth date and a study date)."""
    ds = chest_dataset(rows=16, columns=16, **kwargs)
    del ds.PatientBirthDate
    return ds


def _study(sessions: sessionmaker[Session], study_uid: str) -> StudyDetail:
    with sessions() as session:
        detail = study_detail(session, study_uid)
    assert detail is not None, study_uid
    return detail


CONTEXT = ("patient_age_years", "patient_sex", "modality", "institution", "station", "priority")


def _context(detail: StudyDetail) -> tuple[Any, ...]:
    return tuple(getattr(detail, key) for key in CONTEXT)


def test_import_records_the_context_of_synthetic_files(tmp_path: Path, database_url: str) -> None:
    tagged = _contextless()
    tagged.SpecificCharacterSet = "ISO_IR 192"
    tagged.PatientAge, tagged.PatientSex, tagged.InstitutionName = "045Y", "F", "St. Elsewhere – Radiology"
    tagged.StationName, tagged.RequestedProcedurePriority = "CR_ROOM_2", "stat"
    dated = _contextless()
    dated.Modality = "DX"
    dated.PatientBirthDate, dated.StudyDate = "19800301", "20260228"
    bare = _contextless()
    del bare.Modality
    ingest = _ingest(tmp_path, database_url)
    try:
        for ds in (tagged, dated, bare):
            assert ingest.import_file(_write(ds, tmp_path / "in")) is not None
        sessions = ingest.sessions
        assert _context(_study(sessions, tagged.StudyInstanceUID)) == (
            45, "F", "CR", "St. Elsewhere – Radiology", "CR_ROOM_2", "STAT")
        assert _context(_study(sessions, dated.StudyInstanceUID)) == (45, None, "DX", None, None, None)
        # A file that says nothing still shows, with nothing made up.
        assert _context(_study(sessions, bare.StudyInstanceUID)) == (None, None, None, None, None, None)
        with sessions() as session:
            listed = {e.study_uid for e in worklist(session)}
        assert listed == {tagged.StudyInstanceUID, dated.StudyInstanceUID, bare.StudyInstanceUID}
    finally:
        ingest.stop()


# What the real files in ../shared/data/dicom say (see its DICOM_INVENTORY.csv): (age, sex, modality, institution,
# station, priority).
REAL_CONTEXT = {
    "RG1_J2KI.dcm": (64, "F", "CR", "Philips Medical Systems Hamburg", "THORAVISION", None),  # age from the dates
    "c64d5667-a776-4f95-9e21-bfabafb07740.dcm": (68, "F", "CR", None, None, None),  # PatientAge "68", no unit
    "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm": (81, "M", "DX", None, None, None),
    "CR-MONO1-10-chest.dcm": (None, None, "CR", "FUJI PHOTO FILM CO.,", None, None),  # no age, no sex
}


def test_import_records_the_context_of_the_real_files(tmp_path: Path, database_url: str) -> None:
    files = {path.name: path for path in real_dicom_files()}
    known = {name: files[name] for name in REAL_CONTEXT if name in files}
    if not known:
        pytest.skip(f"none of {', '.join(REAL_CONTEXT)} is in the shared DICOM folder any more")
    ingest = _ingest(tmp_path, database_url)
    try:
        for name, path in known.items():
            assert ingest.import_file(path) is not None, name
            study_uid = read_header(_read(path)).study_instance_uid
            assert _context(_study(ingest.sessions, study_uid)) == REAL_CONTEXT[name], name
    finally:
        ingest.stop()


def _read(path: Path) -> Dataset:
    from dicom_io.files import read_dataset

    return read_dataset(path)


def test_a_later_image_fills_what_is_unknown_and_never_blanks_a_known_value(tmp_path: Path,
                                                                          database_url: str) -> None:
    study_uid = "1.2.826.0.1.3680043.10.1.11"
    first = _contextless(study_uid=study_uid)
    del first.Modality
    second = _contextless(study_uid=study_uid)
    second.PatientAge, second.PatientSex, second.StationName = "070Y", "M", "ICU_PORTABLE"
    third = _contextless(study_uid=study_uid)  # says less than the second
    third.PatientSex, third.InstitutionName, third.RequestedProcedurePriority = "F", "General", "HIGH"
    ingest = _ingest(tmp_path, database_url)
    try:
        ingest.import_file(_write(first, tmp_path / "in"))
        assert _context(_study(ingest.sessions, study_uid)) == (None,) * 6
        ingest.import_file(_write(second, tmp_path / "in"))
        assert _context(_study(ingest.sessions, study_uid)) == (70, "M", "CR", None, "ICU_PORTABLE", None)
        ingest.import_file(_write(third, tmp_path / "in"))
        # The sex stays what the study first said; only what was unknown is filled.
        assert _context(_study(ingest.sessions, study_uid)) == (70, "M", "CR", "General", "ICU_PORTABLE", "HIGH")
        ingest.import_file(_write(first, tmp_path / "in"))  # the first file, resent: nothing is blanked
        assert _context(_study(ingest.sessions, study_uid)) == (70, "M", "CR", "General", "ICU_PORTABLE", "HIGH")
    finally:
        ingest.stop()


# --- the per-sender priority rule ------------------------------------------------------------------------------


def test_priority_rule_setting_is_parsed_checked_and_handed_on(tmp_path: Path) -> None:
    from pydantic import ValidationError

    settings = _settings(tmp_path, "", priority_by_calling_aet=" ER_CR=stat, ICU_DX = HIGH ,")
    assert settings.priority_by_calling_aet == {"ER_CR": "STAT", "ICU_DX": "HIGH"}
    assert worker_config(settings).priority_by_calling_aet == {"ER_CR": "STAT", "ICU_DX": "HIGH"}
    # A child process (serve's worker) sees exactly the same rule.
    env = settings_env(settings)
    assert env["TRIAGE_PRIORITY_BY_CALLING_AET"] == "ER_CR=STAT,ICU_DX=HIGH"
    assert Settings(_env_file=None, priority_by_calling_aet=env["TRIAGE_PRIORITY_BY_CALLING_AET"]
                    ).priority_by_calling_aet == settings.priority_by_calling_aet
    assert _settings(tmp_path, "").priority_by_calling_aet == {}
    for bad in ("ER_CR=URGENT", "ER_CR", "=STAT", "A_VERY_LONG_AE_TITLE=STAT"):
        with pytest.raises(ValidationError, match="priority_by_calling_aet"):
            _settings(tmp_path, "", priority_by_calling_aet=bad)


def test_the_senders_rule_applies_only_where_the_file_has_no_priority(tmp_path: Path, database_url: str) -> None:
    """C-STOREs from the ER's CR room are STAT, as the site configured, unless the order says otherwise."""
    from dicom_io.sender import send_files
    from worker.ingest_service import IngestService

    settings = _settings(tmp_path, database_url, dicom_port=free_port(), allowed_calling_aets="ER_CR,WARD_DX",
                         priority_by_calling_aet="ER_CR=STAT,IMPORT=LOW")
    ingest = IngestService(worker_config(settings), listener_config(settings))
    from_er, ordered, from_ward, imported = (_contextless() for _ in range(4))
    ordered.RequestedProcedurePriority = "ROUTINE"
    ingest.start()
    try:
        for calling_aet, ds in (("ER_CR", from_er), ("ER_CR", ordered), ("WARD_DX", from_ward)):
            [result] = send_files([_write(ds, tmp_path / "in")], host="127.0.0.1", port=ingest.listener.port,
                                  called_aet=settings.dicom_ae_title, calling_aet=calling_aet)
            assert result.ok, calling_aet
        assert ingest.import_file(_write(imported, tmp_path / "in")) is not None  # the importer's AE is IMPORT
    finally:
        ingest.stop()
    sessions = make_session_factory(make_engine(database_url))
    assert _study(sessions, from_er.StudyInstanceUID).priority == "STAT"
    assert _study(sessions, ordered.StudyInstanceUID).priority == "ROUTINE"  # the file wins
    assert _study(sessions, from_ward.StudyInstanceUID).priority is None  # no rule for this sender
    assert _study(sessions, imported.StudyInstanceUID).priority == "LOW"


# --- the default order ------------------------------------------------------------------------------------------


def _backlog(sessions: sessionmaker[Session], count: int = 300) -> None:
    """``count`` studies received and scored an hour ago: most flagged with high scores, a few STAT, all unread."""
    with sessions.begin() as session:
        items = [ingest.record_received(session, _record(f"9.{i}", f"b.{i}", i)) for i in range(count)]
    with sessions.begin() as session:
        for i, item in enumerate(items):
            work = ingest.claim(session, item.instance_id)
            assert work is not None
            score = 0.99 - (i % 40) / 100 if i % 3 else 0.2  # two in three flagged, scores 0.60–0.99
            ingest.finish(session, work, ingest.Outcome(InstanceStatus.DONE, score=score, **MODEL))
    hour_ago = utcnow() - timedelta(hours=1)
    with sessions.begin() as session:
        session.execute(update(Study).values(received_at=hour_ago))
        session.execute(update(Study).where(Study.flag.is_(True)).values(flag_raised_at=hour_ago))


def _record(sop: str, study: str, index: int, **fields: Any) -> ingest.ReceivedRecord:
    from db_records import record

    priority = "STAT" if index % 50 == 1 else "ROUTINE"  # six STAT orders (four of them flagged)
    return record(sop, study, priority=priority, **fields)


def _flag_new(sessions: sessionmaker[Session], study: str, score: float = 0.6, priority: str | None = None) -> None:
    item = receive(sessions, f"{study}.1", study, priority=priority)
    assert process(sessions, item, score)


def test_a_new_flag_reaches_the_first_screen_whatever_the_backlog(sessions: sessionmaker[Session],
                                                                  database_url: str) -> None:
    _backlog(sessions)
    _flag_new(sessions, "new.flag", score=0.6)  # flagged, but with the lowest flagged score of all
    with sessions() as session:
        first = worklist(session, limit=20)
        by_score = [e.study_uid for e in worklist(session, sort="flagged_score", limit=300)]
        everything = worklist(session, limit=400)
    uids = [e.study_uid for e in first]
    assert "new.flag" in uids
    # STAT flagged studies first, then the newest flag: the new one leads the rest of the flagged backlog.
    stat_flagged = [e.study_uid for e in everything if e.flag and e.priority == "STAT"]
    assert len(stat_flagged) == 4 and uids[:4] == stat_flagged and uids[4] == "new.flag"
    assert by_score.index("new.flag") > 150  # the score order would have buried it below the whole backlog
    # Then the flagged ones, then unflagged STAT orders, then the others in arrival order.
    kinds = [(not e.flag, e.priority != "STAT") for e in everything]
    assert kinds == sorted(kinds) and len(everything) == 301

    client = TestClient(create_app(database_url), base_url="http://127.0.0.1")
    try:
        body = client.get("/api/worklist", params={"limit": 20}).json()
        assert body["sort"] == "priority" and body["total"] == 301
        assert [item["study_uid"] for item in body["items"]] == uids
    finally:
        client.app.state.engine.dispose()  # type: ignore[attr-defined]


def test_urgent_unflagged_studies_come_before_other_unflagged_ones_and_read_ones_last(
        sessions: sessionmaker[Session]) -> None:
    for sop, study, score, priority in (("1", "routine.old", 0.1, "ROUTINE"), ("2", "none.old", 0.2, None),
                                        ("3", "stat.new", 0.1, "STAT"), ("4", "flag.stat", 0.8, "STAT"),
                                        ("5", "flag.routine", 0.9, None), ("6", "pending", None, "LOW")):
        item = receive(sessions, sop, study, priority=priority)
        if score is not None:
            assert process(sessions, item, score)
    order = lambda: [e.study_uid for e in worklist(session)]  # noqa: E731
    with sessions() as session:
        assert order() == ["flag.stat", "flag.routine", "stat.new", "routine.old", "none.old", "pending"]
    with sessions.begin() as session:
        set_read(session, "flag.stat", read=True, actor="dr-a")
        set_read(session, "stat.new", read=True, actor="dr-a")
    with sessions() as session:
        assert order() == ["flag.routine", "routine.old", "none.old", "pending", "flag.stat", "stat.new"]
        waiting = {e.study_uid: e.waiting_seconds for e in worklist(session)}
    assert waiting["flag.stat"] is None and waiting["stat.new"] is None  # read: nobody is waiting
    assert all(0 <= seconds < 600 for uid, seconds in waiting.items() if uid not in ("flag.stat", "stat.new"))


def test_waiting_seconds_count_from_receipt(sessions: sessionmaker[Session]) -> None:
    receive(sessions, "w.1", "w")
    with sessions() as session:
        received = worklist(session)[0].received_at
        [entry] = worklist(session, now=received + timedelta(minutes=7, seconds=30))
        detail = study_detail(session, "w", now=received + timedelta(seconds=5))
    assert entry.waiting_seconds == pytest.approx(450.0) and detail is not None
    assert detail.waiting_seconds == pytest.approx(5.0)


# --- borderline and the validated population ----------------------------------------------------------------


def test_borderline_is_the_band_just_below_the_threshold(sessions: sessionmaker[Session]) -> None:
    for study, score in (("b.flag", 0.5), ("b.just", 0.46), ("b.edge", 0.45), ("b.out", 0.44), ("b.low", 0.1)):
        assert process(sessions, receive(sessions, f"{study}.1", study), score)
    receive(sessions, "b.pending.1", "b.pending")

    def borderline(band: float | None = None) -> set[str]:
        extra = {} if band is None else {"borderline_band": band}
        with sessions() as session:
            return {e.study_uid for e in worklist(session, **extra) if e.borderline}

    assert borderline() == {"b.just", "b.edge"}  # threshold 0.5, default band 0.05: 0.45 <= score < 0.5
    assert borderline(0.1) == {"b.just", "b.edge", "b.out"}
    assert borderline(0.0) == set()
    assert is_borderline(0.46, 0.5, 0.05) and not is_borderline(0.5, 0.5, 0.05)
    assert not is_borderline(None, 0.5, 0.05) and not is_borderline(0.46, None, 0.05)


def test_a_study_outside_the_validated_ages_says_so(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        model_registry.register_model(session, sha256=MODEL["model_sha256"], version="m1", trained=True, threshold=0.5,
                               metadata={"validated_population": ADULTS_ONLY})
    for study, age in (("child", 4), ("adult", 45), ("unknown", None), ("eighteen", 18)):
        assert process(sessions, receive(sessions, f"{study}.1", study, patient_age_years=age), 0.7)
    receive(sessions, "waiting.1", "waiting", patient_age_years=6)  # no result yet: judged by the newest model

    def verdicts() -> dict[str, tuple[bool | None, str | None]]:
        with sessions() as session:
            return {e.study_uid: (e.outside_validated_population, e.outside_validated_population_reason)
                    for e in worklist(session)}

    found = verdicts()
    assert found["child"][0] is True and "age 4 y" in str(found["child"][1]) and "18 y and over" in str(
        found["child"][1])
    assert found["waiting"][0] is True
    assert found["adult"] == (False, None) and found["eighteen"] == (False, None)
    assert found["unknown"] == (None, None)

    with sessions.begin() as session:  # a model that records no population: nothing can be said
        model_registry.register_model(session, sha256=MODEL["model_sha256"], version="m1", trained=False, threshold=0.5,
                               metadata={"validated_population": {}})
    assert set(verdicts().values()) == {(None, None)}


def test_the_population_check_reads_what_training_writes() -> None:
    """The shape comes from model.train.validated_population (adult and paediatric validation images)."""
    from model.train import validated_population

    samples = [SimpleNamespace(population="adult", site="nih"), SimpleNamespace(population="pediatric",
                                                                                  site="kermany")]
    both = validated_population(samples)
    adults = validated_population(samples[:1])
    check = outside_validated_population
    assert check(4, both) == (False, None) and check(40, both) == (False, None)
    outside, reason = check(10, both)
    assert outside is True and "pediatric: 1–5 y" in str(reason) and "adult: 18 y and over" in str(reason)
    assert check(0, both)[0] is True  # an infant: younger than the paediatric set
    assert check(4, adults)[0] is True and check(None, adults) == (None, None)
    assert check(40, {}) == (None, None)
    assert check(40, {"age_years": {"adult": [18, None], "mystery": None}}) == (None, None)  # unknown ages


# --- the API ----------------------------------------------------------------------------------------------------


def _seed_context(sessions: sessionmaker[Session]) -> None:
    rows = (("c.cr.f.70", "CR", "F", 70, "STAT", "General Hospital"),
            ("c.dx.m.8", "DX", "M", 8, "ROUTINE", "Children's Hospital"),
            ("c.dx.f.30", "dx", "F", 30, None, "general hospital annex"),
            ("c.none", "", None, None, None, ""))
    for study, modality, sex, age, priority, institution in rows:
        item = receive(sessions, f"{study}.1", study, modality=modality, patient_sex=sex, patient_age_years=age,
                       priority=priority, institution=institution, station=f"ST_{study[-2:]}")
        assert process(sessions, item, 0.3)


def test_filters_on_context(sessions: sessionmaker[Session]) -> None:
    _seed_context(sessions)

    def found(**criteria: Any) -> set[str]:
        filters = WorklistFilter(**criteria)
        with sessions() as session:
            entries = {e.study_uid for e in worklist(session, filters)}
            assert worklist_total(session, filters) == len(entries)
        return entries

    assert found() == {"c.cr.f.70", "c.dx.m.8", "c.dx.f.30", "c.none"}
    assert found(modality="DX") == {"c.dx.m.8", "c.dx.f.30"} == found(modality="dx")
    assert found(sex="F") == {"c.cr.f.70", "c.dx.f.30"} and found(sex="M") == {"c.dx.m.8"}
    assert found(priority="STAT") == {"c.cr.f.70"}
    assert found(age_min=18) == {"c.cr.f.70", "c.dx.f.30"}  # unknown age matches no age bound
    assert found(age_max=17) == {"c.dx.m.8"} and found(age_min=30, age_max=30) == {"c.dx.f.30"}
    assert found(institution="general hosp") == {"c.cr.f.70", "c.dx.f.30"}
    assert found(institution="%") == set()  # LIKE wildcards are literal
    assert found(modality="DX", sex="F", age_min=18, institution="annex") == {"c.dx.f.30"}
    assert found(sex="M", priority="ROUTINE") == {"c.dx.m.8"}


def test_api_items_carry_the_context_and_filter_on_it(sessions: sessionmaker[Session], database_url: str) -> None:
    _seed_context(sessions)
    with sessions.begin() as session:
        model_registry.register_model(session, sha256=MODEL["model_sha256"], version="m1", trained=True, threshold=0.5,
                               metadata={"validated_population": ADULTS_ONLY})
    client = TestClient(create_app(database_url, borderline_band=0.25), base_url="http://127.0.0.1")
    try:
        items = {i["study_uid"]: i for i in client.get("/api/worklist").json()["items"]}
        child = items["c.dx.m.8"]
        assert {k: child[k] for k in CONTEXT} == {"patient_age_years": 8, "patient_sex": "M", "modality": "DX",
                                                  "institution": "Children's Hospital", "station": "ST_.8",
                                                  "priority": "ROUTINE"}
        assert child["borderline"] is True  # 0.3 within the site's band of 0.25 below 0.5
        assert child["outside_validated_population"] is True and "age 8 y" in child[
            "outside_validated_population_reason"]
        assert items["c.cr.f.70"]["outside_validated_population"] is False
        assert items["c.none"]["outside_validated_population"] is None and items["c.none"]["modality"] is None
        assert child["waiting_seconds"] >= 0 and child["read"] is False
        detail = client.get("/api/studies/c.dx.m.8").json()
        assert {k: detail[k] for k in (*CONTEXT, "borderline", "outside_validated_population")} == {
            **{k: child[k] for k in CONTEXT}, "borderline": True, "outside_validated_population": True}

        def listed(**params: Any) -> set[str]:
            response = client.get("/api/worklist", params=params)
            assert response.status_code == 200, response.text
            return {i["study_uid"] for i in response.json()["items"]}

        assert listed(modality="dx", sex="F") == {"c.dx.f.30"}
        assert listed(priority="STAT") == {"c.cr.f.70"}
        assert listed(age_min=18, age_max=69) == {"c.dx.f.30"}
        assert listed(institution="children") == {"c.dx.m.8"}
        for bad in ({"sex": "X"}, {"priority": "URGENT"}, {"age_min": -1}, {"age_max": 1000}):
            assert client.get("/api/worklist", params=bad).status_code == 422, bad
        misspelt = client.get("/api/worklist", params={"flaged": "true"})  # not the whole list, unfiltered
        assert misspelt.status_code == 422 and misspelt.json()["errors"][0]["loc"] == ["query", "flaged"]
        page = client.get("/", params={"modality": "DX", "sex": "M", "age_max": "17"}).text
        assert 'data-study-uid="c.dx.m.8"' in page and 'data-study-uid="c.dx.f.30"' not in page
        ignored = client.get("/", params={"age_min": "²"})
        assert ignored.status_code == 200 and "is not an age" in ignored.text
    finally:
        client.app.state.engine.dispose()  # type: ignore[attr-defined]


def test_the_cli_shows_names_as_people_read_them_and_the_context() -> None:
    from rich.console import Console

    from worklist.presentation import person_name
    from worklist.table import print_worklist

    assert person_name("SMITH^MARIA") == "SMITH, MARIA"
    assert person_name("SMITH^MARIA^ANN^DR^JR") == "SMITH, DR MARIA ANN JR"
    assert person_name("^MARIA") == "MARIA" and person_name("SMITH^^^") == "SMITH" and person_name("^^^") == ""
    assert person_name("YAMADA^TARO=山田^太郎=やまだ^たろう") == "YAMADA, TARO = 山田, 太郎 = やまだ, たろう"
    assert person_name("=山田^太郎") == "山田, 太郎" and person_name("") == "" and person_name(None) == ""

    entry = WorklistEntry(
        study_uid="1.2.3", patient_name="SMITH^MARIA", patient_id="P1", accession_number="A1", study_date=None,
        study_description="XR CHEST", status="DONE", flag=False, score=0.47, threshold=0.5, reason=None,
        model_version="m1", model_sha256="a" * 64, model_trained=True, received_at=utcnow(), flagged_at=None,
        images=1, state="done", failed_images=0, time_to_flag_s=None, read_at=None, read_by=None,
        patient_age_years=4, patient_sex="F", modality="CR", priority="STAT", borderline=True,
        outside_validated_population=True)
    recorder = Console(record=True, width=400)
    print_worklist(recorder, [entry], False)
    printed = recorder.export_text()
    assert _column(printed, "patient") == "SMITH, MARIA (P1)"
    assert _column(printed, "context") == "4 y F, STAT, CR; outside validated population"
    assert _column(printed, "flag") == "not flagged (borderline)"


def _column(table_text: str, name: str) -> str:
    """One column's text, its cells' folded lines joined with spaces."""
    rows = [line.split("│") for line in table_text.splitlines() if line.startswith("│")]
    header = next(line.split("┃") for line in table_text.splitlines() if line.startswith("┃"))
    index = [cell.strip() for cell in header].index(name)
    return " ".join(row[index].strip() for row in rows if row[index].strip())
