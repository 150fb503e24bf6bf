"""The training objective: cross-entropy under teacher forcing, and a KL anchor to the
starting model against forgetting what it knew.

Losses are sums over target tokens, not means: the optimisation step divides by the
window's global token count, so each token weighs the same however the batch is split
into processes and micro-batches. The anchor adds `weight(step) * KL(p_base || p_model)`
summed over the label tokens, where `p_base` is the next-token distribution of a frozen
copy of the model as training began (a noisy-classroom prize winner of "On Top of
Pasketti" used such a penalty). The weight is constant or fades to zero on a cosine, so
the model is held close early and free late. With label smoothing the cross-entropy's
target keeps 1 - eps on the label and spreads eps over the vocabulary (the objective only:
the cross-entropy returned for logging is the plain one, comparable between runs).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from kidwhisper.data.dataset import IGNORE_INDEX


class KLAnchor:
    """A frozen copy of `model` and the scheduled weight of the KL term."""

    def __init__(self, model: torch.nn.Module, weight: float, schedule: str = "constant"):
        # Copied before any distributed wrapping and before a resume loads later weights:
        # the anchor is always the model the run started from.
        self.base = copy.deepcopy(model).eval().requires_grad_(False)
        self.weight, self.schedule = weight, schedule
        self.total_steps = 1  # set by the run once it knows its length

    def weight_at(self, step: int) -> float:
        """The KL weight at optimizer step `step` (0-based)."""
        if self.schedule == "cosine":
            progress = min(step, self.total_steps) / self.total_steps
            return self.weight * 0.5 * (1 + math.cos(math.pi * progress))
        return self.weight

    @torch.no_grad()
    def base_logits(self, batch: dict, device: torch.device) -> torch.Tensor:
        return self.base(
            input_features=batch["input_features"].to(device),
            decoder_input_ids=batch["decoder_input_ids"].to(device),
        ).logits


def summed_kl(
    logits: torch.Tensor, base_logits: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """KL(p_base || p_model) summed over the positions whose label is not padding."""
    keep = labels != IGNORE_INDEX
    log_p = F.log_softmax(logits[keep].float(), dim=-1)
    log_q = F.log_softmax(base_logits[keep].float(), dim=-1)
    return F.kl_div(log_p, log_q, log_target=True, reduction="sum")


def summed_loss(
    model: torch.nn.Module,
    batch: dict,
    device: torch.device,
    anchor: KLAnchor | None = None,
    step: int = 0,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, cross-entropy), each summed over the batch's target tokens (teacher
    forcing); the objective smooths the labels by `label_smoothing` and adds the KL
    anchor's term when there is one."""
    labels = batch["labels"].to(device)
    logits = model(
        input_features=batch["input_features"].to(device),
        decoder_input_ids=batch["decoder_input_ids"].to(device),
    ).logits
    flat_logits, flat_labels = logits.float().flatten(0, 1), labels.flatten()
    loss = F.cross_entropy(
        flat_logits,
        flat_labels,
        ignore_index=IGNORE_INDEX,
        reduction="sum",
        label_smoothing=label_smoothing,
    )
    ce = loss
    if label_smoothing:
        with torch.no_grad():  # reported only: no graph for it
            ce = F.cross_entropy(
                flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum"
            )
    weight = anchor.weight_at(step) if anchor else 0.0
    if weight == 0.0:
        return loss, ce
    return loss + weight * summed_kl(logits, anchor.base_logits(batch, device), labels), ce
