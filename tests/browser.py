"""Headless Chromium through Selenium, with the system browser (Debian `chromium` and
`chromium-driver`; nothing is downloaded). Used by tests/test_explorer_browser.py,
benchmarks/explorer_page.py and scripts/screenshot_explorer.py."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def _which(names: tuple[str, ...]) -> str | None:
    return next((found for name in names if (found := shutil.which(name))), None)


def missing() -> str | None:
    """Why no headless browser can run here, or None when one can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if not _which(CHROMIUM_NAMES):
        return "no Chromium here (apt-get install chromium chromium-driver; .ci/run does)"
    if not _which(DRIVER_NAMES):
        return "no chromedriver here (apt-get install chromium-driver; .ci/run does)"
    return None


def headless_chromium(width: int = 1280, height: int = 900):
    """A Selenium driver for the system's headless Chromium, logging the browser console."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM_NAMES)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
        f"--window-size={width},{height}", "--allow-file-access-from-files",
        "--autoplay-policy=no-user-gesture-required",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(_which(DRIVER_NAMES)))


def console_errors(driver) -> list[str]:
    """The browser console's SEVERE entries since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def page_url(path: Path) -> str:
    return Path(path).resolve().as_uri()
