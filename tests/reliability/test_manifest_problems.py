"""Every manifest problem at once: one run lists every bad line, not one per run.

Reading a manifest for evaluation, transcription, filtering or splitting collects all its
structural problems (malformed JSON, missing fields, duplicate ids, non-UTF-8 lines, fields
of the wrong type) and stops with exit 2, the first 20 named one per line with file:line,
then a count. Clip-level problems (audio that cannot be read) are not structural: they keep
their behaviour (named, counted, scored as empty predictions).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kidwhisper.cli.main import main
from kidwhisper.data.dataset import ManifestError, read_manifest
from kidwhisper.data.problems import MAX_LOGGED, DataProblems

from ..conftest import QUICKSTART


def _rows() -> list[dict]:
    rows = [json.loads(line) for line in (QUICKSTART / "dev.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio_path"] = str(QUICKSTART / row["audio_path"])
    return rows


def _bad_manifest(folder: Path, extra_bad: int = 0) -> tuple[Path, dict[int, str]]:
    """Good lines with one of each structural problem among them; returns the file and
    {line number: what the message must say}."""
    rows = _rows()
    lines = [json.dumps(r).encode() for r in rows[:2]]
    expected = {}
    planted = [
        (b"{not json", "not valid JSON"),
        (json.dumps(rows[0]).encode(), f"duplicate utterance_id {rows[0]['utterance_id']}"),
        (json.dumps(rows[2]).encode().replace(b"}", b', "x": "caf\xe9"}'), "not UTF-8"),
        (json.dumps({**rows[3], "age_bucket": 7}).encode(), "age_bucket must be a string"),
        (json.dumps({**rows[4], "utterance_id": 12}).encode(), "utterance_id must be a string"),
        (json.dumps({k: v for k, v in rows[5].items() if k != "audio_path"}).encode(),
         "missing field(s) ['audio_path']"),
        (json.dumps({**rows[6], "audio_duration_sec": "long"}).encode(),
         "audio_duration_sec must be a number"),
        (b"[1, 2]", "expected a JSON object"),
    ]  # fmt: skip
    planted += [
        (json.dumps({**rows[7], "utterance_id": f"extra{i}", "orthographic_text": None}).encode(),
         "missing field(s) ['orthographic_text']") for i in range(extra_bad)
    ]  # fmt: skip
    for line, message in planted:
        lines.append(line)
        expected[len(lines)] = message
    lines += [json.dumps(r).encode() for r in rows[8:10]]
    path = folder / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, expected


def test_every_structural_problem_is_reported_in_one_error(tmp_path: Path):
    path, expected = _bad_manifest(tmp_path)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    head, *listed = str(caught.value).splitlines()
    assert head.startswith(f"{path}: {len(expected)} bad line(s)")
    assert len(listed) == len(expected)
    for (number, message), line in zip(sorted(expected.items()), listed, strict=True):
        assert line.strip().startswith(f"{path}:{number}: ") and message in line, line


def test_the_first_twenty_then_a_count(tmp_path: Path):
    path, expected = _bad_manifest(tmp_path, extra_bad=30)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    listed = str(caught.value).splitlines()[1:]
    assert len(listed) == MAX_LOGGED + 1
    assert listed[-1].strip() == f"... and {len(expected) - MAX_LOGGED} more"


def test_training_still_skips_and_counts(tmp_path: Path):
    """Training keeps its policy: bad lines are left out and counted, the rest is used."""
    path, expected = _bad_manifest(tmp_path)
    problems = DataProblems("skip")
    kept = read_manifest(path, problems=problems)
    assert len(kept) == 4 and len(problems) == len(expected)


@pytest.mark.parametrize("command", ["evaluate", "transcribe", "filter", "split"])
def test_each_command_stops_with_every_line_and_exit_2(tmp_path: Path, capsys, command):
    """Before any model loads: a missing model would fail later, so the manifest is first."""
    path, expected = _bad_manifest(tmp_path)
    model = str(tmp_path / "no_model_needed_yet")
    out = str(tmp_path / "out.jsonl")
    args = {
        "evaluate": ["evaluate", model, "--data", str(path), "--out", out],
        "transcribe": ["transcribe", model, str(path), "--out", out],
        "filter": ["filter", model, str(path), "--max-wer", "0.5", "--out", out],
        "split": ["split", str(path), "--out-dir", str(tmp_path / "split")],
    }[command]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{len(expected)} bad line(s)" in err
    for number, message in expected.items():
        assert f"{path}:{number}: " in err and message in err
    assert not Path(out).exists() and not (tmp_path / "split").exists()


def test_unreadable_clips_are_not_manifest_problems(tmp_path: Path):
    """A clip whose file is missing is a clip-level problem: the manifest reads fine (the
    evaluation scores it as an empty prediction: test_evaluation_scores_unreadable_clips_
    as_empty)."""
    row = {**_rows()[0], "audio_path": "nowhere.flac"}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(row) + "\n")
    [utterance] = read_manifest(path)
    assert not utterance.audio.exists()
