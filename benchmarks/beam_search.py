"""Beam search vs greedy decoding: WER and decode time, one table.

Each model transcribes the same clips (so762 dev by default) with kidwhisper's `evaluate`
(length-sorted batches, the model's recorded audio context, the decoding guards), once per
beam size; beam 1 is greedy decoding. Reported: corpus WER with the competition's
normaliser (per age bucket too), wall seconds for decoding (model loading excluded), that
time relative to greedy, and how many transcripts differ from greedy's.

    python benchmarks/beam_search.py                                  # bundled tiny.en
    python benchmarks/beam_search.py --models bundled:tiny.en checkpoints/x/final
    python benchmarks/beam_search.py --beams 1 5 --length-penalty 1.0
    python benchmarks/beam_search.py --limit 8                        # dry run
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from kidwhisper.config import EvaluationConfig
from kidwhisper.data.dataset import clip_seconds, read_manifest
from kidwhisper.inference.evaluation import decoding_options, evaluate
from kidwhisper.inference.scoring import percent
from kidwhisper.models.factory import load_model

REPO = Path(__file__).resolve().parents[1]
SO762_DEV = REPO.parent / "shared/data/so762-kids/dev.jsonl"


def run(source: str, utterances, beams: list[int], args) -> list[dict]:
    """One row per beam size for the model `source`."""
    wm = load_model(source)
    rows, greedy = [], None
    for beam in beams:
        ev = EvaluationConfig(
            batch_size=args.batch_size, beam_size=beam, length_penalty=args.length_penalty
        )
        result = evaluate(wm, utterances, ev.batch_size, decoding_options(ev), progress=False)
        texts = [p["prediction"] for p in result.predictions]
        if beam == 1:
            greedy = (texts, result.seconds)
        rows.append(
            {
                "model": source,
                "audio_context": str(wm.audio_context),
                "beam": beam,
                "wer": result.wer,
                "wer_by_age": {k: r.wer for k, r in sorted(result.by_age.items())},
                "seconds": result.seconds,
                "texts": texts,
            }
        )
    for row in rows:  # compared with greedy when it was run
        row["vs_greedy"] = row["changed"] = None
        if greedy:
            row["vs_greedy"] = row["seconds"] / greedy[1]
            row["changed"] = sum(a != b for a, b in zip(row["texts"], greedy[0], strict=True))
    return rows


def print_table(rows: list[dict], clips: int, audio_seconds: float, args) -> None:
    buckets = sorted({k for row in rows for k in row["wer_by_age"]})
    print(
        f"\n{clips} clips ({audio_seconds:.0f} s of audio), batch {args.batch_size}, "
        f"length penalty {args.length_penalty}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    head = ["model", "context", "beam", "WER", *buckets, "decode s", "x greedy", "changed"]
    print("| " + " | ".join(head) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(buckets) + "---:|---:|---:|")
    for row in rows:
        ratio = f"{row['vs_greedy']:.2f}x" if row["vs_greedy"] else ""
        changed = "" if row["changed"] is None else str(row["changed"])
        cells = [
            row["model"],
            row["audio_context"],
            str(row["beam"]),
            percent(row["wer"]),
            *(percent(row["wer_by_age"][b]) if b in row["wer_by_age"] else "" for b in buckets),
            f"{row['seconds']:.1f}",
            ratio,
            changed,
        ]
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["bundled:tiny.en"])
    p.add_argument("--data", type=Path, default=SO762_DEV)
    p.add_argument("--beams", nargs="+", type=int, default=[1, 2, 5])
    p.add_argument("--length-penalty", type=float, default=EvaluationConfig.length_penalty)
    p.add_argument("--batch-size", type=int, default=EvaluationConfig.batch_size)
    p.add_argument("--limit", type=int, help="first N clips (dry runs)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    utterances = read_manifest(args.data)[: args.limit or None]
    rows = [row for model in args.models for row in run(model, utterances, args.beams, args)]
    audio_seconds = sum(clip_seconds(u) for u in utterances)
    print_table(rows, len(utterances), audio_seconds, args)
    for row in rows:
        del row["texts"]
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
