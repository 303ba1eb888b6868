"""Shared fixtures: backends (embedded and fleet), a model file, real chest X-rays, running stacks."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from stack import Backend, Stack  # noqa: E402

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
POSTGRES_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
# Listeners under test know these calling AE titles; anything else is refused at association.
TEST_CALLING_AETS = "STORESCU,ECHOSCU,ORTHANC,CXR_SENDER"


def real_dicom_files() -> list[Path]:
    folder = SHARED_DATA / "dicom"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the real chest X-ray DICOM files are needed for this test")
    return sorted(folder.rglob("*.dcm"))


def _postgres_database() -> Iterator[str]:
    """A database of its own for each use, dropped afterwards."""
    from sqlalchemy import create_engine, text

    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"triage_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is not available ({type(exc).__name__}); .ci/run starts it")
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _require_redis() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        pytest.skip(f"Redis at 127.0.0.1:6379 is not available ({type(exc).__name__}); .ci/run starts it")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty, migrated database of each kind."""
    from db.engine import make_engine, migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'unit.sqlite3'}"
        migrate(make_engine(url))
        yield url
        return
    for url in _postgres_database():
        migrate(make_engine(url))
        yield url


@pytest.fixture
def sessions(database_url: str) -> sessionmaker[Session]:
    """Sessions on an empty, migrated database of each kind."""
    from db.engine import make_engine, make_session_factory

    return make_session_factory(make_engine(database_url))


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained placeholder checkpoint, made once for the session."""
    from model.checkpoint import ensure_untrained_checkpoint

    return ensure_untrained_checkpoint(tmp_path_factory.mktemp("models"))


@pytest.fixture(params=["embedded", "fleet"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


def make_backend(name: str) -> Iterator[Backend]:
    if name == "embedded":
        yield Backend("embedded", "", "")
        return
    _require_redis()
    for url in _postgres_database():
        yield Backend("fleet", url, REDIS_URL)


@pytest.fixture(scope="module", params=["embedded", "fleet"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, model_path: Path
          ) -> Iterator[Stack]:
    """A running system per backend, shared by the tests of a module (they use their own studies)."""
    for backend in make_backend(request.param):
        with Stack(tmp_path_factory.mktemp(f"stack-{request.param}"), backend, model_path,
                   allowed_calling_aets=TEST_CALLING_AETS) as running:
            yield running
