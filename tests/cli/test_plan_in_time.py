"""``plan`` and ``simulate`` in time, through the real CLI: sites in the config, --start, --deadline,
--objective and --no-defer, the JSON keys and the errors bad site data give."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import AZURE_TRACE, EXAMPLES, run_cli
from tests.sites import write_csv, write_em_csv, write_open_meteo_json

A100 = "llama-2-7b-chat.swing-a100.wilkins2024"
V100 = "llama-2-7b-chat.palmetto-v100.wilkins2024"
KEYS = {"energy_j", "facility_energy_j", "carbon_g", "water_l", "cost_usd", "per_target"}


def _write_sites(folder: Path) -> Path:
    """Two days from 2023-06-01 00:00 UTC: PJM-like carbon (clean from 06:00 UTC, i.e. 02:00 in New York),
    Philadelphia-like weather (UTC−4), a price with a negative hour; a second, flatter site."""
    hours = 48
    day = np.array([420, 410, 400, 390, 380, 360, 150, 120, 100, 110, 160, 300] * 2, dtype=float)
    write_em_csv(folder / "carbon.csv", np.tile(day, 2), first="2023-06-01 00:00:00", zone="US-MIDA-PJM")
    temperature = 20 + 8 * np.sin(np.arange(hours + 4) / 24 * 2 * np.pi)
    write_open_meteo_json(
        folder / "weather.json",
        temperature.round(1).tolist(),
        humidity=[60.0] * (hours + 4),
        offset_s=-14400,
        first_local="2023-05-31T20:00",
    )
    prices = [
        [
            f"2023-06-01 {h % 24:02d}:00:00+00:00" if h < 24 else f"2023-06-02 {h - 24:02d}:00:00+00:00",
            -5.0 if h == 7 else 30.0 + h % 5,
        ]
        for h in range(hours)
    ]
    write_csv(folder / "price.csv", "Datetime (UTC),Price (USD/MWh)", prices)
    write_em_csv(folder / "flat.csv", [300.0] * hours, first="2023-06-01 00:00:00", zone="GB")
    config = folder / "sites.toml"
    config.write_text(
        f"""
[sites.philadelphia]
timezone = "America/New_York"
carbon = "carbon.csv"
weather = "weather.json"
cooling = "economizer"
wue = "wet-bulb"
water_per_kwh = 1.8
price = "price.csv"

[sites.london]
timezone = "Europe/London"
carbon = "flat.csv"
cooling = 1.3
wue = 0.4
water_per_kwh = 1.2

[targets.gpu]
hardware = "a100-40g"
profile = "{A100}"
array_parallelism = 4
site = "philadelphia"
power_w = 700

