"""Per-clip sampling weights: several training manifests mixed, age buckets balanced.

Both settings become one weight per clip, its probability of being drawn (data/sampling.py draws
with replacement, an epoch as many clips as the training set has):

* `data.train_weights` (one per `data.train` manifest): manifest s is drawn with
  probability w_s / sum(w), whatever its size.
* `training.balance`: within a manifest (the whole set when there is no mixing), bucket b
  is drawn with probability v_b / sum of v over the buckets that manifest has, with
  v_b = 1 for `inverse` (equal buckets, so the inverse of each bucket's frequency per
  clip), the mapping's weight, or (`none`) the bucket's size there, which leaves every
  clip of the manifest equally likely. A bucket with weight 0 is never drawn.

Within a (manifest, bucket) group every clip is equally likely. So a clip's weight is
w_s / sum(w) x v_b / sum_s(v) / n_(s,b), and the shares hold exactly in expectation.
"""

from __future__ import annotations

import logging
from collections import Counter

from kidwhisper.config import ConfigError
from kidwhisper.data.dataset import Utterance

log = logging.getLogger(__name__)

UNKNOWN = "unknown"  # the bucket of entries without an age_bucket


def bucket(utterance: Utterance) -> str:
    return utterance.age_bucket or UNKNOWN


def item_weights(
    utterances: list[Utterance],
    train_weights: list[float] | None,
    balance: str | dict[str, float],
    train: list[str] | None = None,
) -> list[float] | None:
    """One probability per clip (summing to 1), or None when neither mixing nor balance is
    asked for (then every clip is seen once per epoch). `train` names the manifests in
    error messages."""
    if train_weights is None and balance == "none":
        return None
    source_weights = train_weights or [1.0]
    names = ["the training data"]
    if train_weights:
        paths = train or [""] * len(train_weights)
        names = [f"data.train[{i}] {path}".strip() for i, path in enumerate(paths)]
    source_of = [u.source if train_weights else 0 for u in utterances]
    groups = Counter(zip(source_of, map(bucket, utterances), strict=True))
    if isinstance(balance, dict):
        missing = sorted({b for _, b in groups} - set(balance))
        if missing:
            raise ConfigError(
                f"training.balance: no weight for age bucket(s) {missing} of the training "
                f"data (it has {sorted({b for _, b in groups})})"
            )
        unused = sorted(set(balance) - {b for _, b in groups})
        if unused:
            log.warning("training.balance names bucket(s) no training clip has: %s", unused)
    # Each manifest's share, and within it each bucket's share.
    source_total = sum(source_weights)
    bucket_totals: Counter[int] = Counter()
    for (source, name), n in groups.items():
        bucket_totals[source] += _bucket_weight(balance, name, n)
    present = {source for source, _ in groups}
    for source in range(len(source_weights)):
        if bucket_totals[source] == 0:
            reason = (
                "only age buckets that training.balance weights 0"
                if source in present
                else "no usable entries"
            )
            key = "data.train_weights" if train_weights else "training.balance"
            raise ConfigError(f"{key}: {names[source]} has {reason}")
    group_weight = {}
    for (source, name), n in groups.items():
        manifest_share = source_weights[source] / source_total
        bucket_share = _bucket_weight(balance, name, n) / bucket_totals[source]
        group_weight[source, name] = manifest_share * bucket_share / n  # each of its n clips
    weights = [group_weight[key] for key in zip(source_of, map(bucket, utterances), strict=True)]
    log.info("sampled share by age bucket: %s", _percent(shares(utterances, weights)))
    if train_weights:
        by_source = shares(utterances, weights, by="source")
        log.info("sampled share by manifest: %s", _percent(by_source, names))
    return weights


def _percent(share: dict[str, float], names: list[str] | None = None) -> str:
    return ", ".join(
        f"{names[int(key)] if names else key} {100 * value:.1f}%" for key, value in share.items()
    )


def _bucket_weight(balance: str | dict[str, float], name: str, n: int) -> float:
    """A bucket's weight within its manifest; `n` is how many clips it has there."""
    if isinstance(balance, dict):
        return balance[name]
    return 1.0 if balance == "inverse" else n  # `none`: buckets as large as they are


def shares(
    utterances: list[Utterance], weights: list[float], by: str = "bucket"
) -> dict[str, float]:
    """Expected share of draws per age bucket (`by="bucket"`) or per source manifest
    (`by="source"`) under `weights`."""
    total: Counter[str] = Counter()
    for utt, weight in zip(utterances, weights, strict=True):
        total[bucket(utt) if by == "bucket" else str(utt.source)] += weight
    whole = sum(total.values())
    return {key: value / whole for key, value in sorted(total.items())}
