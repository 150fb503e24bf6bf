"""Parameter-efficient fine-tuning: LoRA through PEFT, frozen parts, merging adapters back.

Training. `prepare(model, config)` runs on the WhisperForConditionalGeneration before any
distributed wrapping. `training.freeze` freezes the encoder or the decoder. With
`model.lora.rank > 0`, PEFT's `inject_adapter_in_model` replaces the target linear layers of
the parts left free, in place and without a PeftModel wrapper (decoding, evaluation and the
trainer see the usual module tree), and everything but the adapters is frozen.

Checkpoints. A LoRA run's `step_N/` holds, beside the trainer state:
- `model/`: the merged model, W + (B @ A) * alpha/rank, in plain transformers layout like
  any checkpoint's: evaluate, transcribe, export-ct2, package-submission, average and the
  run's `final/` use it as they are, and `from_pretrained` loads it;
- `adapter/`: PEFT's adapter folder (`adapter_config.json` and `adapter_model.safetensors`,
  lora_A/lora_B only: `PeftModel.from_pretrained(base, adapter)` loads it), plus
  `base_layers.safetensors`, the adapted layers' frozen weights from before merging.
Resume rebuilds the exact unmerged state from the two (every other tensor of `model/` is the
frozen base itself), so it does not depend on the base source staying the same, and the
optimizer state covers only the adapters. PEFT is imported only where it is used.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from kidwhisper.errors import UserError
from kidwhisper.files import atomic_folder, looks_like_model, refuse_output_over_input
from kidwhisper.models.card import CardFacts, read_config, write_model_card

if TYPE_CHECKING:
    from kidwhisper.config import Config
    from kidwhisper.config import LoraConfig as LoraSettings

log = logging.getLogger(__name__)

PARTS = ("encoder", "decoder")
ADAPTER_DIR = "adapter"
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
BASE_LAYERS = "base_layers.safetensors"
WEIGHTS = "model.safetensors"
NAME = "default"  # PEFT's adapter name inside the model's keys
PEFT_PREFIX = "base_model.model."  # PEFT's key prefix in adapter files


class LoraError(UserError, ValueError):
    """An adapter that cannot be merged (no base, or one that does not fit)."""


# --- training: frozen parts and adapters ----------------------------------------------------


def target_pattern(modules: list[str], parts: list[str]) -> str:
    """A regex PEFT full-matches against module names: `modules` (short names) in every
    layer of `parts`, in self- and cross-attention alike."""
    return rf"model\.({'|'.join(parts)})\.layers\.\d+\.(\w+\.)?({'|'.join(modules)})"


def peft_config(lora: LoraSettings, freeze: str, base: str):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=target_pattern(lora.target_modules, [p for p in PARTS if p != freeze]),
        bias="none",
        base_model_name_or_path=base,
    )


def freeze_part(model: torch.nn.Module, part: str) -> None:
    """Stop every weight under `model.<part>` from training.

    The encoder's part includes its convolutions and layer norms (its sinusoidal positions
    never train in transformers anyway): a frozen encoder is exactly the starting encoder,
    and no gradient flows into it. The decoder's part includes its learned positions and the
    token embedding, which is tied to the output layer `proj_out`: one tensor, so a frozen
    decoder also keeps the output layer, and a frozen encoder leaves both training. Untying
    them to train one alone would make a model plain Whisper loaders do not expect.
    """
    _freeze_under(model, (f"model.{part}.",))


def freeze_encoder_layers(model: torch.nn.Module, n: int) -> None:
    """Stop the encoder's convolution stem and its first `n` blocks from training.

    Nothing below block `n` then needs a gradient, so autograd stops there and the backward
    pass skips the stem and those blocks altogether: that saving, not regularisation, is
    what the option is for. The blocks above, the encoder's last layer norm and the decoder
    train as usual.
    """
    blocks = tuple(f"model.encoder.layers.{i}." for i in range(n))
    _freeze_under(model, ("model.encoder.conv1.", "model.encoder.conv2.", *blocks))


def _freeze_under(model: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    """Stop every weight whose name starts with one of `prefixes` from training."""
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)


def is_adapter_key(key: str) -> bool:
    return ".lora_A." in key or ".lora_B." in key


def param_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, the tied output layer counted once, adapters included."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def prepare(model: torch.nn.Module, config: Config) -> tuple[int, int]:
    """Freeze what `training.freeze` says and add LoRA adapters if `model.lora.rank` is set;
    returns `param_counts`."""
    lora, freeze = config.model.lora, config.training.freeze
    if freeze != "none":
        freeze_part(model, freeze)
    if config.training.freeze_encoder_layers:
        freeze_encoder_layers(model, config.training.freeze_encoder_layers)
    if lora.rank:
        from peft import inject_adapter_in_model

        inject_adapter_in_model(peft_config(lora, freeze, config.pretrained), model, NAME)
        for name, param in model.named_parameters():
            param.requires_grad_(is_adapter_key(name))
    trainable, total = param_counts(model)
    log.info(
        "trainable parameters: %d of %d (%.2f%%)%s",
        trainable,
        total,
        100 * trainable / total,
        f", LoRA rank {lora.rank} on {', '.join(lora.target_modules)}" if lora.rank else "",
    )
    return trainable, total


# --- checkpoints ----------------------------------------------------------------------------


def has_adapters(state: dict[str, torch.Tensor]) -> bool:
    return any(is_adapter_key(k) for k in state)


def merged_state(state: dict[str, torch.Tensor], scaling: float) -> dict[str, torch.Tensor]:
    """The plain transformers state of an unmerged one: each adapted weight becomes
    W + (B @ A) * scaling (as PEFT merges), adapters go, `base_layer` leaves the names."""
    merged = {}
    for key, tensor in state.items():
        if is_adapter_key(key):
            continue
        if ".base_layer." in key:
            prefix, leaf = key.rsplit(".base_layer.", 1)
            if leaf == "weight":
                a, b = (state[f"{prefix}.lora_{x}.{NAME}.weight"].to(tensor) for x in "AB")
                tensor = tensor + (b @ a) * scaling
            key = f"{prefix}.{leaf}"
        merged[key] = tensor
    return merged


# --- merging: kidwhisper merge-lora, kidwhisper average -------------------------------------


def adapter_folder(source: str | Path) -> Path | None:
    """The adapter folder of `source` (itself, or a LoRA checkpoint's `adapter/`), or None."""
    path = Path(source)
    for folder in (path, path / ADAPTER_DIR):
        if (folder / ADAPTER_CONFIG).is_file():
            return folder
    return None


def merge_lora(
    source: str | Path, out: str | Path, base: str | None = None, force: bool = False
) -> Path:
    """Merge an adapter into its base and write a plain transformers folder `out`.

    `source` is a kidwhisper LoRA checkpoint (`step_N/` or its `adapter/`), which carries its
    own base, or a PEFT adapter folder, whose base is `base` (a model folder, `bundled:...`
    or a Hub id) or else its adapter_config.json's `base_model_name_or_path`. `out` is
    written beside and renamed into place; it may not be or hold `source`, and an existing
    model folder is replaced only with `force`.
    """
    adapter = adapter_folder(source)
    if adapter is None:
        raise FileNotFoundError(f"{source}: no {ADAPTER_CONFIG} here or in {ADAPTER_DIR}/")
    out = Path(out)
    refuse_output_over_input(out, [source, adapter], "merge-lora --out")
    with atomic_folder(out, force, looks_like_model, "model") as tmp:
        record = _merge(adapter, tmp, base)
        origin = f"LoRA adapter `{adapter}` merged into `{record['base']}`"
        origin += " (`kidwhisper merge-lora`)."
        write_model_card(tmp, CardFacts(out.name, origin, read_config(tmp)))
    log.info("merged %s into %s", adapter, out)
    return out


def _merge(adapter: Path, out: Path, base: str | None) -> dict[str, str]:
    """merge_lora's work, into the (temporary) folder `out`; returns where it came from."""
    from peft import PeftModel

    from kidwhisper.models.factory import RANDOM, load_model

    step = adapter.parent if (adapter / BASE_LAYERS).is_file() else None
    if step is not None:
        if base is not None:
            raise LoraError(f"{adapter}: a kidwhisper checkpoint carries its base; drop --base")
        wm = load_model(str(step / "model"))
        _, unexpected = wm.model.load_state_dict(load_file(adapter / BASE_LAYERS), strict=False)
        if unexpected:
            raise LoraError(f"{adapter / BASE_LAYERS}: does not fit the model: {unexpected[:3]}")
    else:
        base = base or json.loads((adapter / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        if not base or base == RANDOM:
            raise LoraError(f"{adapter}: its config names no loadable base ({base}); give --base")
        wm = load_model(base)
    try:
        wm.model = PeftModel.from_pretrained(wm.model, adapter).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as err:
        raise LoraError(f"{adapter}: does not fit {step or base}: {err}") from err
    wm.save(out)
    if step is not None and (step / "config.yaml").is_file():
        shutil.copy(step / "config.yaml", out / "kidwhisper.yaml")
    record = {"adapter": str(adapter), "base": str(step / "model") if step else base}
    (out / "merged_from.json").write_text(json.dumps(record, indent=2) + "\n")
    return record
