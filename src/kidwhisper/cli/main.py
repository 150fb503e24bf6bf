"""The `kidwhisper` command: train, evaluate, transcribe, score, ship, and experiments.

This module parses the command line and routes to cli/commands.py; errors a user can fix (a bad
config, a missing file, bad data under the fail policy) are printed as one line naming the
file and key, without a traceback; a run stopped by a signal says how to resume.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kidwhisper.cli.commands import (
    cmd_archive,
    cmd_average,
    cmd_compare,
    cmd_cv,
    cmd_cv_compare,
    cmd_estimate,
    cmd_evaluate,
    cmd_export_ct2,
    cmd_filter,
    cmd_import_ct2,
    cmd_merge_lora,
    cmd_new_experiment,
    cmd_package_submission,
    cmd_report,
    cmd_run_submission,
    cmd_score,
    cmd_split,
    cmd_train,
    cmd_transcribe,
)
from kidwhisper.config import EvaluationConfig
from kidwhisper.errors import USER_ERRORS
from kidwhisper.training.faults import Interrupted


def _audio_context_arg(p: argparse.ArgumentParser, guards: bool = False) -> None:
    """--audio-context, and --no-guards (`guards`) for commands that decode."""
    p.add_argument(
        "--audio-context",
        help="encoder input: batch, batch:SECONDS, full or seconds (default: what the model "
        "was trained with, else full)",
    )
    if guards:
        no_guards = "no duration-based token limit and no repetition guard (plain greedy decoding)"
        p.add_argument("--no-guards", dest="guards", action="store_false", help=no_guards)


def _at_least_one(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _fold_list(value: str) -> list[int]:
    """`1,3` -> [1, 3] (a comma list: the overrides after it stay positional)."""
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        message = f"expected fold numbers like 1,3, got {value!r}"
        raise argparse.ArgumentTypeError(message) from None


def _beam_args(p: argparse.ArgumentParser) -> None:
    """--beam-size and --length-penalty for commands that decode (evaluation.* defaults)."""
    p.add_argument(
        "--beam-size",
        type=_at_least_one,
        default=None,
        help="beam search with this many beams (default: the model's own config's "
        f"evaluation.beam_size, else {EvaluationConfig.beam_size}: greedy decoding)",
    )
    p.add_argument(
        "--length-penalty",
        type=float,
        default=None,
        help="rank finished beams by log-probability / ((5 + length) / 6) ** this "
        "(default: the model's config, else / length, as Whisper)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: one `_add_*` function per group of subcommands."""
    parser = argparse.ArgumentParser(prog="kidwhisper", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        _add_training,
        _add_decoding,
        _add_compare,
        _add_curation,
        _add_models,
        _add_estimate,
        _add_experiments,
        _add_submission,
    ):
        add(sub)
    return parser


def _add_training(sub) -> None:
    """train: fine-tune as a config says."""
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

    p = sub.add_parser("cv", help="speaker cross-validation: one experiment per fold, WER spread")
    p.add_argument("config", help="YAML config; data.train's first + data.eval are pooled")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. training.lr=2e-5")
    p.add_argument("--folds", type=int, default=4, help="K speaker folds (default 4)")
    p.add_argument("--seed", type=int, default=0, help="of the fold assignment")
    p.add_argument(
        "--pool", nargs="+", help="data.train manifests (paths or short names) pooled with "
        "data.eval into folds (default: the first); the others train every fold"
    )  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="run finished folds again")
    p.add_argument(
        "--only-folds", type=_fold_list, metavar="I,J", help="run just these folds, e.g. 1,3 "
        "(one set per process); the summary holds every finished fold"
    )  # fmt: skip
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("cv-compare", help="two cross-validations fold by fold, with a verdict")
    p.add_argument(
        "baseline", help="a cv name (cv-recommended) or its folder; several runs of one config "
        "(seeds) as NAME,NAME-s1: each fold's figure is their mean; one run of a soup as "
        "SOUP-seed0 or SOUP-member0 (SOUP-seed0,SOUP-seed1,SOUP-seed2: one run's mean)"
    )  # fmt: skip
    p.add_argument("candidate", help="the cv (or runs) to judge against it, on the same folds")
    p.add_argument("--experiments-dir", type=Path, default=Path("experiments"))
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    p.set_defaults(func=cmd_cv_compare)


