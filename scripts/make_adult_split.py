"""Split ../shared/data/so762-adult into configs/data/so762-adult-split/: train.jsonl (63
speakers, extra training speech) and guard.jsonl (10 other speakers, a real forgetting guard
that is never trained on). Deterministic: `kidwhisper split`'s seeded speaker choice.

    python scripts/make_adult_split.py            # from the repository root
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kidwhisper.inference.curation import split_manifest

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "so762-adult" / "train.jsonl"
OUT = REPO / "configs" / "data" / "so762-adult-split"
GUARD_SPEAKERS, SEED = 10, 0


def main() -> int:
    speakers = len({line.split('"child_id": "')[1].split('"')[0] for line in SOURCE.open()})
    report = split_manifest(SOURCE, OUT, GUARD_SPEAKERS / speakers, SEED, force=True)
    os.replace(OUT / "dev.jsonl", OUT / "guard.jsonl")
    print("\n".join(report.summary_lines()))
    print(f"wrote {OUT / 'train.jsonl'} and {OUT / 'guard.jsonl'} (dev renamed guard)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
