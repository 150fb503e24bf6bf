"""The `kidwhisper` subcommands: each a thin shell over a recipe (cli.py parses and routes).

Imports are inside each command so that `kidwhisper --help` and a command that fails on its
config stay fast: only the recipe a command needs is loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kidwhisper.config import EvaluationConfig, load_config


def cmd_train(args: argparse.Namespace) -> int:
    from kidwhisper.inference.scoring import percent
    from kidwhisper.training.experiments import run_experiment

    config = load_config(args.config, args.overrides)
    metrics = run_experiment(config, overwrite=args.overwrite, resume=args.resume)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    before, after = metrics.get("eval_before"), metrics.get("eval_after")
    print(f"experiment: {config.output.experiments_dir}/{metrics['name']}")
    if before:
        window = before.get("audio_context", "full")
        print(f"zero-shot WER:  {percent(before['wer'])}  (audio context {window}: the window "
              "the starting model was trained in)")  # fmt: skip
    if after:
        print(f"fine-tuned WER: {percent(after['wer'])}  ({after['utterances']} utterances)")
        for bucket, wer in after["wer_by_age"].items():
            print(f"  age {bucket}: {percent(wer)}")
    average = metrics.get("eval_average")
    if average:
        print(f"average of steps {average['steps']}: {percent(average['wer'])} (the final model)")
    soup = metrics.get("soup")
    if soup:
        runs = ", ".join(
            f"{m['name'] if m.get('changes') else 'seed ' + str(m['seed'])} {percent(m.get('wer'))}"
            for m in soup["members"]
        )
        print(f"the final model is the soup of {len(soup['members'])} runs ({runs}; their mean "
              f"{percent(soup['mean_wer'])})")  # fmt: skip
    print(f"training data: {metrics['bad_data_summary']}")
    print(f"wall time: {metrics['wall_seconds']:.0f} s; model: {metrics['model_dir']}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    """`kidwhisper cv CONFIG --folds K` (training/cv.py)."""
    from kidwhisper.training.cv import cv_dir, run_cv

    config = load_config(args.config, args.overrides)
    run_cv(config, args.folds, args.seed, args.pool, args.overwrite, only=args.only_folds)
    out = cv_dir(config)
    print((out / "cv.md").read_text(encoding="utf-8"))
    print(f"folds and figures: {out}/ (cv.json, cv.md, folds/)")
    return 0


def cmd_cv_compare(args: argparse.Namespace) -> int:
    """`kidwhisper cv-compare BASELINE CANDIDATE` (training/cv_compare.py)."""
    from kidwhisper.files import atomic_write_text
    from kidwhisper.training.cv_compare import compare_cv, markdown

    table = markdown(compare_cv(args.experiments_dir, args.baseline, args.candidate))
    print(table, end="")
    if args.out:
        atomic_write_text(args.out, table)
    return 0


def _beam(args: argparse.Namespace) -> dict:
    """The beam-search settings of a decoding command, as `evaluation:` keys: the flags,
    else what the model folder's own config (kidwhisper.yaml) says, else the schema's."""
    from kidwhisper.models.card import read_config

    saved = (read_config(args.model) or {}).get("evaluation") or {}
    return {
        key: value if value is not None else saved.get(key, getattr(EvaluationConfig, key))
        for key, value in (("beam_size", args.beam_size), ("length_penalty", args.length_penalty))
    }


def cmd_evaluate(args: argparse.Namespace) -> int:
    from kidwhisper.data.dataset import read_manifest
    from kidwhisper.device import pick_device
    from kidwhisper.files import refuse_output_over_input
    from kidwhisper.inference.evaluation import decoding_options, evaluate, save_predictions
    from kidwhisper.inference.scoring import percent
    from kidwhisper.models.factory import load_model

    utterances = read_manifest(args.data)[: args.limit or None]  # every bad line, at once
    out = args.out or Path(args.data).with_suffix(".predictions.jsonl").name
    refuse_output_over_input(out, [args.data], "--out")
    wm = load_model(args.model, args.variant, args.audio_context)
    wm.model.to(pick_device(args.device))
    guards = {} if args.guards else {"max_tokens_per_second": None, "repetition_limit": None}
    ev = EvaluationConfig(
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, **guards, **_beam(args)
    )
    result = evaluate(wm, utterances, ev.batch_size, decoding_options(ev))
    save_predictions(result, out)
    print(f"WER {percent(result.wer)} on {len(utterances)} utterances ({result.seconds:.1f} s)")
    for bucket, report in result.by_age.items():
        print(f"  age {bucket}: {percent(report.wer)} ({report.utterances} utterances)")
    if result.errors:
        print(f"{len(result.errors)} unreadable clip(s) scored as empty predictions")
    print(f"predictions: {out}")
    return 0


def cmd_transcribe(args: argparse.Namespace) -> int:
    from kidwhisper.device import pick_device
    from kidwhisper.files import refuse_output_over_input
    from kidwhisper.inference.evaluation import decoding_options
    from kidwhisper.inference.transcription import (
        InputError,
        collect_inputs,
        output_format,
        transcribe_to_file,
    )
    from kidwhisper.models.factory import load_model

    inputs = [p for p in args.paths if Path(p).is_file()]  # a folder may hold the output
    refuse_output_over_input(args.out, inputs, "--out")  # before minutes of loading
    try:
        fmt = output_format(args.out, args.format)  # before minutes of loading and decoding
        collect_inputs(args.paths)  # every bad manifest line, before the model loads
        wm = load_model(args.model, audio_context=args.audio_context)
        wm.model.to(pick_device(args.device))
        guards = {} if args.guards else {"max_tokens_per_second": None, "repetition_limit": None}
        ev = EvaluationConfig(max_new_tokens=args.max_new_tokens, **guards, **_beam(args))
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
    from kidwhisper.inference.analysis import analyse_files, id_list
    from kidwhisper.inference.report import summary_lines, write_report

    result = analyse_files(args.predictions, args.reference)
    print("\n".join(summary_lines(result, args.top)))
    if args.report:
        sources = (args.predictions, args.reference)
        report, chart = write_report(result, args.report, args.top, sources)
        print(f"report: {report}" + (f" (chart: {chart})" if chart else ""))
    if args.html:
        from kidwhisper.inference.explorer import write_score_html

        sources = (args.predictions, args.reference)
        page = write_score_html(result, args.reference, args.html, args.embed_audio, sources)
        print(f"explorer: {page}")
    if result.unknown_ids:
        print(
            f"error: {len(result.unknown_ids)} prediction id(s) not in {args.reference} were "
            f"not scored: {id_list(result.unknown_ids, args.top)}",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`kidwhisper compare PRED_A PRED_B REF [--html OUT]` (inference/comparison.py)."""
    from kidwhisper.inference.analysis import id_list
    from kidwhisper.inference.comparison import compare_files
    from kidwhisper.inference.explorer import write_compare_html

    names = tuple(args.names) if args.names else None
    comparison = compare_files(args.predictions_a, args.predictions_b, args.reference, names)
    print("\n".join(comparison.summary_lines()))
    if args.html:
        sources = (args.predictions_a, args.predictions_b, args.reference)
        page = write_compare_html(comparison, args.reference, args.html, args.embed_audio, sources)
        print(f"explorer: {page}")
    for name, ids in comparison.unknown_ids.items():
        print(f"error: {name}: {len(ids)} prediction id(s) not in {args.reference} were "
              f"not scored: {id_list(ids, 10)}", file=sys.stderr)  # fmt: skip
    return 1 if comparison.unknown_ids else 0


