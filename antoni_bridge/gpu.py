"""GPU memory: what is in use, and giving back what unloaded models held."""

from __future__ import annotations

import gc

import torch


def gpu_memory() -> dict[str, float] | None:
    """Allocated, reserved and peak memory in MiB on the current CUDA device; None without one."""
    if not torch.cuda.is_available():
        return None
    mib = 2**20
    free, total = torch.cuda.mem_get_info()
    return {
        "allocated_mib": torch.cuda.memory_allocated() / mib,
        "reserved_mib": torch.cuda.memory_reserved() / mib,
        "peak_mib": torch.cuda.max_memory_allocated() / mib,
        "free_mib": free / mib,
        "total_mib": total / mib,
    }


def release_unused() -> None:
    """After the last reference to a model is dropped: collect it and return its cached blocks to the driver."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
