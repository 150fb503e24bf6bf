"""A run's readable results: results.md (setup, WER before/after by age, guard set, the
averaged model) and its learning-curve PNG, written from the run's metrics.json figures."""

from __future__ import annotations

from pathlib import Path

import yaml

from kidwhisper.config import Config, dump_config
from kidwhisper.data.augment import describe
from kidwhisper.files import atomic_open
from kidwhisper.inference.scoring import percent
from kidwhisper.models.card import CardFacts


def plot_learning_curve(metrics: dict, path: Path) -> Path:
    """Training loss per step and dev WER per evaluation, one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    curve, evals = metrics.get("loss_curve", []), metrics.get("evals", [])
    fig, loss_ax = plt.subplots(figsize=(7, 4), dpi=100)
    loss_ax.plot([p["step"] for p in curve], [p["loss"] for p in curve], color="tab:blue")
    loss_ax.set_xlabel("optimizer step")
    loss_ax.set_ylabel("training loss (per token)", color="tab:blue")
    if evals:
        wer_ax = loss_ax.twinx()
        wer_ax.plot(
            [e["step"] for e in evals], [100 * e["wer"] for e in evals], "o-", color="tab:red"
        )
        wer_ax.set_ylabel("dev WER (%)", color="tab:red")
    loss_ax.set_title(metrics.get("name", ""))
    fig.tight_layout()
    with atomic_open(path, "wb") as out:
        fig.savefig(out, format="png")
    plt.close(fig)
    return path


def _guard_line(config: Config, after: dict) -> list[str]:
    if not config.data.guard_eval:
        return []
    count = after.get("guard_utterances", 0)
    return [f"- Guard set (reported only): `{config.data.guard_eval}` ({count} utterances)"]


def trainable_share(trainable: int | None, total: int | None) -> str:
    """`0.15M of 37.9M (0.39%)`; n/a for runs from before the figures were recorded."""
    if not total:
        return "n/a"
    return f"{trainable / 1e6:.2f}M of {total / 1e6:.1f}M ({100 * trainable / total:.2f}%)"


def _adaptation(config: Config) -> str:
    lora, freeze = config.model.lora, config.training.freeze
    parts = [f"LoRA rank {lora.rank}, alpha {lora.alpha:g} on {', '.join(lora.target_modules)}"]
    parts = (parts if lora.rank else []) + ([f"{freeze} frozen"] if freeze != "none" else [])
    if n := config.training.freeze_encoder_layers:
        parts.append(f"encoder stem and first {n} layers frozen")
    return f"; {'; '.join(parts)}" if parts else ""


def _wer_table(before: dict, after: dict, average: dict | None) -> list[str]:
    """Before / after training (and the final averaged model's column, if any)."""
    columns = [before, after] + ([average] if average else [])
    window = f" ({before['audio_context']} window)" if "audio_context" in before else ""
    names = [f"before{window}", "after"]
    names += [f"average of steps {average['steps']}"] if average else []
    lines = [f"| | {' | '.join(names)} |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | {' | '.join(percent(get(c)) for c in columns)} |")

    row("overall", lambda c: c.get("wer"))
    if any("guard_wer" in c for c in columns):  # what training cost elsewhere
        row("guard set", lambda c: c.get("guard_wer"))
    for bucket in sorted(set().union(*(c.get("wer_by_age", {}) for c in columns))):
        row(f"age {bucket}", lambda c, b=bucket: c.get("wer_by_age", {}).get(b))
    return lines


def _soup_lines(soup: dict | None) -> list[str]:
    """The runs a soup averaged, each scored alone ("after" above is the soup's)."""
    if not soup:
        return []
    recipes = any(m.get("changes") for m in soup["members"])
    key = "training.soup_members" if recipes else "training.soup_seeds"
    lines = ["", f"## The runs averaged ({key})", "", "| run | seed | changes | steps | WER | "
             "guard set |", "|---|---|---|---|---|---|"]  # fmt: skip
    for m in soup["members"]:
        changes = ", ".join(f"`{k}: {v}`" for k, v in (m.get("changes") or {}).items()) or "-"
        lines.append(f"| {m['name']} | {m['seed']} | {changes} | {m['steps']} | "
                     f"{percent(m.get('wer'))} | {percent(m.get('guard_wer'))} |")  # fmt: skip
    lines.append(f"| mean of the runs | | | | {percent(soup['mean_wer'])} | |")
    return lines


def results_markdown(name: str, config: Config, metrics: dict) -> str:
    """A human summary of a run: setup, WER before/after (overall and per age bucket)."""
    before, after = metrics.get("eval_before") or {}, metrics.get("eval_after") or {}
    t = config.training
    lines = [
        f"# {name}",
        "",
        f"- Model: `{config.model.variant}` from `{config.pretrained}`",
        f"- Training data: {', '.join(f'`{p}`' for p in config.data.train)} "
        f"({metrics.get('train_utterances', 0)} utterances)",
        f"- Evaluation data: `{config.data.eval}` ({after.get('utterances', 0)} utterances)",
        *_guard_line(config, after),
        f"- Augmentation: {describe(config.augment, config.data)}",
        f"- Steps: {metrics.get('steps')} x batch {t.batch_size} x accumulation "
        f"{t.gradient_accumulation_steps}, lr {t.lr:g} ({t.lr_schedule}), "
        f"precision {metrics.get('precision')}",
        f"- Wall time: {metrics.get('wall_seconds', 0):.0f} s "
        f"(training {metrics.get('train_seconds', 0):.0f} s), "
        f"peak memory {metrics.get('peak_memory_mb', 0):.0f} MB",
        f"- Trainable parameters: "
        f"{trainable_share(metrics.get('trainable_params'), metrics.get('total_params'))}"
        f"{_adaptation(config)}",
        f"- Bad training entries: {metrics.get('bad_data_summary', 'n/a')}",
        "",
        "## WER (competition normaliser, corpus WER)",
        "",
        *_wer_table(before, after, metrics.get("eval_average")),
        *_soup_lines(metrics.get("soup")),
    ]
    curve = metrics.get("loss_curve", [])
    if curve:
        lines += [
            "",
            "## Learning curve",
            "",
            f"Training loss {curve[0]['loss']:.3f} at step 1, {curve[-1]['loss']:.3f} "
            f"at step {curve[-1]['step']}.",
            "",
            "![learning curve](learning_curve.png)",
        ]
    lines += ["", f"Code {metrics.get('environment', {}).get('code_version', '?')}.", ""]
    return "\n".join(lines)


def card_facts(config: Config, metrics: dict) -> CardFacts:
    """The final model's card from a run's figures: the averaged model's evaluation when the
    final model is an average (`training.average_last`), else the last evaluation."""
    final = metrics.get("eval_average") or metrics.get("eval_after")
    evaluation = {**final, "data": config.data.eval} if final else None
    origin = (
        f"Fine-tuned by `kidwhisper train` (run `{metrics.get('name')}`, "
        f"{metrics.get('steps')} steps) from `{config.pretrained}`."
    )
    if metrics.get("eval_average"):
        origin += f" The mean of the checkpoints of steps {metrics['eval_average']['steps']}."
    if metrics.get("soup"):
        runs = ", ".join(f"`{m['name']}`" for m in metrics["soup"]["members"])
        what = "recipes" if any(m.get("changes") for m in metrics["soup"]["members"]) else "seeds"
        origin = (
            f"The mean of the final models of {len(metrics['soup']['members'])} runs of "
            f"`kidwhisper train` with different {what} ({runs}; {metrics.get('steps')} steps "
            f"in all), each fine-tuned from `{config.pretrained}`."
        )
    counts = {
        "training manifests": ", ".join(f"`{p}`" for p in config.data.train),
        "training utterances (after screening)": metrics.get("train_utterances"),
        "clips seen in training": metrics.get("samples"),
        "optimizer steps": metrics.get("steps"),
        "bad training entries": metrics.get("bad_data_summary", "n/a"),
        "evaluation utterances": final.get("utterances") if final else "not scored",
        "trainable parameters": trainable_share(
            metrics.get("trainable_params"), metrics.get("total_params")
        ),
    }
    config_data = yaml.safe_load(dump_config(config))
    return CardFacts(config.output.name, origin, config_data, evaluation, counts)