def cmd_filter(args: argparse.Namespace) -> int:
    """`kidwhisper filter MODEL MANIFEST --max-wer W --out OUT` (inference/curation.py)."""
    from kidwhisper.device import pick_device
    from kidwhisper.inference.curation import check_filter, filter_by_wer
    from kidwhisper.models.factory import load_model

    out = Path(args.out)  # the arguments are checked before a model loads
    report = check_filter(Path(args.manifest), out, args.report, args.max_wer, args.force)
    wm = load_model(args.model, audio_context=args.audio_context)
    wm.model.to(pick_device(args.device))
    result = filter_by_wer(
        wm, args.manifest, out, args.max_wer, report, args.batch_size, force=args.force
    )
    print("\n".join(result.summary_lines()))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """`kidwhisper split MANIFEST --out-dir DIR` (inference/curation.py), or with
    `--folds K` several manifests pooled into K speaker folds (inference/folds.py)."""
    from kidwhisper.inference.curation import CurationError, split_manifest
    from kidwhisper.inference.folds import write_folds

    if args.folds is not None:
        report = write_folds(args.manifest, args.folds, args.out_dir, args.seed, args.force)
        print("\n".join(report.summary_lines()))
        return 0
    if len(args.manifest) > 1:
        raise CurationError("a train/dev split takes one manifest (several need --folds K)")
    manifest = args.manifest[0]
    report = split_manifest(manifest, args.out_dir, args.dev_fraction, args.seed, args.force)
    print("\n".join(report.summary_lines()))
    return 0


