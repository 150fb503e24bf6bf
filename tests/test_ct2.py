"""The CTranslate2 -> transformers converter, checked against CTranslate2 itself on real audio."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kidwhisper.cli.main import main
from kidwhisper.data.audio import load_audio, log_mel
from kidwhisper.data.dataset import read_manifest
from kidwhisper.inference.decoding import greedy_decode
from kidwhisper.models.bundled import ct2_files
from kidwhisper.models.factory import WhisperModel

ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 is a dev dependency")

pytestmark = pytest.mark.integration


def ct2_folder(name: str, scratch: Path) -> Path:
    """A complete CTranslate2 folder (model.bin joined if split) that ctranslate2 can load."""
    meta_dir, parts = ct2_files(name)
    if len(parts) == 1:
        return meta_dir
    target = scratch / f"ct2-{name}"
    if not (target / "model.bin").is_file():
        target.mkdir(parents=True)
        for f in ("config.json", "tokenizer.json", "vocabulary.json", "vocabulary.txt"):
            if (meta_dir / f).is_file():
                shutil.copy(meta_dir / f, target / f)
        with open(target / "model.bin", "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
    return target


def reference_outputs(folder: Path, features: np.ndarray, prompt: list[int]):
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    view = ctranslate2.StorageView.from_array(features)
    results = model.generate(
        view, [prompt] * len(features), beam_size=1, max_length=128, return_logits_vocab=True
    )
    encoded = np.array(model.encode(view))
    return results, encoded


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_converted_model_matches_ctranslate2(name: str, real_manifest: Path, tmp_path: Path):
    # The CLI converter, on the same CT2 folder ctranslate2 loads.
    folder = ct2_folder(name, tmp_path)
    assert main(["import-ct2", str(folder), str(tmp_path / name)]) == 0
    wm = WhisperModel(name, pretrained=str(tmp_path / name)).load()
    clips = read_manifest(real_manifest)[:6]
    features = np.stack([log_mel(load_audio(c.audio), wm.n_mels) for c in clips])

    results, encoded = reference_outputs(folder, features, wm.special.prefix)
    ours = greedy_decode(wm.model, torch.from_numpy(features), wm.special)

    # Same greedy text for every clip.
    for clip, mine, theirs in zip(clips, ours, results, strict=True):
        assert mine == theirs.sequences_ids[0], clip.utterance_id
        assert wm.tokenizer.decode(mine).strip()

    with torch.no_grad():
        enc = wm.model.model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()
    # Relative to the states' scale: CTranslate2 picks its GEMM kernels by CPU (measured
    # here: 1.1e-3 absolute on base's encoder output on one AMD EPYC, under 1e-3 elsewhere).
    assert np.abs(enc - encoded).max() < 1e-4 * np.abs(encoded).max()

    # Logits at every generated step of the first clip, where CTranslate2 did not suppress.
    sequence = wm.special.prefix + results[0].sequences_ids[0]
    with torch.no_grad():
        logits = wm.model(
            input_features=torch.from_numpy(features[:1]),
            decoder_input_ids=torch.tensor([sequence]),
        ).logits[0]
    first = len(wm.special.prefix) - 1
    for step, reference in enumerate(results[0].logits[0]):
        reference = np.array(reference)
        kept = np.abs(reference) < 1e30  # suppressed tokens are -FLT_MAX
        diff = np.abs(logits[first + step].numpy()[kept] - reference[kept]).max()
        assert diff < 1e-3, (step, diff)
