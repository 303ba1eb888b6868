"""The ``cxr-triage`` command: each command module registers its commands on the one app (``triage.console``)."""

from triage import cli, training_cli  # noqa: F401  (imported for the commands they register)
from triage.console import app

__all__ = ["app"]

if __name__ == "__main__":
    app()
