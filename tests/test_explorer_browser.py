"""The explorer pages in a real browser: headless system Chromium driven by Selenium.

The pages are made from real child speech (../shared/data/so762-kids/dev.jsonl, every 8th
clip: 20 of 160, both age buckets) and real predictions: bundled tiny.en decoding in its own
30 s window (system A) and in the short `batch` window (system B), made once per session.
`KIDWHISPER_EXPLORER_PREDICTIONS=a.jsonl,b.jsonl` runs the same checks on two predictions
files of the whole dev set instead (e.g. before and after fine-tuning).

Skips, saying why, without Chromium + chromedriver (`.ci/run` installs them) or the data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from kidwhisper.inference.analysis import analyse_files, read_references
from kidwhisper.inference.comparison import compare_files
from kidwhisper.inference.explorer import write_compare_html, write_score_html
from kidwhisper.inference.scoring import percent

from . import browser
from .conftest import SO762, needs_shared

pytestmark = [
    needs_shared,
    pytest.mark.integration,
    pytest.mark.slow,  # decoding 2 x 20 clips with tiny.en: about 100 s on 2 busy cores
    pytest.mark.skipif(browser.missing() is not None, reason=str(browser.missing())),
]
ENV = "KIDWHISPER_EXPLORER_PREDICTIONS"
STRIDE = 8  # every 8th dev clip


@pytest.fixture(scope="session")
def dev_subset(tmp_path_factory) -> Path:
    """Every STRIDE-th line of so762 dev, with audio paths made absolute."""
    out = tmp_path_factory.mktemp("dev") / "dev_subset.jsonl"
    lines = (SO762 / "dev.jsonl").read_text(encoding="utf-8").splitlines()[::STRIDE]
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row["audio_path"] = str((SO762 / row["audio_path"]).resolve())
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def systems(request, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(predictions A, predictions B, reference manifest)."""
    if os.environ.get(ENV):
        a, b = os.environ[ENV].split(",")
        return Path(a), Path(b), SO762 / "dev.jsonl"
    from kidwhisper.config import EvaluationConfig
    from kidwhisper.data.dataset import read_manifest
    from kidwhisper.inference.evaluation import decoding_options, evaluate, save_predictions

    reference = request.getfixturevalue("dev_subset")
    wm, utterances = request.getfixturevalue("tiny_en"), read_manifest(reference)
    folder, paths = tmp_path_factory.mktemp("predictions"), []
    for context in ("full", "batch"):
        with wm.context(context):
            options = decoding_options(EvaluationConfig())
            result = evaluate(wm, utterances, 8, options, progress=False)
        paths.append(save_predictions(result, folder / f"tiny_en_{context}.jsonl"))
    return paths[0], paths[1], reference


@pytest.fixture(scope="session")
def pages(systems, tmp_path_factory) -> dict:
    a, b, reference = systems
    out = tmp_path_factory.mktemp("pages") / "reports"
    result, comparison = analyse_files(a, reference), compare_files(a, b, reference)
    return {
        "score": write_score_html(result, reference, out / "score.html"),
        "compare": write_compare_html(comparison, reference, out / "compare.html"),
        "result": result,
        "comparison": comparison,
        "references": read_references(reference),
        "reference": reference,
    }


@pytest.fixture(scope="module")
def driver():
    d = browser.headless_chromium()
    yield d
    d.quit()


def _open(driver, page: Path) -> None:
    driver.get(browser.page_url(page))
    browser.console_errors(driver)  # nothing before this page counts


def _shown_ids(driver) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#rows .row')].map(r => r.dataset.id)"
    )


def _matched(driver) -> int:
    return int(driver.find_element("id", "count").get_attribute("data-matched"))


def _choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def test_score_page_loads_without_console_errors(driver, pages) -> None:
    driver.get(browser.page_url(pages["score"]))
    assert browser.console_errors(driver) == []
    result = pages["result"]
    assert driver.find_element("id", "wer-0").text == percent(result.overall.wer)
    assert _matched(driver) == len(result.utterances)
    assert len(_shown_ids(driver)) == min(100, len(result.utterances))
    assert len(driver.find_elements("css selector", "#charts svg")) == 2


