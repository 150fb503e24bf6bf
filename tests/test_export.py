"""`kidwhisper export-ct2`: transformers -> CTranslate2, checked with faster-whisper itself."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kidwhisper.cli.main import main
from kidwhisper.data.audio import SAMPLE_RATE, load_audio, log_mel
from kidwhisper.data.dataset import read_manifest
from kidwhisper.data.text import normalize
from kidwhisper.errors import UserError
from kidwhisper.inference.decoding import DecodingOptions, greedy_decode
from kidwhisper.inference.evaluation import transcribe
from kidwhisper.models.bundled import ct2_files
from kidwhisper.models.ct2 import import_ct2
from kidwhisper.models.export import ExportError, export_ct2

ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is a dev dependency")
faster_whisper = pytest.importorskip("faster_whisper", reason="faster-whisper is a dev dependency")

pytestmark = pytest.mark.integration

WINDOW = 30 * SAMPLE_RATE  # Whisper's 30 s input, in samples
PLAIN_GREEDY = DecodingOptions(max_tokens_per_second=None, repetition_limit=None)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """bundled:tiny.en exported in float32 through the CLI."""
    out = tmp_path_factory.mktemp("export") / "tiny.en-ct2"
    assert main(["export-ct2", "bundled:tiny.en", str(out), "--quantization", "float32"]) == 0
    return out


@pytest.fixture(scope="module")
def fw_model(exported: Path):
    return faster_whisper.WhisperModel(
        str(exported), device="cpu", compute_type="float32", cpu_threads=2
    )


@pytest.fixture(scope="module")
def clips(real_manifest: Path):
    return read_manifest(real_manifest)[:6]


def test_export_writes_what_faster_whisper_reads(exported: Path):
    for name in ("model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"):
        assert (exported / name).is_file(), name
    assert json.loads((exported / "preprocessor_config.json").read_text())["feature_size"] == 80
    # The decoding settings match the original CTranslate2 tiny.en's.
    meta_dir, _ = ct2_files("tiny.en")
    original = json.loads((meta_dir / "config.json").read_text())
    ours = json.loads((exported / "config.json").read_text())
    for key in ("suppress_ids", "suppress_ids_begin", "alignment_heads"):
        assert ours[key] == original[key], key
    assert set(original["lang_ids"]) <= set(ours["lang_ids"])


def test_round_trip_keeps_the_weights(exported: Path, tiny_en, tmp_path: Path):
    back = import_ct2(exported, tmp_path / "back")
    theirs, ours = back.state_dict(), tiny_en.model.state_dict()
    assert theirs.keys() == ours.keys()
    for name, value in ours.items():
        assert torch.equal(theirs[name], value), name  # float32 export: bit for bit
    assert back.generation_config.suppress_tokens == tiny_en.model.generation_config.suppress_tokens


def test_faster_whisper_computes_what_transformers_does(fw_model, tiny_en, clips):
    features = np.stack([log_mel(load_audio(c.audio), tiny_en.n_mels) for c in clips[:3]])
    view = ctranslate2.StorageView.from_array(features)
    with torch.no_grad():
        encoded = tiny_en.model.model.encoder(torch.from_numpy(features)).last_hidden_state
    assert np.abs(np.array(fw_model.model.encode(view)) - encoded.numpy()).max() < 2e-4

    prompt = tiny_en.special.prefix
    results = fw_model.model.generate(
        view, [prompt] * len(clips[:3]), beam_size=1, max_length=64, return_logits_vocab=True
    )
    ours = greedy_decode(tiny_en.model, torch.from_numpy(features), tiny_en.special, PLAIN_GREEDY)
    assert ours == [r.sequences_ids[0] for r in results]

    with torch.no_grad():
        logits = tiny_en.model(
            input_features=torch.from_numpy(features[:1]),
            decoder_input_ids=torch.tensor([prompt + results[0].sequences_ids[0]]),
        ).logits[0]
    for step, reference in enumerate(results[0].logits[0]):
        reference = np.array(reference)
        kept = np.abs(reference) < 1e30  # suppressed tokens are -FLT_MAX
        diff = np.abs(logits[len(prompt) - 1 + step].numpy()[kept] - reference[kept]).max()
        assert diff < 2e-4, (step, diff)


def fw_transcribe(model, audio: np.ndarray) -> str:
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        temperature=0.0,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    return " ".join(s.text.strip() for s in segments)


def test_faster_whisper_transcribes_like_kidwhisper(fw_model, tiny_en, clips):
    ours, errors = transcribe(tiny_en, clips, options=PLAIN_GREEDY, progress=False)
    assert not errors
    agree = 0
    for clip in clips:
        audio = load_audio(clip.audio)
        # Padded with silence to 30 s, faster-whisper's log-mel is the one we compute (its own
        # pads the spectrogram with zeros, openai-whisper style: not the log-mel of silence).
        padded = np.pad(audio, (0, max(0, WINDOW - len(audio))))
        theirs = fw_transcribe(fw_model, padded)
        agree += normalize(theirs) == normalize(ours[clip.utterance_id])
        assert theirs.strip()
    assert agree >= len(clips) - 1, (agree, len(clips))


def test_int8_export_loads_and_transcribes(tiny_en, clips, tmp_path: Path):
    out = export_ct2("bundled:tiny.en", tmp_path / "int8", quantization="int8")
    assert (out / "model.bin").stat().st_size < 50 * 2**20  # float32 is ~145 MiB
    model = faster_whisper.WhisperModel(str(out), device="cpu", compute_type="int8", cpu_threads=2)
    assert fw_transcribe(model, load_audio(clips[0].audio)).strip()


def test_export_of_a_saved_folder_fills_the_config(random_tiny, tmp_path: Path):
    folder = random_tiny.save(tmp_path / "model")
    (folder / "preprocessor_config.json").unlink()  # written from num_mel_bins instead
    out = export_ct2(folder, tmp_path / "ct2", quantization="int8")
    config = json.loads((out / "config.json").read_text())
    assert len(config["lang_ids"]) == 99  # multilingual: every language token but large-v3's
    assert json.loads((out / "preprocessor_config.json").read_text())["feature_size"] == 80
    model = faster_whisper.WhisperModel(str(out), device="cpu", compute_type="int8")
    assert model.model.is_multilingual


def test_export_errors(tmp_path: Path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export-ct2", str(tmp_path), str(out)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err

    not_whisper = tmp_path / "bert"
    not_whisper.mkdir()
    (not_whisper / "model.safetensors").write_bytes(b"")
    (not_whisper / "config.json").write_text('{"model_type": "bert"}')
    assert main(["export-ct2", str(not_whisper), str(tmp_path / "x")]) == 2
    assert "not a Whisper model" in capsys.readouterr().err
    assert main(["export-ct2", str(tmp_path / "missing"), str(tmp_path / "x")]) == 2
    assert main(["export-ct2", str(out), str(tmp_path / "x")]) == 2  # no weights in it
    assert "model.safetensors" in capsys.readouterr().err
    assert main(["export-ct2", "bundled:nope", str(tmp_path / "x")]) == 2
    assert "no bundled model" in capsys.readouterr().err
    with pytest.raises(ExportError, match="quantization"):
        export_ct2(not_whisper, tmp_path / "y", quantization="int4")

    whisper = tmp_path / "whisper"
    whisper.mkdir()
    (whisper / "model.safetensors").write_bytes(b"")
    (whisper / "config.json").write_text('{"model_type": "whisper"}')
    (whisper / "tokenizer.json").write_text("{}")
    with pytest.raises(UserError, match="not replaced"):
        export_ct2(whisper, tmp_path, force=True)  # the output holds the model
    assert (whisper / "config.json").is_file()

    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    monkeypatch.setitem(sys.modules, "ctranslate2.converters", None)
    with pytest.raises(ExportError, match="pip install ctranslate2"):
        export_ct2(whisper, tmp_path / "z")
    assert not (tmp_path / "z").exists()
