"""LoRA, frozen parts and per-part learning rates: real training steps on a random tiny."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration

from kidwhisper.cli.main import main
from kidwhisper.config import ConfigError, load_config
from kidwhisper.data.dataset import SpeechDataset, WhisperCollator, read_manifest
from kidwhisper.models import adapters as lora_module
from kidwhisper.models.averaging import average_checkpoints
from kidwhisper.models.factory import WhisperModel, load_model
from kidwhisper.training.checkpoint import checkpoint_state
from kidwhisper.training.objective import summed_loss
from kidwhisper.training.run import Run
from kidwhisper.training.schedule import build_optimizer

from .conftest import QUICKSTART, REPO, check_model_card, state_copy, train_steps

ALL_LINEAR = "[q_proj,k_proj,v_proj,out_proj,fc1,fc2]"


def _overrides(root: Path, *extra: str) -> list[str]:
    """A short real run (as tests/reliability's quickstart_config): random tiny, shipped clips."""
    return [
        "model.variant=tiny", "model.pretrained=random",
        f"data.train=[{QUICKSTART / 'train.jsonl'}]", "data.eval=null", "data.num_workers=0",
        "training.batch_size=4", "training.gradient_accumulation_steps=1",
        "training.max_steps=4", "training.warmup_steps=0", "training.lr=1e-3",
        "training.gradient_checkpointing=false", "evaluation.before_training=false",
        f"output.checkpoints_dir={root / 'ckpt'}",
        f"output.experiments_dir={root / 'exp'}", "output.name=run", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """Three LoRA steps (rank 4 on q, v and fc1, dropout on) with a checkpoint after two."""
    root = tmp_path_factory.mktemp("lora")
    config = load_config(
        None, _overrides(root, "model.lora.rank=4", "model.lora.target_modules=[q_proj,v_proj,fc1]")
    )
    run = Run(config)
    start = state_copy(run.model)
    batches = train_steps(run, 2)
    run.save(None)
    at_save = state_copy(run.model)
    train_steps(run, 1, batches)
    return {
        "config": config,
        "run": run,
        "start": start,
        "at_save": at_save,
        "step": root / "ckpt" / "run" / "step_0000002",
    }


@pytest.fixture(scope="module")
def real_batch(real_manifest: Path, random_tiny) -> dict:
    """Log-mel features (Whisper's 30 s window) and decoder inputs of two real clips."""
    wm = random_tiny
    dataset = SpeechDataset(
        read_manifest(real_manifest)[:2], wm.n_mels, wm.tokenizer, wm.special, context="full"
    )
    return WhisperCollator(wm.special)([dataset[i] for i in range(2)])


EPS = torch.finfo(torch.float32).eps


def _assert_close_to_scale(got: torch.Tensor, expected: torch.Tensor, ulps: int) -> None:
    """Equal up to `ulps` float32 roundings of the expected tensor's scale. The same model
    computed in another order (merged W + BA against W x + B A x; two merges of one
    adapter) differs by float32 rounding of its sums, about sqrt(width) * eps of the
    largest value, on any CPU; a wrong merge (a missing alpha / rank scale) is off by
    whole units. A bare atol would only hold the pattern of the CPU it was tuned on."""
    atol = ulps * EPS * float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits


def test_lora_trains_only_the_adapters(lora_run):
    start, end, run = lora_run["start"], state_copy(lora_run["run"].model), lora_run["run"]
    adapters = [k for k in start if lora_module.is_adapter_key(k)]
    # 4 encoder layers x (q, v, fc1) + 4 decoder layers x (q, v twice, fc1), A and B each
    assert len(adapters) == 2 * (4 * 3 + 4 * 5)
    for key in start:
        if key in adapters:
            assert not torch.equal(start[key], end[key]), key
        else:
            assert torch.equal(start[key], end[key]), key
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == run.state.trainable_params
    in_optimizer = [p for g in run.optimizer.param_groups for p in g["params"]]
    assert len(in_optimizer) == len(adapters) and all(p.requires_grad for p in in_optimizer)
    assert set(run.optimizer.state) == set(in_optimizer)  # moments of the adapters only


def test_a_lora_checkpoint_is_a_plain_merged_model_plus_the_adapter(lora_run, real_batch):
    step = lora_run["step"]
    state = checkpoint_state(step)
    at_save = lora_run["at_save"]
    assert state.keys() == at_save.keys() - {"proj_out.weight"}  # the tied layer saved once
    assert all(torch.equal(state[k], at_save[k]) for k in state)  # exactly what was trained
    plain, info = WhisperForConditionalGeneration.from_pretrained(
        step / "model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any(
        "lora" in k or "base_layer" in k for k in load_file(step / "model" / "model.safetensors")
    )
    # The PEFT model (adapters unmerged) as it was at the checkpoint: the merged logits match.
    peft_model = copy.deepcopy(lora_run["run"].model)
    peft_model.load_state_dict(at_save)
    unmerged = _logits(peft_model, real_batch)
    _assert_close_to_scale(_logits(plain, real_batch), unmerged, ulps=64)  # widths to 1536
    # And plain PEFT loads the adapter folder onto the base it was trained from.
    from peft import PeftModel

    base = WhisperModel("tiny", pretrained="random").load().model
    assert all(
        torch.equal(base.state_dict()[k], v)
        for k, v in load_file(step / "adapter" / lora_module.BASE_LAYERS).items()
    )
    through_peft = PeftModel.from_pretrained(base, step / "adapter")
    _assert_close_to_scale(_logits(through_peft, real_batch), unmerged, ulps=16)


def test_merge_lora_writes_a_model_plain_transformers_and_kidwhisper_load(
    lora_run, tmp_path, real_batch
):
    step = lora_run["step"]
    assert main(["merge-lora", str(step), "--out", str(tmp_path / "merged")]) == 0
    merged, info = WhisperForConditionalGeneration.from_pretrained(
        tmp_path / "merged", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    reference = WhisperForConditionalGeneration.from_pretrained(step / "model")
    _assert_close_to_scale(_logits(merged, real_batch), _logits(reference, real_batch), ulps=16)
    wm = load_model(str(tmp_path / "merged"))
    assert wm.variant.name == "tiny" and wm.audio_context == "batch"
    assert (tmp_path / "merged" / "kidwhisper.yaml").is_file()
    assert "`kidwhisper merge-lora`" in check_model_card(tmp_path / "merged").text

    # A PEFT adapter folder without kidwhisper's extras: its base comes from --base.
    peft_dir, base_dir = tmp_path / "peft_adapter", tmp_path / "base"
    peft_dir.mkdir()
    for name in (lora_module.ADAPTER_CONFIG, lora_module.ADAPTER_WEIGHTS):
        shutil.copy(step / "adapter" / name, peft_dir / name)
    WhisperModel("tiny", pretrained="random").load().save(base_dir)
    args = ["merge-lora", str(peft_dir), "--out", str(tmp_path / "from_peft")]
    assert main([*args, "--base", str(base_dir)]) == 0
    again = WhisperForConditionalGeneration.from_pretrained(tmp_path / "from_peft")
    _assert_close_to_scale(_logits(again, real_batch), _logits(reference, real_batch), ulps=16)
    assert main(args) == 2  # its config names `random`, which is not a loadable base
    assert main([*args[:3], str(tmp_path / "x"), "--base", str(base_dir)]) == 0
    assert main(["merge-lora", str(step), "--out", str(tmp_path / "y"), "--base", "z"]) == 2


def test_average_merges_adapters_first(lora_run, tmp_path):
    step = lora_run["step"]
    peft_dir = tmp_path / "peft_adapter"
    shutil.copytree(step / "adapter", peft_dir)
    (peft_dir / lora_module.BASE_LAYERS).unlink()
    base_dir = WhisperModel("tiny", pretrained="random").load().save(tmp_path / "base")
    config = json.loads((peft_dir / lora_module.ADAPTER_CONFIG).read_text())
    config["base_model_name_or_path"] = str(base_dir)
    (peft_dir / lora_module.ADAPTER_CONFIG).write_text(json.dumps(config))
    # A LoRA checkpoint (its model/ is merged) and the same adapter on its own base.
    out = average_checkpoints([step, peft_dir], tmp_path / "soup")
    soup, merged = (
        load_file(out / "model.safetensors"),
        load_file(step / "model" / "model.safetensors"),
    )
    assert soup.keys() == merged.keys()
    for key in merged:
        _assert_close_to_scale(soup[key], merged[key], ulps=4)  # a mean of two merges
    record = json.loads((out / "averaged_from.json").read_text())
    assert record["sources"] == [str(step / "model"), str(peft_dir)]


def test_resume_from_a_lora_checkpoint_continues_exactly(lora_run):
    run = Run(lora_run["config"])
    assert run.resume() and run.state.step == 2
    assert run.state.trainable_params == lora_run["run"].state.trainable_params
    train_steps(run, 1)
    after = state_copy(run.model)
    expected = state_copy(lora_run["run"].model)  # the uninterrupted run's third step
    assert after.keys() == expected.keys()
    assert all(torch.equal(after[k], expected[k]) for k in expected)


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_a_frozen_part_stays_bit_identical_while_the_other_trains(part, tmp_path):
    other = "decoder" if part == "encoder" else "encoder"
    run = Run(load_config(None, _overrides(tmp_path, f"training.freeze={part}")))
    start = state_copy(run.model)
    train_steps(run, 1)  # AdamW's first step moves every weight that has a gradient
    end = state_copy(run.model)
    trainable = {n for n, p in run.model.named_parameters() if p.requires_grad}
    for key in start:
        if key.startswith(f"model.{part}.") or (part == "decoder" and key == "proj_out.weight"):
            assert torch.equal(start[key], end[key]), key  # the output layer is the embedding
        elif key in trainable:
            assert key.startswith(f"model.{other}.") or key == "proj_out.weight"
            assert not torch.equal(start[key], end[key]), key
    frozen_positions = {"model.encoder.embed_positions.weight"}  # transformers never trains it
    assert (
        trainable
        == {n for n, _ in run.model.named_parameters() if n.startswith(f"model.{other}.")}
        - frozen_positions
    )
    assert run.state.trainable_params == sum(
        p.numel() for n, p in run.model.named_parameters() if n in trainable
    )


def test_frozen_lower_encoder_layers_get_no_gradient_and_stay_as_they_start(tmp_path):
    run = Run(load_config(None, _overrides(tmp_path, "training.freeze_encoder_layers=2")))
    start = state_copy(run.model)
    batches = train_steps(run, 1)
    frozen = ("model.encoder.conv1.", "model.encoder.conv2.", "model.encoder.layers.0.",
              "model.encoder.layers.1.", "model.encoder.embed_positions.")  # fmt: skip
    named = dict(run.model.named_parameters())
    # No gradient is even computed below block 2: the backward pass stops there.
    summed_loss(run.model, next(batches), run.device, None, run.state.step, 0.0)[0].backward()
    end = state_copy(run.model)
    for name, param in named.items():
        if name.startswith(frozen):
            assert torch.equal(start[name], end[name]) and param.grad is None, name
        else:  # tiny has 4 blocks: 2 and 3, the last layer norm and the decoder train
            assert not torch.equal(start[name], end[name]), name
            assert param.grad is not None, name
    assert run.state.trainable_params == sum(
        p.numel() for n, p in named.items() if not n.startswith(frozen)
    )


def test_encoder_and_decoder_learning_rates_are_parameter_groups(random_tiny):
    model = random_tiny.model
    named = dict(model.named_parameters())
    optimizer = build_optimizer(model, 1e-5, 0.01, encoder_lr=1e-4)
    groups = {(g["name"], g["weight_decay"] > 0): g for g in optimizer.param_groups}
    assert set(groups) == {
        ("encoder", True),
        ("encoder", False),
        ("decoder", True),
        ("decoder", False),
    }
    ids = {id(p): n for n, p in named.items()}
    for (part, decay), group in groups.items():
        assert group["lr"] == (1e-4 if part == "encoder" else 1e-5)
        assert group["weight_decay"] == (0.01 if decay else 0.0)
        for p in group["params"]:
            assert ids[id(p)].startswith("model.encoder.") == (part == "encoder")
            assert (p.ndim >= 2) == decay
    listed = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(listed) == sorted(id(p) for p in named.values() if p.requires_grad)
    assert "proj_out.weight" not in named  # tied: listed once, as the decoder's embedding
    both = build_optimizer(model, 1e-5, 0.0, encoder_lr=3e-5, decoder_lr=2e-4)
    assert [g["lr"] for g in both.param_groups] == [3e-5, 3e-5, 2e-4, 2e-4]
    # The schedule scales each group by the same factor.
    scheduler = torch.optim.lr_scheduler.LambdaLR(both, lambda step: 0.5)
    assert scheduler.get_last_lr() == [1.5e-5, 1.5e-5, 1e-4, 1e-4]
    plain = build_optimizer(model, 1e-5, 0.0)  # unchanged without them: decay, no decay
    assert len(plain.param_groups) == 2 and "name" not in plain.param_groups[0]


def test_the_optimizer_is_fused_adamw_on_cpu():
    """On CPU (and CUDA) the update is torch's fused kernel: the same AdamW as the default."""
    fused_layer, layer = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    fixed = {"weight": torch.linspace(-1.0, 1.0, 12).reshape(3, 4), "bias": torch.ones(3)}
    fused_layer.load_state_dict(fixed)  # fixed values: the same figures in any test order
    layer.load_state_dict(fixed)
    fused = build_optimizer(fused_layer, 1e-2, 0.1)
    assert fused.defaults["fused"] is True
    groups = [{"params": [layer.weight], "weight_decay": 0.1}, {"params": [layer.bias]}]
    reference = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.0, fused=False)
    x = torch.arange(8.0).reshape(2, 4)
    for _ in range(3):
        for net, opt in ((fused_layer, fused), (layer, reference)):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()
    # float32 rounding only: each step moves a weight by about lr = 1e-2.
    torch.testing.assert_close(fused_layer.weight, layer.weight, rtol=0, atol=1e-6)
    assert (fused_layer.weight - fixed["weight"]).abs().min() > 1e-3  # and both did move


@pytest.fixture(scope="module")
def tiny_en_arch():
    """tiny.en's architecture (parameter counts do not depend on the weights)."""
    return WhisperModel("tiny.en", pretrained="random").load().model


@pytest.mark.parametrize(
    ("rank", "modules", "freeze", "expected"),
    [
        (8, "[q_proj,v_proj]", "none", 147_456),
        (16, "[q_proj,v_proj]", "none", 294_912),
        (8, ALL_LINEAR, "none", 540_672),
        (16, ALL_LINEAR, "none", 1_081_344),
        (8, "[q_proj,v_proj]", "encoder", 98_304),  # decoder only: self- and cross-attention
        (0, "[q_proj]", "encoder", None),
    ],
)
def test_trainable_parameter_counts(tiny_en_arch, rank, modules, freeze, expected):
    model = copy.deepcopy(tiny_en_arch)
    total_before = sum(p.numel() for p in model.parameters())
    config = load_config(
        None,
        [
            "model.variant=tiny.en",
            "model.pretrained=random",
            f"model.lora.rank={rank}",
            f"model.lora.target_modules={modules}",
            f"training.freeze={freeze}",
        ],
    )
    trainable, total = lora_module.prepare(model, config)
    if expected is None:  # no LoRA, encoder frozen: the decoder's weights train
        decoder = sum(
            p.numel() for n, p in model.named_parameters() if n.startswith("model.decoder.")
        )
        assert (trainable, total) == (decoder, total_before)
        return
    assert (trainable, total) == (expected, total_before + expected)
    # r x (in + out) for every adapted linear layer
    adapted = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert expected == sum(rank * (m.in_features + m.out_features) for m in adapted)


def test_an_experiment_records_parameter_counts_and_writes_a_plain_final_model(tmp_path):
    from kidwhisper.training.experiments import run_experiment
    from kidwhisper.training.workflow import collect_results, results_table

    extra = [
        f"data.eval={QUICKSTART / 'dev.jsonl'}",
        "data.max_eval_samples=2",
        "evaluation.max_new_tokens=4",
        "model.lora.rank=8",
        "training.max_steps=1",
    ]
    metrics = run_experiment(load_config(None, _overrides(tmp_path, *extra)))
    assert metrics["eval_after"]["utterances"] == 2  # decoding with the adapters unmerged
    assert metrics["trainable_params"] == 8 * (384 + 384) * (4 * 2 + 4 * 4)
    assert metrics["total_params"] == 37_760_640 + metrics["trainable_params"]  # tiny + adapters
    saved = json.loads((tmp_path / "exp" / "run" / "metrics.json").read_text())
    assert saved["trainable_params"] == metrics["trainable_params"]
    results = (tmp_path / "exp" / "run" / "results.md").read_text()
    assert (
        "- Trainable parameters: 0.15M of 37.9M (0.39%); LoRA rank 8, alpha 32 on q_proj, v_proj"
        in results
    )
    assert "0.15M of 37.9M (0.39%) |" in results_table(collect_results(tmp_path / "exp"))
    final = Path(metrics["model_dir"])
    assert not (final / lora_module.ADAPTER_DIR).exists()
    _, info = WhisperForConditionalGeneration.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert load_model(str(final)).variant.name == "tiny"


def test_config_errors_name_the_key():
    base = ["model.variant=tiny", "model.pretrained=random"]
    with pytest.raises(
        ConfigError,
        match=r"model\.lora\.target_modules\[1\]: 'v_prj' is not one of "
        r"Whisper's linear layers .*\(did you mean 'v_proj'\?\)",
    ):
        load_config(None, [*base, "model.lora.target_modules=[q_proj,v_prj]"])
    with pytest.raises(ConfigError, match=r"model\.lora\.rank: must be >= 0, got -1"):
        load_config(None, [*base, "model.lora.rank=-1"])
    with pytest.raises(
        ConfigError, match=r"model\.lora\.rnak: unknown key \(did you mean 'rank'\?\)"
    ):
        load_config(None, [*base, "model.lora.rnak=8"])
    with pytest.raises(ConfigError, match=r"model\.lora\.target_modules: empty"):
        load_config(None, [*base, "model.lora.rank=8", "model.lora.target_modules=[]"])
    with pytest.raises(ConfigError, match=r"training\.freeze: .*\(did you mean 'encoder'\?\)"):
        load_config(None, [*base, "training.freeze=encodr"])
    with pytest.raises(
        ConfigError, match=r"training\.encoder_lr: set, but training\.freeze is 'encoder'"
    ):
        load_config(None, [*base, "training.freeze=encoder", "training.encoder_lr=1e-4"])
    with pytest.raises(
        ConfigError, match=r"training\.freeze_encoder_layers: 5, but tiny has 4 encoder layers"
    ):
        load_config(None, [*base, "training.freeze_encoder_layers=5"])
    for clash in ("training.freeze=encoder", "model.lora.rank=8"):
        with pytest.raises(ConfigError, match=r"training\.freeze_encoder_layers: 1, but "):
            load_config(None, [*base, "training.freeze_encoder_layers=1", clash])
    with pytest.raises(ConfigError, match=r"training\.freeze_encoder_layers: must be >= 0"):
        load_config(None, [*base, "training.freeze_encoder_layers=-1"])
    with pytest.raises(ConfigError, match=r"training\.decoder_lr: must be > 0"):
        load_config(None, [*base, "training.decoder_lr=0"])
    config = load_config(None, [*base, "model.lora.rank=8", "training.decoder_lr=1e-4"])
    assert config.model.lora.target_modules == ["q_proj", "v_proj"] and config.training.lr == 1e-5


@pytest.mark.slow
def test_lora_under_ddp_and_fsdp_matches_one_process(tmp_path):
    """2 CPU processes (gloo) x batch 2 against 1 x batch 4: the same adapters and merge."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [*_overrides(tmp_path)[:-1], "model.lora.rank=4", "model.lora.dropout=0",
            "data.max_train_samples=8", "training.max_steps=2"]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for name, launch, extra in [
        ("one", [sys.executable], []),
        ("ddp", torchrun, ["training.batch_size=2"]),
        ("fsdp", torchrun, ["training.batch_size=2", "training.strategy=fsdp"]),
    ]:
        args = ["-m", "kidwhisper", "train", str(REPO / "configs" / "quickstart.yaml"), *base]
        cmd = [*launch, *args, *extra, f"output.name={name}"]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{name}: {done.stderr[-6000:]}"
    step = {n: checkpoint_state(tmp_path / "ckpt" / n / "step_0000002")
            for n in ("one", "ddp", "fsdp")}  # fmt: skip
    # Not bit for bit, nor to a bare atol: two processes' all-reduce sums the gradients in
    # another order than one process's batch (as AVX2 and AVX-512 kernels do), and Adam
    # turns a last-bit change of a gradient that is a near-cancelling sum (|g| near its
    # eps) into a step of up to lr. Each run moves a weight by at most about lr per step
    # (Adam's bound), so every weight is within 2 * max_steps * lr of the one-process run's,
    # and each tensor within 1e-3 of its norm: a few such weights
    # move the norm by far less, a wrong split of the data (or an update missed on one
    # rank) by the whole update, which after 2 steps at lr 1e-3 is ~1e-2 of lora_A's norm
    # and all of lora_B's (it starts at zero).
    bound = 2 * 2 * 1e-3  # 2 * training.max_steps * training.lr (see _overrides)
    for name in ("ddp", "fsdp"):
        assert step[name].keys() == step["one"].keys()
        for key, tensor in step["one"].items():
            diff = (step[name][key] - tensor).double()
            assert diff.abs().max() <= bound, (name, key)
            assert diff.norm() <= 1e-3 * tensor.double().norm(), (name, key)
        final = load_file(tmp_path / "ckpt" / name / "final" / "model.safetensors")
        assert not any(lora_module.is_adapter_key(k) or "base_layer" in k for k in final)
