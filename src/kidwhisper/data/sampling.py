"""Batch samplers that are deterministic, sharded across processes, and resumable mid-epoch.

Every epoch is one seeded permutation of the whole dataset, cut into global batches of
`batch_size x world_size`; process `rank` takes its slice of each. Since the order depends
only on (seed, epoch), a restarted run that starts from `(epoch, batches consumed)` sees
exactly the batches the interrupted run would have seen.

With per-clip `weights` (data/weighting.py: mixed manifests, balanced age buckets) an epoch is
instead as many seeded draws with replacement as there are clips: still a function of
(seed, epoch) alone, cut into batches, sharded and resumed the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from kidwhisper.config import ConfigError, TrainingConfig
from kidwhisper.data.dataset import Utterance, clip_seconds
from kidwhisper.data.problems import DataProblems


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        weights: list[float] | None = None,
    ) -> None:
        if weights is not None and len(weights) != num_items:
            raise ValueError(f"{len(weights)} sampling weights for {num_items} clips")
        if num_items < batch_size * world_size:
            raise ConfigError(
                f"training.batch_size: {num_items} usable training clips cannot fill one "
                f"global batch of {batch_size} x {world_size} processes: lower "
                "training.batch_size or use fewer processes"
            )
        self.num_items, self.batch_size = num_items, batch_size
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch, self.start = 0, 0
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)

    def __len__(self) -> int:
        """Batches per epoch for one process (an incomplete last global batch is dropped)."""
        return self.num_items // (self.batch_size * self.world_size)

    def set_position(self, epoch: int, start: int = 0) -> None:
        """The next iteration yields epoch `epoch` from its batch number `start` on."""
        self.epoch, self.start = epoch, start

    def draw(self, epoch: int) -> tuple[list[int], torch.Generator]:
        """The clips of `epoch` in order, and the generator that drew them (seeded by seed
        and epoch alone, for anything else the epoch needs at random)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is not None:
            drawn = torch.multinomial(self.weights, self.num_items, True, generator=generator)
            return drawn.tolist(), generator
        if not self.shuffle:
            return list(range(self.num_items)), generator
        return torch.randperm(self.num_items, generator=generator).tolist(), generator

    def order(self, epoch: int) -> list[int]:
        return self.draw(epoch)[0]

    def __iter__(self) -> Iterator[list[int]]:
        order = self.order(self.epoch)
        step = self.batch_size * self.world_size
        for b in range(self.start, len(self)):
            first = b * step + self.rank * self.batch_size
            yield order[first : first + self.batch_size]


class DurationBatchSampler(ResumableBatchSampler):
    """Batches of clips of similar length, filled up to `batch_seconds` of padded audio.

    Each epoch: a seeded permutation (or weighted draw) is cut into pools of `POOL_BATCHES`
    x `batch_size` clips; each pool is sorted by duration and cut greedily into batches whose
    clip count times longest clip stays within `batch_seconds` (at most `batch_size`); then
    all batches are shuffled. So batches of short clips hold many clips, batches differ in
    length from step to step, and the order is still a function of (seed, epoch) alone:
    resume and DDP work as for the fixed-size sampler. With several processes, the batch
    list is cut to a multiple of the world size and process `rank` takes every
    `world_size`-th batch, so all take the same number of steps.
    """

    POOL_BATCHES = 50  # larger pools: less padding, less randomness in batch make-up

    def __init__(
        self,
        durations: list[float],
        batch_size: int,
        batch_seconds: float,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weights: list[float] | None = None,
    ) -> None:
        super().__init__(len(durations), batch_size, seed, rank, world_size, weights=weights)
        self.durations, self.batch_seconds = durations, batch_seconds
        self._batches: tuple[int, list[list[int]]] | None = None  # (epoch, all batches)

    def batches(self, epoch: int) -> list[list[int]]:
        """Every batch of `epoch`, for all processes, in training order."""
        if self._batches is None or self._batches[0] != epoch:
            order, generator = self.draw(epoch)
            pool = self.POOL_BATCHES * self.batch_size
            batches = []
            for start in range(0, len(order), pool):
                chunk = sorted(order[start : start + pool], key=self.durations.__getitem__)
                batches += self._cut(chunk)
            shuffled = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in shuffled]
            self._batches = (epoch, batches[: len(batches) // self.world_size * self.world_size])
        return self._batches[1]

    def _cut(self, chunk: list[int]) -> list[list[int]]:
        """Cut clips sorted by duration into batches within the size and seconds limits."""
        batches, current = [], []
        for index in chunk:
            longest = self.durations[index]  # sorted: the newest clip is the longest
            if current and (
                len(current) >= self.batch_size or (len(current) + 1) * longest > self.batch_seconds
            ):
                batches.append(current)
                current = []
            current.append(index)
        return batches + ([current] if current else [])

    def __len__(self) -> int:
        return len(self.batches(self.epoch)) // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        for b in range(self.start, len(batches) // self.world_size):
            yield batches[b * self.world_size + self.rank]


def make_sampler(
    utterances: list[Utterance],
    tc: TrainingConfig,
    rank: int,
    world_size: int,
    weights: list[float] | None = None,
) -> ResumableBatchSampler:
    """Length-grouped batches when `training.batch_seconds` is set, else fixed-size ones;
    with `weights`, of clips drawn by those weights."""
    if tc.batch_seconds is None:
        return ResumableBatchSampler(
            len(utterances), tc.batch_size, tc.seed, rank, world_size, weights=weights
        )
    durations = [clip_seconds(u) for u in utterances]
    return DurationBatchSampler(
        durations, tc.batch_size, tc.batch_seconds, tc.seed, rank, world_size, weights
    )


def batch_stream(
    loader: DataLoader, sampler: ResumableBatchSampler, position: list[int], problems: DataProblems
) -> Iterator[dict]:
    """Endless batches from `position` = [epoch, batches used], which it keeps current.
    Clips that cannot be used go to `problems` (once each); a batch with none left is
    skipped. The dataset learns the epoch too (its augmentation draws for it)."""
    while True:
        sampler.set_position(*position)
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(position[0])
        for batch in loader:
            position[1] += 1
            for (uid, error), reason in zip(batch["errors"], batch["error_reasons"], strict=True):
                problems.add(uid, reason, error)
            if "input_features" in batch:
                yield batch
        position[0], position[1] = position[0] + 1, 0
