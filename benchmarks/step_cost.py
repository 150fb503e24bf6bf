"""What a training step costs with the lower encoder frozen, compiled or in bf16, one table.

`training.freeze_encoder_layers: N` keeps the encoder's convolution stem and its first N
blocks as they start, so autograd stops above them and the backward pass skips them. This
times full training steps (forward, backward, clipping, the fused AdamW update) of a
random-initialised model of the real architecture on synthetic batches shaped like
so762's length-grouped ones: 8 clips of 400 to 700 mel frames (4 to 7 s), 14 label
tokens. One model per row, their steps taken in turn, so a busy spell hits every row
alike; the first `--warmup` steps of each are untimed. With `--compile`, a row whose
encoder and decoder blocks are each `torch.compile`d (dynamic shapes) joins, everything
training; with `--bf16`, a row under bf16 autocast (`training.precision: bf16`: fast on a
CPU with AVX512-BF16 or AMX, emulated and slow elsewhere). Torch runs on one thread, as each
of two runs sharing a 2-core machine does; CPU time (this process's) is shown beside wall
time, since it holds on a busy machine.

    python benchmarks/step_cost.py                       # base, 12 timed steps a row
    python benchmarks/step_cost.py --compile             # and a compiled row (minutes more)
    python benchmarks/step_cost.py --frozen "" --bf16    # fp32 against bf16 autocast
    python benchmarks/step_cost.py --variant tiny --steps 2 --warmup 1     # dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from kidwhisper.device import cpu_has_native_bf16
from kidwhisper.models.adapters import freeze_encoder_layers
from kidwhisper.models.factory import WhisperModel
from kidwhisper.training.objective import summed_loss
from kidwhisper.training.schedule import build_optimizer

FRAMES = (400, 500, 600, 700)
CPU = torch.device("cpu")


def build_rows(
    variant: str, frozen: list[int], compiled: bool, bf16: bool = False
) -> dict[str, tuple]:
    """Row name -> (model, optimizer, autocast dtype), every model from the same random start."""
    rows = {}
    settings = [("everything trains", None, False, None)]
    settings += [(_frozen_name(n), n, False, None) for n in frozen]
    settings += [("everything trains, blocks compiled", None, True, None)] if compiled else []
    settings += [("everything trains, bf16 autocast", None, False, torch.bfloat16)] if bf16 else []
    for name, n, compile_blocks, amp in settings:
        torch.manual_seed(0)
        model = WhisperModel(variant, pretrained="random").load().model
        model.config.use_cache = False
        if n is not None:
            freeze_encoder_layers(model, n)
        if compile_blocks:
            for block in [*model.model.encoder.layers, *model.model.decoder.layers]:
                block.compile(dynamic=True)
        model.train()
        rows[name] = (model, build_optimizer(model, 3e-5, 0.0), amp)
    return rows


def _frozen_name(n: int) -> str:
    return "stem frozen" if n == 0 else f"stem + {n} blocks frozen"


def batch(step: int, size: int, n_mels: int, tokens: int) -> dict:
    generator = torch.Generator().manual_seed(step)
    ids = torch.randint(0, 50000, (size, tokens + 1), generator=generator)
    return {
        "input_features": torch.randn(
            size, n_mels, FRAMES[step % len(FRAMES)], generator=generator
        ),
        "decoder_input_ids": ids[:, :-1],
        "labels": ids[:, 1:],
    }


def one_step(model, optimizer, data: dict, amp: torch.dtype | None) -> tuple[float, float]:
    """(wall, CPU) seconds of one optimisation step, the forward under autocast to `amp`."""
    start, cpu = time.perf_counter(), time.process_time()
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        loss = summed_loss(model, data, CPU, None, 0, 0.0)[0]
    (loss / int(data["labels"].numel())).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="base")
    parser.add_argument("--frozen", default="0,2,3", help="blocks frozen with the stem, per row")
    parser.add_argument("--compile", action="store_true", help="add a compiled row")
    parser.add_argument("--bf16", action="store_true", help="add a bf16 autocast row")
    parser.add_argument("--steps", type=int, default=12, help="timed steps a row")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps a row first")
    parser.add_argument("--batch", type=int, default=8, help="clips a batch")
    parser.add_argument("--tokens", type=int, default=14, help="label tokens a clip")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    frozen = [int(n) for n in args.frozen.split(",") if n]
    rows = build_rows(args.variant, frozen, args.compile, args.bf16)
    n_mels = next(iter(rows.values()))[0].config.num_mel_bins
    times = {name: [0.0, 0.0] for name in rows}
    for step in range(args.warmup + args.steps):
        data = batch(step, args.batch, n_mels, args.tokens)
        for name, (model, optimizer, amp) in rows.items():
            wall, cpu = one_step(model, optimizer, data, amp)
            if step >= args.warmup:
                times[name][0] += wall
                times[name][1] += cpu
    base_cpu = times["everything trains"][1]
    results = [
        {"row": name, "wall_s": wall, "cpu_s": cpu, "speedup": base_cpu / cpu}
        for name, (wall, cpu) in times.items()
    ]
    machine = platform.processor() or platform.machine()
    print(f"\n{args.variant}, {args.steps} steps a row after {args.warmup} untimed, "
          f"{args.batch} clips of {FRAMES[0]} to {FRAMES[-1]} frames, {args.tokens} tokens, "
          f"torch {torch.__version__} on 1 thread, {machine}, "
          f"native bf16: {'yes' if cpu_has_native_bf16() else 'no'}\n")  # fmt: skip
    print("| row | CPU s | wall s | speed-up (CPU) |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['row']} | {r['cpu_s']:.1f} | {r['wall_s']:.1f} | {r['speedup']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
