"""The admin report as a browser shows it: headless Chromium loads the HTML ``hpcqueue report`` wrote, the
page logs no console error, and the figures read from its DOM equal ``hpcqueue ledger summary``'s."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcqueue.ledger import Ledger
from tests.conftest import EXAMPLES, run_cli
from tests.helpers import input_ids
from tests.report import populate
from tests.report.browser import console_errors, data_value, open_page

pytestmark = pytest.mark.slow

LAPTOP_WIDTH_PX = 1366


@pytest.fixture(scope="module")
def ledger_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The environment of a CLI whose ledger holds six realistic batches (tests.report.populate)."""
    root = tmp_path_factory.mktemp("report-ledger")
    url = f"sqlite:///{root / 'ledger.sqlite'}"
    with Ledger(url) as ledger:
        populate(ledger, root / "batches")
    env = {key: value for key, value in os.environ.items() if not key.startswith("HPCQUEUE_")}
    env.update(HPCQUEUE_DB_URL=url, XDG_CONFIG_HOME=str(root / "config"), HPCQUEUE_BATCH_ROOT=str(root))
    yield env


def summary_rows(env: dict[str, str], *filters: str) -> list[dict[str, Any]]:
    result = run_cli(["ledger", "summary", "--format", "json", *filters], env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows, "the summary is empty: the comparison would prove nothing"
    return rows


def write_report(env: dict[str, str], path: Path, *filters: str) -> Path:
    result = run_cli(["report", "-o", str(path), *filters], env)
    assert result.returncode == 0, result.stderr
    assert f"wrote {path}" in result.stdout
    return path


# `ledger summary --format json` rounds to 10 decimals: the figures agree to that (rel=1e-9 below).
def total(rows: list[dict[str, Any]], column: str) -> float:
    return sum(row[column] for row in rows if row[column] is not None)


def test_the_console_check_sees_an_error_and_passes_a_clean_page(driver: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text('<!DOCTYPE html><html><body><script>console.error("boom")</script></body></html>')
    clean = tmp_path / "clean.html"
    clean.write_text('<!DOCTYPE html><html><body><script>console.log("fine")</script></body></html>')
    errors = open_page(driver, broken)
    assert any("boom" in message for message in errors), errors
    assert open_page(driver, clean) == []


@pytest.mark.parametrize(
    "filters",
    [("--all-users",), ("--all-users", "--target", "gpu", "--target", "cpu"), ("--user", "bob")],
    ids=["all", "two-targets", "one-user"],
)
def test_the_report_shows_the_ledger_summary(
    driver: Any, ledger_env: dict[str, str], tmp_path: Path, filters: tuple[str, ...]
) -> None:
    rows = summary_rows(ledger_env, *filters)
    page = write_report(ledger_env, tmp_path / "report.html", *filters)
    html = page.read_text()
    # Self-contained: nothing to fetch (no script, stylesheet, image or font from elsewhere).
    assert not re.search(
        r"""(src|href)\s*=\s*["']?(https?:|//)|url\((https?:|//)|@import|<script|<link""", html
    )

    assert open_page(driver, page) == []
    assert driver.title.startswith("hpcqueue report")
    assert data_value(driver, "total-energy-j") == pytest.approx(total(rows, "energy_j"), rel=1e-9)
    assert data_value(driver, "total-requests") == total(rows, "requests")
    assert data_value(driver, "total-output-tokens") == total(rows, "output_tokens")
    assert data_value(driver, "total-failed") == total(rows, "failed")
    assert data_value(driver, "total-carbon-g") == pytest.approx(total(rows, "carbon_g"), rel=1e-9)
    assert data_value(driver, "total-facility-energy-j") == pytest.approx(
        total(rows, "facility_energy_j"), rel=1e-9
    )
    # Measured and estimated add up to the total, and each is labelled.
    measured = data_value(driver, "measured-energy-j") or 0.0
    estimated = data_value(driver, "estimated-energy-j") or 0.0
    assert measured + estimated == pytest.approx(data_value(driver, "total-energy-j"), rel=1e-9)
    methods = {row["energy_method"] for row in rows}
    if "estimated" in methods or "mixed" in methods:
        from selenium.webdriver.common.by import By

        assert driver.find_elements(By.CSS_SELECTOR, "#totals .est")

    # Every provenance link lands on an anchor of the page, and the page fits a laptop screen.
    links = driver.execute_script(
        "return [...document.querySelectorAll('a[href^=\"#\"]')].map(a => a.getAttribute('href').slice(1))"
    )
    assert "prov-meters" in links and "prov-factors" in links
    missing = driver.execute_script("return arguments[0].filter(id => !document.getElementById(id))", links)
    assert missing == []
    assert driver.execute_script("return document.documentElement.scrollWidth") <= LAPTOP_WIDTH_PX
    assert driver.find_element("id", "filter").text == _described(filters)


def _described(filters: tuple[str, ...]) -> str:
    return {
        ("--all-users",): "all users",
        ("--all-users", "--target", "gpu", "--target", "cpu"): "all users, targets gpu, cpu",
        ("--user", "bob"): "user bob",
    }[filters]


def test_unknown_figures_show_a_dash_not_zero(
    driver: Any, ledger_env: dict[str, str], tmp_path: Path
) -> None:
    """Nothing selected by the filter is accounted: carbon is unknown, shown as "–" with no data-value."""
    page = write_report(ledger_env, tmp_path / "none.html", "--user", "nobody")
    assert open_page(driver, page) == []
    assert data_value(driver, "total-requests") == 0
    assert data_value(driver, "total-carbon-g") is None
    assert driver.find_element("id", "total-carbon-g").text == "–"


def test_screenshot_of_the_report(driver: Any, ledger_env: dict[str, str], tmp_path: Path) -> None:
    page = write_report(ledger_env, tmp_path / "report.html", "--all-users")
    assert open_page(driver, page) == []
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert console_errors(driver) == []


def test_the_demo_batch_end_to_end(driver: Any, hq_env: dict[str, str], tmp_path: Path) -> None:
    """Submit the example prompts (real demo model, local executor), then report on them."""
    prompts = EXAMPLES / "prompts.jsonl"
    submitted = run_cli(["submit", str(prompts), "--wait", "--json", "--task-size", "100"], hq_env)
    assert submitted.returncode == 0, submitted.stderr
    rows = summary_rows(hq_env)  # the current user's batches: the report's default too
    page = write_report(hq_env, tmp_path / "demo.html")
    assert open_page(driver, page) == []
    assert data_value(driver, "total-requests") == len(input_ids(prompts)) == total(rows, "requests")
    assert data_value(driver, "total-energy-j") == pytest.approx(total(rows, "energy_j"), rel=1e-9)
    assert data_value(driver, "total-energy-j") > 0
    assert data_value(driver, "total-output-tokens") == total(rows, "output_tokens") > 0
