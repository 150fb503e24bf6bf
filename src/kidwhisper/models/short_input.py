"""Short encoder input: run Whisper's encoder on the clip's length, not on a 30 s window.

Whisper pads every clip to 30 s (3000 mel frames), and transformers' encoder refuses any
other length. Children's clips are mostly a few seconds long, so most of that compute is
padding. The encoder's only length-bound part is its sinusoidal position table (1500 rows
for 3000 frames after the stride-2 convolution); using its first N/2 rows lets it take N
frames. `ShortInputEncoder` does exactly that and otherwise runs transformers' own forward.

How many frames a batch gets is the *audio context*:

* ``full``: always 3000 frames, as Whisper was trained (and plain transformers decodes);
* a number of seconds, e.g. ``10``: always that many (clips are cut to it);
* ``batch``: the batch's longest clip, rounded up to a multiple of 2 s, so only a few shapes
  ever occur (kernels and compiled graphs are reused);
* ``batch:S``: the same, rounded up to S seconds (``batch:0.5``). Less rounding is less
  padding to compute, but a model is sensitive to how much silence follows the speech: a
  base soup trained under ``batch`` scored 16.11% on a fold decoded under ``batch`` or
  ``batch:4``, 16.51% under ``batch:1``, 17.38% under ``batch:0.5`` and 17.54% at 30 s
  (docs/experiments.md, item 32). Decode with what the model was trained with.

The value's grammar is `config.parse_context`; a clip's frames, `data.audio.clip_frames`.

A model saved by kidwhisper records its context in its `config.json` (`kidwhisper_audio_context`)
so that decoding later uses what training used.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from kidwhisper.config import parse_context

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


def recorded_context(config: PretrainedConfig) -> str | float | None:
    """The audio context a kidwhisper model was trained with, or None if it has none."""
    value = getattr(config, CONFIG_KEY, None)
    return None if value is None else parse_context(value)


def record_context(config: PretrainedConfig, context: str | float) -> None:
    """Store `context` in the model config, so `save_pretrained` writes it to config.json."""
    setattr(config, CONFIG_KEY, context)
