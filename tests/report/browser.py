"""Headless Chromium through Selenium, for the report's browser tests: the Debian browser and driver
(``tests/services/chromium.sh install``), never a downloaded one.

Without them the browser tests skip with the reason, except under CI=true, where a skip would hide a test
that did not run: there they fail (as the PostgreSQL and Slurm tests do).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        return f"{' and '.join(missing)} missing: run tests/services/chromium.sh install (as root)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


def start() -> Any:
    """A headless Chromium whose console messages (all levels) ``driver.get_log("browser")`` returns; skipped
    (failed under CI=true) when it cannot run."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1366,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def console_errors(driver: Any) -> list[str]:
    """The console errors (level SEVERE: console.error, uncaught exceptions, failed loads) logged since the
    last call; reading the log empties it."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def open_page(driver: Any, path: Path) -> list[str]:
    """Load ``path`` and return the console errors it caused."""
    console_errors(driver)  # forget what an earlier page logged
    driver.get(path.resolve().as_uri())
    driver.execute_script("return document.readyState")
    return console_errors(driver)


def data_value(driver: Any, element_id: str) -> float | None:
    """The raw number of the element ``element_id`` (its ``data-value``; None when it is empty: unknown)."""
    from selenium.webdriver.common.by import By

    text = driver.find_element(By.ID, element_id).get_attribute("data-value")
    return None if text in (None, "") else float(text)
