"""Which class folders mean what. Kept free of torch so the CLI can show its defaults without loading it."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

DEFAULT_NEGATIVE = ("NORMAL",)
# Positive = pneumonia of any cause, COVID-19 included (the folder names used in ../shared/data).
DEFAULT_POSITIVE = ("PNEUMONIA", "COVID", "OTHER_PNEUMONIA")
# Folders left out on purpose: unlabelled images, and lateral views kept apart by the data set (JPEG carries no
# header that would let the worker refuse them). Shell patterns, matched against the folder name.
DEFAULT_IGNORED = ("UNLABELED", "UNLABELLED", "*_lateral")


class UnmappedFolderError(ValueError):
    """A class folder that is neither negative, positive nor ignored: silently skipping it would bias metrics."""


def unmapped_folders(root: Path, negative: Sequence[str], positive: Sequence[str],
                     ignored: Sequence[str] = DEFAULT_IGNORED) -> list[str]:
    """Top-level folders of ``root`` that no option maps to a class or ignores."""
    mapped = {*negative, *positive}
    return sorted(child.name for child in Path(root).iterdir()
                  if child.is_dir() and not child.name.startswith(".") and child.name not in mapped
                  and not any(fnmatch.fnmatchcase(child.name, pattern) for pattern in ignored))
