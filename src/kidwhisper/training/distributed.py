"""Small helpers over torch.distributed, so the training loop reads the
same on 1 or N processes.

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

from kidwhisper.models.factory import TIED_OUTPUT, load_state

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
    """Leave the process group (a no-op on one process), once no collective is left and no
    DDP wrapper is alive.

    A process that exits without this can abort (SIGABRT) when gloo's worker threads free
    their last tensors during interpreter teardown. Freeing the group has its own trap: its
    destructor joins those threads, which may need the GIL to free a tensor; run from a C++
    owner (DDP's reducer) it holds the GIL and deadlocks. So the group outlives its C++
    owners here and goes with a Python reference (this one, or an FSDP module's, later),
    whose binding releases the GIL for the destructor; and a barrier first lets the worker
    threads free the last collective's tensors while every process waits without the GIL.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    world = dist.group.WORLD  # keeps the group alive while destroy_process_group unlinks it
    dist.destroy_process_group()
    del world


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


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on all but the last
    micro-step of an accumulation window."""
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP
        model.set_requires_gradient_sync(sync)
        yield
    elif sync or not hasattr(model, "no_sync"):
        yield
    else:
        with model.no_sync():
            yield


# --- DDP or FSDP: wrapping the model and moving whole state dicts in and out ---------------


def wrap(model: torch.nn.Module, strategy: str, env: Dist) -> torch.nn.Module:
    """DDP (every process holds the whole model) or FSDP (torch's `fully_shard`: parameters,
    gradients and optimizer state sharded across processes, one unit per transformer layer,
    for the variants that do not fit one GPU). Unchanged on a single process."""
    if not env.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in [*model.model.encoder.layers, *model.model.decoder.layers]:
            fully_shard(layer)
        fully_shard(model)  # the root unit: convolutions, embeddings, tied output layer
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict; a collective under FSDP, so call it on every rank."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(model, options=_full_options())
        # The full state dict lists the tied output projection under both names; save it
        # once, as transformers does, so every checkpoint has the same keys.
        if getattr(model.config, "tie_word_embeddings", False):
            state.pop(TIED_OUTPUT, None)
        return state
    return unwrap(model).state_dict()


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_full_options())
        return
    load_state(unwrap(model), state)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full_options())
    return optimizer.state_dict()


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict
) -> None:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=_full_options())
        return
    optimizer.load_state_dict(state)


@contextlib.contextmanager
def gathered(model: torch.nn.Module) -> Iterator[None]:
    """Whole parameters on every process for the duration (FSDP), e.g. for decoding, which
    calls the encoder and decoder directly rather than the root module's forward."""
    if not _is_fsdp(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