def _add_decoding(sub) -> None:
    """evaluate, transcribe and score: decoding and the competition WER."""
    p = sub.add_parser("evaluate", help="decode a manifest and print the competition WER")
    p.add_argument("model", help="transformers folder, bundled:tiny.en, bundled:base or Hub id")
    p.add_argument("--data", required=True, help="competition-format jsonl with references")
    p.add_argument("--variant", help="model variant (read from the weights when unset)")
    p.add_argument("--batch-size", type=int, default=EvaluationConfig.batch_size)
    p.add_argument("--max-new-tokens", type=int, default=EvaluationConfig.max_new_tokens)
    p.add_argument("--limit", type=int, help="only the first N utterances")
    _audio_context_arg(p, guards=True)
    _beam_args(p)
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
    _audio_context_arg(p, guards=True)
    _beam_args(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--num-workers", type=int, default=0, help="audio loading processes")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("score", help="WER of a predictions jsonl, with an error analysis")
    p.add_argument("predictions", help="jsonl with utterance_id and orthographic_text")
    p.add_argument("reference", help="competition-format jsonl (age_bucket, durations optional)")
    p.add_argument("--report", help="write a Markdown report here, and a PNG chart beside it")
    p.add_argument("--top", type=int, default=10, help="how many top errors and worst utterances")
    _html_args(p, "an HTML error explorer (charts, filters, aligned words, audio)")
    p.set_defaults(func=cmd_score)


def _html_args(p: argparse.ArgumentParser, what: str) -> None:
    """--html and --embed-audio: the self-contained explorer page (inference/explorer.py)."""
    p.add_argument("--html", help=f"write {what} here; opens from disk, no server needed")
    p.add_argument(
        "--embed-audio",
        action="store_true",
        help="put the clips inside the page (to share it) instead of linking them by path",
    )


def _add_compare(sub) -> None:
    """compare: two systems' predictions on the same references."""
    p = sub.add_parser("compare", help="two predictions files side by side: WER and differences")
    p.add_argument("predictions_a", help="system A's jsonl (e.g. before fine-tuning)")
    p.add_argument("predictions_b", help="system B's jsonl (e.g. after)")
    p.add_argument("reference", help="competition-format jsonl (age_bucket, durations optional)")
    p.add_argument("--names", nargs=2, metavar=("A", "B"), help="default: the files' names")
    _html_args(p, "a page of both systems and the utterances where they differ")
    p.set_defaults(func=cmd_compare)


def _add_curation(sub) -> None:
    """filter and split: curating training data."""
    p = sub.add_parser("filter", help="drop utterances a reference model transcribes badly")
    p.add_argument("model", help="transformers folder, bundled:tiny.en, bundled:base or Hub id")
    p.add_argument("manifest", help="competition-format jsonl with references")
    p.add_argument("--max-wer", type=float, required=True, help="drop above this WER, e.g. 0.8")
    p.add_argument("--out", required=True, help="the kept entries (jsonl)")
    p.add_argument("--report", help="dropped entries and counts (default: <out>.report.json)")
    p.add_argument("--batch-size", type=int, default=EvaluationConfig.batch_size)
    _audio_context_arg(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser(
        "split", help="speaker-disjoint train/dev split or K folds, stratified by age bucket"
    )
    p.add_argument(
        "manifest", nargs="+", help="competition-format jsonl (child_id, age_bucket); "
        "with --folds, several are pooled"
    )  # fmt: skip
    p.add_argument(
        "--out-dir", "--out", required=True,
        help="writes train.jsonl and dev.jsonl here (with --folds: fold_<i>/train.jsonl, "
        "fold_<i>/heldout.jsonl and folds.json)",
    )  # fmt: skip
    p.add_argument("--folds", type=int, help="K speaker-disjoint cross-validation folds")
    p.add_argument("--dev-fraction", type=float, default=0.1, help="of each bucket's speakers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_split)


def _add_models(sub) -> None:
    """import-ct2, export-ct2, average, merge-lora: model folders."""
    p = sub.add_parser("import-ct2", help="convert a CTranslate2 Whisper folder to transformers")
    p.add_argument("src", help="folder with model.bin, config.json, tokenizer.json")
    p.add_argument("out", help="output folder (safetensors)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
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
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("merge-lora", help="merge LoRA adapters into a plain transformers model")
    p.add_argument("checkpoint", help="a LoRA run's checkpoint (step_N) or a PEFT adapter folder")
    p.add_argument("--out", required=True, help="output model folder (transformers layout)")
    p.add_argument("--base", help="base of a PEFT adapter (default: its adapter_config.json's)")
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=cmd_merge_lora)


def _add_estimate(sub) -> None:
    """estimate: training memory from a config."""
    p = sub.add_parser("estimate", help="training memory per part, from the config's variant")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--tokens", type=int, default=64, help="label length (padded) per clip")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.set_defaults(func=cmd_estimate)


def _add_experiments(sub) -> None:
    """new-experiment, report, archive: the experiment folders."""
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


def _add_submission(sub) -> None:
    """package-submission and run-submission: the competition runtime."""
    p = sub.add_parser(
        "package-submission", help="write a competition submission.zip (main.py, code, model)"
    )
    p.add_argument("model", help="transformers folder, checkpoint, bundled:tiny.en or Hub id")
    p.add_argument("--out", required=True, help="the zip to write, e.g. submission.zip")
    _audio_context_arg(p)
    p.add_argument(
        "--batch-size",
        type=int,
        default=EvaluationConfig.batch_size,
        help="clips per batch in the runtime (default: evaluate's, which gives evaluate's WER)",
    )
    p.add_argument("--variant", help="model variant (read from the weights when unset)")
    _beam_args(p)
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
    p.add_argument(
        "--allow-network",
        action="store_true",
        help="run main.py even where its network cannot be cut (no bwrap, no unshare -n)",
    )
    p.set_defaults(func=cmd_run_submission)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse takes positionals in one run: overrides after an option (`cv CONFIG --folds 4
    # training.lr=2e-5`) arrive here, and join the others.
    if extra and hasattr(args, "overrides") and all("=" in e[1:] for e in extra):
        args.overrides += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
