"""Beam search: beam 1 is greedy, beams find what greedy misses, Whisper's ranking, the
guards on every beam, and the settings from config and command line to a packaged zip."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from kidwhisper.cli.main import main
from kidwhisper.config import ConfigError, load_config
from kidwhisper.data.audio import load_audio, log_mel
from kidwhisper.data.dataset import read_manifest
from kidwhisper.inference import batching
from kidwhisper.inference.decoding import (
    BeamSearch,
    DecodingOptions,
    beam_search,
    decode,
    greedy_decode,
    rank_score,
    run_beam_search,
)
from kidwhisper.inference.evaluation import decoding_options

from .conftest import SHARED, SO762, needs_shared

VOCAB, EOT = 8, 7  # the scripted decoder's vocabulary; token 0 is its prompt


class ScriptedDecoder:
    """A stand-in for `DecoderState` whose next-token probabilities are looked up by each
    row's clip and the tokens it has produced: `tables[clip][history] = {token: p}`, the
    rest of the probability spread evenly over the other tokens; a history that is not in
    the table gets `default`."""

    def __init__(self, tables: list[dict], default: dict[int, float]) -> None:
        self.tables, self.default = tables, default
        self.clips = list(range(len(tables)))
        self.histories: list[tuple[int, ...]] | None = None

    def select(self, rows: list[int]) -> None:
        self.clips = [self.clips[r] for r in rows]
        if self.histories is not None:
            self.histories = [self.histories[r] for r in rows]

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.histories is None:  # the prompt
            self.histories = [() for _ in self.clips]
        else:
            new = inputs[:, -1].tolist()
            self.histories = [(*h, t) for h, t in zip(self.histories, new, strict=True)]
        rows = zip(self.clips, self.histories, strict=True)
        return torch.stack([self._row(clip, history) for clip, history in rows])

    def _row(self, clip: int, history: tuple[int, ...]) -> torch.Tensor:
        table = self.tables[clip].get(history, self.default)
        rest = (1.0 - sum(table.values())) / (VOCAB - len(table))
        return torch.tensor([table.get(t, rest) for t in range(VOCAB)]).log()


# Clip 0: greedy takes 1 (p 0.5), then no next token is likely (0.25 at best); 2 (p 0.4)
# leads to a sure sequence. Clip 1: greedy's choice is the best sequence too.
TRAP = {
    (): {1: 0.5, 2: 0.4},
    (1,): {3: 0.25, 4: 0.24, 5: 0.23, 6: 0.22},
    (1, 3): {EOT: 0.9},
    (2,): {5: 0.95},
    (2, 5): {EOT: 0.95},
}
PLAIN = {(): {4: 0.9}, (4,): {EOT: 0.9}}
LOOP = {3: 0.9, EOT: 1e-9}  # every history: token 3 again, never the end


def scripted(tables, default, beam_size=1, limits=None, **options):
    """(transcripts, the search) of a scripted beam search."""
    opts = DecodingOptions(beam_size=beam_size, **options)
    search = BeamSearch(opts, EOT, limits or [opts.max_new_tokens] * len(tables))
    return run_beam_search(ScriptedDecoder(tables, default), search, [0]), search


def test_beams_find_the_sequence_greedy_misses():
    greedy, _ = scripted([TRAP, PLAIN], {EOT: 0.9})
    assert greedy == [[1, 3], [4]]
    greedy_logprob = math.log(0.5) + math.log(0.25) + math.log(0.9)
    best_logprob = math.log(0.4) + math.log(0.95) + math.log(0.95)
    for beam_size in (2, 5):
        found, search = scripted([TRAP, PLAIN], {EOT: 0.9}, beam_size)
        assert found == [[2, 5], [4]]
        score = search.finished[0][(2, 5)]
        assert score == pytest.approx(best_logprob, abs=1e-6)  # float32 probabilities
        assert search.finished[0][(1, 3)] == pytest.approx(greedy_logprob, abs=1e-6)
        assert rank_score(score, 2, None) > rank_score(greedy_logprob, 2, None)


def test_patience_collects_more_finished_beams():
    for patience, wanted in ((1.0, 2), (2.0, 4)):
        _, search = scripted([TRAP], {EOT: 0.9}, 2, patience=patience)
        assert len(search.finished[0]) == wanted


def test_length_penalty_is_whispers():
    assert rank_score(-6.0, 3, None) == -2.0
    assert rank_score(-6.0, 3, 0.0) == -6.0
    assert rank_score(-6.0, 3, 1.0) == pytest.approx(-6.0 / (8 / 6), rel=1e-12)
    assert rank_score(-6.0, 3, 0.5) == pytest.approx(-6.0 / math.sqrt(8 / 6), rel=1e-12)
    assert rank_score(-1.0, 0, None) == -math.inf  # an empty transcript is never preferred
    # Per token, the long sequence is better; in sum, the short one.
    finished = {(1,): -2.0, (1, 2, 3, 4): -3.0}
    for penalty, best in ((None, [1, 2, 3, 4]), (0.0, [1])):
        search = BeamSearch(DecodingOptions(beam_size=2, length_penalty=penalty), EOT, [9])
        search.finished = [finished]
        assert search.results() == [best]


@pytest.mark.parametrize("beam_size", [1, 2, 5])
def test_guards_hold_on_every_beam(beam_size):
    guarded, _ = scripted([{}], LOOP, beam_size)
    assert guarded == [[3]]  # the loop cut to one copy
    unguarded = {"repetition_limit": None, "max_new_tokens": 40}
    limited, _ = scripted([{}, {}], LOOP, beam_size, limits=[10, 4], **unguarded)
    assert limited == [[3] * 10, [3] * 4]  # each clip's own token limit


def test_options_refuse_no_beams():
    with pytest.raises(ValueError, match="beam_size"):
        DecodingOptions(beam_size=0)


# --- on the real architecture ------------------------------------------------------------


def _features(manifest: Path, n: int):
    clips = read_manifest(manifest)[:n]
    features = np.stack([log_mel(load_audio(c.audio), 80) for c in clips])
    return torch.from_numpy(features), [c.duration for c in clips]


def test_beam_one_is_greedy_on_a_random_model(random_tiny, real_manifest: Path):
    features, durations = _features(real_manifest, 2)
    special = random_tiny.special
    for options in (DecodingOptions(12), DecodingOptions(40, 2.0, 2)):
        greedy = greedy_decode(random_tiny.model, features, special, options, durations)
        beam = beam_search(random_tiny.model, features, special, options, durations)
        assert beam == greedy
        assert decode(random_tiny.model, features, special, options, durations) == greedy


def test_beams_respect_the_token_budget(random_tiny, real_manifest: Path):
    features, durations = _features(real_manifest, 2)
    options = DecodingOptions(30, 2.0, beam_size=3)
    out = beam_search(random_tiny.model, features, random_tiny.special, options, durations)
    limits = options.token_limits(durations, 2)
    assert all(len(seq) <= limit for seq, limit in zip(out, limits, strict=True))
    assert all(t < random_tiny.special.eot for seq in out for t in seq)  # text tokens only


@pytest.mark.integration
@needs_shared
def test_beam_one_is_greedy_on_tiny_en_and_batches_equal_single_clips(tiny_en):
    features, durations = _features(SO762 / "dev.jsonl", 4)
    model, special = tiny_en.model, tiny_en.special
    greedy = greedy_decode(model, features, special, DecodingOptions(), durations)
    assert beam_search(model, features, special, DecodingOptions(), durations) == greedy
    options = DecodingOptions(beam_size=3)
    batched = beam_search(model, features, special, options, durations)
    single = [
        beam_search(model, f[None], special, options, [d])[0]
        for f, d in zip(features, durations, strict=True)
    ]
    assert batched == single and all(batched)


# --- settings: config, command line, packaged submission ---------------------------------


def test_config_keys_reach_the_decoder():
    config = load_config(overrides=["evaluation.beam_size=3", "evaluation.length_penalty=0.6"])
    options = decoding_options(config.evaluation)
    assert (options.beam_size, options.length_penalty) == (3, 0.6)
    assert decoding_options(load_config().evaluation).beam_size == 1  # greedy by default
    with pytest.raises(ConfigError, match=r"evaluation\.beam_size: must be >= 1"):
        load_config(overrides=["evaluation.beam_size=0"])


@pytest.fixture
def seen_options(monkeypatch) -> list[DecodingOptions]:
    """The options every batch was decoded with."""
    seen = []

    def spy(model, features, special, options=None, durations=None):
        seen.append(options)
        return decode(model, features, special, options, durations)

    monkeypatch.setattr(batching, "decode", spy)
    return seen


@pytest.mark.integration
def test_evaluate_and_transcribe_take_beam_flags(seen_options, real_manifest, tmp_path, capsys):
    beam = ["--beam-size", "2", "--length-penalty", "0.5"]
    args = ["evaluate", "bundled:tiny.en", "--data", str(real_manifest), "--limit", "2"]
    assert main([*args, *beam, "--out", str(tmp_path / "p.jsonl")]) == 0
    assert "WER" in capsys.readouterr().out
    clip = str(read_manifest(real_manifest)[0].audio)
    out = tmp_path / "t.jsonl"
    assert main(["transcribe", "bundled:tiny.en", clip, "--out", str(out), "--beam-size", "3"]) == 0
    assert json.loads(out.read_text().splitlines()[0])["orthographic_text"]
    used = [(o.beam_size, o.length_penalty) for o in seen_options]
    assert used[0] == (2, 0.5) and used[-1] == (3, None) and len(set(used)) == 2


def test_beam_size_flag_refuses_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "bundled:tiny.en", "--data", "x.jsonl", "--beam-size", "0"])
    assert exit_.value.code == 2
    assert "--beam-size: must be at least 1, got 0" in capsys.readouterr().err


@pytest.mark.integration
@needs_shared
def test_packaged_submission_decodes_with_its_beams(tmp_path, capsys):
    from kidwhisper.submission.common import SETTINGS_FILE
    from kidwhisper.submission.runner import run_submission

    out = tmp_path / "submission.zip"
    args = ["package-submission", "bundled:tiny.en", "--out", str(out), "--beam-size", "2"]
    assert main(args) == 0
    with zipfile.ZipFile(out) as archive:
        decoding = json.loads(archive.read(SETTINGS_FILE))["decoding"]
    assert decoding["beam_size"] == 2 and decoding["length_penalty"] is None
    report = run_submission(out, SHARED / "pasketti-demo", workdir=tmp_path / "run")
    assert report.valid and report.utterances == 3, report.summary_lines()
    assert "beam_size=2" in report.log.read_text()


def test_decoding_commands_default_to_the_model_folders_own_beams(tmp_path: Path):
    """A model trained with evaluation.beam_size (kids_recommended: 5) is decoded, packaged
    and transcribed with it unless a flag says otherwise; other models decode greedily."""
    from argparse import Namespace

    from kidwhisper.cli.commands import _beam

    folder = tmp_path / "final"
    folder.mkdir()
    (folder / "kidwhisper.yaml").write_text("evaluation:\n  beam_size: 5\n  length_penalty: 0.4\n")
    flags = {"beam_size": None, "length_penalty": None}
    assert _beam(Namespace(model=str(folder), **flags)) == {"beam_size": 5, "length_penalty": 0.4}
    chosen = Namespace(model=str(folder), beam_size=2, length_penalty=None)
    assert _beam(chosen) == {"beam_size": 2, "length_penalty": 0.4}
    bundled = Namespace(model="bundled:tiny.en", **flags)
    assert _beam(bundled) == {"beam_size": 1, "length_penalty": None}
