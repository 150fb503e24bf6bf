"""Greedy decoding rules and the evaluate command on real weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kidwhisper.cli.main import main
from kidwhisper.data.audio import load_audio, log_mel
from kidwhisper.data.dataset import read_manifest
from kidwhisper.inference.decoding import MIN_TOKENS, DecodingOptions, greedy_decode, repeated_tail

from .conftest import SO762, needs_shared


def test_random_model_respects_the_token_budget(random_tiny, real_manifest: Path):
    features = torch.from_numpy(log_mel(load_audio(read_manifest(real_manifest)[0].audio), 80))
    out = greedy_decode(random_tiny.model, features[None], random_tiny.special, DecodingOptions(5))
    assert len(out) == 1 and len(out[0]) <= 5
    # No special token is ever produced: only text tokens (ids below the end token).
    assert all(t < random_tiny.special.eot for t in out[0])


@pytest.mark.integration
def test_batched_decoding_equals_one_by_one(tiny_en, real_manifest: Path):
    clips = read_manifest(real_manifest)[:4]
    features = torch.from_numpy(np.stack([log_mel(load_audio(c.audio), 80) for c in clips]))
    batched = greedy_decode(tiny_en.model, features, tiny_en.special)
    single = [greedy_decode(tiny_en.model, f[None], tiny_en.special)[0] for f in features]
    assert batched == single
    assert all(tiny_en.special.eot not in seq for seq in batched)


@pytest.mark.integration
def test_evaluate_command(real_manifest: Path, tmp_path: Path, capsys):
    out = tmp_path / "preds.jsonl"
    args = ["evaluate", "bundled:tiny.en", "--data", str(real_manifest), "--limit", "4"]
    assert main([*args, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 4
    assert {"utterance_id", "orthographic_text", "reference", "age_bucket"} <= set(rows[0])
    assert "WER" in capsys.readouterr().out


# --- decoding guards -----------------------------------------------------------------------


def test_repeated_tail_finds_the_shortest_repeating_unit():
    assert repeated_tail([1, 2, 3, 7, 7, 7, 7], 4) == 1
    assert repeated_tail([9, 1, 2, 1, 2, 1, 2, 1, 2], 4) == 2
    assert repeated_tail([5, 1, 2, 3] * 4, 4) == 4
    assert repeated_tail([7, 7, 7], 4) == 0  # three in a row is speech ("bank bank bank")
    assert repeated_tail([1, 2, 1, 2, 1, 2, 3], 4) == 0  # the repeat must end the sequence
    assert repeated_tail([], 4) == 0


def test_token_limits_grow_with_duration():
    options = DecodingOptions(max_new_tokens=40, max_tokens_per_second=6.0)
    assert options.token_limits([0.5, 2.0, 30.0], 3) == [MIN_TOKENS + 3, MIN_TOKENS + 12, 40]
    assert options.token_limits(None, 2) == [40, 40]
    plain = DecodingOptions(max_new_tokens=40, max_tokens_per_second=None)
    assert plain.token_limits([0.5], 1) == [40]


@pytest.fixture(scope="module")
def echo_model(random_tiny):
    """The real tiny architecture made to repeat its last input token forever: every layer's
    output projection and the decoder positions zeroed, so the residual stream carries only
    the token's embedding, and the tied output layer scores that same token highest."""
    model = copy.deepcopy(random_tiny.model)
    with torch.no_grad():
        decoder = model.model.decoder
        decoder.embed_positions.weight.zero_()
        for layer in decoder.layers:
            for linear in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                linear.weight.zero_()
                linear.bias.zero_()
    return model


def test_guards_stop_a_planted_repetition_loop(echo_model, random_tiny):
    special = random_tiny.special
    features = torch.zeros(1, 80, 3000)
    loop = greedy_decode(echo_model, features, special, DecodingOptions(30, None, None))
    assert len(loop) == 1 and len(loop[0]) == 30 and len(set(loop[0])) == 1  # the planted loop
    guarded = greedy_decode(echo_model, features, special, DecodingOptions(30, None, 4))
    assert guarded == [loop[0][:1]]  # one copy kept
    by_duration = DecodingOptions(30, 6.0, None)
    assert greedy_decode(echo_model, features, special, by_duration, [1.0]) == [
        loop[0][: MIN_TOKENS + 6]
    ]


@pytest.mark.integration
@needs_shared
def test_guards_never_cut_a_real_reference():
    """Fed token by token, none of the 1040 so762 references trips the repetition guard or
    outgrows its clip's duration-based limit."""
    from kidwhisper.data.text import family_tokenizer

    tokenizer = family_tokenizer("english", 51864)
    options = DecodingOptions()
    utterances = read_manifest(SO762 / "train.jsonl") + read_manifest(SO762 / "dev.jsonl")
    for u in utterances:
        tokens = tokenizer.encode(" " + u.text, add_special_tokens=False)
        assert len(tokens) <= options.token_limits([u.duration], 1)[0], u.utterance_id
        for end in range(1, len(tokens) + 1):
            assert repeated_tail(tokens[:end], options.repetition_limit) == 0, u.text


@pytest.mark.integration
def test_guards_leave_normal_transcripts_alone(tiny_en, real_manifest: Path):
    clips = read_manifest(real_manifest)[:8]
    audio = [load_audio(c.audio) for c in clips]
    features = torch.from_numpy(np.stack([log_mel(a, 80) for a in audio]))
    durations = [len(a) / 16000 for a in audio]
    model, special = tiny_en.model, tiny_en.special
    plain = greedy_decode(model, features, special, DecodingOptions(128, None, None))
    guarded = greedy_decode(model, features, special, DecodingOptions(128), durations)
    for p, g, seconds in zip(plain, guarded, durations, strict=True):
        if g != p:  # only a loop or a transcript longer than the clip allows may be cut
            assert p[: len(g)] == g
            looped = any(repeated_tail(p[:end], 4) for end in range(len(p) + 1))
            assert looped or len(p) > DecodingOptions().token_limits([seconds], 1)[0]
