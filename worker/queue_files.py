"""The embedded queue's message files (kombu's filesystem transport): set aside the ones no worker can read.

A message file left empty or cut short (the disk filled while it was written) makes kombu's consumer raise
``JSONDecodeError`` and the worker exit on every start. The instance it named is not lost: the database still has
it unfinished, and the outbox sweeper publishes it again.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)

QUARANTINE = "unreadable"


def quarantine_unreadable_messages(queue_dir: Path, min_age_s: float = 5.0) -> list[Path]:
    """Move message files that are empty or not JSON into ``queue_dir/unreadable/``; return their new paths.

    Files younger than ``min_age_s`` are left alone: the listener may be writing them right now."""
    moved: list[Path] = []
    queue_dir = Path(queue_dir)
    if not queue_dir.is_dir():
        return moved
    now = time.time()
    for path in sorted(queue_dir.glob("*.msg")):
        try:
            if now - path.stat().st_mtime < min_age_s:
                continue
            json.loads(path.read_bytes() or b"!")
        except FileNotFoundError:  # consumed meanwhile
            continue
        except (ValueError, UnicodeDecodeError):
            target = queue_dir / QUARANTINE / path.name
            target.parent.mkdir(exist_ok=True)
            path.replace(target)
            moved.append(target)
            log.warning("queue message %s is unreadable (%d bytes): moved to %s; the sweeper republishes its "
                        "instance", path.name, target.stat().st_size, target.parent)
    return moved
