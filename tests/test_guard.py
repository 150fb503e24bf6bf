"""The forgetting guard: a second evaluation set reported beside the child set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kidwhisper.config import ConfigError, load_config
from kidwhisper.training.experiments import run_experiment

from .conftest import QUICKSTART, REPO


def test_guard_needs_an_existing_file_and_a_main_eval_set(real_manifest: Path):
    with pytest.raises(ConfigError, match=r"data\.guard_eval: file not found: nowhere"):
        load_config(None, [f"data.eval={real_manifest}", "data.guard_eval=nowhere.jsonl"])
    with pytest.raises(ConfigError, match=r"data\.guard_eval: needs data\.eval"):
        load_config(None, [f"data.guard_eval={real_manifest}"])
    guard = QUICKSTART / "dev.jsonl"
    config = load_config(None, [f"data.eval={real_manifest}", f"data.guard_eval={guard}"])
    assert config.data.guard_eval == str(guard) and load_config().data.guard_eval is None


@pytest.mark.integration
@pytest.mark.slow
def test_guard_wer_is_recorded_beside_the_dev_wer(real_manifest: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = [
        "model.variant=tiny", "model.pretrained=random",
        f"data.train=[{QUICKSTART / 'train.jsonl'}]", f"data.eval={real_manifest}",
        f"data.guard_eval={QUICKSTART / 'dev.jsonl'}", "data.max_eval_samples=3",
        "data.num_workers=0", "training.batch_size=4", "training.gradient_accumulation_steps=1",
        "training.max_steps=2", "training.warmup_steps=0", "training.lr=1e-4",
        "training.gradient_checkpointing=false", "evaluation.max_new_tokens=8",
        f"output.checkpoints_dir={tmp_path / 'ckpt'}",
        f"output.experiments_dir={tmp_path / 'exp'}", "output.name=run",
    ]  # fmt: skip
    metrics = run_experiment(load_config(REPO / "configs/quickstart.yaml", overrides))
    folder = tmp_path / "exp" / "run"
    saved = json.loads((folder / "metrics.json").read_text())
    assert [e["step"] for e in saved["evals"]] == [0, 2]
    for entry in saved["evals"]:  # before training and at the evaluation after it
        assert entry["guard_wer"] >= 0 and entry["guard_utterances"] == 3
        assert set(entry["guard_wer_by_age"]) and entry["utterances"] == 3
    # Best checkpoint and early stopping stay on the main set.
    assert metrics["best_wer"] == min(e["wer"] for e in saved["evals"])
    assert saved["eval_after"]["guard_wer"] == saved["evals"][-1]["guard_wer"]
    results = (folder / "results.md").read_text()
    before, after = saved["eval_before"]["guard_wer"], saved["eval_after"]["guard_wer"]
    assert f"| guard set | {100 * before:.2f}% | {100 * after:.2f}% |" in results
    assert f"Guard set (reported only): `{QUICKSTART / 'dev.jsonl'}` (3 utterances)" in results
    guard_ids = [json.loads(line)["utterance_id"] for line in
                 (folder / "guard_predictions_step2.jsonl").read_text().splitlines()]  # fmt: skip
    assert len(guard_ids) == 3
    events = EventAccumulator(str(tmp_path / "ckpt" / "run" / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("eval/guard_wer")] == [0, 2]
    assert [e.value for e in events.Scalars("eval/guard_wer")] == pytest.approx([before, after])
