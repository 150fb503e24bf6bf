"""Training memory, estimated from a variant's real dimensions (the seed's arithmetic, in full).

    total = weights + gradients + optimizer state + activations + logits + runtime

- weights: fp32 master weights (autocast computes in bf16/fp16 but keeps fp32 parameters);
- gradients: one fp32 value per trainable parameter; AdamW keeps two more;
- activations: what autograd saves for the backward pass, per layer and sample, counted
  for this implementation (SDPA attention, GELU feed-forward, pre-norm residual blocks):
  encoder layers see 1500 positions, decoder layers `tokens` positions plus the encoder's
  keys and values for cross-attention; with gradient checkpointing only each layer's input
  is kept (and the encoder output, once, for every decoder layer's cross-attention), plus
  one layer's activations while it is recomputed;
- logits: the decoder's vocabulary scores in fp32, with the loss's softmax and gradient;
- runtime: what the process holds before training (on CPU: the interpreter, torch and
  transformers; on GPU this is the CUDA context, which `max_memory_allocated` leaves out).

`benchmarks/memory_estimate.py` measures real peaks next to these figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kidwhisper.models.variants import Variant, get_variant

if TYPE_CHECKING:
    from kidwhisper.config import Config

ENCODER_POSITIONS = 1500  # after the stride-2 convolution over 3000 mel frames
MEL_FRAMES = 3000
DECODER_POSITIONS = 448
# Values autograd keeps per position and layer, in units of d_model (see module docstring):
# norm in/out 2+2, q/k/v 3, attention out 1, fc1 out 4, GELU out 4.
SAVED_PER_ENCODER_POSITION = 16
# Self-attention block as above, plus cross-attention's norm 2, query 1 and output 1.
SAVED_PER_DECODER_POSITION = 20
# Python + torch + transformers + tokenizer before the model is built: 0.37 GiB after the
# imports, 0.42 GiB with the tokenizer and feature extractor (measured on this CPU).
CPU_RUNTIME_BYTES = 430 * 2**20  # python + torch + transformers + tokenizer, measured here
GIB = 2**30


def parameter_count(v: Variant) -> int:
    """Exact parameter count of the transformers model (output layer tied to the embedding)."""
    d = v.d_model
    attention = 4 * d * d + 3 * d  # q, k (no bias), v, out
    ffn = 8 * d * d + 5 * d
    encoder_layer = attention + ffn + 4 * d  # two layer norms
    decoder_layer = 2 * attention + ffn + 6 * d  # self + cross attention, three norms
    encoder = v.n_mels * d * 3 + d + d * d * 3 + d + ENCODER_POSITIONS * d
    encoder += v.encoder_layers * encoder_layer + 2 * d
    decoder = v.vocab_size * d + DECODER_POSITIONS * d + v.decoder_layers * decoder_layer + 2 * d
    return encoder + decoder


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    runtime: int

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.optimizer
            + self.activations
            + self.logits
            + self.runtime
        )

    def rows(self) -> list[tuple[str, float]]:
        """(part, GiB) in order, total last."""
        parts = ["weights", "gradients", "optimizer", "activations", "logits", "runtime"]
        return [(p, getattr(self, p) / GIB) for p in parts] + [("total", self.total / GIB)]


def activation_bytes(
    v: Variant, batch: int, tokens: int, checkpointing: bool, bytes_per_value: int
) -> int:
    """Bytes autograd keeps for the backward pass of one micro-batch."""
    d, s, t = v.d_model, ENCODER_POSITIONS, tokens
    enc_layer = SAVED_PER_ENCODER_POSITION * s * d
    dec_layer = SAVED_PER_DECODER_POSITION * t * d + 2 * s * d  # + cross-attention k, v
    front = v.n_mels * MEL_FRAMES + 2 * MEL_FRAMES * d + 3 * s * d  # convs, GELUs, positions
    if checkpointing:
        # Layer inputs (the encoder output once, shared by every cross-attention), plus the
        # largest layer rebuilt during its backward pass.
        kept = v.encoder_layers * s * d + v.decoder_layers * t * d + s * d
        values = front + kept + max(enc_layer, dec_layer)
    else:
        values = front + v.encoder_layers * enc_layer + v.decoder_layers * dec_layer
    return batch * values * bytes_per_value


def estimate(
    v: Variant,
    batch: int,
    tokens: int = 64,
    checkpointing: bool = True,
    mixed_precision: bool = True,
    device: str = "cuda",
    trainable: int | None = None,
) -> MemoryEstimate:
    """Peak training memory for one micro-batch of `batch` clips of `tokens` label tokens."""
    params = parameter_count(v)
    trainable = params if trainable is None else trainable
    width = 2 if mixed_precision else 4
    logits = 3 * batch * tokens * v.vocab_size * 4  # fp32 scores, softmax, their gradient
    return MemoryEstimate(
        weights=4 * params,
        gradients=4 * trainable,
        optimizer=8 * trainable,
        activations=activation_bytes(v, batch, tokens, checkpointing, width),
        logits=logits,
        runtime=CPU_RUNTIME_BYTES if device == "cpu" else 0,
    )


def report_lines(config: Config, tokens: int, device: str) -> list[str]:
    """`kidwhisper estimate`'s table: each part with and without gradient checkpointing."""
    t, variant = config.training, get_variant(config.model.variant)
    mixed = device == "cuda" and t.precision != "fp32"
    lines = [
        f"{variant.name}: {parameter_count(variant) / 1e6:.1f}M parameters, micro-batch "
        f"{t.batch_size}, {tokens} label tokens, {device}, "
        f"{'bf16/fp16' if mixed else 'fp32'} activations",
        f"{'GiB':<12}{'no checkpointing':>18}{'checkpointing':>16}",
    ]
    both = [estimate(variant, t.batch_size, tokens, c, mixed, device) for c in (False, True)]
    for (part, plain), (_, ckpt) in zip(both[0].rows(), both[1].rows(), strict=True):
        lines.append(f"{part:<12}{plain:>18.2f}{ckpt:>16.2f}")
    chosen = "on" if t.gradient_checkpointing else "off"
    return [*lines, f"this config has gradient checkpointing {chosen}"]
