"""An exponential moving average of the trained weights (`training.ema_decay`).

A short run's last weights carry the noise of its last few steps; averaging over the run
smooths it, as checkpoint averaging does, but needs no checkpoints along the way. After
each optimizer step, with n the updates made before it:

    decay = min(ema_decay, (1 + n) / (10 + n))        shadow = decay shadow + (1 - decay) w

The warm-up (TensorFlow's `num_updates` form) keeps the average from clinging to the
starting weights in a run of a few hundred steps: 0.1 at the first update, 0.5 at the 8th.

Only trainable parameters have an average (frozen ones never move). The run evaluates and
checkpoints with the averaged weights swapped in (`swapped`), so checkpoints' `model/`, the
best checkpoint and the final model are the average; the weights being trained travel in
the trainer state (`state_dict`) and come back on resume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class EMA:
    """The moving average of a model's trainable parameters."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.reset()

    @torch.no_grad()
    def reset(self) -> None:
        """Start the average afresh from the model's weights (a checkpoint without one)."""
        self.shadow = {n: p.detach().clone().float() for n, p in self.params.items()}
        self.updates, self.is_swapped = 0, False

    def current_decay(self) -> float:
        """The decay the next update uses."""
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (after an optimizer step)."""
        decay = self.current_decay()
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)
        self.updates += 1

    @torch.no_grad()
    def _swap(self) -> None:
        for name, param in self.params.items():
            trained = param.detach().float().clone()
            param.copy_(self.shadow[name].to(param.dtype))
            self.shadow[name] = trained
        self.is_swapped = not self.is_swapped

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model inside the block (re-entrant: a nested block
        changes nothing), the trained ones after it."""
        if self.is_swapped:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def state_dict(self) -> dict:
        """The update count and the weights that are NOT in the model at the time: the
        trained ones while swapped (a checkpoint is saved swapped), else the average."""
        return {
            "updates": self.updates,
            "swapped": self.is_swapped,
            "weights": {n: t.detach().cpu().clone() for n, t in self.shadow.items()},
        }

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict` whose model weights (as saved, swapped or not) are
        already loaded into the model: afterwards the model trains the trained weights."""
        missing = set(self.params) - set(state["weights"])
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameter(s), e.g. {min(missing)}")
        self.updates = int(state["updates"])
        device = next(iter(self.shadow.values())).device if self.shadow else "cpu"
        self.shadow = {n: state["weights"][n].to(device).float() for n in self.params}
        self.is_swapped = bool(state["swapped"])
        if self.is_swapped:  # the model holds the average: trade back to the trained weights
            self._swap()


def build_ema(model: torch.nn.Module, decay: float | None) -> EMA | None:
    """An EMA of `model`'s trainable parameters, or None when `decay` is unset or 0."""
    return EMA(model, decay) if decay else None


def swapped(ema: EMA | None) -> contextlib.AbstractContextManager:
    """`ema.swapped()`, or a block that does nothing without an EMA."""
    return ema.swapped() if ema is not None else contextlib.nullcontext()