[targets.v100]
hardware = "v100"
profile = "{V100}"
array_parallelism = 4
site = "london"
power_w = 450
""",
        encoding="utf-8",
    )
    return config


def _trace(folder: Path, n: int = 1500) -> Path:
    """The first ``n`` requests of the shipped Azure code trace."""
    lines = AZURE_TRACE.read_text(encoding="utf-8").splitlines()[: n + 1]
    path = folder / "trace.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_simulate_in_time_prints_the_plan_and_its_baselines(hq_env: dict[str, str], tmp_path: Path) -> None:
    config = _write_sites(tmp_path)
    args = ["simulate", str(_trace(tmp_path)), "--config", str(config), "--json"]
    args += ["--start", "2023-06-01T18:00-04:00", "--deadline", "14h", "--objective", "carbon"]
    result = run_cli(args, hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) >= KEYS
    assert all(report[key] is not None for key in KEYS - {"per_target"})
    for name in ("run_at_submit", "best_window", "best_single_site"):
        assert set(report["baselines"][name]) >= KEYS, name
    plan = report["carbon_g"]
    window = report["baselines"]["best_window"]["carbon_g"]
    at_submit = report["baselines"]["run_at_submit"]["carbon_g"]
    assert plan <= window * (1 + 1e-9) <= at_submit * (1 + 1e-9) ** 2
    assert plan < at_submit
    starts = report["per_target"]["gpu"]["starts"]
    assert starts and all(s["start"].endswith("-04:00") for s in starts)
    assert sum(s["requests"] for t in report["per_target"].values() for s in t.get("starts", [])) == 1500
    assert report["time"]["deadline"] == "2023-06-02T08:00:00-04:00"
    assert report["sites"]["philadelphia"]["factors"]["pue"]["kind"] == "model"
    assert report["sites"]["london"]["factors"]["pue"]["kind"] == "assumed"

    no_defer = run_cli([*args, "--no-defer"], hq_env)
    assert no_defer.returncode == 0, no_defer.stderr
    assert json.loads(no_defer.stdout)["carbon_g"] == pytest.approx(at_submit)

    human = run_cli([a for a in args if a != "--json"], hq_env)
    assert human.returncode == 0, human.stderr
    assert "in time: from 2023-06-01T18:00:00-04:00" in human.stdout
    assert "best_window" in human.stdout and "run_at_submit" in human.stdout


def test_lambda_and_objective_together_are_an_error(hq_env: dict[str, str], tmp_path: Path) -> None:
    config = _write_sites(tmp_path)
    result = run_cli(
        [
            "simulate",
            str(_trace(tmp_path, 50)),
            "--config",
            str(config),
            "--lambda",
            "0.5",
            "--objective",
            "water",
        ],
        hq_env,
    )
    assert result.returncode == 2
    assert "both lambda (option --lambda) and objective (option --objective)" in result.stderr


def test_no_sites_report_carbon_water_and_cost_as_unknown(hq_env: dict[str, str], tmp_path: Path) -> None:
    args = ["simulate", str(_trace(tmp_path, 200)), "--config", str(EXAMPLES / "paper.toml"), "--json"]
    result = run_cli([*args, "--deadline", "24h", "--start", "2023-06-01T18:00Z"], hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["carbon_g"] is None and report["water_l"] is None and report["cost_usd"] is None
    assert report["energy_j"] > 0
    plain = json.loads(run_cli(args, hq_env).stdout)
    assert "carbon_g" not in plain and "time" not in plain  # nothing in time asked: as before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.replace('"carbon.csv"', '"missing.csv"'), r"missing\.csv.*not found"),
        (lambda c: c.replace('"America/New_York"', '"Mars/Olympus"'), "unknown time zone 'Mars/Olympus'"),
        (lambda c: c.replace("wue = 0.4", "wue = -1"), r"sites\.london: wue must not be negative, got -1"),
        (
            lambda c: c.replace('site = "london"', 'site = "paris"'),
            r"site\(s\) 'paris' that no \[sites\.NAME\] table declares; sites: philadelphia, london$",
        ),
    ],
    ids=["missing-file", "unknown-zone", "negative-water", "unknown-site"],
)
def test_bad_site_config_is_a_clear_error(hq_env: dict[str, str], tmp_path: Path, edit, message) -> None:
    config = _write_sites(tmp_path)
    config.write_text(edit(config.read_text(encoding="utf-8")), encoding="utf-8")
    args = ["simulate", str(_trace(tmp_path, 50)), "--config", str(config), "--deadline", "14h"]
    result = run_cli([*args, "--start", "2023-06-01T18:00-04:00"], hq_env)
    assert result.returncode == 2, result.stdout
    assert re.search(message, result.stderr, re.MULTILINE), result.stderr


def test_bad_series_name_the_file_and_what_is_wrong(hq_env: dict[str, str], tmp_path: Path) -> None:
    config = _write_sites(tmp_path)
    write_csv(tmp_path / "carbon.csv", "when,grams", [["2023-06-01 00:00:00", 1]])
    args = ["simulate", str(_trace(tmp_path, 50)), "--config", str(config), "--deadline", "14h"]
    result = run_cli([*args, "--start", "2023-06-01T18:00-04:00"], hq_env)
    assert result.returncode == 2
    assert "carbon.csv" in result.stderr and "when, grams" in result.stderr.replace("'", "")

    _write_sites(tmp_path)
    late = run_cli([*args[:-2], "--deadline", "14h", "--start", "2023-06-02T18:00-04:00"], hq_env)
    assert late.returncode == 2
    assert (
        "weather.json: temperature covers 2023-06-01 00:00 to 2023-06-03 04:00 (UTC); the plan needs"
        in late.stderr
    )
