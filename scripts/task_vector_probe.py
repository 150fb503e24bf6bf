"""Probe (docs/experiments.md, issue 18): scale a soup's task vector, the difference between
its mean weights and the pretrained start, as WiSE-FT (Wortsman et al. 2022) does:
theta = theta_start + alpha * (mean(members) - theta_start). alpha 1 is the soup itself,
below 1 leans towards the pretrained model (robustness to other speech), above 1 away
from it. Not a feature: neither side of 1 beat the soup. With `--part encoder` (or
`decoder`) only that part's weights are scaled; the rest stays the soup's.

    python scripts/task_vector_probe.py OUT START ALPHAS MEMBER [MEMBER ...] [--part encoder]
    python scripts/task_vector_probe.py /tmp/tv-f1 bundled:tiny.en 0.8,1.0,1.2 \
        checkpoints/cv-mixre2-cv-fold1-seed0/final checkpoints/cv-mixre2-cv-fold1-seed1/final \
        checkpoints/cv-unmix-s0b-cv-fold1/final
    kidwhisper evaluate /tmp/tv-f1-a0.8 --data experiments/<cv>/folds/fold_1/heldout.jsonl

It writes one model folder per alpha, OUT-a<alpha>: the first member's folder (tokenizer,
configs, kidwhisper.yaml) with the scaled weights.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from kidwhisper.models.averaging import average_weights, model_folder
from kidwhisper.models.factory import load_model


def main(out: str, start: str, alphas: list[float], members: list[Path], part: str) -> None:
    folders = [model_folder(m) for m in members]
    mean = average_weights(folders)  # in the first member's dtypes, as the soup writes it
    base = load_model(start).model.state_dict()
    for alpha in alphas:
        target = Path(f"{out}-a{alpha}")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folders[0], target)
        scaled = {}
        for key, value in mean.items():
            if part != "all" and part not in key.split("."):  # the other part: the soup's
                scaled[key] = value.contiguous()
                continue
            start_value = base[key].to(torch.float64)
            moved = start_value + alpha * (value.to(torch.float64) - start_value)
            scaled[key] = moved.to(value.dtype).contiguous()
        save_file(scaled, target / "model.safetensors", metadata={"format": "pt"})
        print(target)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("start", help="the pretrained start: bundled:tiny.en or a folder")
    parser.add_argument("alphas", help="comma-separated: 0.8,1.0,1.2")
    parser.add_argument("members", nargs="+", type=Path)
    parser.add_argument(
        "--part",
        choices=["all", "encoder", "decoder"],
        default="all",
        help="scale only this part's task vector (default: all of it)",
    )
    args = parser.parse_args()
    main(args.out, args.start, [float(a) for a in args.alphas.split(",")], args.members,
         args.part)  # fmt: skip
