"""Bad data: every kind is reported once with its reason (skip) or stops the run (fail);
awkward but valid audio is used; evaluation never skips a clip."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kidwhisper.config import load_config
from kidwhisper.data.audio import SAMPLE_RATE, load_audio
from kidwhisper.data.dataset import SpeechDataset, read_manifest, screen
from kidwhisper.data.problems import BadDataError, DataProblems
from kidwhisper.inference.evaluation import evaluate
from kidwhisper.inference.scoring import score
from kidwhisper.training.loop import train

from .conftest import build_manifest, corrupt

RANGE = (0.1, 30.0)


def _pipeline(manifest: Path, problems: DataProblems, wm, epochs: int = 1) -> list[dict]:
    """What a training run does with a manifest, without the model: read, screen, then load
    every clip `epochs` times, reporting each bad one."""
    kept = screen(read_manifest(manifest, problems=problems), problems, RANGE)
    dataset = SpeechDataset(kept, wm.n_mels, wm.tokenizer, wm.special, seconds_range=RANGE)
    good = []
    for _ in range(epochs):
        for i in range(len(dataset)):
            item = dataset[i]
            if "error" in item:
                problems.add(item["utterance_id"], item["reason"], item["error"])
            else:
                good.append(item)
    return good


@pytest.mark.parametrize("kind", corrupt.BAD, ids=lambda k: k.__name__)
def test_each_bad_entry_is_reported_once_with_its_reason(kind, tmp_path, good_rows, random_tiny):
    manifest, expected = build_manifest(tmp_path, good_rows, [kind])
    problems = DataProblems("skip")
    good = _pipeline(manifest, problems, random_tiny, epochs=2)
    reason = next(r for r in expected if r is not None)
    assert problems.counts() == {reason: 1}, problems.entries
    kept = len(good_rows) + expected.count(None)
    assert len(good) == 2 * kept  # the good entries, both epochs
    [(key, (_, message))] = problems.entries.items()
    # The message names the file, and the line where the line itself is the problem.
    assert str(manifest) in message or "/audio/" in message or ".flac" in message, message
    if reason in ("malformed line", "not UTF-8", "duplicate id"):
        assert key.startswith(f"{manifest}:") and f"{manifest}:" in message


@pytest.mark.parametrize("kind", corrupt.BAD, ids=lambda k: k.__name__)
def test_fail_policy_stops_at_a_bad_entry_naming_it(kind, tmp_path, good_rows, random_tiny):
    manifest, _ = build_manifest(tmp_path, good_rows, [kind])
    with pytest.raises(BadDataError, match=r"data\.bad_entries: skip") as err:
        _pipeline(manifest, DataProblems("fail"), random_tiny)
    assert "U_" in str(err.value) or str(manifest) in str(err.value)


@pytest.mark.parametrize("kind", corrupt.AWKWARD, ids=lambda k: k.__name__)
def test_stereo_and_other_rates_are_used(kind, tmp_path, good_rows, random_tiny):
    manifest, expected = build_manifest(tmp_path, good_rows, [kind])
    problems = DataProblems("fail")
    good = _pipeline(manifest, problems, random_tiny)
    assert expected == [None] and not problems.entries
    original = load_audio(good_rows[0]["audio_path"])
    changed = load_audio(read_manifest(manifest)[0].audio)
    assert abs(len(changed) - len(original)) <= SAMPLE_RATE // 100  # within 10 ms
    assert good[0]["input_features"].shape[0] == random_tiny.n_mels
    # Resampling down to 8 kHz drops everything above 4 kHz; the rest is the same signal.
    corr = np.corrcoef(original[: len(changed)], changed[: len(original)])[0, 1]
    assert corr > (0.6 if "8000" in kind.__name__ else 0.95), corr


def test_training_run_reports_every_bad_entry_once(tmp_path, good_rows, quickstart_config):
    """One of every kind in a real run: each counted once under its reason, in the run's
    metrics, and the run finishes on the rest."""
    manifest, expected = build_manifest(tmp_path / "data", good_rows, corrupt.BAD + corrupt.AWKWARD)
    usable = len(good_rows) + expected.count(None)
    overrides = [
        *quickstart_config,
        f"data.train=[{manifest}]",
        "training.batch_size=1",
        "training.max_steps=null",
        "training.epochs=2",
    ]
    _, state = train(load_config(None, overrides))
    wanted = Counter(reason for reason in expected if reason is not None)
    assert Counter(DataProblems(entries=state.skipped).counts()) == wanted
    assert len(state.skipped) == len(corrupt.BAD)
    # Screening left out what the manifest shows; the rest were loaded and trained on.
    assert usable <= state.train_utterances < usable + len(corrupt.BAD)
    assert state.step == 2 * state.train_utterances and state.samples == state.step


def test_fail_policy_stops_a_training_run(tmp_path, good_rows, quickstart_config):
    manifest, _ = build_manifest(tmp_path / "data", good_rows, [corrupt.not_audio])
    config = load_config(None, [*quickstart_config, f"data.train=[{manifest}]"])
    config.data.bad_entries = "fail"
    with pytest.raises(BadDataError, match="not readable as audio"):
        train(config)


def test_evaluation_scores_unreadable_clips_as_empty(tmp_path, good_rows, random_tiny):
    kinds = [corrupt.missing_audio, corrupt.truncated, corrupt.not_audio, corrupt.zero_byte]
    manifest, _ = build_manifest(tmp_path, good_rows[:2], kinds)
    utterances = read_manifest(manifest)
    result = evaluate(random_tiny, utterances, 4, progress=False)
    assert len(result.predictions) == len(utterances)  # nobody is left out
    bad_ids = {f"U_{k.__name__}" for k in kinds}
    assert {uid for uid, _ in result.errors} == bad_ids and len(result.errors) == len(kinds)
    bad = [p for p in result.predictions if p["utterance_id"] in bad_ids]
    assert len(bad) == len(kinds) and all(p["prediction"] == "" for p in bad)
    # Their reference words all count as errors (deletions) in the WER.
    report, _ = score([p["reference"] for p in bad], [p["prediction"] for p in bad])
    assert report.wer == 1.0 and report.deletions == report.reference_words > 0