def test_filters_reduce_the_rows_to_the_expected_count(driver, pages) -> None:
    _open(driver, pages["score"])
    refs, scored = pages["references"], pages["result"].utterances
    bucket = refs[-1].age_bucket
    _choose(driver, "f-age", bucket)
    expected = [r.utterance_id for r in refs if r.age_bucket == bucket]
    assert 0 < _matched(driver) == len(expected) < len(refs)
    assert set(_shown_ids(driver)) <= set(expected)
    _choose(driver, "f-age", "")
    _choose(driver, "f-kind", "-")  # utterances with a deletion
    assert _matched(driver) == sum(1 for u in scored if u.deletions)
    _choose(driver, "f-kind", "")
    driver.find_element("id", "f-text").send_keys(refs[3].utterance_id)
    assert _shown_ids(driver) == [refs[3].utterance_id]
    assert browser.console_errors(driver) == []


def test_worst_first_puts_the_worst_utterance_first(driver, pages) -> None:
    _open(driver, pages["score"])
    _choose(driver, "sort", "id")
    ids = [r.utterance_id for r in pages["references"]]
    assert _shown_ids(driver)[0] == min(ids)
    _choose(driver, "sort", "worst")
    assert _shown_ids(driver)[0] == pages["result"].worst(1)[0].utterance_id


def test_a_top_substitution_shows_the_utterances_that_contain_it(driver, pages) -> None:
    _open(driver, pages["score"])
    buttons = driver.find_elements("css selector", "button.top-\\~")
    if not buttons:
        pytest.skip("these predictions have no substitution")
    buttons[0].click()
    (ref, hyp), _ = sorted(pages["result"].substitutions.items(), key=lambda i: (-i[1], i[0]))[0]
    from kidwhisper.inference.analysis import align

    def has(u) -> bool:
        _, chunks = align(u.utterance_id, u.reference, u.hypothesis, u.missing)
        return any(k == "substitute" and (ref, hyp) in zip(r, h, strict=True) for k, r, h in chunks)

    expected = {u.utterance_id for u in pages["result"].utterances if has(u)}
    assert set(_shown_ids(driver)) == expected and _matched(driver) == len(expected)


def test_audio_source_resolves_to_the_clip(driver, pages) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    _open(driver, pages["score"])
    _choose(driver, "sort", "id")
    first = min(pages["references"], key=lambda r: r.utterance_id)
    src = driver.execute_script("return document.querySelector('#rows .row audio').src")
    clip = Path(unquote(urlparse(src).path))
    row = next(json.loads(x) for x in pages["reference"].read_text().splitlines()
               if json.loads(x)["utterance_id"] == first.utterance_id)  # fmt: skip
    assert clip.resolve() == (pages["reference"].parent / row["audio_path"]).resolve()
    # The browser itself opens and decodes it: its duration is the manifest's (to 0.01 s).
    driver.execute_script(
        "const a = document.querySelector('#rows .row audio'); a.preload = 'metadata'; a.load()"
    )
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script("return document.querySelector('#rows .row audio').readyState")
    )
    duration = driver.execute_script("return document.querySelector('#rows .row audio').duration")
    assert duration == pytest.approx(first.duration, abs=0.011)
    assert browser.console_errors(driver) == []


def test_compare_page_lists_exactly_the_differing_utterances(driver, pages) -> None:
    _open(driver, pages["compare"])
    assert browser.console_errors(driver) == []
    differences = pages["comparison"].differences()
    assert differences, "the two systems should differ somewhere on real speech"
    expected = {d.reference.utterance_id for d in differences}
    assert _matched(driver) == len(expected)
    assert len(expected) > 100 or set(_shown_ids(driver)) == expected
    _choose(driver, "f-kind", "worse")
    worse = {d.reference.utterance_id for d in differences if d.verdict == "worse"}
    assert _matched(driver) == len(worse) and set(_shown_ids(driver)) <= worse
    counts = driver.find_element("id", "diff-counts").text
    assert counts.startswith(f"{len(expected)} differ: ")
