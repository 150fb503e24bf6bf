"""Decoding throughput: kidwhisper vs transformers `generate` vs faster-whisper, one table.

Every system transcribes the same clips (so762 dev) with the same weights, greedily, and is
scored with the competition's WER:

* kidwhisper: `evaluate` as the CLI runs it (clips sorted by length, batched, the model's
  recorded audio context, decoding guards, KV cache, `inference_mode`, SDPA attention);
* transformers: the usual recipe, `WhisperProcessor` features padded to 30 s and
  `model.generate` in batches of the same size, in manifest order;
* faster-whisper (CTranslate2, the model exported by `kidwhisper export-ct2`) in float32 and
  int8, one clip at a time as `WhisperModel.transcribe` takes them, with greedy settings
  (beam 1, temperature 0, no timestamps, no VAD, no conditioning on previous text).
  faster-whisper pads the log-mel of a short clip with zeros where transformers pads the
  audio with silence, so the same weights see different input; the `-pad30` systems hand it
  each clip already padded to 30 s of silence, which gives it exactly the transformers
  features: the WER difference of those rows is the export's own.

Times are wall seconds for transcribing (model loading and export excluded); the real-time
factor (RTF) is that time over the audio's duration.

    python benchmarks/decode_throughput.py                           # bundled tiny.en
    python benchmarks/decode_throughput.py --model checkpoints/x/final
    python benchmarks/decode_throughput.py --limit 8                 # dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from kidwhisper.config import EvaluationConfig
from kidwhisper.data.audio import load_audio
from kidwhisper.data.dataset import clip_seconds, read_manifest
from kidwhisper.inference.evaluation import decoding_options, evaluate
from kidwhisper.inference.scoring import score
from kidwhisper.models.averaging import model_folder
from kidwhisper.models.bundled import BUNDLED_PREFIX
from kidwhisper.models.ct2 import bundled_path
from kidwhisper.models.factory import load_model

REPO = Path(__file__).resolve().parents[1]
SO762_DEV = REPO.parent / "shared/data/so762-kids/dev.jsonl"
SYSTEMS = ["kidwhisper", "transformers", "faster-whisper-float32", "faster-whisper-int8"]
PADDED = ["faster-whisper-float32-pad30", "faster-whisper-int8-pad30"]
N_SAMPLES_30S = 30 * 16_000


def model_dir(source: str) -> Path:
    if source.startswith(BUNDLED_PREFIX):
        return bundled_path(source.removeprefix(BUNDLED_PREFIX))
    return model_folder(Path(source))


def run_kidwhisper(source: str, utterances, batch_size: int) -> tuple[list[str], float, str]:
    wm = load_model(source)
    options = decoding_options(EvaluationConfig(batch_size=batch_size))
    result = evaluate(wm, utterances, batch_size, options, progress=False)
    texts = {p["utterance_id"]: p["prediction"] for p in result.predictions}
    return [texts[u.utterance_id] for u in utterances], result.seconds, str(wm.audio_context)


@torch.inference_mode()
def run_transformers(source: str, utterances, batch_size: int) -> tuple[list[str], float, str]:
    folder = model_dir(source)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    processor = WhisperProcessor.from_pretrained(folder)
    multilingual = model.config.vocab_size > 51864
    kwargs = {"language": "en", "task": "transcribe"} if multilingual else {}
    texts, start = [], time.perf_counter()
    for i in range(0, len(utterances), batch_size):
        audio = [load_audio(u.audio) for u in utterances[i : i + batch_size]]
        features = processor(audio, sampling_rate=16_000, return_tensors="pt").input_features
        tokens = model.generate(features, max_new_tokens=128, **kwargs)
        texts += [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]
    return texts, time.perf_counter() - start, "full"


def run_faster_whisper(
    source: str, utterances, quantization: str, pad: bool
) -> tuple[list[str], float, str]:
    import faster_whisper

    from kidwhisper.models.export import export_ct2

    with tempfile.TemporaryDirectory() as tmp:
        out = export_ct2(source, Path(tmp) / "ct2", quantization)
        model = faster_whisper.WhisperModel(str(out), device="cpu", compute_type=quantization)
        texts, start = [], time.perf_counter()
        for u in utterances:
            audio = load_audio(u.audio)
            if pad and len(audio) < N_SAMPLES_30S:
                audio = np.pad(audio, (0, N_SAMPLES_30S - len(audio)))
            segments, _ = model.transcribe(
                audio,
                language="en",
                beam_size=1,
                temperature=0.0,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            texts.append(" ".join(s.text.strip() for s in segments))
        return texts, time.perf_counter() - start, "full"


def run(system: str, source: str, utterances, batch_size: int) -> tuple[list[str], float, str]:
    if system == "kidwhisper":
        return run_kidwhisper(source, utterances, batch_size)
    if system == "transformers":
        return run_transformers(source, utterances, batch_size)
    quantization = system.removeprefix("faster-whisper-").removesuffix("-pad30")
    return run_faster_whisper(source, utterances, quantization, system.endswith("-pad30"))


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="bundled:tiny.en", help="bundled:NAME or a model folder")
    p.add_argument("--data", type=Path, default=SO762_DEV)
    p.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS + PADDED)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, help="first N clips (dry runs)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    utterances = read_manifest(args.data)[: args.limit or None]
    audio_seconds = sum(clip_seconds(u) for u in utterances)
    references = [u.text for u in utterances]
    rows = []
    for system in args.systems:
        texts, seconds, context = run(system, args.model, utterances, args.batch_size)
        report, _ = score(references, texts)
        rows.append(
            {
                "system": system,
                "audio_context": context,
                "seconds": seconds,
                "clips_per_s": len(utterances) / seconds,
                "rtf": seconds / audio_seconds,
                "wer": report.wer,
            }
        )
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads; model {args.model}; {len(utterances)} clips, {audio_seconds:.0f} s audio"
    )
    print(
        "| system | encoder input | decode s | clips/s | real-time factor | x transformers | WER |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    base = next((r["seconds"] for r in rows if r["system"] == "transformers"), None)
    for r in rows:
        speedup = f"{base / r['seconds']:.2f}x" if base else "n/a"
        print(
            f"| {r['system']} | {r['audio_context']} | {r['seconds']:.1f} | "
            f"{r['clips_per_s']:.2f} | {r['rtf']:.4f} | {speedup} | {100 * r['wer']:.2f}% |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
