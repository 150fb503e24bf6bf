"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math

import torch


def lr_lambda(schedule: str, warmup: int, total: int):
    """Linear warmup to the peak, then linear or cosine decay to zero (or constant)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float):
    """AdamW; no weight decay on biases and layer norms (the usual transformer practice)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=torch.cuda.is_available())
