"""GPU training and decoding throughput for the larger variants, one table.

Each variant is randomly initialised (the real architecture: speed does not depend on the
weights) and fed synthetic batches shaped like competition clips: `--clip-seconds` of audio
(the encoder sees that many frames under the `batch` audio context, 30 s under `full`) and
`--label-tokens` label tokens. Training runs kidwhisper's objective (teacher forcing, summed
cross-entropy, AdamW) under bf16 autocast; decoding runs kidwhisper's batched greedy decoder
for exactly `--label-tokens` new tokens per clip (the end token is made unreachable).

Model FLOPs utilisation counts 6 x parameters x positions per sample (2 forward, 4 backward:
encoder parameters x encoder positions + decoder parameters x label tokens; attention scores
are left out, as in the PaLM convention), divided by the GPU's dense bf16 peak.

    python benchmarks/gpu_bench.py                      # small and medium on the GPU
    python benchmarks/gpu_bench.py --dry-run            # tiny on the CPU, two steps (tests)
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from kidwhisper.data.audio import FRAMES_PER_SECOND, SAMPLE_RATE, clip_frames
from kidwhisper.device import pick_device
from kidwhisper.inference.decoding import DecodingOptions, greedy_decode
from kidwhisper.models.factory import WhisperModel
from kidwhisper.training.objective import summed_loss

COMPETITION_CLIPS = 214_000
PEAK_TFLOPS = {"A100": 312, "H100": 989, "H200": 989, "L4": 121, "A10": 125}  # dense bf16


def synthetic_batch(wm: WhisperModel, batch: int, frames: int, tokens: int, device) -> dict:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, wm.n_mels, frames, generator=generator)
    text = torch.randint(0, wm.special.eot, (batch, tokens), generator=generator)
    prefix = torch.tensor(wm.special.prefix).expand(batch, -1)
    sequence = torch.cat([prefix, text, torch.full((batch, 1), wm.special.eot)], dim=1)
    return {
        "input_features": features.to(device),
        "decoder_input_ids": sequence[:, :-1].to(device),
        "labels": sequence[:, 1:].to(device),
    }


def model_flops_per_sample(wm: WhisperModel, frames: int, tokens: int) -> float:
    encoder = sum(p.numel() for p in wm.model.get_encoder().parameters())
    decoder = sum(p.numel() for p in wm.model.get_decoder().parameters())
    return 6.0 * (encoder * frames / 2 + decoder * tokens)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(wm, batch: dict, steps: int, warmup: int, dtype, device) -> float:
    """Seconds per optimizer step, after `warmup` untimed steps."""
    model = wm.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    for step in range(warmup + steps):
        if step == warmup:
            sync(device)
            start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = summed_loss(model, batch, device)
        (loss / batch["labels"].numel()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_decoding(wm, batch: dict, tokens: int, seconds: float, dtype, device) -> float:
    """Clips per second of greedy decoding, `tokens` new tokens per clip."""
    model = wm.model.eval().to(dtype or torch.float32)
    model.get_decoder().embed_tokens.weight.data[wm.special.eot] = 0  # never the argmax
    options = DecodingOptions(tokens, max_tokens_per_second=None, repetition_limit=None)
    features = batch["input_features"]
    greedy_decode(model, features, wm.special, options)  # warm-up
    sync(device)
    start = time.perf_counter()
    out = greedy_decode(model, features, wm.special, options, [seconds] * len(features))
    sync(device)
    assert all(len(t) == tokens for t in out), "a clip ended early"
    return len(features) / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> list[dict]:
    device = pick_device(args.device)
    dtype = None if args.dtype == "fp32" else getattr(torch, {"bf16": "bfloat16"}[args.dtype])
    frames = clip_frames(args.audio_context, int(args.clip_seconds * SAMPLE_RATE))
    rows = []
    for variant in args.variants:
        wm = WhisperModel(variant, pretrained="random", audio_context=args.audio_context).load()
        wm.model.to(device)
        if args.gradient_checkpointing:
            wm.model.gradient_checkpointing_enable({"use_reentrant": False})
        wm.model.config.use_cache = False
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batch = synthetic_batch(wm, args.batch_size, frames, args.label_tokens, device)
        step = bench_training(wm, batch, args.steps, args.warmup, dtype, device)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0
        flops = model_flops_per_sample(wm, frames, args.label_tokens) * args.batch_size / step
        decode = batch | {"input_features": batch["input_features"][: args.decode_batch]}
        clips_per_s = bench_decoding(
            wm, decode, args.label_tokens, args.clip_seconds, dtype, device
        )
        rows.append(
            {
                "variant": variant,
                "samples_per_s": args.batch_size / step,
                "tokens_per_s": args.batch_size * args.label_tokens / step,
                "tflops": flops / 1e12,
                "mfu": flops / (args.peak_tflops * 1e12) if args.peak_tflops else None,
                "peak_gib": peak,
                "decode_clips_per_s": clips_per_s,
                "competition_minutes": COMPETITION_CLIPS / clips_per_s / 60,
            }
        )
        del wm, batch
    return rows


def print_table(rows: list[dict], args: argparse.Namespace, device: str) -> None:
    print(f"device: {device}; torch {torch.__version__}; {platform.processor() or 'cpu'}")
    frames = clip_frames(args.audio_context, int(args.clip_seconds * SAMPLE_RATE))
    print(
        f"batch {args.batch_size}, {args.clip_seconds:g} s clips -> {frames} mel frames "
        f"({frames / FRAMES_PER_SECOND:g} s, audio context {args.audio_context}), "
        f"{args.label_tokens} label tokens, {args.dtype}, gradient checkpointing "
        f"{'on' if args.gradient_checkpointing else 'off'}; decoding batch {args.decode_batch}"
    )
    print(
        "| variant | train samples/s | label tokens/s | model TFLOP/s | MFU | peak GiB "
        f"| decode clips/s | {COMPETITION_CLIPS:,} clips |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(
            f"| {r['variant']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} "
            f"| {r['tflops']:.2f} | {mfu} | {r['peak_gib']:.1f} | {r['decode_clips_per_s']:.1f} "
            f"| {r['competition_minutes']:.0f} min |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=["small", "medium"])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--decode-batch", type=int, default=64)
    p.add_argument("--clip-seconds", type=float, default=7.0, help="competition mean: 7 s")
    p.add_argument("--label-tokens", type=int, default=24)
    p.add_argument("--audio-context", default="batch", help="batch, full or seconds")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak (default: from the GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="tiny, 2 steps, CPU, fp32")
    args = p.parse_args(argv)
    if args.dry_run:
        args.variants, args.batch_size, args.decode_batch = ["tiny"], 2, 2
        args.steps, args.warmup, args.dtype, args.device = 2, 1, "fp32", "cpu"
        args.label_tokens = 4
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if args.peak_tflops is None:
        args.peak_tflops = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    rows = run(args)
    print_table(rows, args, name)
    return rows


if __name__ == "__main__":
    main()
