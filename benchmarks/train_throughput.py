"""Training throughput: kidwhisper vs the plain transformers Whisper recipe, one table.

Both sides fine-tune the bundled tiny.en on the same clips (so762 train) for the same epochs,
batch size and learning rate, seeded, in this one process, then decode so762 dev with
kidwhisper's evaluation. The plain side is the Hugging Face guide "Fine-Tune Whisper For
Multilingual ASR with Transformers": a `Seq2SeqTrainer` fed every clip padded to 30 s by
its `DataCollatorSpeechSeq2SeqWithPadding`; its model is decoded with 30 s input, as it was
trained. kidwhisper trains on length-grouped batches (`training.batch_seconds`) with the
encoder cut to the batch's longest clip (`model.audio_context: batch`).

Throughput is audio seconds per wall second: the clips' total duration x epochs over the
time of the training loop alone (no model loading, saving or evaluation).

    python benchmarks/train_throughput.py                          # so762, 2 epochs, batch 8
    python benchmarks/train_throughput.py --limit 16 --eval-limit 8 --epochs 1   # dry run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch.utils.data import Dataset
from transformers import (
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from kidwhisper.config import EvaluationConfig, load_config
from kidwhisper.data.audio import SAMPLE_RATE, load_audio
from kidwhisper.data.dataset import Utterance, clip_seconds, read_manifest
from kidwhisper.inference.evaluation import decoding_options, evaluate
from kidwhisper.models.ct2 import bundled_path
from kidwhisper.models.factory import load_model

REPO = Path(__file__).resolve().parents[1]
SO762 = REPO.parent / "shared/data/so762-kids"
WARMUP = 20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=Path, default=SO762 / "train.jsonl")
    p.add_argument("--dev", type=Path, default=SO762 / "dev.jsonl")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--limit", type=int, help="first N train clips (dry runs)")
    p.add_argument("--eval-limit", type=int, help="first M dev clips (dry runs)")
    p.add_argument("--kidwhisper-batch-seconds", type=float, default=64.0)
    p.add_argument("--kidwhisper-max-batch", type=int, default=32, help="clips per batch")
    p.add_argument("--out-dir", type=Path, help="models and logs (default: a temp dir)")
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument("--skip-kidwhisper", action="store_true")
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").is_file():
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [ln for ln in lines if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


# --- the plain transformers recipe (the Hugging Face fine-tuning guide) ---------------------


class PlainDataset(Dataset):
    """The guide's `prepare_dataset`: 30 s log-mel features and tokenizer ids per clip."""

    def __init__(self, clips: list[Utterance], processor: WhisperProcessor) -> None:
        self.clips, self.processor = clips, processor

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> dict:
        audio = load_audio(self.clips[i].audio)
        fe, tok = self.processor.feature_extractor, self.processor.tokenizer
        features = fe(audio, sampling_rate=SAMPLE_RATE).input_features[0]
        return {"input_features": features, "labels": tok(self.clips[i].text).input_ids}


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """The guide's collator, verbatim: pad features and labels, -100 on label padding."""

    processor: Any
    decoder_start_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_features = [{"input_features": f["input_features"]} for f in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")
        label_features = [{"input_ids": f["labels"]} for f in features]
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def train_plain(
    args: argparse.Namespace,
    clips: list[Utterance],
    out: Path,
    variant: str = "tiny.en",
    save_epochs: bool = False,
) -> dict:
    """The guide's recipe on the bundled `variant` (tiny.en or base); also
    benchmarks/accuracy.py's plain side. With `save_epochs`, the Trainer checkpoints every
    epoch (the caller scores each), and a stopped run resumes from its last one."""
    source = bundled_path(variant)
    processor = WhisperProcessor.from_pretrained(source)
    if processor.tokenizer.pad_token is None:  # openai/whisper-* tokenizers pad with EOT
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    transformers.set_seed(0)
    model = WhisperForConditionalGeneration.from_pretrained(source)
    if model.config.vocab_size >= 51865:  # multilingual: pin language and task, as the guide
        processor.tokenizer.set_prefix_tokens(language="english", task="transcribe")
        model.generation_config.language, model.generation_config.task = "english", "transcribe"
    model.generation_config.forced_decoder_ids = None
    model.config.use_cache = False
    training_args = Seq2SeqTrainingArguments(
        output_dir=str(out / "plain-trainer"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        warmup_steps=WARMUP,
        num_train_epochs=args.epochs,
        gradient_checkpointing=False,
        fp16=torch.cuda.is_available(),  # the guide's fp16 needs a GPU
        report_to=[],
        save_strategy="epoch" if save_epochs else "no",
        eval_strategy="no",
        logging_steps=10,
        dataloader_num_workers=1,
        dataloader_pin_memory=torch.cuda.is_available(),  # only a warning on a CPU
        seed=0,
        remove_unused_columns=False,
    )
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=PlainDataset(clips, processor),
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(
            processor, model.config.decoder_start_token_id
        ),
        processing_class=processor,
    )
    resume = save_epochs and any(Path(training_args.output_dir).glob("checkpoint-*"))
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=True if resume else None)
    seconds = time.perf_counter() - start
    folder = out / "plain-model"
    trainer.save_model(str(folder))
    processor.save_pretrained(str(folder))  # tokenizer + feature extractor
    epochs = {}
    for checkpoint in Path(training_args.output_dir).glob("checkpoint-*") if save_epochs else ():
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        processor.save_pretrained(str(checkpoint))  # so it loads as a model folder
        epochs[round(state["epoch"])] = checkpoint
    return {
        "steps": trainer.state.global_step,
        "train_seconds": seconds,  # this process's share when it resumed
        "resumed": resume,
        "folder": folder,
        "epoch_checkpoints": dict(sorted(epochs.items())),
    }


