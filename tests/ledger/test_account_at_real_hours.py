"""Accounting at the hours work really ran (hpcqueue.ledger.accounting): the factors averaged over a task's
actual interval, the figures they give, their labels, and where the interval comes from."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from hpcqueue.config import SiteSpec
from hpcqueue.dispatch.slurm import JobState
from hpcqueue.errors import SlurmError
from hpcqueue.ledger.accounting import SACCT_GRACE_S, _intervals, account_task
from hpcqueue.sites import load_site

T0 = dt.datetime(2026, 11, 30, 0, 0, tzinfo=dt.timezone.utc).timestamp()


def carbon_csv(path: Path, values: list[float], step_s: int = 600) -> Path:
    rows = ["time,value"]
    for k, value in enumerate(values):
        moment = dt.datetime.fromtimestamp(T0 + k * step_s, dt.timezone.utc)
        rows.append(f"{moment.strftime('%Y-%m-%dT%H:%M:%SZ')},{value}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_a_run_across_two_samples_gets_their_time_weighted_mean(tmp_path: Path) -> None:
    site = load_site(
        SiteSpec(name="windy", carbon=str(carbon_csv(tmp_path / "c.csv", [400, 100, 100])), cooling=1.25)
    )
    # 300 s of the 400 sample and 450 s of the 100 one.
    start, end = T0 + 300, T0 + 1050
    out = account_task(7.2e6, start, end, site, "windy")
    mean = (300 * 400 + 450 * 100) / 750
    assert out["carbon_g_per_kwh"] == pytest.approx(mean)
    assert out["pue"] == 1.25
    assert out["facility_energy_j"] == pytest.approx(7.2e6 * 1.25)
    assert out["carbon_g"] == pytest.approx(2.0 * 1.25 * mean)  # 2 kWh of IT energy
    assert out["factor_kinds"] == {"pue": "assumed", "carbon": "series"}
    assert "c.csv" in out["factor_sources"]["carbon"]
    # water and cost: the site states neither
    assert out["water_onsite_l"] is None and out["water_offsite_l"] is None and out["cost_usd"] is None


def test_water_and_cost_follow_their_definitions(tmp_path: Path) -> None:
    site = load_site(SiteSpec(name="s", carbon=200.0, cooling=1.5, wue=1.8, water_per_kwh=3.0, price=120.0))
    out = account_task(3.6e6, T0, T0 + 60, site, "s")  # 1 kWh of IT energy
    assert out["water_onsite_l"] == pytest.approx(1.8)  # IT kWh × WUE
    assert out["water_offsite_l"] == pytest.approx(1.5 * 3.0)  # facility kWh × off-site L/kWh
    assert out["cost_usd"] == pytest.approx(1.5 * 120.0 / 1000)  # facility MWh × price
    assert out["carbon_g"] == pytest.approx(1.5 * 200.0)
    assert set(out["factor_kinds"].values()) == {"assumed"}


def test_a_run_outside_the_series_is_recorded_as_unknown_with_the_reason(tmp_path: Path) -> None:
    site = load_site(SiteSpec(name="windy", carbon=str(carbon_csv(tmp_path / "c.csv", [400, 100]))))
    out = account_task(1e6, T0 + 86_400, T0 + 86_460, site, "windy")
    assert out["carbon_g"] is None and out["facility_energy_j"] is None
    assert "c.csv" in out["factor_sources"]["error"]


def test_a_target_without_a_site_accounts_nothing_and_says_so() -> None:
    out = account_task(1e6, T0, T0 + 60, None, "default")
    assert out["carbon_g"] is None and out["pue"] is None
    assert "no site" in out["factor_sources"]["site"]


class FakePoller:
    def __init__(self, states: dict[str, JobState], error: SlurmError | None = None) -> None:
        self._states, self.last_error = states, error

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        return {k: v for k, v in self._states.items() if k in job_ids}


def job(job_id: str, state: str, start: float | None, end: float | None) -> JobState:
    return JobState(job_id, job_id.split("_")[0], 0, state, "lowpower", "lp01", start, end, None, "0:0")


def row(index: int, executor: str, collected_at: float) -> dict:
    return {
        "task_index": index,
        "executor": executor,
        "job_id": f"77_{index}" if executor == "slurm" else "4242",
        "started_at": T0 + 10,
        "ended_at": T0 + 50,
        "collected_at": collected_at,
    }


def test_slurm_tasks_use_sacct_times_and_local_ones_the_worker_s_clock() -> None:
    now = T0 + 100
    rows = [row(0, "slurm", now), row(1, "local", now), row(2, "slurm", now)]
    poller = FakePoller(
        {"77_0": job("77_0", "COMPLETED", T0 + 5, T0 + 55), "77_2": job("77_2", "RUNNING", T0, None)}
    )
    out = _intervals(rows, poller=poller, now=now)
    assert out[0] == (T0 + 5, T0 + 55, "sacct")
    assert out[1] == (T0 + 10, T0 + 50, "worker")
    assert 2 not in out  # no end in accounting yet: accounted at a later look


def test_after_the_grace_the_worker_s_clock_stands_in_for_missing_accounting() -> None:
    now = T0 + 100 + SACCT_GRACE_S + 1
    out = _intervals([row(0, "slurm", T0 + 100)], poller=FakePoller({}), now=now)
    assert out[0] == (T0 + 10, T0 + 50, "worker")


def test_accounting_that_cannot_be_read_leaves_slurm_tasks_for_later() -> None:
    now = T0 + 100 + SACCT_GRACE_S + 1
    broken = FakePoller({}, error=SlurmError("slurmdbd is down"))
    out = _intervals([row(0, "slurm", T0 + 100), row(1, "local", T0 + 100)], poller=broken, now=now)
    assert list(out) == [1]
