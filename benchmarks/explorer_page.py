"""How fast is a 10,000-row explorer page? Load and filter times in headless Chromium.

The page is `kidwhisper score --html` of the so762 dev predictions repeated until there are
`--rows` utterances (ids suffixed, audio linked by relative path as usual). Headless system
Chromium (Selenium) opens it `--runs` times; each run measures
- load: navigation start to the end of the load event (the page's script has parsed the
  JSON, drawn the charts and rendered the first rows by then);
- each filter/sort: from the control's change to the next frame after it (the rows are
  filtered, sorted and the first chunk rendered and laid out).
It prints the median and the worst run of each against the 2 s target.

    python benchmarks/explorer_page.py --predictions dev_predictions.jsonl
    python benchmarks/explorer_page.py            # predictions: the references, perturbed
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/browser.py: the one headless-Chromium helper

from tests import browser  # noqa: E402

from kidwhisper.inference.analysis import analyse_files  # noqa: E402
from kidwhisper.inference.explorer import write_score_html  # noqa: E402

DEV = REPO.parent / "shared" / "data" / "so762-kids" / "dev.jsonl"
TARGET_S = 2.0
# (label, element id, value): each applied from the unfiltered, worst-first page.
ACTIONS = [
    ("filter: age bucket", "f-age", "8-11"),
    ("filter: with errors", "f-kind", "errors"),
    ("filter: deletions", "f-kind", "-"),
    ("filter: text 'the'", "f-text", "the"),
    ("sort: by duration", "sort", "dur"),
]
READY = """
const nav = performance.getEntriesByType("navigation")[0];
return [nav.loadEventEnd, performance.getEntriesByName("kidwhisper-ready")[0].startTime];
"""
TIMED_CHANGE = """
const [id, value, done] = arguments;
const node = document.getElementById(id);
const t0 = performance.now();
node.value = value;
node.dispatchEvent(new Event(node.tagName === "INPUT" ? "input" : "change"));
requestAnimationFrame(() => setTimeout(() => done(performance.now() - t0), 0));
"""


def perturbed(text: str, i: int) -> str:
    """A stand-in prediction when none is given: drop, replace or add a word, by index."""
    words = text.split()
    if words and i % 3 == 0:
        words[i % len(words)] = "the"
    if len(words) > 1 and i % 4 == 1:
        del words[0]
    if i % 5 == 2:
        words.append("um")
    return " ".join(words)


def make_inputs(reference: Path, predictions: Path | None, rows: int, folder: Path) -> tuple:
    refs = [json.loads(x) for x in reference.read_text().splitlines() if x.strip()]
    preds = (
        {r["utterance_id"]: r["orthographic_text"]
         for r in map(json.loads, predictions.read_text().splitlines()) if r}
        if predictions
        else {r["utterance_id"]: perturbed(r["orthographic_text"], i) for i, r in enumerate(refs)}
    )  # fmt: skip
    ref_out, pred_out = folder / "ref.jsonl", folder / "pred.jsonl"
    with open(ref_out, "w") as rf, open(pred_out, "w") as pf:
        for n in range(rows):
            row, copy = dict(refs[n % len(refs)]), n // len(refs)
            uid = row["utterance_id"]
            row["audio_path"] = str((reference.parent / row["audio_path"]).resolve())
            row["utterance_id"] = f"{uid}_r{copy:03d}"
            rf.write(json.dumps(row) + "\n")
            text = preds.get(uid, "")
            pf.write(json.dumps({"utterance_id": row["utterance_id"], "orthographic_text": text}))
            pf.write("\n")
    return pred_out, ref_out


def measure(page: Path, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"load": [], "page script done": []}
    times.update({label: [] for label, _, _ in ACTIONS})
    driver = browser.headless_chromium()
    try:
        for _ in range(runs):
            driver.get(browser.page_url(page))
            load, ready = driver.execute_script(READY)
            times["load"].append(load / 1000)
            times["page script done"].append(ready / 1000)
            errors = browser.console_errors(driver)
            if errors:
                raise SystemExit(f"console errors: {errors}")
            for label, element, value in ACTIONS:
                ms = driver.execute_async_script(TIMED_CHANGE, element, value)
                times[label].append(ms / 1000)
                reset = "worst" if element == "sort" else ""
                driver.execute_async_script(TIMED_CHANGE, element, reset)
    finally:
        driver.quit()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=DEV)
    parser.add_argument("--predictions", type=Path, help="default: the references, perturbed")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if reason := browser.missing():
        raise SystemExit(f"cannot run: {reason}")
    with tempfile.TemporaryDirectory() as tmp:
        pred, ref = make_inputs(args.reference, args.predictions, args.rows, Path(tmp))
        start = time.perf_counter()
        page = write_score_html(analyse_files(pred, ref), ref, Path(tmp) / "page" / "r.html")
        build = time.perf_counter() - start
        size = page.stat().st_size / 2**20
        times = measure(page, args.runs)
    source = args.predictions or "references, perturbed"
    print(f"{args.rows} rows ({source}), page {size:.1f} MiB, built in {build:.1f} s (Python)")
    print(f"headless Chromium, {args.runs} runs; target {TARGET_S:.0f} s")
    print(f"| {'step':<22} | median s | worst s | under {TARGET_S:.0f} s |")
    print(f"|{'-' * 24}|----------|---------|-----------|")
    for label, values in times.items():
        ok = "yes" if max(values) < TARGET_S else "NO"
        print(f"| {label:<22} | {statistics.median(values):8.3f} | {max(values):7.3f} | {ok:>9} |")


if __name__ == "__main__":
    main()