# --- kidwhisper ----------------------------------------------------------------------------


def train_kidwhisper(args: argparse.Namespace, clips: int, out: Path) -> dict:
    from kidwhisper.training.loop import train

    max_batch = min(args.kidwhisper_max_batch, clips)  # its sampler wants one full batch
    overrides = [
        "model.variant=tiny.en", "model.pretrained=bundled:tiny.en", "model.audio_context=batch",
        f"data.train={json.dumps([str(args.train)])}", "data.eval=null",
        f"data.max_train_samples={json.dumps(args.limit)}", "data.num_workers=1",
        f"training.batch_size={max_batch}",
        f"training.batch_seconds={args.kidwhisper_batch_seconds}",
        "training.gradient_accumulation_steps=1", f"training.lr={args.lr}",
        f"training.epochs={args.epochs}", f"training.warmup_steps={WARMUP}",
        "training.gradient_checkpointing=false", "training.seed=0",
        "evaluation.before_training=false", "output.name=kidwhisper",
        f"output.experiments_dir={out / 'kidwhisper-experiments'}",
        f"output.checkpoints_dir={out / 'kidwhisper-checkpoints'}",
    ]  # fmt: skip
    wm, state = train(load_config(None, overrides))
    folder = wm.save(out / "kidwhisper-model")
    return {
        "steps": state.step,
        "train_seconds": state.train_seconds,
        "audio_seconds_consumed": state.audio_seconds,
        "folder": folder,
    }


# --- comparison ----------------------------------------------------------------------------


def dev_wer(folder: Path, dev: list[Utterance], audio_context: str | None) -> float:
    """kidwhisper's evaluation; `audio_context` None keeps what the model recorded."""
    wm = load_model(str(folder), audio_context=audio_context)
    return evaluate(wm, dev, 16, decoding_options(EvaluationConfig()), progress=False).wer


def markdown(rows: list[dict]) -> str:
    lines = [
        "| side | epochs | optimizer steps | train s | audio s / s | speed-up | dev WER |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(
            f"| {r['side']} | {r['epochs']:g} | {r['steps']} | {r['train_seconds']:.1f} "
            f"| {r['audio_per_second']:.2f} | {ratio} | {100 * r['wer']:.2f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="kidwhisper-throughput-"))
    out.mkdir(parents=True, exist_ok=True)
    clips = read_manifest(args.train)[: args.limit or None]
    dev = read_manifest(args.dev)[: args.eval_limit or None]
    audio = sum(clip_seconds(u) for u in clips) * args.epochs
    env = machine()
    print(
        f"machine: {env['cpu']}, {env['cores']} cores, {env['torch_threads']} torch threads; "
        f"torch {env['torch']}, transformers {env['transformers']}"
    )
    print(
        f"{len(clips)} train clips ({audio / args.epochs:.0f} s of audio) x {args.epochs:g} "
        f"epochs, batch {args.batch_size}, lr {args.lr:g}; {len(dev)} dev clips; out {out}"
    )
    runs = []
    if not args.skip_plain:
        runs.append(("plain", train_plain(args, clips, out), "full"))
    if not args.skip_kidwhisper:
        runs.append(("kidwhisper", train_kidwhisper(args, len(clips), out), None))
    rows = [
        {
            "side": side,
            "epochs": args.epochs,
            **{k: v for k, v in fig.items() if k != "folder"},
            "audio_per_second": audio / fig["train_seconds"],
            "wer": dev_wer(fig["folder"], dev, context),
            "model": str(fig["folder"]),
        }
        for side, fig, context in runs
    ]
    plain = next((r["audio_per_second"] for r in rows if r["side"] == "plain"), None)
    for r in rows:  # kidwhisper / plain
        r["speedup"] = r["audio_per_second"] / plain if plain else None
    print()
    print(markdown(rows))
    print(
        f"\nStep counts differ: plain batches are {args.batch_size} clips each padded to 30 s; "
        f"kidwhisper's length-grouped batches hold up to {args.kidwhisper_max_batch} clips and "
        f"{args.kidwhisper_batch_seconds:g} s (clips x longest), so more short clips per step."
    )
    figures = {"machine": env, "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return figures


if __name__ == "__main__":
    main()
