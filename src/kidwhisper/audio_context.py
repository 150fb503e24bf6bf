"""Short encoder input: run Whisper's encoder on the clip's length, not on a 30 s window.

Whisper pads every clip to 30 s (3000 mel frames), and transformers' encoder refuses any
other length. Children's clips are mostly a few seconds long, so most of that compute is
padding. The encoder's only length-bound part is its sinusoidal position table (1500 rows
for 3000 frames after the stride-2 convolution); using its first N/2 rows lets it take N
frames. `ShortInputEncoder` does exactly that and otherwise runs transformers' own forward.

How many frames a batch gets is the *audio context*:

* ``full``: always 3000 frames, as Whisper was trained (and plain transformers decodes);
* a number of seconds, e.g. ``10``: always that many (clips are cut to it);
* ``batch``: the batch's longest clip, rounded up to a multiple of `STEP_FRAMES`, so only a
  few shapes ever occur (kernels and compiled graphs are reused).

A model saved by kidwhisper records its context in its `config.json` (`kidwhisper_audio_context`)
so that decoding later uses what training used.
"""

from __future__ import annotations

import math

import torch
from transformers import PretrainedConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from kidwhisper.audio import HOP_LENGTH, N_FRAMES, SAMPLE_RATE

FULL, BATCH = "full", "batch"
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
STEP_FRAMES = 200  # per-batch contexts are multiples of 2 s: at most 15 distinct shapes
CONFIG_KEY = "kidwhisper_audio_context"


class ShortInputEncoder(WhisperEncoder):
    """A `WhisperEncoder` that also accepts fewer than 3000 mel frames (any even number)."""

    def forward(self, input_features: torch.Tensor, *args, **kwargs):
        frames = input_features.shape[-1]
        stride = self.conv1.stride[0] * self.conv2.stride[0]
        table = self.embed_positions
        rows = table.weight.shape[0]
        if frames % stride or not 0 < frames <= rows * stride:
            raise ValueError(
                f"the encoder takes a multiple of {stride} mel frames up to {rows * stride}, "
                f"got {frames}"
            )
        # transformers checks the input against config.max_source_positions and adds the
        # rows arange(table.num_embeddings) of the table: point both at the first `positions`
        # rows for this call only. Nothing else reads them (the decoder has its own table).
        positions = frames // stride
        saved = self.config.max_source_positions, table.num_embeddings
        self.config.max_source_positions = table.num_embeddings = positions
        try:
            return super().forward(input_features, *args, **kwargs)
        finally:
            self.config.max_source_positions, table.num_embeddings = saved


def enable_short_input(model: torch.nn.Module) -> None:
    """Let `model`'s Whisper encoder take short inputs (in place; weights are untouched)."""
    encoder = model.get_encoder()
    if type(encoder) is WhisperEncoder:
        encoder.__class__ = ShortInputEncoder


def parse_context(value: str | float | int) -> str | float:
    """``full``, ``batch`` or a number of seconds in (0, 30]; raises ValueError otherwise."""
    if isinstance(value, str) and value in (FULL, BATCH):
        return value
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"audio context must be full, batch or seconds, not {value!r}") from None
    if not 0 < seconds <= N_FRAMES / FRAMES_PER_SECOND:
        raise ValueError(f"audio context of {seconds} s is outside (0, 30]")
    return seconds


def clip_frames(context: str | float, num_samples: int) -> int:
    """Mel frames to compute for a clip of `num_samples` 16 kHz samples under `context`.

    Under ``batch`` the clip gets its own length plus two frames (so its last frame sees
    the same zero padding as in a 30 s window), rounded up to `STEP_FRAMES`; a batch then
    takes its widest clip's frames (see `data.WhisperCollator`).
    """
    if context == FULL:
        return N_FRAMES
    if context == BATCH:
        needed = num_samples // HOP_LENGTH + 2
        return min(N_FRAMES, math.ceil(needed / STEP_FRAMES) * STEP_FRAMES)
    frames = math.ceil(float(context) * FRAMES_PER_SECOND / 2) * 2  # the encoder wants even
    return min(N_FRAMES, frames)


def recorded_context(config: PretrainedConfig) -> str | float | None:
    """The audio context a kidwhisper model was trained with, or None if it has none."""
    value = getattr(config, CONFIG_KEY, None)
    return None if value is None else parse_context(value)


def record_context(config: PretrainedConfig, context: str | float) -> None:
    """Store `context` in the model config, so `save_pretrained` writes it to config.json."""
    setattr(config, CONFIG_KEY, context)
