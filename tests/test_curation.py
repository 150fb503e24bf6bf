"""Data curation: every filter counts what it drops under its reason; `kidwhisper split` is
speaker-disjoint, stratified and deterministic; label normalisation and the curation
config keys."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from kidwhisper.cli import main as cli
from kidwhisper.config import ConfigError, load_config
from kidwhisper.data.dataset import ManifestError, Utterance, read_manifest
from kidwhisper.data.labels import normalize_labels, screen_labels
from kidwhisper.data.problems import (
    EMPTY_NORMALIZED,
    HIGH_WER,
    LABEL_TOO_LONG,
    NOT_ROUND_TRIP,
    UNDECODABLE,
    DataProblems,
)
from kidwhisper.data.text import family_tokenizer, normalize, special_tokens
from kidwhisper.inference.curation import CurationError, filter_by_wer, split_manifest
from kidwhisper.training.loop import train

from .conftest import QUICKSTART, SO762, needs_shared


def _utt(uid: str, text: str, bucket: str = "5-7", speaker: str | None = None) -> Utterance:
    return Utterance(uid, Path(f"/data/{uid}.flac"), text, 2.0, bucket, speaker)


# --- labels: the tokenizer round trip, normalisation -------------------------------------------


@pytest.mark.parametrize("family,vocab", [("english", 51864), ("multilingual", 51865)])
def test_labels_the_tokenizer_cannot_carry_are_counted(family: str, vocab: int):
    tokenizer = family_tokenizer(family, vocab)
    special = special_tokens(tokenizer, family != "english", vocab)
    utterances = [
        _utt("ok", "Mike likes the WHITE one, doesn't he?"),
        _utt("ok2", "café 🙂 tab\tand  two spaces"),
        _utt("eot", "the end <|endoftext|> more"),
        _utt("lang", "say <|en|> it"),
        _utt("time", "at <|0.00|> now"),
        _utt("surrogate", "bad \ud800 char"),  # from a "\ud800" escape in the jsonl
        _utt("long", "word " * 500),
    ]
    problems = DataProblems("skip")
    kept = screen_labels(utterances, tokenizer, special, 448, problems)
    assert [u.utterance_id for u in kept] == ["ok", "ok2"]
    assert problems.counts() == {NOT_ROUND_TRIP: 4, LABEL_TOO_LONG: 1}
    assert problems.entries["eot"][0] == NOT_ROUND_TRIP
    assert "decodes as 'the end  more'" in problems.entries["eot"][1]
    assert "cannot be encoded" in problems.entries["surrogate"][1]
    assert "/data/long.flac" in problems.entries["long"][1]


def test_label_normalisation_is_a_config_choice():
    texts = ["Mr. Smith's colour, OK?", "Um, uh.", "(laughs)", "It's 2"]
    utterances = [_utt(str(i), text) for i, text in enumerate(texts)]
    problems = DataProblems("skip")
    assert normalize_labels(utterances, "none", problems) is utterances
    kept = normalize_labels(utterances, "metric", problems)
    assert [u.text for u in kept] == ["mister smith is color ok", "it is 2"]
    assert [u.text for u in kept] == [normalize(texts[0]), normalize(texts[3])]
    assert problems.counts() == {EMPTY_NORMALIZED: 2} and "'Um, uh.'" in problems.entries["1"][1]
    assert utterances[0].text == "Mr. Smith's colour, OK?"  # the input is left alone


# --- the curation config keys --------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides,key",
    [
        (["data.train=[a.jsonl, b.jsonl]", "data.train_weights=[1]"], "data.train_weights"),
        (
            ["data.train=[a.jsonl, b.jsonl]", "data.train_weights=[1, 0]"],
            r"data.train_weights\[1\]",
        ),
        (["data.train=[a.jsonl]", "data.train_weights=[x]"], r"data.train_weights\[0\]"),
        (["data.label_normalization=metrics"], "data.label_normalization"),
        (["training.balance=inverce"], "training.balance"),
        (["training.balance={5-7: -1}"], "training.balance.5-7"),
        (["training.balance={5-7: 0}"], "training.balance"),
        (["training.balance={}"], "training.balance"),
    ],
)
def test_config_errors_name_the_key(overrides: list[str], key: str):
    with pytest.raises(ConfigError, match=rf": {key}: "):
        load_config(None, overrides, check_paths=False)


def test_curation_keys_load_and_round_trip(tmp_path: Path):
    overrides = [
        "data.train=[a.jsonl, b.jsonl]",
        "data.train_weights=[3, 1]",
        "data.label_normalization=metric",
        "training.balance={5-7: 2, 8-11: 1, 12+: 1}",
    ]
    config = load_config(None, overrides, check_paths=False)
    assert config.data.train_weights == [3.0, 1.0]
    assert config.training.balance == {"5-7": 2.0, "8-11": 1.0, "12+": 1.0}
    defaults = load_config(None, check_paths=False)
    assert (defaults.data.train_weights, defaults.training.balance) == (None, "none")
    assert defaults.data.label_normalization == "none"


def test_training_run_screens_labels_and_samples_by_weight(tmp_path: Path):
    """A real run with two manifests mixed, buckets balanced, duration batches and metric
    labels: the label passes drop and count, the rest trains."""
    rows = [json.loads(line) for line in (QUICKSTART / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["audio_path"] = str(QUICKSTART / row["audio_path"])
    rows[0]["orthographic_text"] = "um"  # nothing left once normalised
    rows[1]["orthographic_text"] = "bad \ud800 label"  # cannot be encoded
    halves = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for path, part in zip(halves, (rows[:30], rows[30:]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    overrides = [
        "model.variant=tiny", "model.pretrained=random", f"data.train=[{halves[0]}, {halves[1]}]",
        "data.train_weights=[1, 2]", "data.label_normalization=metric", "data.eval=null",
        "data.num_workers=0", "training.balance=inverse", "training.batch_size=4",
        "training.batch_seconds=12", "training.gradient_accumulation_steps=1",
        "training.max_steps=2", "training.warmup_steps=0", "training.gradient_checkpointing=false",
        "evaluation.before_training=false", f"output.checkpoints_dir={tmp_path / 'ckpt'}",
        f"output.experiments_dir={tmp_path / 'exp'}", "output.name=run",
    ]  # fmt: skip
    _, state = train(load_config(None, overrides))
    assert DataProblems(entries=state.skipped).counts() == {EMPTY_NORMALIZED: 1, NOT_ROUND_TRIP: 1}
    assert state.train_utterances == len(rows) - 2 and state.step == 2


# --- kidwhisper filter ---------------------------------------------------------------------


def _filter_manifest(
    folder: Path, real_manifest: Path, texts: dict[int, str], bad: bool = True
) -> tuple[Path, list[dict]]:
    """Four real rows (audio paths relative to `folder`, texts changed as `texts` says);
    with `bad`, a clip that is not there too."""
    rows = [json.loads(line) for line in real_manifest.read_text().splitlines()[:4]]
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        row["audio_path"] = os.path.relpath(real_manifest.parent / row["audio_path"], folder)
        row["orthographic_text"] = texts.get(i, row["orthographic_text"])
    lines = [json.dumps(r) for r in rows]
    if bad:
        missing = {**rows[0], "utterance_id": "U_missing", "audio_path": "nowhere.flac"}
        lines += [json.dumps(missing)]
    (folder / "in.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "in.jsonl", rows


def test_filter_counts_each_drop_with_its_reason(tmp_path: Path, real_manifest: Path, monkeypatch):
    """The decisions, with the model's transcripts fixed: above the threshold and unreadable
    are dropped and counted; no reference words is kept, unjudged."""
    manifest, rows = _filter_manifest(tmp_path / "in", real_manifest, {3: "um"})  # no WER
    heard = {
        rows[0]["utterance_id"]: rows[0]["orthographic_text"],  # WER 0
        rows[1]["utterance_id"]: "something else entirely here",  # WER >= 0.8
        rows[2]["utterance_id"]: rows[2]["orthographic_text"].upper() + "!",  # WER 0
        rows[3]["utterance_id"]: "hello",
    }

    def fake_transcribe(wm, utterances, batch_size, options, progress=True):
        errors = [(u.utterance_id, "nowhere.flac: audio file not found") for u in utterances
                  if u.utterance_id == "U_missing"]  # fmt: skip
        return {u.utterance_id: heard.get(u.utterance_id, "") for u in utterances}, errors

    monkeypatch.setattr("kidwhisper.inference.evaluation.transcribe", fake_transcribe)
    out = tmp_path / "out" / "kept.jsonl"
    result = filter_by_wer(None, manifest, out, max_wer=0.8, progress=False)
    assert result.problems.counts() == {HIGH_WER: 1, UNDECODABLE: 1}
    assert (result.read, result.kept) == (5, 3) and result.not_judged == [rows[3]["utterance_id"]]
    kept = read_manifest(out)
    assert [u.utterance_id for u in kept] == [rows[i]["utterance_id"] for i in (0, 2, 3)]
    assert all(u.audio.is_file() for u in kept)  # paths rewritten for the new folder
    report = json.loads(Path(result.report).read_text())
    assert report["dropped_by_reason"] == result.problems.counts()
    [high] = [d for d in report["dropped"] if d["reason"] == HIGH_WER]
    assert high["id"] == rows[1]["utterance_id"] and high["wer"] >= 0.8
    assert high["hypothesis"] == "something else entirely here"
    assert high["reference"] == rows[1]["orthographic_text"]
    with pytest.raises(FileExistsError, match="--force"):
        filter_by_wer(None, manifest, out, max_wer=0.8)
    with pytest.raises(CurationError, match="input manifest"):
        filter_by_wer(None, manifest, manifest, max_wer=0.8, force=True)
    # A line that is not JSON stops the filter before any decoding, naming the line.
    manifest.write_text(manifest.read_text() + "{not json\n")
    with pytest.raises(ManifestError, match=r"in\.jsonl:6: not valid JSON"):
        filter_by_wer(None, manifest, tmp_path / "other.jsonl", max_wer=0.8)
    assert not (tmp_path / "other.jsonl").exists()


def test_filter_command_with_a_real_model(tmp_path: Path, real_manifest: Path, capsys, tiny_en):
    """`kidwhisper filter` end to end: a wrong label is dropped with its WER."""
    wrong = "zebra quantum xylophone marmalade nebula tractor"
    manifest, rows = _filter_manifest(tmp_path / "in", real_manifest, {1: wrong}, bad=False)
    out = tmp_path / "kept.jsonl"
    assert cli.main(["filter", "bundled:tiny.en", str(manifest), "--max-wer", "0.99",
                     "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert f"of 4 utterances of {manifest}" in printed and "WER above threshold" in printed
    report = json.loads(out.with_suffix(".report.json").read_text())
    dropped = {d["id"]: d for d in report["dropped"]}
    assert rows[1]["utterance_id"] in dropped and dropped[rows[1]["utterance_id"]]["wer"] >= 1
    assert all(d["wer"] > 0.99 for d in dropped.values())
    assert report["kept"] + len(dropped) == 4 == report["read"]


# --- kidwhisper split ----------------------------------------------------------------------


def _split_manifest(folder: Path, broken: bool = False) -> Path:
    """Three buckets of 20, 11 and 7 speakers with 1 to 5 entries each; entries without a
    child_id; one child with entries in two buckets; one empty text (split keeps it); with
    `broken`, a last line that is not JSON."""
    rows, n = [], 0
    for bucket, speakers in (("5-7", 20), ("8-11", 11), ("12+", 7)):
        for s in range(speakers):
            for _ in range(1 + (s * 7) % 5):
                n += 1
                rows.append({"utterance_id": f"U{n}", "child_id": f"C_{bucket}_{s}",
                             "audio_path": f"audio/U{n}.flac", "audio_duration_sec": 3.6,
                             "age_bucket": bucket, "orthographic_text": f"text {n}"})  # fmt: skip
    rows += [{"utterance_id": f"N{i}", "audio_path": f"N{i}.flac", "age_bucket": "8-11",
              "orthographic_text": "no child"} for i in range(4)]  # fmt: skip
    rows.append({**rows[1], "utterance_id": "U_other_age", "age_bucket": "8-11"})
    rows[5]["orthographic_text"] = ""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "all.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + ("{broken\n" if broken else ""))
    return path


def _speakers(path: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for u in read_manifest(path, require_text=False):
        found.setdefault(u.age_bucket, set()).add(u.speaker or u.utterance_id)
    return found


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_is_speaker_disjoint_and_stratified(tmp_path: Path, fraction: float):
    manifest = _split_manifest(tmp_path / "src")
    report = split_manifest(manifest, tmp_path / "out", fraction, seed=0)
    train, dev = _speakers(tmp_path / "out/train.jsonl"), _speakers(tmp_path / "out/dev.jsonl")
    everyone = set().union(*train.values(), *dev.values())
    assert not set().union(*train.values()) & set().union(*dev.values())  # no child on both
    # Each bucket's dev share is within one speaker of the fraction (C_5-7_1 counts in 5-7,
    # where 3 of its 4 entries are; the four entries without a child are speakers of their
    # own in 8-11).
    for bucket, speakers in (("5-7", 20), ("8-11", 15), ("12+", 7)):
        n_dev = report.counts[bucket]["dev"][0]
        assert report.counts[bucket]["train"][0] + n_dev == speakers
        assert abs(n_dev - fraction * speakers) < 1 and n_dev >= 1, (bucket, n_dev)
    assert len(everyone) == 20 + 15 + 7
    # Every line once, as written apart from the audio path.
    source = {json.loads(line)["utterance_id"]: json.loads(line)
              for line in manifest.read_text().splitlines()}  # fmt: skip
    written = [json.loads(line) for part in ("train", "dev")
               for line in (tmp_path / f"out/{part}.jsonl").read_text().splitlines()]  # fmt: skip
    assert sorted(r["utterance_id"] for r in written) == sorted(source)
    for row in written:
        moved = (tmp_path / "out" / row.pop("audio_path")).resolve()
        assert moved == (manifest.parent / source[row["utterance_id"]].pop("audio_path")).resolve()
        assert row == source[row["utterance_id"]]
    assert not report.problems


def test_split_is_deterministic_by_seed(tmp_path: Path):
    manifest = _split_manifest(tmp_path / "src")
    split_manifest(manifest, tmp_path / "a", 0.2, seed=3)
    split_manifest(manifest, tmp_path / "b", 0.2, seed=3)
    split_manifest(manifest, tmp_path / "c", 0.2, seed=4)
    dev = {name: (tmp_path / name / "dev.jsonl").read_text() for name in "abc"}
    assert dev["a"] == dev["b"] != dev["c"]


def test_split_command_prints_counts_and_refuses_to_overwrite(tmp_path: Path, capsys):
    manifest = _split_manifest(tmp_path / "src")
    args = ["split", str(manifest), "--out-dir", str(tmp_path / "out"), "--dev-fraction", "0.2"]
    assert cli.main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert list(rows)[:4] == ["5-7", "8-11", "12+", "all"]  # buckets by age
    assert rows["12+"][:3] == ["6", "/", "1"]  # speakers train / dev
    assert "left out" not in "".join(lines)
    assert cli.main(args) == 2 and "--force" in capsys.readouterr().err
    assert cli.main([*args, "--force"]) == 0
    bad = ["split", str(manifest), "--out-dir", str(tmp_path / "x"), "--dev-fraction", "1.5"]
    assert cli.main(bad) == 2 and "--dev-fraction" in capsys.readouterr().err
    named_train = manifest.with_name("train.jsonl")
    named_train.write_text(manifest.read_text())
    same = ["split", str(named_train), "--out-dir", str(manifest.parent), "--force"]
    assert cli.main(same) == 2 and "input manifest" in capsys.readouterr().err
    broken = _split_manifest(tmp_path / "broken", broken=True)  # every bad line, exit 2
    assert cli.main(["split", str(broken), "--out-dir", str(tmp_path / "y")]) == 2
    assert re.search(r"all\.jsonl:\d+: not valid JSON", capsys.readouterr().err)
    assert not (tmp_path / "y").exists()


@needs_shared
def test_split_of_so762_train(tmp_path: Path, capsys):
    assert cli.main(["split", str(SO762 / "train.jsonl"), "--out-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    train, dev = _speakers(tmp_path / "train.jsonl"), _speakers(tmp_path / "dev.jsonl")
    assert set(dev) == set(train) == {"5-7", "8-11", "12+"}  # every bucket on both sides
    assert not set().union(*train.values()) & set().union(*dev.values())
    assert all(u.audio.is_file() for u in read_manifest(tmp_path / "dev.jsonl"))
    buckets = [line.split()[0] for line in printed.splitlines()[2:]]
    assert buckets == ["5-7", "8-11", "12+", "all"]
