"""The spool: received files on disk, written so that a crash never leaves half a file under a final name."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def disk_used_percent(path: Path) -> float:
    """Used share of the file system holding ``path`` (or its nearest existing parent), in percent."""
    existing = Path(path).resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    return 100.0 * usage.used / usage.total if usage.total else 100.0


class Spool:
    """A folder of received DICOM files, one per SOP Instance UID (a duplicate replaces the earlier copy)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def disk_used_percent(self) -> float:
        """How full the spool's file system is (the nearest existing folder's, before the spool exists)."""
        return disk_used_percent(self.root)

    def path_for(self, sop_instance_uid: str) -> Path:
        # Hash the UID: senders put odd characters into UIDs, and a flat folder of millions of files is slow.
        digest = hashlib.sha256(sop_instance_uid.encode("utf-8")).hexdigest()
        return self.root / digest[:2] / f"{digest}.dcm"

    def write(self, sop_instance_uid: str, data: bytes) -> Path:
        """Write atomically and durably (temp file, fsync, rename, fsync of the folder)."""
        final = self.path_for(sop_instance_uid)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".incoming-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, final)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final
