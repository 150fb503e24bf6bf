"""The README's screenshot of the explorer, taken by the headless Chromium the tests use.

    python scripts/screenshot_explorer.py PREDICTIONS REFERENCE --out docs/explorer.png

Writes the `kidwhisper score --html` page of PREDICTIONS to a temp folder, opens it at
1280x900, clicks the top substitution (so the shot shows that filter at work), and saves a
PNG reduced to 256 colours (Pillow, which matplotlib brings) to stay small.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/browser.py: the one headless-Chromium helper

from tests import browser  # noqa: E402

from kidwhisper.inference.analysis import analyse_files  # noqa: E402
from kidwhisper.inference.explorer import write_score_html  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path)
    parser.add_argument("reference", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "explorer.png")
    parser.add_argument("--no-click", action="store_true", help="the page as it opens")
    args = parser.parse_args()
    if reason := browser.missing():
        raise SystemExit(f"cannot run: {reason}")
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        result = analyse_files(args.predictions, args.reference)
        sources = (args.predictions.name, args.reference.name)
        page = write_score_html(result, args.reference, Path(tmp) / "r.html", sources=sources)
        driver = browser.headless_chromium(1280, 1000)
        try:
            driver.get(browser.page_url(page))
            buttons = driver.find_elements("css selector", "button.top-\\~")
            if buttons and not args.no_click:
                buttons[0].click()
            shot = Path(tmp) / "shot.png"
            driver.save_screenshot(str(shot))
            if errors := browser.console_errors(driver):
                raise SystemExit(f"console errors: {errors}")
        finally:
            driver.quit()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(256).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
