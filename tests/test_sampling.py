"""Batch samplers: fixed-size and length-grouped, deterministic, sharded and resumable;
weighted draws (mixed manifests, balanced age buckets) hold their shares."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from kidwhisper.config import ConfigError, TrainingConfig
from kidwhisper.data.dataset import Utterance
from kidwhisper.data.sampling import DurationBatchSampler, ResumableBatchSampler, make_sampler
from kidwhisper.data.weighting import bucket, item_weights, shares


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


# --- weighted draws: mixing and balance (weighting.py) ---------------------------------------


def _corpus(sizes: dict[tuple[int, str], int]) -> list[Utterance]:
    """Utterances per (source manifest, age bucket), with varied durations."""
    rng = random.Random(7)
    return [
        Utterance(f"U{source}_{b}_{i}", Path("x.flac"), "text", round(rng.uniform(0.5, 12), 2),
                  age_bucket=b, source=source)
        for (source, b), n in sizes.items()
        for i in range(n)
    ]  # fmt: skip


def _frequencies(utterances, sampler, epochs: int, key) -> tuple[dict, int]:
    counts: Counter = Counter()
    for epoch in range(epochs):
        sampler.set_position(epoch)
        counts.update(key(utterances[i]) for batch in sampler for i in batch)
    total = sum(counts.values())
    return {k: v / total for k, v in counts.items()}, total


def _assert_within_3_se(observed: dict, expected: dict, draws: int) -> None:
    """Each share within 3 standard errors of a binomial proportion over `draws` draws."""
    assert set(observed) == {k for k, p in expected.items() if p > 0}
    for key, p in expected.items():
        se = (p * (1 - p) / draws) ** 0.5
        assert abs(observed.get(key, 0.0) - p) <= 3 * se, (key, observed.get(key), p, se)


BUCKETS = {(0, "5-7"): 600, (0, "8-11"): 300, (0, "12+"): 100}


@pytest.mark.parametrize("batch_seconds", [None, 60.0])
def test_bucket_weights_hold_over_many_draws(batch_seconds):
    utterances = _corpus(BUCKETS)
    weights = item_weights(utterances, None, {"5-7": 2, "8-11": 1, "12+": 1})
    sampler = make_sampler(utterances, TrainingConfig(16, batch_seconds, seed=3), 0, 1, weights)
    observed, draws = _frequencies(utterances, sampler, 40, bucket)
    assert draws > 35_000
    _assert_within_3_se(observed, {"5-7": 0.5, "8-11": 0.25, "12+": 0.25}, draws)


def test_inverse_frequency_gives_equal_buckets():
    utterances = _corpus(BUCKETS)
    weights = item_weights(utterances, None, "inverse")
    assert shares(utterances, weights) == pytest.approx({b: 1 / 3 for _, b in BUCKETS})
    sampler = ResumableBatchSampler(len(utterances), 10, seed=1, weights=weights)
    observed, draws = _frequencies(utterances, sampler, 40, bucket)
    _assert_within_3_se(observed, {b: 1 / 3 for _, b in BUCKETS}, draws)
    # Within a bucket, clips are equally likely: the rare bucket's clips are drawn ~6x as often.
    assert weights[-1] == pytest.approx(6 * weights[0])


def test_mixing_weights_choose_the_manifest_and_balance_the_bucket_within_it():
    sizes = {(0, "5-7"): 700, (0, "8-11"): 100, (1, "5-7"): 50, (1, "8-11"): 150}
    utterances = _corpus(sizes)
    weights = item_weights(utterances, [1.0, 3.0], "inverse")
    sampler = ResumableBatchSampler(len(utterances), 10, seed=2, weights=weights)
    observed, draws = _frequencies(utterances, sampler, 40, lambda u: (u.source, bucket(u)))
    expected = {(0, "5-7"): 0.125, (0, "8-11"): 0.125, (1, "5-7"): 0.375, (1, "8-11"): 0.375}
    _assert_within_3_se(observed, expected, draws)
    # Mixing alone: the manifests' shares, each manifest's clips equally likely.
    alone = item_weights(utterances, [1.0, 3.0], "none")
    assert alone == pytest.approx([0.25 / 800] * 800 + [0.75 / 200] * 200)
    sampler = ResumableBatchSampler(len(utterances), 10, seed=2, weights=alone)
    observed, draws = _frequencies(utterances, sampler, 40, lambda u: u.source)
    _assert_within_3_se(observed, {0: 0.25, 1: 0.75}, draws)


def test_a_zero_bucket_weight_is_never_drawn_and_an_epoch_keeps_its_length():
    utterances = _corpus(BUCKETS)
    weights = item_weights(utterances, None, {"5-7": 1, "8-11": 1, "12+": 0})
    weighted = ResumableBatchSampler(len(utterances), 16, seed=0, weights=weights)
    plain = ResumableBatchSampler(len(utterances), 16, seed=0)
    assert len(weighted) == len(plain)  # an epoch is as many clips as the set has
    assert all(utterances[i].age_bucket != "12+" for b in weighted for i in b)


def test_no_mixing_no_balance_means_no_weights():
    assert item_weights(_corpus(BUCKETS), None, "none") is None


@pytest.mark.parametrize("batch_seconds", [None, 60.0])
def test_weighted_draws_are_deterministic_and_resume_mid_epoch(batch_seconds):
    utterances = _corpus(BUCKETS)
    weights = item_weights(utterances, None, "inverse")
    tc = TrainingConfig(16, batch_seconds, seed=4)
    sampler = make_sampler(utterances, tc, 0, 1, weights)
    sampler.set_position(2)
    whole = list(sampler)
    again = make_sampler(utterances, tc, 0, 1, weights)
    again.set_position(2)
    assert list(again) == whole
    restarted = make_sampler(utterances, tc, 0, 1, weights)
    restarted.set_position(2, 7)
    assert list(restarted) == whole[7:]
    restarted.set_position(3)
    assert list(restarted) != whole


@pytest.mark.parametrize("batch_seconds", [None, 60.0])
def test_weighted_draws_give_ranks_disjoint_slices_of_one_draw(batch_seconds):
    utterances = _corpus(BUCKETS)
    weights = item_weights(utterances, [2.0], {"5-7": 1, "8-11": 1, "12+": 3})
    tc = TrainingConfig(16, batch_seconds, seed=5)
    ranks = [list(make_sampler(utterances, tc, r, 2, weights)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    single = make_sampler(utterances, tc, 0, 1, weights)
    if batch_seconds is None:  # rank r holds the r-th half of each global batch of the draw
        order = single.order(0)
        for b, (first, second) in enumerate(zip(*ranks, strict=True)):
            assert first + second == order[b * 32 : (b + 1) * 32]
    else:  # ranks take alternate batches of the epoch's batch list
        batches = single.batches(0)  # one process keeps an odd last batch
        assert [b for pair in zip(*ranks, strict=True) for b in pair] == batches[
            : 2 * len(ranks[0])
        ]
        for batch in ranks[0] + ranks[1]:
            assert (
                len(batch) <= 16 and len(batch) * max(utterances[i].duration for i in batch) <= 60
            )


def test_duration_batching_with_weights_keeps_its_limits():
    utterances = _corpus(BUCKETS)
    durations = [u.duration for u in utterances]
    weights = item_weights(utterances, None, "inverse")
    batches = list(DurationBatchSampler(durations, 32, 60.0, seed=0, weights=weights))
    assert sum(map(len, batches)) == len(utterances)
    for batch in batches:
        assert len(batch) <= 32 and len(batch) * max(durations[i] for i in batch) <= 60.0
    assert max(map(len, batches)) >= 3 * min(map(len, batches))


def test_weights_that_cannot_be_used_name_the_key():
    utterances = _corpus(BUCKETS)
    with pytest.raises(ConfigError, match=r"training\.balance: no weight for age bucket.*12\+"):
        item_weights(utterances, None, {"5-7": 1, "8-11": 1})
    with pytest.raises(ConfigError, match=r"data\.train_weights: data\.train\[1\] b\.jsonl has no"):
        item_weights(utterances, [1.0, 1.0], "none", ["a.jsonl", "b.jsonl"])
    with pytest.raises(ConfigError, match=r"training\.balance: the training data has only"):
        item_weights(_corpus({(0, "12+"): 5}), None, {"12+": 0, "5-7": 1})
