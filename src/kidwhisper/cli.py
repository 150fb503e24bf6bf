"""The `kidwhisper` command: train, evaluate, transcribe, score, ship, and experiments.

Every subcommand is a thin shell over a recipe; errors a user can fix (a bad config, a
missing file) are printed as one line naming the file and key, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from kidwhisper.analysis import ScoreInputError
from kidwhisper.audio import AudioError
from kidwhisper.config import ConfigError, EvaluationConfig, load_config
from kidwhisper.data import ManifestError
from kidwhisper.faults import Interrupted, TrainingError
from kidwhisper.models.averaging import AveragingError
from kidwhisper.models.export import ExportError
from kidwhisper.models.lora import LoraError
from kidwhisper.problems import BadDataError
from kidwhisper.submission.package import SubmissionError

USER_ERRORS = (
    ConfigError,
    ManifestError,
    AudioError,
    BadDataError,
    TrainingError,
    AveragingError,
    LoraError,
    ScoreInputError,
    ExportError,
    SubmissionError,
    FileNotFoundError,
    FileExistsError,
)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def cmd_train(args: argparse.Namespace) -> int:
    from kidwhisper.experiments import run_experiment

    config = load_config(args.config, args.overrides)
    metrics = run_experiment(config, overwrite=args.overwrite, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    before, after = metrics.get("eval_before"), metrics.get("eval_after")
    print(f"experiment: {config.output.experiments_dir}/{metrics['name']}")
    if before:
        print(f"zero-shot WER:  {_pct(before['wer'])}")
    if after:
        print(f"fine-tuned WER: {_pct(after['wer'])}  ({after['utterances']} utterances)")
        for bucket, wer in after["wer_by_age"].items():
            print(f"  age {bucket}: {_pct(wer)}")
    print(f"training data: {metrics['bad_data_summary']}")
    print(f"wall time: {metrics['wall_seconds']:.0f} s; model: {metrics['model_dir']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kidwhisper.data import read_manifest
    from kidwhisper.distributed import pick_device
    from kidwhisper.evaluation import decoding_options, evaluate, save_predictions
    from kidwhisper.models import load_model

    wm = load_model(args.model, args.variant, args.audio_context)
    wm.model.to(pick_device(args.device))
    utterances = read_manifest(args.data)[: args.limit or None]
    guards = {} if args.guards else {"max_tokens_per_second": None, "repetition_limit": None}
    ev = EvaluationConfig(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, **guards)
    result = evaluate(wm, utterances, ev.batch_size, decoding_options(ev))
    out = args.out or Path(args.data).with_suffix(".predictions.jsonl").name
    save_predictions(result, out)
    print(f"WER {_pct(result.wer)} on {len(utterances)} utterances ({result.seconds:.1f} s)")
    for bucket, report in result.by_age.items():
        print(f"  age {bucket}: {_pct(report.wer)} ({report.utterances} utterances)")
    if result.errors:
        print(f"{len(result.errors)} unreadable clip(s) scored as empty predictions")
    print(f"predictions: {out}")
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from kidwhisper.distributed import pick_device
    from kidwhisper.evaluation import decoding_options
    from kidwhisper.models import load_model
    from kidwhisper.transcription import InputError, output_format, transcribe_to_file

    try:
        fmt = output_format(args.out, args.format)  # before minutes of loading and decoding
        wm = load_model(args.model, audio_context=args.audio_context)
        wm.model.to(pick_device(args.device))
        guards = {} if args.guards else {"max_tokens_per_second": None, "repetition_limit": None}
        ev = EvaluationConfig(max_new_tokens=args.max_new_tokens, **guards)
        result = transcribe_to_file(
            wm,
            args.paths,
            args.out,
            fmt,
            batch_size=args.batch_size,
            options=decoding_options(ev),
            num_workers=args.num_workers,
        )
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(result.summary_lines()))
    print(f"transcripts: {args.out} ({fmt})")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from kidwhisper.analysis import analyse_files, id_list, summary_lines, write_report

    result = analyse_files(args.predictions, args.reference)
    print("\n".join(summary_lines(result, args.top)))
    if args.report:
        sources = (args.predictions, args.reference)
        report, chart = write_report(result, args.report, args.top, sources)
        print(f"report: {report}" + (f" (chart: {chart})" if chart else ""))
    if result.unknown_ids:
        print(
            f"error: {len(result.unknown_ids)} prediction id(s) not in {args.reference} were "
            f"not scored: {id_list(result.unknown_ids, args.top)}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_import_ct2(args: argparse.Namespace) -> int:
    from kidwhisper.models.ct2 import import_ct2

    model = import_ct2(Path(args.src), Path(args.out))
    print(f"wrote {args.out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params)")
    return 0


def cmd_export_ct2(args: argparse.Namespace) -> int:
    from kidwhisper.models.export import export_ct2

    out = export_ct2(args.model, Path(args.out), args.quantization, args.force)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} (CTranslate2, {args.quantization}, {size / 2**20:.1f} MiB)")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from kidwhisper.models.averaging import average_checkpoints

    out = average_checkpoints(args.checkpoints, Path(args.out), args.weights)
    print(f"averaged {len(args.checkpoints)} checkpoints into {out}")
    return 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from kidwhisper.models.lora import merge_lora

    print(f"merged into {merge_lora(args.checkpoint, Path(args.out), args.base)}")
    return 0


def cmd_new_experiment(args: argparse.Namespace) -> int:
    from kidwhisper.experiments import new_experiment

    folder = new_experiment(args.name, Path(args.root), args.source)
    module = None if folder.is_absolute() else ".".join(folder.parts)
    print(f"created {folder}/ (config.yaml, main.py)")
    if module:
        print(
            f"run it: python -m {module}.main   or   torchrun --nproc_per_node=2 -m {module}.main"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kidwhisper.experiments import collect_results, results_table, update_readme

    table = results_table(collect_results(Path(args.root)))
    update_readme(Path(args.readme), table)
    print(table)
    print(f"updated {args.readme}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from kidwhisper.experiments import archive

    print(f"archived to {archive(args.run, Path(args.checkpoints))}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from kidwhisper.models.memory import report_lines

    config = load_config(args.config, args.overrides, check_paths=False)
    print("\n".join(report_lines(config, args.tokens, args.device)))
    return 0


def cmd_package_submission(args: argparse.Namespace) -> int:
    from kidwhisper.submission.package import package_submission

    report = package_submission(
        args.model, args.out, args.audio_context, args.batch_size, variant=args.variant
    )
    print("\n".join(report.summary_lines()))
    return 0


def cmd_run_submission(args: argparse.Namespace) -> int:
    from kidwhisper.submission.runner import run_submission

    report = run_submission(args.zip, args.data, args.workdir, timeout=args.timeout)
    print("\n".join(report.summary_lines()))
    print(f"work folder: {report.workdir}")
    return 0 if report.valid else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kidwhisper", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune as a YAML config says")
    p.add_argument("config", help="YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.lr=2e-5")
    p.add_argument("--overwrite", action="store_true", help="replace an existing experiment")
    p.add_argument(
        "--resume",
        action="store_true",
        help="require a checkpoint to continue from (an unfinished run resumes anyway)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="greedy-decode a manifest and print the competition WER")
    p.add_argument("model", help="transformers folder, bundled:tiny.en, bundled:base or Hub id")
    p.add_argument("--data", required=True, help="competition-format jsonl with references")
    p.add_argument("--variant", help="model variant (read from the weights when unset)")
    p.add_argument("--batch-size", type=int, default=EvaluationConfig.batch_size)
    p.add_argument("--max-new-tokens", type=int, default=EvaluationConfig.max_new_tokens)
    p.add_argument(
        "--no-guards",
        dest="guards",
        action="store_false",
        help="no duration-based token limit and no repetition guard (plain greedy decoding)",
    )
    p.add_argument("--limit", type=int, help="only the first N utterances")
    p.add_argument(
        "--audio-context",
        help="encoder input: batch, full or seconds (default: what the model was trained "
        "with, else full)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="predictions jsonl (default: <data>.predictions.jsonl here)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("transcribe", help="transcribe audio files, folders or manifests")
    p.add_argument("model", help="transformers folder, bundled:tiny.en, bundled:base or Hub id")
    p.add_argument(
        "paths", nargs="+", help="audio files, folders (searched recursively) or jsonl manifests"
    )
    p.add_argument("--out", required=True, help="output file: .jsonl, .txt (id<TAB>text) or .srt")
    p.add_argument("--format", choices=["jsonl", "txt", "srt"], help="default: from --out")
    p.add_argument("--batch-size", type=int, default=EvaluationConfig.batch_size)
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=224,
        help="token limit per 30 s window (Whisper's own default is 224)",
    )
    p.add_argument(
        "--no-guards",
        dest="guards",
        action="store_false",
        help="no duration-based token limit and no repetition guard (plain greedy decoding)",
    )
    p.add_argument(
        "--audio-context",
        help="encoder input: batch, full or seconds (default: what the model was trained "
        "with, else full)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0, help="audio loading processes")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("score", help="WER of a predictions jsonl, with an error analysis")
    p.add_argument("predictions", help="jsonl with utterance_id and orthographic_text")
    p.add_argument("reference", help="competition-format jsonl (age_bucket, durations optional)")
    p.add_argument("--report", help="write a Markdown report here, and a PNG chart beside it")
    p.add_argument("--top", type=int, default=10, help="how many top errors and worst utterances")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("import-ct2", help="convert a CTranslate2 Whisper folder to transformers")
    p.add_argument("src", help="folder with model.bin, config.json, tokenizer.json")
    p.add_argument("out", help="output folder (safetensors)")
    p.set_defaults(func=cmd_import_ct2)

    p = sub.add_parser(
        "export-ct2", help="convert a transformers Whisper model to CTranslate2 (faster-whisper)"
    )
    p.add_argument("model", help="transformers folder, checkpoint, bundled:tiny.en or bundled:base")
    p.add_argument("out", help="output folder (model.bin, config.json, tokenizer.json, ...)")
    p.add_argument(
        "--quantization",
        choices=["int8", "float16", "float32"],
        default="float16",
        help="weight type stored in model.bin (default float16)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_export_ct2)

    p = sub.add_parser("average", help="average the weights of checkpoints (model soup)")
    p.add_argument(
        "checkpoints", nargs="+", help="model folders or checkpoints/<run>/step_N folders"
    )
    p.add_argument("--out", required=True, help="output model folder (transformers layout)")
    p.add_argument("--weights", type=float, nargs="+", help="one per checkpoint (default equal)")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("merge-lora", help="merge LoRA adapters into a plain transformers model")
    p.add_argument("checkpoint", help="a LoRA run's checkpoint (step_N) or a PEFT adapter folder")
    p.add_argument("--out", required=True, help="output model folder (transformers layout)")
    p.add_argument("--base", help="base of a PEFT adapter (default: its adapter_config.json's)")
    p.set_defaults(func=cmd_merge_lora)

    p = sub.add_parser("estimate", help="training memory per part, from the config's variant")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--tokens", type=int, default=64, help="label length (padded) per clip")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("new-experiment", help="create the next experiments/<name>_NNN folder")
    p.add_argument("name", help="kind of experiment, e.g. baseline or experiment")
    p.add_argument("--from", dest="source", help="an existing experiment or a config file")
    p.add_argument("--root", default="experiments")
    p.set_defaults(func=cmd_new_experiment)

    p = sub.add_parser("report", help="refresh the README's latest-results table")
    p.add_argument("--root", default="experiments")
    p.add_argument("--readme", default="README.md")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("archive", help="move checkpoints/<run> to checkpoints/archived/<run>")
    p.add_argument("run")
    p.add_argument("--checkpoints", default="checkpoints")
    p.set_defaults(func=cmd_archive)

    p = sub.add_parser(
        "package-submission", help="write a competition submission.zip (main.py, code, model)"
    )
    p.add_argument("model", help="transformers folder, checkpoint, bundled:tiny.en or Hub id")
    p.add_argument("--out", required=True, help="the zip to write, e.g. submission.zip")
    p.add_argument(
        "--audio-context",
        help="encoder input: batch, full or seconds (default: what the model was trained "
        "with, else full)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=EvaluationConfig.batch_size,
        help="clips per batch in the runtime (default: evaluate's, which gives evaluate's WER)",
    )
    p.add_argument("--variant", help="model variant (read from the weights when unset)")
    p.set_defaults(func=cmd_package_submission)

    p = sub.add_parser(
        "run-submission", help="run a submission.zip offline as the runtime would, and check it"
    )
    p.add_argument("zip", help="submission.zip")
    p.add_argument(
        "data",
        help="runtime data folder (utterance_metadata.jsonl, submission_format.jsonl, audio/) "
        "or a competition-format manifest jsonl (laid out, and scored if it has references)",
    )
    p.add_argument("--workdir", help="new or empty folder to run in (default: a temp folder)")
    p.add_argument("--timeout", type=float, help="stop main.py after this many seconds")
    p.set_defaults(func=cmd_run_submission)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:  # a checkpoint was written: the same command resumes
        print(f"kidwhisper: {err}", file=sys.stderr)
        return 128 + err.signum


if __name__ == "__main__":
    sys.exit(main())
