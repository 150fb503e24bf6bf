"""What on-the-fly augmentation costs: milliseconds per batch of real clips, one table.

A batch is what one DataLoader worker prepares for a training step: each clip read from
disk, augmented, and turned into its log-mel (80 bins, the `batch` audio context), exactly
as `SpeechDataset` does for training items. The rows are loading + log-mel alone, then each
augmentation alone at p = 1 with its default range (speed draws 0.9 or 1.1 here, since a
1.0 draw costs nothing), then all of them together. Each figure is the median over
`--repeats` batches, each a new epoch (new draws), the rows taken in turn. Torch runs on one
thread, as in a DataLoader worker, so the batch's CPU time (this thread's) is its cost even
on a busy shared machine, where wall time also counts the waits for a core: both are shown.
The extra is over loading + log-mel alone. The noise clips are real speech from the
training set (babble).

    python benchmarks/augment_cost.py                 # 8 so762 dev clips (quickstart without)
    python benchmarks/augment_cost.py --repeats 1 --batch 2    # dry run
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kidwhisper.config import BATCH, AugmentConfig, resolve_path
from kidwhisper.data.audio import clip_frames, load_audio, log_mel
from kidwhisper.data.augment import STREAMS, Augmenter
from kidwhisper.data.dataset import Utterance, read_manifest

REPO = Path(__file__).resolve().parents[1]
SO762 = REPO.parent / "shared/data/so762-kids"
QUICKSTART = resolve_path("bundled:quickstart")
N_MELS = 80


def default_data() -> Path:
    """so762 when it is there, else the shipped quickstart clips."""
    return SO762 if (SO762 / "dev.jsonl").is_file() else QUICKSTART


def noise_folder(data: Path, target: Path, count: int = 4) -> Path:
    """Links to the first `count` training clips: real babble, as in a classroom."""
    for utt in read_manifest(data / "train.jsonl")[:count]:
        (target / utt.audio.name).symlink_to(utt.audio.resolve())
    return target


def settings(noise: Path) -> dict[str, AugmentConfig | None]:
    """Row name -> augmentation config (None: no augmentation at all)."""
    base = AugmentConfig()
    base.noise.folder, base.speed.factors = str(noise), [0.9, 1.1]
    rows: dict[str, AugmentConfig | None] = {"load + log-mel (no augmentation)": None}
    for name in STREAMS:
        config = copy.deepcopy(base)
        getattr(config, name).p = 1.0
        rows[name] = config
    everything = copy.deepcopy(base)
    for name in STREAMS:
        getattr(everything, name).p = 1.0
    rows["all together"] = everything
    return rows


def one_batch(
    clips: list[Utterance], augmenter: Augmenter | None, epoch: int
) -> tuple[float, float]:
    """(wall, CPU) milliseconds to read, augment and featurise the batch."""
    start, cpu = time.perf_counter(), time.thread_time()
    for index, utt in enumerate(clips):
        audio = load_audio(utt.audio)
        if augmenter is None:
            log_mel(audio, N_MELS, clip_frames(BATCH, len(audio)))
            continue
        audio, _ = augmenter.waveform(audio, epoch, index)
        augmenter.features(audio, N_MELS, clip_frames(BATCH, len(audio)), epoch, index)
    return 1000 * (time.perf_counter() - start), 1000 * (time.thread_time() - cpu)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="folder with dev/train.jsonl")
    parser.add_argument("--batch", type=int, default=8, help="clips per batch")
    parser.add_argument("--repeats", type=int, default=7, help="batches timed per row")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # as in a DataLoader worker
    data = args.data or default_data()
    clips = read_manifest(data / "dev.jsonl")[: args.batch]
    seconds = sum(len(load_audio(u.audio)) for u in clips) / 16_000
    with tempfile.TemporaryDirectory() as tmp:
        configs = settings(noise_folder(data, Path(tmp)))
        augmenters = {n: None if c is None else Augmenter(c, 0) for n, c in configs.items()}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        for epoch in range(-1, args.repeats):  # -1: a warm-up (caches, first calls), untimed
            for name, augmenter in augmenters.items():  # in turn: a busy spell hits all alike
                taken = one_batch(clips, augmenter, epoch % 2**31)
                if epoch >= 0:
                    times[name].append(taken)
    rows = []
    for name, taken in times.items():
        wall, cpu = (statistics.median(t[i] for t in taken) for i in (0, 1))
        rows.append({"row": name, "cpu_ms": cpu, "wall_ms": wall})
    for row in rows:
        row["extra_cpu_ms"] = row["cpu_ms"] - rows[0]["cpu_ms"]
    cpu = platform.processor() or platform.machine()
    print(f"\n{len(clips)} clips from {data} ({seconds:.1f} s of audio), median of "
          f"{args.repeats} batches, torch on 1 thread, {cpu}\n")  # fmt: skip
    print("| augmentation (p = 1) | CPU ms per batch | extra CPU ms | wall ms per batch |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['row']} | {r['cpu_ms']:.1f} | {r['extra_cpu_ms']:+.1f} | {r['wall_ms']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
