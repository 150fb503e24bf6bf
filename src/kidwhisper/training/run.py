"""One training run's machinery: model, data, optimiser, the optimisation step, checkpoints.

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
from dataclasses import asdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from kidwhisper.config import Config, dump_config
from kidwhisper.data.audio import N_FRAMES
from kidwhisper.data.augment import build_augmenter
from kidwhisper.data.dataset import (
    IGNORE_INDEX,
    SpeechDataset,
    Utterance,
    WhisperCollator,
    load_utterances,
    pad_frames,
    screen,
    split_batch,
)
from kidwhisper.data.labels import normalize_labels, screen_labels
from kidwhisper.data.problems import DataProblems
from kidwhisper.data.sampling import ResumableBatchSampler, make_sampler
from kidwhisper.data.weighting import item_weights
from kidwhisper.device import (
    peak_memory_mb,
    pick_device,
    pick_dtype,
    release_memory,
    seed_everything,
    slow_precision_warning,
)
from kidwhisper.inference.evaluation import (
    EvalResult,
    decoding_options,
    score_predictions,
    transcribe,
)
from kidwhisper.models import adapters
from kidwhisper.models.factory import ModelFactory
from kidwhisper.training import checkpoint as ckpt
from kidwhisper.training import distributed, faults, objective
from kidwhisper.training.ema import build_ema, swapped
from kidwhisper.training.schedule import build_optimizer, full_context_step, lr_lambda

log = logging.getLogger(__name__)


# --- the run -------------------------------------------------------------------------------


class Run:
    """Everything one training run holds: model, data, optimiser, state and its folders."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._setup_process()
        # Everything that can fail on the config or the data fails here, before the model
        # is loaded: the output folders, the manifests, one global batch's worth of clips.
        train_set = self._setup_data()
        train_set = self._setup_model(train_set)
        self._setup_loader(train_set)
        self._setup_optimizer()
        self.position = [0, 0]  # this rank's [epoch, batches used]
        self.saved_step: int | None = None
        self.splits = 1  # each micro-batch is cut into this many (raised by on_oom: halve)
        self.bad_steps = faults.BadSteps(config.training.max_bad_steps)
        self.logged = (0, 0.0)  # samples and audio seconds at the last TensorBoard step

    def _setup_process(self) -> None:
        """This process's place in the job: rank, device, precision, seed, output folder."""
        tc = self.config.training
        self.dist = distributed.init("cuda" if pick_device(tc.device).type == "cuda" else "cpu")
        self.device = pick_device(tc.device, self.dist.local_rank)
        self.amp_dtype = pick_dtype(tc.precision, self.device)
        if self.dist.is_main and (warning := slow_precision_warning(self.amp_dtype, self.device)):
            log.warning("%s", warning)
        seed_everything(tc.seed)
        self.root = Path(self.config.output.checkpoints_dir) / self.config.output.name
        if self.dist.is_main:
            faults.check_writable(self.root, "output.checkpoints_dir")
            faults.check_writable(
                Path(self.config.output.experiments_dir), "output.experiments_dir"
            )
        self.state = ckpt.TrainState()
        self.problems = DataProblems(self.config.data.bad_entries, self.state.skipped)

    def _setup_data(self) -> list[Utterance]:
        """The screened training set, the dev and guard sets, the augmenter and sampler."""
        data = self.config.data
        train_set = self._training_set()
        self.augmenter = build_augmenter(self.config.augment, self.config.training.seed, data)
        self.eval_set = load_utterances([data.eval] if data.eval else [], None)
        self.eval_set = self.eval_set[: data.max_eval_samples or None]
        guard = [data.guard_eval] if data.guard_eval else []
        self.guard_set = load_utterances(guard, data.max_eval_samples)
        self.sampler = self._sampler(train_set)
        return train_set

    def _setup_model(self, train_set: list[Utterance]) -> list[Utterance]:
        """Load the model, screen the labels with its tokenizer, and make it trainable here
        (device, checkpointing, KL anchor, frozen parts and adapters, DDP/FSDP)."""
        tc = self.config.training
        self.wm = ModelFactory(self.config).create()
        # The labels' checks need the tokenizer: a second pass, now that it is loaded.
        self.max_label_tokens = self.wm.model.config.max_target_positions
        checked = screen_labels(
            train_set, self.wm.tokenizer, self.wm.special, self.max_label_tokens, self.problems
        )
        if len(checked) < len(train_set):
            train_set = self._usable(checked)
            self.sampler = self._sampler(train_set)
        if self.dist.is_main:
            faults.check_free_space(self.root, self.wm.params, "output.checkpoints_dir")
        model = self.wm.model.to(self.device)
        model.config.use_cache = False  # the KV cache only helps generation
        if tc.gradient_checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": False})
        self.anchor = (
            objective.KLAnchor(model, tc.kl_weight, tc.kl_schedule) if tc.kl_weight else None
        )
        self.param_counts = adapters.prepare(model, self.config)  # frozen parts, LoRA
        self.state.trainable_params, self.state.total_params = self.param_counts
        self.ema = build_ema(model, tc.ema_decay)  # of what trains: after freezing and LoRA
        self.model = distributed.wrap(model, tc.strategy, self.dist)
        return train_set

    def _setup_loader(self, train_set: list[Utterance]) -> None:
        """The DataLoader over the training set, batched by the sampler; the step count."""
        tc = self.config.training
        dataset = SpeechDataset(
            train_set,
            self.wm.n_mels,
            self.wm.tokenizer,
            self.wm.special,
            max_label_tokens=self.max_label_tokens,
            context=self.wm.audio_context,
            seconds_range=self.seconds_range,
            augmenter=self.augmenter,
        )
        self.loader = DataLoader(
            dataset,
            batch_sampler=self.sampler,
            num_workers=self.config.data.num_workers,
            collate_fn=WhisperCollator(self.wm.special),
            worker_init_fn=faults.ignore_interrupts,
            # Its own generator: starting an epoch (or the first after a resume) then leaves the
            # global RNG, which dropout (LoRA's) draws from, as the checkpoint restored it.
            generator=torch.Generator().manual_seed(tc.seed),
        )
        self.state.train_utterances = len(dataset)
        steps_per_epoch = max(1, len(self.sampler) // tc.gradient_accumulation_steps)
        self.total_steps = tc.max_steps or math.ceil(tc.epochs * steps_per_epoch)
        if self.anchor:
            self.anchor.total_steps = self.total_steps

    def _setup_optimizer(self) -> None:
        """AdamW (per-part learning rates), the schedule, and fp16's gradient scaler."""
        tc = self.config.training
        # Built on the unwrapped model (after FSDP's sharding): parameter names decide groups.
        model = distributed.unwrap(self.model)
        self.optimizer = build_optimizer(
            model, tc.lr, tc.weight_decay, tc.encoder_lr, tc.decoder_lr
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )

    @property
    def seconds_range(self) -> tuple[float, float]:
        return self.config.data.min_seconds, self.config.data.max_seconds

    def _training_set(self) -> list[Utterance]:
        """The training manifests, with bad entries reported (or fatal, by policy)."""
        data = self.config.data
        utterances = load_utterances(data.train, data.max_train_samples, self.problems)
        utterances = normalize_labels(utterances, data.label_normalization, self.problems)
        return self._usable(screen(utterances, self.problems, self.seconds_range))

    def _usable(self, kept: list[Utterance]) -> list[Utterance]:
        if not kept:
            raise ValueError(f"data.train: no usable entries ({self.problems.summary()})")
        return kept

    def _sampler(self, train_set: list[Utterance]) -> ResumableBatchSampler:
        """Batches of the training set; drawn by weight with mixing or balance
        (data/weighting.py)."""
        data, tc = self.config.data, self.config.training
        weights = item_weights(train_set, data.train_weights, tc.balance, data.train)
        return make_sampler(train_set, tc, self.dist.rank, self.dist.world_size, weights)

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- one optimisation step ---------------------------------------------------------------

    def train_step(self, batches: Iterator[dict]) -> tuple[float, float, bool]:
        """One optimizer step over an accumulation window: (mean token loss, grad norm,
        whether the step was taken). Out of memory retries it with halved micro-batches
        when the config allows; a non-finite loss or gradient skips it."""
        tc = self.config.training
        window = [next(batches) for _ in range(tc.gradient_accumulation_steps)]
        if full_context_step(tc.full_context_prob, tc.seed, self.state.step):
            for batch in window:
                batch["input_features"] = pad_frames(batch["input_features"], N_FRAMES)
        while True:
            try:
                return self._step(window)
            except (torch.OutOfMemoryError, RuntimeError) as err:
                if not faults.is_out_of_memory(err):
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                release_memory()
                micro = max(len(b["utterance_ids"]) for b in window) // self.splits
                if self.config.training.on_oom != "halve" or micro <= 1:
                    peak = peak_memory_mb(self.device)
                    message = faults.oom_message(self.state.step + 1, micro, peak, self.device)
                    raise faults.TrainingError(message) from err
                self.splits *= 2
                log.warning("out of memory: micro-batches now split in %d", self.splits)

    def _step(self, window: list[dict]) -> tuple[float, float, bool]:
        local_tokens = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in window)
        global_tokens = distributed.all_reduce_sum(local_tokens, self.device)
        # DDP averages gradients over processes; multiplying by the world size turns that
        # average back into the sum, so each token weighs 1 / global_tokens.
        scale = self.dist.world_size / global_tokens
        micro_batches = [part for b in window for part in split_batch(b, self.splits)]
        window_loss = 0.0
        for i, batch in enumerate(micro_batches):
            last = i == len(micro_batches) - 1
            with distributed.maybe_no_sync(self.model, sync=last):
                with self.autocast():
                    objective_sum, loss = objective.summed_loss(
                        self.model,
                        batch,
                        self.device,
                        self.anchor,
                        self.state.step,
                        self.config.training.label_smoothing,
                    )
                self.scaler.scale(objective_sum * scale).backward()
            window_loss += loss.item()
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.config.training.max_grad_norm
            )
        )
        mean_loss = distributed.all_reduce_sum(window_loss, self.device) / global_tokens
        # fp16's scaler skips non-finite steps itself (and lowers its scale): that is normal.
        taken = self.scaler.is_enabled() or math.isfinite(mean_loss + grad_norm)
        if taken:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema:
                self.ema.update()
            self.state.step += 1
            self.state.samples += sum(len(b["utterance_ids"]) for b in window)
            self.state.audio_seconds += sum(sum(b["durations"]) for b in window)
        self.optimizer.zero_grad(set_to_none=True)
        return mean_loss, grad_norm, taken

    # --- evaluation and checkpoints ----------------------------------------------------------

    def evaluate(
        self, utterances: list[Utterance] | None = None, context: str | float | None = None
    ) -> EvalResult | None:
        """Each process decodes its share of the dev set (or of `utterances`, e.g. the guard
        set); every process gets the scores. `context` overrides the audio context (the
        starting model is scored in the window it was trained in)."""
        utterances = self.eval_set if utterances is None else utterances
        if not utterances:
            return None
        ev, d = self.config.evaluation, self.dist
        start = time.perf_counter()
        shard = utterances[d.rank :: d.world_size]
        context = self.wm.audio_context if context is None else context
        with swapped(self.ema), distributed.gathered(self.model), self.wm.context(context):
            texts, errors = transcribe(
                self.wm, shard, ev.batch_size, decoding_options(ev), progress=d.is_main
            )
        all_texts, all_errors = {}, []
        for part_texts, part_errors in distributed.gather_objects((texts, errors)):
            all_texts.update(part_texts)
            all_errors += part_errors
        result = score_predictions(utterances, all_texts, all_errors)
        result.seconds = time.perf_counter() - start
        return result

    def gather_problems(self) -> None:
        """Every process's bad entries into this one's (each process loads its own clips)."""
        for entries in distributed.gather_objects(dict(self.state.skipped)):
            self.problems.merge(entries)

    def trainer_state(self) -> dict:
        self.gather_problems()
        self.state.sampler = [list(p) for p in distributed.gather_objects(list(self.position))]
        return {
            **({"ema": self.ema.state_dict()} if self.ema else {}),
            "optimizer": distributed.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": distributed.gather_objects(ckpt.rng_state()),
            "state": asdict(self.state),
        }

    def save(self, wer: float | None) -> None:
        """A checkpoint of this step. With an EMA, its model/ holds the average and its
        trainer state the weights being trained (the state's tensors share their storage)."""
        with swapped(self.ema):
            self._save(wer)

    def _save(self, wer: float | None) -> None:
        # Collectives first: every rank takes part in gathering the whole state.
        trainer_state = self.trainer_state()
        weights = distributed.model_state(self.model)
        if self.dist.is_main:
            ckpt.save_checkpoint(
                self.root,
                self.state.step,
                lambda folder: ckpt.save_model(self.wm, folder, weights, self.config),
                trainer_state,
                {"step": self.state.step, "wer": wer, "code_version": ckpt.code_version()},
                dump_config(self.config),
                self.config.training.keep_checkpoints,
            )
        self.saved_step = self.state.step
        distributed.barrier()

    def close(self) -> None:
        """Leave the process group once no collective is left (see distributed.shutdown).
        The DDP wrapper goes first: its reducer must not outlive the group's last Python
        reference, or the group's destructor runs holding the GIL and can deadlock."""
        self.model = None  # the only reference to a DDP wrapper: freed here
        distributed.shutdown()

    def save_now(self) -> Path | None:
        """A checkpoint of the current step (unless there is one); the latest checkpoint."""
        if self.state.step > 0 and self.saved_step != self.state.step:
            self.save(None)
        return ckpt.latest_checkpoint(self.root)

    def resume(self) -> bool:
        """Continue from the latest checkpoint of this experiment, if there is one."""
        latest = ckpt.latest_checkpoint(self.root)
        if latest is None:
            return False
        distributed.load_model_state(self.model, ckpt.checkpoint_state(latest))
        saved = ckpt.load_trainer_state(latest)
        if self.ema:  # model/ held the average: the trained weights come back
            if "ema" in saved:
                self.ema.load_state_dict(saved["ema"])
            else:
                self.ema.reset()
        distributed.load_optimizer_state(self.model, self.optimizer, saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = ckpt.TrainState(**saved["state"])
        self.state.trainable_params, self.state.total_params = self.param_counts
        self.problems.merge(self.state.skipped)  # found again this time, or only then
        self.state.skipped = self.problems.entries
        self.saved_step = self.state.step
        if len(self.state.sampler) != self.dist.world_size:
            raise ValueError(
                f"{latest} was written by {len(self.state.sampler)} process(es); resume it with "
                f"the same number (now {self.dist.world_size})"
            )
        self.position = list(self.state.sampler[self.dist.rank])
        ckpt.set_rng_state(saved["rng"][self.dist.rank])
        log.info("resumed from %s (step %d)", latest, self.state.step)
        return True
