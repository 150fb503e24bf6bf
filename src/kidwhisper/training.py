"""Training recipe: fine-tune a Whisper model as a config describes, on 1 or N processes.

The optimisation step reads top to bottom: take the window's micro-batches, count their
target tokens over all processes, then for each micro-batch forward under autocast, divide
the summed loss by that global count and backward (gradients sync only on the last one);
then unscale, clip, step, schedule. Dividing by the global token count makes the update
the same however the global batch is split into processes and micro-batches.
Around the step sit small helpers for the device, schedule, data stream and checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from kidwhisper import checkpoint as ckpt
from kidwhisper import distributed
from kidwhisper.anchor import KLAnchor, summed_kl
from kidwhisper.config import Config, dump_config, resolve_path
from kidwhisper.data import IGNORE_INDEX, SpeechDataset, Utterance, WhisperCollator, read_manifest
from kidwhisper.distributed import peak_memory_mb, pick_device, pick_dtype, seed_everything
from kidwhisper.evaluation import EvalResult, decoding_options, score_predictions, transcribe
from kidwhisper.models import ModelFactory, WhisperModel
from kidwhisper.sampling import ResumableBatchSampler, make_sampler
from kidwhisper.schedule import build_optimizer, lr_lambda

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """What a run has done so far: saved in every checkpoint, becomes metrics.json."""

    step: int = 0
    samples: int = 0
    loss_curve: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)  # utterance_id -> reason
    sampler: list[list[int]] = field(default_factory=list)  # per rank: [epoch, batches used]
    best_wer: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    train_utterances: int = 0
    train_seconds: float = 0.0
    audio_seconds: float = 0.0  # of training audio consumed (throughput = this / train time)
    peak_memory_mb: float = 0.0
    stopped_early: bool = False


# --- setup helpers -------------------------------------------------------------------------


def load_utterances(paths: list[str], limit: int | None) -> list[Utterance]:
    utterances = [u for p in paths for u in read_manifest(resolve_path(p))]
    return utterances[:limit] if limit else utterances


def batch_stream(
    loader: DataLoader, sampler: ResumableBatchSampler, position: list[int], state: TrainState
) -> Iterator[dict]:
    """Endless batches from `position` = [epoch, batches used], which it keeps current.
    Unreadable clips are recorded once each; a batch with none left is skipped."""
    while True:
        sampler.set_position(*position)
        for batch in loader:
            position[1] += 1
            for uid, error in batch["errors"]:
                if uid not in state.unreadable:
                    log.warning("skipping unreadable clip %s", error)
                    state.unreadable[uid] = error
            if "input_features" in batch:
                yield batch
        position[0], position[1] = position[0] + 1, 0


def summed_loss(
    model: torch.nn.Module,
    batch: dict,
    device: torch.device,
    anchor: KLAnchor | None = None,
    step: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(objective, cross-entropy), each summed over the batch's target tokens (teacher
    forcing); the objective adds the KL anchor's term when there is one."""
    labels = batch["labels"].to(device)
    logits = model(
        input_features=batch["input_features"].to(device),
        decoder_input_ids=batch["decoder_input_ids"].to(device),
    ).logits
    ce = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    weight = anchor.weight_at(step) if anchor else 0.0
    if weight == 0.0:
        return ce, ce
    return ce + weight * summed_kl(logits, anchor.base_logits(batch, device), labels), ce


# --- the run -------------------------------------------------------------------------------


class Run:
    """Everything one training run holds: model, data, optimiser, state and its folders."""

    def __init__(self, config: Config) -> None:
        tc = config.training
        self.config = config
        self.dist = distributed.init("cuda" if pick_device(tc.device).type == "cuda" else "cpu")
        self.device = pick_device(tc.device, self.dist.local_rank)
        self.amp_dtype = pick_dtype(tc.precision, self.device)
        seed_everything(tc.seed)

        self.wm = ModelFactory(config).create()
        model = self.wm.model.to(self.device)
        model.config.use_cache = False  # the KV cache only helps generation
        if tc.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        self.anchor = KLAnchor(model, tc.kl_weight, tc.kl_schedule) if tc.kl_weight else None
        self.model = distributed.wrap(model, tc.strategy, self.dist)

        train_set = load_utterances(config.data.train, config.data.max_train_samples)
        self.eval_set = load_utterances([config.data.eval] if config.data.eval else [], None)
        self.eval_set = self.eval_set[: config.data.max_eval_samples or None]
        dataset = SpeechDataset(
            train_set,
            self.wm.n_mels,
            self.wm.tokenizer,
            self.wm.special,
            context=self.wm.audio_context,
        )
        self.sampler = make_sampler(train_set, tc, self.dist.rank, self.dist.world_size)
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=config.data.num_workers,
            collate_fn=WhisperCollator(self.wm.special),
        )
        steps_per_epoch = max(1, len(self.sampler) // tc.gradient_accumulation_steps)
        self.total_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
        if self.anchor:
            self.anchor.total_steps = self.total_steps
        self.optimizer = build_optimizer(model, tc.lr, tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.state = TrainState(train_utterances=len(dataset))
        self.position = [0, 0]  # this rank's [epoch, batches used]
        self.root = Path(config.output.checkpoints_dir) / config.output.name
        self.logged = (0, 0.0)  # samples and audio seconds at the last TensorBoard step

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- one optimisation step ---------------------------------------------------------------

    def train_step(self, batches: Iterator[dict]) -> tuple[float, float]:
        """One optimizer step over an accumulation window; returns (mean token loss, grad norm)."""
        window = [next(batches) for _ in range(self.config.training.gradient_accumulation_steps)]
        local_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in window)
        global_tokens = distributed.all_reduce_sum(local_tokens, self.device)
        # DDP averages gradients over processes; multiplying by the world size turns that
        # average back into the sum, so each token weighs 1 / global_tokens.
        scale = self.dist.world_size / global_tokens
        window_loss = 0.0
        for i, batch in enumerate(window):
            last = i == len(window) - 1
            with distributed.maybe_no_sync(self.model, sync=last):
                with self.autocast():
                    objective, loss = summed_loss(
                        self.model, batch, self.device, self.anchor, self.state.step
                    )
                self.scaler.scale(objective * scale).backward()
            window_loss += loss.item()
            self.state.samples += len(batch["utterance_ids"])
            self.state.audio_seconds += sum(batch["durations"])
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.config.training.max_grad_norm
        )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.state.step += 1
        mean_loss = distributed.all_reduce_sum(window_loss, self.device) / global_tokens
        return mean_loss, float(grad_norm)

    # --- evaluation and checkpoints ----------------------------------------------------------

    def evaluate(self) -> EvalResult | None:
        """Each process decodes its share of the dev set; every process gets the scores."""
        if not self.eval_set:
            return None
        ev, d = self.config.evaluation, self.dist
        start = time.perf_counter()
        shard = self.eval_set[d.rank :: d.world_size]
        with distributed.gathered(self.model):
            texts, errors = transcribe(
                self.wm, shard, ev.batch_size, decoding_options(ev), progress=d.is_main
            )
        all_texts, all_errors = {}, []
        for part_texts, part_errors in distributed.gather_objects((texts, errors)):
            all_texts.update(part_texts)
            all_errors += part_errors
        result = score_predictions(self.eval_set, all_texts, all_errors)
        result.seconds = time.perf_counter() - start
        return result

    def trainer_state(self) -> dict:
        self.state.sampler = [list(p) for p in distributed.gather_objects(list(self.position))]
        return {
            "optimizer": distributed.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": distributed.gather_objects(ckpt.rng_state()),
            "state": asdict(self.state),
        }

    def save(self, wer: float | None) -> None:
        # Collectives first: every rank takes part in gathering the whole state.
        trainer_state = self.trainer_state()
        weights = distributed.model_state(self.model)
        if self.dist.is_main:
            ckpt.save_checkpoint(
                self.root,
                self.state.step,
                lambda folder: self.wm.save(folder, state_dict=weights),
                trainer_state,
                {"step": self.state.step, "wer": wer, "code_version": ckpt.code_version()},
                dump_config(self.config),
                self.config.training.keep_checkpoints,
            )
        distributed.barrier()

    def resume(self) -> bool:
        """Continue from the latest checkpoint of this experiment, if there is one."""
        latest = ckpt.latest_checkpoint(self.root)
        if latest is None:
            return False
        distributed.load_model_state(self.model, load_file(latest / "model" / "model.safetensors"))
        saved = ckpt.load_trainer_state(latest)
        distributed.load_optimizer_state(self.model, self.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = TrainState(**saved["state"])
        if len(self.state.sampler) != self.dist.world_size:
            raise ValueError(
                f"{latest} was written by {len(self.state.sampler)} process(es); resume it with "
                f"the same number (now {self.dist.world_size})"
            )
        self.position = list(self.state.sampler[self.dist.rank])
        ckpt.set_rng_state(saved["rng"][self.dist.rank])
        log.info("resumed from %s (step %d)", latest, self.state.step)
        return True


# --- the loop ------------------------------------------------------------------------------


def train(config: Config, on_eval=None, resume: bool = True) -> tuple[WhisperModel, TrainState]:
    """Fine-tune as `config` says; `on_eval(state, result)` runs on rank 0 after each
    evaluation. With `resume`, a run with checkpoints continues from the latest."""
    run = Run(config)
    tc, state = config.training, run.state
    resumed = resume and run.resume()
    state = run.state
    writer = _tensorboard(run.root) if run.dist.is_main else None
    log.info(
        "training %s on %d clips x %d process(es): %d steps, global batch %d",
        run.wm.variant.name,
        state.train_utterances,
        run.dist.world_size,
        run.total_steps,
        tc.batch_size * tc.gradient_accumulation_steps * run.dist.world_size,
    )

    def evaluate_and_save() -> bool:
        """Evaluate, checkpoint, and say whether early stopping has run out of patience."""
        state.peak_memory_mb = max(state.peak_memory_mb, peak_memory_mb(run.device))
        result = run.evaluate()
        wer = result.wer if result else None
        if result is not None:
            state.evals.append({"step": state.step, **result.summary()})
            log.info("step %d: dev WER %.4f", state.step, result.wer)
            if state.best_wer is None or result.wer < state.best_wer:
                state.best_wer, state.best_step = result.wer, state.step
                state.evals_without_improvement = 0
            else:
                state.evals_without_improvement += 1
            if writer:
                writer.add_scalar("eval/wer", result.wer, state.step)
            if on_eval and run.dist.is_main:
                on_eval(state, result)
        if state.step > 0:
            run.save(wer)
        patience = tc.early_stopping_patience
        return bool(patience and state.evals_without_improvement >= patience)

    if config.evaluation.before_training and not resumed:
        evaluate_and_save()

    batches = batch_stream(run.loader, run.sampler, run.position, state)
    run.model.train()
    start_step = state.step
    progress = tqdm(
        total=run.total_steps, initial=state.step, desc="training", disable=not run.dist.is_main
    )
    while state.step < run.total_steps:
        step_start = time.perf_counter()
        loss, grad_norm = run.train_step(batches)
        state.train_seconds += time.perf_counter() - step_start  # kept across resumes
        lr = run.scheduler.get_last_lr()[0]
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        point = {"step": state.step, "loss": loss, "lr": lr, "grad_norm": grad_norm}
        state.loss_curve.append(point)
        if writer:
            _log_step(writer, state, loss, lr, grad_norm, time.perf_counter() - step_start, run)
        if state.step % tc.log_every_steps == 0:
            log.info("step %d loss %.4f lr %.2e", state.step, loss, lr)
        last = state.step == run.total_steps
        if last or (tc.eval_every_steps and state.step % tc.eval_every_steps == 0):
            if evaluate_and_save() and not last:
                log.info(
                    "early stop: %d evaluations without a better WER",
                    state.evals_without_improvement,
                )
                state.stopped_early = True
                break
        elif tc.save_every_steps and state.step % tc.save_every_steps == 0:
            run.save(None)
    progress.close()
    state.peak_memory_mb = max(state.peak_memory_mb, peak_memory_mb(run.device))
    log.info("trained %d steps, %.0f s in all", state.step - start_step, state.train_seconds)
    if writer:
        writer.close()
    return run.wm, state


def _tensorboard(root: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(root / "tensorboard"))


def _log_step(writer, state: TrainState, loss, lr, grad_norm, seconds: float, run: Run) -> None:
    """Scalars of one step; `samples` and `audio` are this step's, on this process."""
    samples, audio = state.samples - run.logged[0], state.audio_seconds - run.logged[1]
    run.logged = (state.samples, state.audio_seconds)
    writer.add_scalar("train/loss", loss, state.step)
    writer.add_scalar("train/lr", lr, state.step)
    writer.add_scalar("train/grad_norm", grad_norm, state.step)
    writer.add_scalar("train/samples_per_second", samples / seconds, state.step)
    writer.add_scalar("train/audio_seconds_per_second", audio / seconds, state.step)
    writer.add_scalar("memory/peak_mb", peak_memory_mb(run.device), state.step)
