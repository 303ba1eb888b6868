"""Which arithmetic the CPU does fast: bf16 autocast doubles ResNet50 speed on CPUs with native bf16 (AVX-512 BF16,
AMX) and is several times *slower* on CPUs without it (AVX2 only), so the choice is made here at run time from the
CPU's own flags, never assumed, and recorded with whatever it produced."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The flags line of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def autocast_dtype(device: torch.device, allow_bf16: bool = True) -> torch.dtype | None:
    """fp16 on a GPU, bf16 on a CPU with native bf16 (when allowed), else None: plain fp32."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and allow_bf16 and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def precision_name(dtype: torch.dtype | None) -> str:
    return {torch.float16: "fp16 autocast", torch.bfloat16: "bf16 autocast", None: "fp32"}[dtype]
