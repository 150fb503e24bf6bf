"""Small helpers over torch.distributed, so the training loop reads the same on 1 or N processes.

`torchrun --nproc_per_node=N -m kidwhisper train CONFIG` sets RANK/WORLD_SIZE/LOCAL_RANK;
`init()` joins the process group (NCCL on GPUs, gloo on CPUs). Without torchrun everything
degrades to a single process and every collective here becomes a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device_type: str) -> Dist:
    """Join the process group if launched by torchrun; pick this process's GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    if rank != 0:  # library code logs on rank 0 only
        logging.getLogger("kidwhisper").setLevel(logging.WARNING)
    return Dist(rank, local_rank, world_size)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(value: float | int, device: torch.device) -> float:
    """Sum a number over all processes (returns it unchanged on one process)."""
    if not dist.is_initialized():
        return float(value)
    tensor = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def gather_objects(obj: object) -> list[object]:
    """Every process's `obj`, in rank order (a one-element list on one process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on all but the last micro-step of a window."""
    if sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield
