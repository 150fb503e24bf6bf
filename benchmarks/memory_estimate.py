"""Estimated vs measured peak training memory, one table.

Each row trains a randomly initialised variant (real architecture) for a few steps in a
fresh process, so the measured peak (CUDA max allocated on a GPU, peak RSS on a CPU) is that
configuration's alone, then prints `kidwhisper estimate`'s figure beside it.

On a CPU the runs use a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_), so every large
tensor is returned to the system when freed and the peak RSS is the memory the training step
holds at once. With glibc's default (a threshold that grows to 32 MiB), freed activations of
up to 32 MiB stay in the heap, and the peak RSS also counts that retained memory: measured
here it adds 0.8 GiB to tiny at batch 8 but nothing at batch 16, so it is not a property of
the configuration. Pass --default-malloc to see it.

    python benchmarks/memory_estimate.py                 # CPU grid (tiny, base)
    python benchmarks/memory_estimate.py --device cuda   # GPU grid (small and medium)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kidwhisper.config import resolve_path
from kidwhisper.data.dataset import read_manifest
from kidwhisper.data.text import encode_labels, family_tokenizer, special_tokens
from kidwhisper.models.memory import GIB, estimate
from kidwhisper.models.variants import get_variant

REPO = Path(__file__).resolve().parents[1]
SO762 = REPO.parent / "shared/data/so762-kids/train.jsonl"
GRIDS = {  # (variant, micro-batch, gradient checkpointing)
    "cpu": [
        ("tiny", 8, False),
        ("tiny", 8, True),
        ("base", 4, False),
        ("base", 8, True),
        ("tiny", 16, True),
        ("base", 8, False),
        ("small", 4, True),
        ("small", 2, False),
    ],
    "cuda": [("small", 12, True), ("small", 12, False), ("medium", 8, True), ("medium", 4, False)],
}


def label_tokens(variant: str, manifest: Path, clips: int) -> int:
    """Padded label length of the longest of the first `clips` utterances."""
    v = get_variant(variant)
    tokenizer = family_tokenizer(v.tokenizer_family, v.vocab_size)
    special = special_tokens(tokenizer, not v.english_only, v.vocab_size)
    texts = [u.text for u in read_manifest(manifest)[:clips]]
    return max(len(encode_labels(tokenizer, special, t)) for t in texts) - 1


FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure(variant, batch, ckpt, device, manifest, steps, default_malloc=False) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "kidwhisper", "train", str(REPO / "configs/quickstart.yaml"),
            f"model.variant={variant}", "model.pretrained=random", f"data.train={manifest}",
            "data.eval=null", f"data.max_train_samples={batch * steps}", "data.num_workers=0",
            f"training.batch_size={batch}", f"training.max_steps={steps}",
            f"training.gradient_checkpointing={str(ckpt).lower()}", f"training.device={device}",
            "evaluation.before_training=false", f"output.experiments_dir={tmp}/e",
            f"output.checkpoints_dir={tmp}/c", "output.name=m",
        ]  # fmt: skip
        env = {**os.environ} if default_malloc else {**os.environ, **FIXED_MMAP_THRESHOLD}
        subprocess.run(cmd, check=True, capture_output=True, env=env)
        return json.loads(Path(f"{tmp}/e/m/metrics.json").read_text())["peak_memory_mb"] / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--default-malloc", action="store_true", help="glibc's own threshold")
    args = parser.parse_args()
    manifest = SO762 if SO762.is_file() else resolve_path("bundled:quickstart/train.jsonl")
    malloc = "default" if args.default_malloc else "fixed threshold"
    print(f"device {args.device}; data {manifest}; {args.steps} steps per row; malloc {malloc}")
    print(
        f"{'variant':<8}{'batch':>6}{'ckpt':>6}{'tokens':>8}{'estimate':>10}{'measured':>10}{'ratio':>7}"
    )
    for variant, batch, ckpt in GRIDS[args.device]:
        tokens = label_tokens(variant, manifest, batch * args.steps)
        mixed = args.device == "cuda"
        est = estimate(get_variant(variant), batch, tokens, ckpt, mixed, args.device).total / GIB
        got = measure(variant, batch, ckpt, args.device, manifest, args.steps, args.default_malloc)
        print(
            f"{variant:<8}{batch:>6}{'on' if ckpt else 'off':>6}{tokens:>8}"
            f"{est:>9.2f}G{got:>9.2f}G{est / got:>7.2f}"
        )


if __name__ == "__main__":
    main()
