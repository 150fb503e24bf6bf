"""Where the work runs: the device and precision, seeds, peak memory, freeing cached memory.

A leaf module: training, evaluation, curation and the shipped submission all pick their
device here, so a single-process command never needs the distributed helpers.
"""

from __future__ import annotations

import random
import resource

import numpy as np
import torch


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` (a GPU when there is one), `cuda`, `cpu` or any torch device name."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full fp32. `auto`: bf16 (or fp16) on GPUs, fp32 on CPUs,
    where autocast is slower than fp32 on most processors."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def release_memory() -> None:
    """Return cached GPU memory after an out-of-memory error (a no-op on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
