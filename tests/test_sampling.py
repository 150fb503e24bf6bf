"""Batch samplers: fixed-size and length-grouped, deterministic, sharded and resumable."""

from __future__ import annotations

import random

import pytest

from kidwhisper.sampling import DurationBatchSampler, ResumableBatchSampler


def _durations(n: int = 500, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [round(rng.uniform(0.5, 12.0), 2) for _ in range(n)]


def test_fixed_batches_cover_each_clip_once_per_epoch():
    sampler = ResumableBatchSampler(103, 10, seed=3)
    seen = [i for batch in sampler for i in batch]
    assert len(seen) == len(set(seen)) == 100  # the incomplete last batch is dropped
    assert all(len(b) == 10 for b in sampler)


def test_duration_batches_respect_both_limits_and_cover_each_clip_once():
    durations = _durations()
    sampler = DurationBatchSampler(durations, batch_size=32, batch_seconds=60.0, seed=0)
    batches = list(sampler)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(durations)))  # one process: nothing dropped
    for batch in batches:
        assert len(batch) <= 32
        assert len(batch) * max(durations[i] for i in batch) <= 60.0
    # Short clips fill big batches, long ones small: batch sizes vary.
    assert max(map(len, batches)) >= 3 * min(map(len, batches))


def test_duration_batches_waste_less_padding_than_random_ones():
    durations = _durations()

    def padding(batches):
        padded = sum(len(b) * max(durations[i] for i in b) for b in batches)
        return 1 - sum(durations[i] for b in batches for i in b) / padded

    grouped = padding(list(DurationBatchSampler(durations, 16, 1e9, seed=0)))
    plain = padding(list(ResumableBatchSampler(len(durations), 16, seed=0)))
    assert grouped < 0.05 < 0.3 < plain


def test_duration_batches_are_deterministic_and_differ_between_epochs():
    durations = _durations()
    a = DurationBatchSampler(durations, 16, 80.0, seed=5)
    b = DurationBatchSampler(durations, 16, 80.0, seed=5)
    assert list(a) == list(b)
    b.set_position(1)
    assert list(b) != list(a)
    assert list(DurationBatchSampler(durations, 16, 80.0, seed=6)) != list(a)


@pytest.mark.parametrize("world_size", [2, 3])
def test_duration_batches_shard_evenly_across_processes(world_size: int):
    durations = _durations()
    ranks = [
        list(DurationBatchSampler(durations, 16, 80.0, seed=2, rank=r, world_size=world_size))
        for r in range(world_size)
    ]
    assert len({len(r) for r in ranks}) == 1  # every process takes the same number of steps
    flat = [i for r in ranks for b in r for i in b]
    assert len(flat) == len(set(flat))  # no clip on two processes
    single = DurationBatchSampler(durations, 16, 80.0, seed=2)
    assert len(ranks[0]) == len(single) // world_size


def test_duration_batches_resume_mid_epoch():
    durations = _durations()
    sampler = DurationBatchSampler(durations, 16, 80.0, seed=4)
    sampler.set_position(2)
    whole = list(sampler)
    restarted = DurationBatchSampler(durations, 16, 80.0, seed=4)
    restarted.set_position(2, 7)
    assert list(restarted) == whole[7:]
