"""Training recipe: fine-tune a Whisper model as a config describes, then score it.

The optimisation step reads top to bottom: for each micro-batch of the accumulation window,
forward under autocast, scale the loss by the window, backward; then unscale, clip, step,
schedule. Around it sit small helpers for the device, the schedule and the data stream.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from kidwhisper.config import Config, resolve_path
from kidwhisper.data import SpeechDataset, Utterance, WhisperCollator, read_manifest
from kidwhisper.evaluation import EvalResult, evaluate
from kidwhisper.models import ModelFactory, WhisperModel

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a run has done so far; becomes metrics.json."""

    step: int = 0
    samples: int = 0
    loss_curve: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # utterance_id -> reason
    train_utterances: int = 0
    train_seconds: float = 0.0
    peak_memory_mb: float = 0.0


# --- setup helpers -------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype, or None for full fp32. `auto`: bf16 (or fp16) on GPUs, fp32 on CPUs,
    where autocast is slower than fp32 on most processors."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=torch.cuda.is_available())


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def load_utterances(paths: list[str], limit: int | None) -> list[Utterance]:
    utterances = [u for p in paths for u in read_manifest(resolve_path(p))]
    return utterances[:limit] if limit else utterances


def batch_stream(loader: DataLoader, state: TrainState) -> Iterator[dict]:
    """Endless batches, epoch after epoch; unreadable clips are recorded once each."""
    epoch = 0
    while True:
        loader.generator.manual_seed(1000 + epoch)  # a fresh, reproducible order per epoch
        for batch in loader:
            for uid, error in batch["errors"]:
                if uid not in state.unreadable:
                    log.warning("skipping unreadable clip %s", error)
                    state.unreadable[uid] = error
            if "input_features" in batch:
                yield batch
        epoch += 1


# --- the loop ------------------------------------------------------------------------------


def run_eval(wm: WhisperModel, config: Config, utterances: list[Utterance]) -> EvalResult:
    ev = config.evaluation
    return evaluate(wm, utterances, ev.batch_size, ev.max_new_tokens, config.data.num_workers)


def train(config: Config, on_eval=None) -> tuple[WhisperModel, TrainState]:
    """Fine-tune as `config` says. `on_eval(state, result)` is called after each evaluation."""
    tc = config.training
    seed_everything(tc.seed)
    device = pick_device(tc.device)
    amp_dtype = pick_dtype(tc.precision, device)

    wm = ModelFactory(config).create()
    model = wm.model.to(device)
    model.config.use_cache = False  # the KV cache only helps generation
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    train_set = load_utterances(config.data.train, config.data.max_train_samples)
    eval_set = load_utterances([config.data.eval] if config.data.eval else [], None)
    eval_set = eval_set[: config.data.max_eval_samples or None]
    dataset = SpeechDataset(train_set, wm.n_mels, wm.tokenizer, wm.special)
    loader = DataLoader(
        dataset,
        batch_size=tc.batch_size,
        shuffle=True,
        generator=torch.Generator(),
        num_workers=config.data.num_workers,
        collate_fn=WhisperCollator(wm.special),
        drop_last=len(dataset) > tc.batch_size,
    )
    steps_per_epoch = max(1, len(loader) // tc.gradient_accumulation_steps)
    total_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, total_steps)
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    autocast = (
        torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    )

    state = TrainState(train_utterances=len(dataset))
    log.info(
        "training %s on %d clips for %d steps (%d per epoch, global batch %d)",
        wm.variant.name,
        len(dataset),
        total_steps,
        steps_per_epoch,
        tc.batch_size * tc.gradient_accumulation_steps,
    )

    def evaluate_now() -> None:
        if not eval_set:
            return
        result = run_eval(wm, config, eval_set)
        state.evals.append({"step": state.step, **result.summary()})
        log.info("step %d: dev WER %.4f", state.step, result.wer)
        if on_eval:
            on_eval(state, result)

    if config.evaluation.before_training:
        evaluate_now()

    batches = batch_stream(loader, state)
    model.train()
    start = time.perf_counter()
    progress = tqdm(range(total_steps), desc="training", unit="step")
    for _ in progress:
        window_loss = 0.0
        for _micro in range(tc.gradient_accumulation_steps):
            batch = next(batches)
            with autocast:
                loss = model(
                    input_features=batch["input_features"].to(device),
                    decoder_input_ids=batch["decoder_input_ids"].to(device),
                    labels=batch["labels"].to(device),
                ).loss
            scaler.scale(loss / tc.gradient_accumulation_steps).backward()
            window_loss += loss.item() / tc.gradient_accumulation_steps
            state.samples += len(batch["utterance_ids"])
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1

        lr = scheduler.get_last_lr()[0]
        progress.set_postfix(loss=f"{window_loss:.3f}", lr=f"{lr:.2e}")
        state.loss_curve.append(
            {"step": state.step, "loss": window_loss, "lr": lr, "grad_norm": float(grad_norm)}
        )
        if state.step % tc.log_every_steps == 0:
            log.info("step %d loss %.4f lr %.2e", state.step, window_loss, lr)
        if tc.eval_every_steps and state.step % tc.eval_every_steps == 0:
            evaluate_now()
    state.train_seconds = time.perf_counter() - start
    if not state.evals or state.evals[-1]["step"] != state.step:
        evaluate_now()
    state.peak_memory_mb = peak_memory_mb(device)
    return wm, state
