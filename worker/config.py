"""What the worker side needs to know, handed over by the composition root (``triage``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WorkerConfig:
    database_url: str
    broker_url: str
    spool_dir: Path
    rejected_dir: Path
    queue_dir: Path
    model_path: Path | None  # None = the shipped default
    model_cache_dir: Path
    queue: str = "triage"
    device: str = ""
    threshold: float | None = None  # site override of the checkpoint's threshold
    requeue_after_s: float = 600.0
    received_grace_s: float = 5.0
    sweep_interval_s: float = 10.0
    max_attempts: int = 3  # claims per received copy before it is a poison message
    max_retries: int = 8  # task retries while the database is away (back-off up to 300 s between tries)
    previews_dir: Path | None = None  # where the worker writes preview and heat map PNGs; None = none written
    disk_watermark_percent: float = 90.0  # above this share of the spool's disk in use, C-STOREs get 0xA700

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem")
