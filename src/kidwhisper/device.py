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


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX). Elsewhere torch
    emulates bf16, and autocast to it is slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def slow_precision_warning(dtype: torch.dtype | None, device: torch.device) -> str | None:
    """What to say when bf16 autocast was asked for on a CPU that only emulates it."""
    if dtype != torch.bfloat16 or device.type != "cpu" or cpu_has_native_bf16():
        return None
    return ("training.precision=bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): "
            "torch emulates it here, slower than fp32; set training.precision=fp32")  # fmt: skip


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