def cmd_import_ct2(args: argparse.Namespace) -> int:
    from kidwhisper.models.export import import_ct2_folder

    out = import_ct2_folder(args.src, args.out, force=args.force)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} (transformers, safetensors, {size / 2**20:.1f} MiB)")
    return 0


def cmd_export_ct2(args: argparse.Namespace) -> int:
    from kidwhisper.models.export import export_ct2

    out = export_ct2(args.model, Path(args.out), args.quantization, args.force)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} (CTranslate2, {args.quantization}, {size / 2**20:.1f} MiB)")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    from kidwhisper.models.averaging import average_checkpoints

    out = average_checkpoints(args.checkpoints, Path(args.out), args.weights, args.force)
    print(f"averaged {len(args.checkpoints)} checkpoints into {out}")
    return 0


def cmd_merge_lora(args: argparse.Namespace) -> int:
    from kidwhisper.models.adapters import merge_lora

    out = merge_lora(args.checkpoint, Path(args.out), args.base, args.force)
    print(f"merged into {out}")
    return 0


def cmd_new_experiment(args: argparse.Namespace) -> int:
    from kidwhisper.training.workflow import new_experiment

    folder = new_experiment(args.name, Path(args.root), args.source)
    module = None if folder.is_absolute() else ".".join(folder.parts)
    print(f"created {folder}/ (config.yaml, main.py)")
    if module:
        print(
            f"run it: python -m {module}.main   or   torchrun --nproc_per_node=2 -m {module}.main"
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from kidwhisper.training.workflow import collect_results, results_table, update_readme

    table = results_table(collect_results(Path(args.root)))
    update_readme(Path(args.readme), table)
    print(table)
    print(f"updated {args.readme}")
    return 0


def cmd_archive(args: argparse.Namespace) -> int:
    from kidwhisper.training.workflow import archive

    print(f"archived to {archive(args.run, Path(args.checkpoints))}")
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    from kidwhisper.models.memory import report_lines

    config = load_config(args.config, args.overrides, check_paths=False)
    print("\n".join(report_lines(config, args.tokens, args.device)))
    return 0


def cmd_package_submission(args: argparse.Namespace) -> int:
    from kidwhisper.inference.evaluation import decoding_options
    from kidwhisper.submission.package import package_submission

    options = decoding_options(EvaluationConfig(**_beam(args)))
    report = package_submission(
        args.model, args.out, args.audio_context, args.batch_size, options, args.variant
    )
    print("\n".join(report.summary_lines()))
    return 0


def cmd_run_submission(args: argparse.Namespace) -> int:
    from kidwhisper.submission.runner import run_submission

    report = run_submission(
        args.zip, args.data, args.workdir, timeout=args.timeout, allow_network=args.allow_network
    )
    print("\n".join(report.summary_lines()))
    print(f"work folder: {report.workdir}")
    return 0 if report.valid else 1
