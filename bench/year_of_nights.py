"""A year of nights: an overnight batch placed in time at six grid zones, every night of 2023.

    HPCQUEUE_GRID_DATA=/path/to/grid python bench/year_of_nights.py            # the whole year, 2 processes
    python bench/year_of_nights.py --grid-data /path/to/grid --nights 30 --zones GB,SG   # a quick run

The batch: the Azure LLM code trace shipped in ``examples/traces/`` (``--trace`` for another file with
``ContextTokens`` and ``GeneratedTokens`` columns) routed once to one target with the paper's A100 profile
(``llama-2-7b-chat.swing-a100.wilkins2024``) and ``--parallelism`` array elements (default 4), cut into tasks
of 256 requests: 48 tasks, 21.7 predicted A100-hours, 6.6 kWh of IT energy, so about 5.4 hours run at once
on 4 elements — a 14-hour night leaves the plan real freedom. Routing and chunking are done once; every night
only the placement in time is solved (:func:`hpcqueue.planner.timing.place`).

Every night of 2023 the batch is submitted at 18:00 local time (each zone's own time zone, from its weather
file) with a deadline of 08:00 the next morning, and again with a deadline of 18:00 the next day (24 h). The
site of each zone: carbon = the zone's Electricity Maps file (direct intensity), weather = its Open-Meteo
file, cooling = "economizer", wue = "wet-bulb", ``water_per_kwh`` = :data:`WATER_L_PER_KWH` (assumed, see
there), price = the zone's price file where there is one (GB has none). Nights whose data do not cover the
window (the year's edges) are skipped and counted.

Per zone and deadline: the carbon-objective plan against its two baselines, ``run_at_submit`` (every task as
soon as capacity allows) and ``best_window`` (that schedule moved as one block to the cheapest start, as CATS
does); what the carbon plan does to facility energy, water and cost; plans with the objectives water and cost
(08:00 deadline); and the check that carbon(plan) <= carbon(best_window) <= carbon(run_at_submit) every
night (a violation is printed and the script exits with status 1).

Forecasts. The main result plans with the actual series as the forecast (perfect knowledge, as Let's Wait
Awhile and GAIA report their oracle results). The naive forecast plans with the same hours of the previous
day (the site's factors on the grid shifted by -24 h) and its starts are then priced under the actual series
(:func:`hpcqueue.planner.timing.reprice`). Yesterday's hours are yesterday's grid, so the naive plan of a
night is the perfect-knowledge plan of the night before (place() is deterministic) and is taken from it; only
after a DST change, when the hours differ, is it solved anew.

Two more cases, over the same nights:

* two sites, GB and ERCOT, one A100 target at each (``--two-site-parallelism`` elements, default 2),
  submitted 18:00 London time, due 08:00: the plan (routing with site-weighted energy, then placement, as
  :func:`hpcqueue.planner.plan.plan_requests` does it) against ``best_single_site`` (the whole batch at one
  site, placed in time, the better site each night), the plan's own ``run_at_submit``, and the batch split
  over both sites by their slots (the ``unaware`` policy) run at submit;
* a wind-powered site: ERCOT's grid intensity and weather, the A100 target (400 W a node while busy, assumed)
  allowed to draw only the power derived from the Dallas wind speed with a turbine power curve (one turbine
  of 200 kW rated, 80 m hub, power law α = 0.14, cut-in 3, rated 12, cut-out 25 m/s: against the batch's
  1.6 kW it binds in the near-calm hours, hub wind below about 3.4 m/s); on every night the plan's draw is
  checked against the available power, and the plan is compared with the same night's plan without the
  power limit ("power bound" = that plan would draw more than the wind gives in some slot).

One night of the two-site case (``--cross-check-night``, default 60: 1 March) also goes through the
library's whole-plan path, :func:`hpcqueue.planner.simulate.simulate`, and both results are printed side by
side.

The placement uses its fast path (greedy, then the LP relaxation rounded, ``max_milp_vars=0``), whose gap to
the LP bound is reported; ``--exact`` lets ``place`` run HiGHS's MILP as well (about 5 s a placement, hours
for the year: the MILP runs to half its 10 s time limit on these 48-task instances). Writes
``sites-year-of-nights.png`` to ``--out-dir``. Target: under 10 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from _common import AZURE, REPO

A100 = "llama-2-7b-chat.swing-a100.wilkins2024"
#: The six zones of the grid data, with the place of their weather file.
ZONES = {
    "US-CAL-CISO": "CAISO (San Jose)",
    "US-MIDA-PJM": "PJM (Philadelphia)",
    "US-TEX-ERCO": "ERCOT (Dallas)",
    "GB": "GB (London)",
    "AU-NSW": "NSW (Sydney)",
    "SG": "Singapore",
}
#: Off-site water per kWh of electricity (L/kWh), the same at every zone and hour: an assumption, a round
#: value inside the range of the operational water consumption of US generation (Macknick et al. 2012,
#: Environ. Res. Lett. 7 045802: about 0 for wind and solar PV, roughly 2.5 L/kWh for coal and nuclear with
#: cooling towers). Being constant, it changes *when* the plan runs only through the PUE.
WATER_L_PER_KWH = 1.8
SLOT_S = 3600.0
TASK_SIZE = 256
#: Relative tolerance of the baseline check: the placement breaks ties between equal costs towards the
#: earlier start by adding 1e-9 of the typical cost per slot, so a plan may be dearer by that much.
CHECK_RTOL = 1e-8
WIND_ZONE = "US-TEX-ERCO"
WIND_RATED_KW = 200.0
WIND_NODE_W = 400.0
TWO_SITES = ("GB", "US-TEX-ERCO")
METRICS = ("carbon_g", "facility_energy_j", "water_l", "cost_usd")


# --- inputs ------------------------------------------------------------------------------------------


def grid_data(given: Path | None, parser: argparse.ArgumentParser) -> Path:
    """The grid data directory from ``--grid-data``, else ``HPCQUEUE_GRID_DATA``; a usage error if neither
    names a directory with ``carbon_intensity/`` in it."""
    chosen = given or (
        Path(os.environ["HPCQUEUE_GRID_DATA"]) if os.environ.get("HPCQUEUE_GRID_DATA") else None
    )
    if chosen is None:
        parser.error(
            "no grid data: give --grid-data DIR or set HPCQUEUE_GRID_DATA to the directory holding "
            "carbon_intensity/, weather/ and electricity_prices/ (Electricity Maps, Open-Meteo and market "
            "operators' data; hpcqueue does not ship it, see docs/sites.md)"
        )
    if not (chosen / "carbon_intensity").is_dir():
        parser.error(f"{chosen}: not a grid data directory (no carbon_intensity/ in it)")
    return chosen


def zone_timezone(grid: Path, zone: str) -> str:
    """The IANA time zone the zone's Open-Meteo file names (its ``timezone``)."""
    with open(grid / "weather" / zone / "2023.json", encoding="utf-8") as handle:
        return str(json.load(handle)["timezone"])


def site_spec(grid: Path, zone: str, name: str | None = None, **extra: Any) -> Any:
    """The site of a zone as this benchmark models it (see the module's docstring)."""
    from hpcqueue.config import SiteSpec

    price = grid / "electricity_prices" / f"{zone}_2023_hourly_usd.csv"
    fields: dict[str, Any] = {
        "name": name or zone,
        "timezone": zone_timezone(grid, zone),
        "carbon": str(grid / "carbon_intensity" / f"{zone}_2023_hourly.csv"),
        "weather": str(grid / "weather" / zone / "2023.json"),
        "cooling": "economizer",
        "wue": "wet-bulb",
        "water_per_kwh": WATER_L_PER_KWH,
        "price": str(price) if price.is_file() else None,
    }
    return SiteSpec(**(fields | extra))


def requests_table(trace: Path) -> pd.DataFrame:
    from hpcqueue.planner.simulate import load_trace

    frame = load_trace(trace)
    return pd.DataFrame(
        {
            "line": np.arange(1, len(frame) + 1, dtype=np.int64),
            "input_tokens": frame["input_tokens"].to_numpy(dtype=np.int64),
            "max_new_tokens": frame["output_tokens"].to_numpy(dtype=np.int64),
        }
    )


def a100(name: str, parallelism: int, site: str = "default", power_w: float | None = None) -> Any:
    from hpcqueue.config import Target

    return Target(
        name=name,
        hardware="a100-40g",
        profile=A100,
        array_parallelism=parallelism,
        site=site,
        power_w=power_w,
    )


def chunked(requests: pd.DataFrame, target: Any) -> pd.DataFrame:
    """The plan's tasks for ``requests`` all on ``target`` (routing and chunking only, nothing in time)."""
    from hpcqueue.planner import PlanOptions, resolve_cost_models
    from hpcqueue.planner.plan import plan_requests

    models = resolve_cost_models([target], "llama-2-7b-chat")
    return plan_requests(
        requests, [target], models, PlanOptions(policy="threshold", task_size=TASK_SIZE)
    ).tasks


def as_tasks(frame: pd.DataFrame, target_index: np.ndarray | None = None) -> Any:
    from hpcqueue.planner.timing import Tasks

    index = np.zeros(len(frame), dtype=np.int64) if target_index is None else np.asarray(target_index)
    return Tasks(
        index.astype(np.int64),
        frame["predicted_energy_j"].to_numpy(dtype=float),
        frame["predicted_runtime_s"].to_numpy(dtype=float),
    )


@dataclass(frozen=True)
class Night:
    day: date
    start: datetime  # 18:00 local
    deadline_s: dict[str, float]  # "08:00" and "24h": seconds after the start


def nights(timezone: str, n: int) -> list[Night]:
    """The first ``n`` nights of 2023 at ``timezone``: submit 18:00 local, due 08:00 next morning or 18:00
    the next day (wall-clock times: a night across a DST change is an hour shorter or longer)."""
    zone = ZoneInfo(timezone)
    out = []
    for i in range(n):
        day = date(2023, 1, 1) + timedelta(days=i)
        start = datetime(day.year, day.month, day.day, 18, tzinfo=zone)
        nxt = day + timedelta(days=1)
        due = {
            "08:00": datetime(nxt.year, nxt.month, nxt.day, 8, tzinfo=zone),
            "24h": datetime(nxt.year, nxt.month, nxt.day, 18, tzinfo=zone),
        }
        out.append(Night(day, start, {k: (v - start).total_seconds() for k, v in due.items()}))
    return out


# --- one night ---------------------------------------------------------------------------------------


@dataclass
class Placer:
    """What every night's placement shares: the slot, the solver's path."""

    exact: bool

    def place(
        self, tasks: Any, grid: Any, capacity: Any, rates: Any, weights: dict[str, float], defer: bool = True
    ) -> Any:
        from hpcqueue.planner.timing import place

        options: dict[str, Any] = {} if self.exact else {"max_milp_vars": 0}
        return place(tasks, grid, capacity, rates, weights, defer=defer, **options)


def night_grid(start: datetime, deadline_s: float) -> Any:
    from hpcqueue.planner.timing import TimeGrid

    return TimeGrid(start, SLOT_S, math.ceil(deadline_s / SLOT_S - 1e-9), deadline_s)


def unlimited(parallelism: Sequence[int], n_slots: int, sites: Sequence[int] | None = None) -> Any:
    from hpcqueue.planner.timing import Capacity

    n_targets = len(parallelism)
    site = np.arange(n_targets) if sites is None else np.asarray(sites)
    return Capacity(
        parallelism=np.asarray(parallelism, dtype=np.int64),
        power_w=np.full(n_targets, np.nan),
        site=site.astype(np.int64),
        site_power_w=np.full((int(site.max()) + 1, n_slots), np.inf),
    )


def totals(schedule: Any) -> dict[str, float]:
    found = schedule.totals()
    return {m: np.nan if found[m] is None else float(found[m]) for m in METRICS}


def ordered(plan: float, window: float, submit: float) -> bool:
    """plan <= best_window <= run_at_submit, up to the placement's tie-breaking (:data:`CHECK_RTOL`)."""
    return (
        plan <= window + CHECK_RTOL * abs(window) + 1e-9
        and window <= submit + CHECK_RTOL * abs(submit) + 1e-9
    )


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.begun = label, total, time.perf_counter()

    def step(self, done: int) -> None:
        if done == self.total or done % 60 == 0:
            seconds = time.perf_counter() - self.begun
            print(f"  {self.label}: {done}/{self.total} nights, {seconds:.0f} s", file=sys.stderr, flush=True)


# --- the six zones -----------------------------------------------------------------------------------


def run_zone(
    zone: str,
    grid_dir: Path,
    tasks: Any,
    parallelism: int,
    n_nights: int,
    exact: bool,
    naive_deadlines: Sequence[str] = ("08:00", "24h"),
) -> dict:
    """Every night at one zone: per night and case, the totals of the plan and its baselines (and, at the
    wind zone, the carbon plan's busy elements per slot, which the wind case compares with its power)."""
    from hpcqueue.errors import SiteDataError
    from hpcqueue.planner.timing import reprice, site_rates
    from hpcqueue.sites import load_site

    site = load_site(site_spec(grid_dir, zone))
    has_price = site.price is not None
    placer = Placer(exact)
    rows: list[dict[str, Any]] = []
    progress = Progress(zone, n_nights)
    # per deadline: (first slot, slots, deadline) of the night before and its carbon plan's starts
    yesterday: dict[str, tuple[tuple[Any, int, float | None], np.ndarray]] = {}
    for i, night in enumerate(nights(site.spec.timezone, n_nights), start=1):
        row: dict[str, Any] = {"day": night.day.isoformat()}
        today: dict[str, tuple[tuple[Any, int, float | None], np.ndarray]] = {}
        for deadline, grid, factors in night_factors(site, night, row):
            capacity = unlimited([parallelism], grid.n_slots)
            rates = site_rates([factors], [0], grid.n_slots)
            objectives = ["carbon"] + (
                ["water"] + (["cost"] if has_price else []) if deadline == "08:00" else []
            )
            for objective in objectives:
                weights = {objective: 1.0}
                placement = placer.place(tasks, grid, capacity, rates, weights)
                key = f"{deadline}/{objective}"
                for name, schedule in (
                    ("plan", placement.plan),
                    ("best_window", placement.baselines["best_window"]),
                    ("run_at_submit", placement.baselines["run_at_submit"]),
                ):
                    for metric, value in totals(schedule).items():
                        row[f"{key}/{name}/{metric}"] = value
                row[f"{key}/gap"] = placement.plan.gap if placement.plan.gap is not None else np.nan
                if objective == "carbon":
                    by_carbon = placement
                    today[deadline] = (
                        (grid.starts[0], grid.n_slots, grid.deadline_s),
                        placement.plan.start_slot,
                    )
                if zone == WIND_ZONE and objective == "carbon":
                    row[f"{key}/plan/nodes"] = placement.plan.nodes[0].tolist()
                row[f"{key}/method"] = placement.plan.method
                row[f"{key}/meets_deadline"] = placement.plan.meets_deadline
            # the naive forecast: yesterday's same hours, judged on what happened
            if deadline not in naive_deadlines:
                continue
            shifted = grid.starts - np.timedelta64(86400, "s")
            weights = {"carbon": 1.0}
            before = yesterday.get(deadline)
            if before is not None and before[0] == (shifted[0], grid.n_slots, grid.deadline_s):
                # yesterday's hours are yesterday's grid (no DST change between): the plan made with them
                # is yesterday's plan, already solved (place() is deterministic)
                guess_start = before[1]
            else:
                try:
                    forecast = site.factors(shifted, SLOT_S)
                except SiteDataError:
                    row[f"{deadline}/naive_skipped"] = True
                    continue
                forecast_rates = site_rates([forecast], [0], grid.n_slots)
                guess_start = placer.place(tasks, grid, capacity, forecast_rates, weights).plan.start_slot
            judged = reprice(by_carbon, rates, guess_start)
            assert judged is not None, "the naive plan's starts break capacity under the same capacity"
            for metric, value in totals(judged).items():
                row[f"{deadline}/naive/{metric}"] = value
        yesterday = today
        rows.append(row)
        progress.step(i)
    return {"zone": zone, "timezone": site.spec.timezone, "has_price": has_price, "rows": rows}


# --- two sites ---------------------------------------------------------------------------------------


def run_two_site(
    grid_dir: Path, requests: pd.DataFrame, parallelism: int, n_nights: int, exact: bool
) -> dict:
    """GB and ERCOT, one A100 target at each: plan, best single site, run at submit, unaware at submit."""
    from hpcqueue.errors import PlanningError, SiteDataError
    from hpcqueue.planner import CostTable, PlanOptions, Workload, resolve_cost_models, route
    from hpcqueue.planner.plan import ROUTING_SHARE
    from hpcqueue.planner.schedule import routing_view
    from hpcqueue.planner.timing import site_rates
    from hpcqueue.sites import load_sites

    names = ("gb", "ercot")
    specs = {n: site_spec(grid_dir, zone, name=n) for n, zone in zip(names, TWO_SITES, strict=True)}
    sites = load_sites(specs)
    targets = [a100(f"a100-{n}", parallelism, site=n) for n in names]
    models = resolve_cost_models(targets, "llama-2-7b-chat")
    workload = Workload.from_tokens(requests["input_tokens"], requests["max_new_tokens"])
    costs = CostTable.build(workload, targets, models)
    # the whole batch at one site: the same tasks whichever A100 runs them
    alone = chunked(requests, targets[0])
    cache: dict[bytes, Any] = {}

    def split_tasks(target_idx: np.ndarray) -> Any:
        """The tasks of a routing (each target's requests chunked as plan_requests chunks them)."""
        key = target_idx.astype(np.int8).tobytes()
        if key not in cache:
            frames, index = [], []
            for t, target in enumerate(targets):
                mine = requests[target_idx == t]
                if len(mine):
                    frame = chunked(mine, target)
                    frames.append(frame)
                    index.append(np.full(len(frame), t))
            cache[key] = as_tasks(pd.concat(frames, ignore_index=True), np.concatenate(index))
        return cache[key]

    placer = Placer(exact)
    weights = {"carbon": 1.0}
    unaware = route(workload, costs, "unaware").target_idx
    rows: list[dict[str, Any]] = []
    progress = Progress("two sites", n_nights)
    for i, night in enumerate(nights("Europe/London", n_nights), start=1):
        deadline_s = night.deadline_s["08:00"]
        grid = night_grid(night.start, deadline_s)
        row: dict[str, Any] = {"day": night.day.isoformat()}
        try:
            factors = [sites[n].factors(grid.starts, SLOT_S) for n in names]
        except SiteDataError:
            rows.append(row | {"skipped": True})
            progress.step(i)
            continue
        options = PlanOptions(policy="optimal", start=night.start, deadline_s=deadline_s, objective=weights)
        view = routing_view(targets, sites, options, night.start, deadline_s)
        routing = route(
            workload,
            costs.weighted(view.multiplier),
            "optimal",
            lam=view.lam,
            deadline_s=ROUTING_SHARE * deadline_s,
        )
        idx = routing.target_idx
        row["requests_gb"] = int((idx == 0).sum())
        tasks = split_tasks(idx)
        capacity = unlimited([parallelism] * 2, grid.n_slots)
        rates = site_rates(factors, [0, 1], grid.n_slots)
        placement = placer.place(tasks, grid, capacity, rates, weights)
        row["plan"] = totals(placement.plan)["carbon_g"]
        row["run_at_submit"] = totals(placement.baselines["run_at_submit"])["carbon_g"]
        row["gap"] = placement.plan.gap if placement.plan.gap is not None else np.nan
        unaware_at_submit = placer.place(split_tasks(unaware), grid, capacity, rates, weights, defer=False)
        row["unaware_at_submit"] = totals(unaware_at_submit.baselines["run_at_submit"])["carbon_g"]
        best, best_site = math.inf, ""
        for k, name in enumerate(names):
            one = unlimited([parallelism], grid.n_slots)
            try:
                at_site = placer.place(
                    as_tasks(alone), grid, one, site_rates([factors[k]], [0], grid.n_slots), weights
                )
            except PlanningError:
                continue
            carbon = totals(at_site.plan)["carbon_g"]
            if carbon < best:
                best, best_site = carbon, name
        row["best_single_site"], row["best_site"] = best, best_site
        rows.append(row)
        progress.step(i)
    return {
        "rows": rows,
        "parallelism": parallelism,
        "requests": len(requests),
        "sites": dict(zip(names, TWO_SITES, strict=True)),
    }


def cross_check_two_site(grid_dir: Path, requests: pd.DataFrame, parallelism: int, day: date) -> dict:
    """One night through the library's whole-plan path (:func:`hpcqueue.planner.simulate.simulate`), to
    compare with the hand-built two-site plan of the same night."""
    from hpcqueue.planner import PlanOptions, resolve_cost_models
    from hpcqueue.planner.simulate import simulate
    from hpcqueue.sites import load_sites

    names = ("gb", "ercot")
    sites = load_sites({n: site_spec(grid_dir, z, name=n) for n, z in zip(names, TWO_SITES, strict=True)})
    targets = [a100(f"a100-{n}", parallelism, site=n) for n in names]
    models = resolve_cost_models(targets, "llama-2-7b-chat")
    night = next(n for n in nights("Europe/London", 366) if n.day == day)
    options = PlanOptions(
        policy="optimal", start=night.start, deadline_s=night.deadline_s["08:00"], objective={"carbon": 1.0}
    )
    trace = pd.DataFrame(
        {"input_tokens": requests["input_tokens"], "output_tokens": requests["max_new_tokens"]}
    )
    begun = time.perf_counter()
    report = simulate(trace, targets, models, options, sites=sites)
    return {
        "day": day.isoformat(),
        "seconds": time.perf_counter() - begun,
        "plan": report["carbon_g"],
        "run_at_submit": report["baselines"]["run_at_submit"]["carbon_g"],
        "best_single_site": report["baselines"]["best_single_site"]["carbon_g"],
        "best_site": report["baselines"]["best_single_site"].get("site"),
        "requests_gb": report["per_target"]["a100-gb"]["requests"],
        "method": report["time"]["method"],
        "gap": report["time"]["gap"],
    }


# --- wind --------------------------------------------------------------------------------------------


def run_wind(
    grid_dir: Path, tasks: Any, parallelism: int, n_nights: int, exact: bool, with_unlimited: bool
) -> dict:
    """The batch at a site whose power is derived from the wind: the plan within that power, and the
    available power per slot. The same site without the power limit is the wind zone's own site, whose
    plans :func:`run_zone` makes; ``with_unlimited`` makes them here too (when that zone is not run)."""
    from hpcqueue.config import WindTurbines
    from hpcqueue.errors import PlanningError
    from hpcqueue.planner.timing import Capacity, site_rates
    from hpcqueue.sites import load_site

    turbines = WindTurbines(rated_kw=WIND_RATED_KW)
    site = load_site(site_spec(grid_dir, WIND_ZONE, name="wind", power="wind", wind=turbines))
    placer = Placer(exact)
    weights = {"carbon": 1.0}
    rows: list[dict[str, Any]] = []
    progress = Progress("wind", n_nights)
    for i, night in enumerate(nights(site.spec.timezone, n_nights), start=1):
        row: dict[str, Any] = {"day": night.day.isoformat()}
        for deadline, grid, factors in night_factors(site, night, row):
            available_w = np.asarray(factors.power_kw, dtype=float) * 1000.0
            limited = Capacity(
                parallelism=np.array([parallelism]),
                power_w=np.array([WIND_NODE_W]),
                site=np.array([0]),
                site_power_w=available_w[None, :],
            )
            rates = site_rates([factors], [0], grid.n_slots)
            row[f"{deadline}/available_w"] = available_w.tolist()
            if with_unlimited:
                free = placer.place(tasks, grid, unlimited([parallelism], grid.n_slots), rates, weights)
                row[f"{deadline}/carbon/plan/carbon_g"] = totals(free.plan)["carbon_g"]
                row[f"{deadline}/carbon/run_at_submit/carbon_g"] = totals(free.baselines["run_at_submit"])[
                    "carbon_g"
                ]
                row[f"{deadline}/carbon/plan/nodes"] = free.plan.nodes[0].tolist()
            try:
                placement = placer.place(tasks, grid, limited, rates, weights)
            except PlanningError:
                row[f"{deadline}/infeasible"] = True
                continue
            draw = placement.plan.site_power_w[0]
            row[f"{deadline}/max_draw_share"] = float(
                np.max(
                    np.where(
                        available_w > 0, draw / np.maximum(available_w, 1e-12), np.where(draw > 0, np.inf, 0)
                    )
                )
            )
            row[f"{deadline}/over"] = bool((draw > available_w * (1 + 1e-9) + 1e-6).any())
            row[f"{deadline}/plan"] = totals(placement.plan)["carbon_g"]
            submit = placement.baselines.get("run_at_submit")
            on_time = submit is not None and submit.meets_deadline
            row[f"{deadline}/run_at_submit"] = totals(submit)["carbon_g"] if on_time else np.nan
        rows.append(row)
        progress.step(i)
    return {"rows": rows, "parallelism": parallelism}


def add_unlimited(wind: dict, free_rows: Sequence[dict[str, Any]]) -> None:
    """Join each wind night with the same night's plan without the power limit (``free_rows``: rows of
    :func:`run_zone` at the wind zone, or the wind rows themselves): its carbon, its run-at-submit carbon,
    and whether it would draw more than the wind gives in some slot (the power *binds*)."""
    by_day = {r["day"]: r for r in free_rows}
    for row in wind["rows"]:
        free = by_day.get(row["day"], {})
        for deadline in ("08:00", "24h"):
            nodes = free.get(f"{deadline}/carbon/plan/nodes")
            if f"{deadline}/available_w" not in row or nodes is None:
                continue
            available_w = np.asarray(row[f"{deadline}/available_w"])
            row[f"{deadline}/unlimited"] = free[f"{deadline}/carbon/plan/carbon_g"]
            row[f"{deadline}/unlimited_submit"] = free[f"{deadline}/carbon/run_at_submit/carbon_g"]
            row[f"{deadline}/bound"] = bool((np.asarray(nodes) * WIND_NODE_W > available_w + 1e-6).any())


def night_factors(site: Any, night: Any, row: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """Each deadline of ``night`` with its grid and the site's factors on it; a deadline whose data do not
    cover its grid is marked skipped in ``row`` and left out."""
    from hpcqueue.errors import SiteDataError

    for deadline, deadline_s in night.deadline_s.items():
        grid = night_grid(night.start, deadline_s)
        try:
            factors = site.factors(grid.starts, SLOT_S)
        except SiteDataError:
            row[f"{deadline}/skipped"] = True
            continue
        yield deadline, grid, factors


# --- tables ------------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[bool] | None = None) -> str:
    """A markdown table with its columns padded, so that it reads aligned as plain text too."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right if right is not None else [i > 0 for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True))
        return "| " + " | ".join(padded) + " |"

    dashes = (("-" * (w + 1) + ":") if r else ("-" * (w + 2)) for w, r in zip(widths, right, strict=True))
    rule = "|" + "|".join(dashes) + "|"
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def saving(plan: float, reference: float) -> str:
    if not (np.isfinite(plan) and np.isfinite(reference)) or reference == 0:
        return "n/a"
    return f"{100 * (1 - plan / reference):.1f}"


def fmt(value: float, digits: int = 0, scale: float = 1.0) -> str:
    return "n/a" if not np.isfinite(value) else f"{value / scale:,.{digits}f}"


def column(rows: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([row.get(key, np.nan) for row in rows], dtype=float)


def zone_tables(results: Sequence[dict], deadline: str) -> tuple[str, list[str]]:
    """The carbon table of one deadline, and the check's violations."""
    out, violations = [], []
    for result in results:
        rows = result["rows"]
        base = f"{deadline}/carbon"
        done = [r for r in rows if f"{base}/plan/carbon_g" in r]
        skipped = sum(1 for r in rows if r.get(f"{deadline}/skipped"))
        plan = column(done, f"{base}/plan/carbon_g")
        window = column(done, f"{base}/best_window/carbon_g")
        submit = column(done, f"{base}/run_at_submit/carbon_g")
        on_time = [bool(r[f"{base}/meets_deadline"]) for r in done]
        ok = [ordered(p, w, s) and t for p, w, s, t in zip(plan, window, submit, on_time, strict=True)]
        for r, good in zip(done, ok, strict=True):
            if not good:
                p, w, s = (r[f"{base}/{name}/carbon_g"] for name in ("plan", "best_window", "run_at_submit"))
                violations.append(
                    f"{result['zone']} {r['day']} deadline {deadline}: carbon plan {p:.3f} g, "
                    f"best_window {w:.3f} g, run_at_submit {s:.3f} g, plan meets the deadline: "
                    f"{r[f'{base}/meets_deadline']}"
                )
        naive_rows = [r for r in done if f"{deadline}/naive/carbon_g" in r]
        naive = column(naive_rows, f"{deadline}/naive/carbon_g")
        naive_submit = column(naive_rows, f"{base}/run_at_submit/carbon_g")
        worse = int((naive > naive_submit * (1 + CHECK_RTOL)).sum())
        gaps = column(done, f"{base}/gap")
        out.append(
            [
                ZONES.get(result["zone"], result["zone"]),
                len(done),
                skipped,
                fmt(plan.mean()),
                fmt(window.mean()),
                fmt(submit.mean()),
                saving(plan.mean(), submit.mean()),
                saving(window.mean(), submit.mean()),
                saving(plan.mean(), window.mean()),
                f"{sum(ok)}/{len(ok)}",
                saving(naive.mean(), naive_submit.mean()) if naive.size else "not run",
                f"{worse}/{naive.size}" if naive.size else "not run",
                f"{100 * np.nanmax(gaps):.2f}" if np.isfinite(gaps).any() else "n/a",
            ]
        )
    headers = [
        "zone",
        "nights",
        "skipped",
        "carbon g: plan",
        "best_window",
        "run_at_submit",
        "plan vs submit %",
        "window vs submit %",
        "plan vs window %",
        "plan ≤ window ≤ submit",
        "naive forecast vs submit %",
        "naive worse than submit",
        "max gap %",
    ]
    return table(headers, out), violations


def co_benefit_table(results: Sequence[dict]) -> str:
    """What the carbon plan (08:00) does to facility energy, water and cost."""
    out = []
    for result in results:
        base = "08:00/carbon"
        done = [r for r in result["rows"] if f"{base}/plan/carbon_g" in r]
        cells: list[Any] = [ZONES.get(result["zone"], result["zone"])]
        for metric, scale, digits in (
            ("facility_energy_j", 3.6e6, 2),
            ("water_l", 1.0, 2),
            ("cost_usd", 1.0, 3),
        ):
            plan = column(done, f"{base}/plan/{metric}").mean()
            window = column(done, f"{base}/best_window/{metric}").mean()
            submit = column(done, f"{base}/run_at_submit/{metric}").mean()
            cells += [
                fmt(plan, digits, scale),
                fmt(submit, digits, scale),
                saving(plan, submit),
                saving(plan, window),
            ]
        out.append(cells)
    headers = ["zone"]
    for label in ("facility kWh", "water L", "cost USD"):
        headers += [f"{label}: plan", "run_at_submit", "vs submit %", "vs window %"]
    return table(headers, out)


def objective_table(results: Sequence[dict]) -> str:
    """Plans with the objectives water and cost (08:00)."""
    out = []
    for result in results:
        cells: list[Any] = [ZONES.get(result["zone"], result["zone"])]
        for objective, metric, digits in (("water", "water_l", 2), ("cost", "cost_usd", 3)):
            base = f"08:00/{objective}"
            done = [r for r in result["rows"] if f"{base}/plan/{metric}" in r]
            if not done:
                cells += ["n/a"] * 6
                continue
            plan = column(done, f"{base}/plan/{metric}")
            window = column(done, f"{base}/best_window/{metric}")
            submit = column(done, f"{base}/run_at_submit/{metric}")
            ok = sum(ordered(p, w, s) for p, w, s in zip(plan, window, submit, strict=True))
            carbon = column(done, f"{base}/plan/carbon_g").mean()
            carbon_submit = column(done, f"{base}/run_at_submit/carbon_g").mean()
            cells += [
                fmt(plan.mean(), digits),
                fmt(submit.mean(), digits),
                saving(plan.mean(), submit.mean()),
                saving(plan.mean(), window.mean()),
                f"{ok}/{len(done)}",
                saving(carbon, carbon_submit),
            ]
        out.append(cells)
    headers = ["zone"]
    for label in ("water L", "cost USD"):
        headers += [
            f"objective {label.split()[0]}: {label} plan",
            "run_at_submit",
            "vs submit %",
            "vs window %",
            "plan ≤ window ≤ submit",
            "its carbon vs submit %",
        ]
    return table(headers, out)


def two_site_table(result: dict, check: dict | None) -> str:
    rows = [r for r in result["rows"] if not r.get("skipped")]
    skipped = len(result["rows"]) - len(rows)
    plan, single = column(rows, "plan"), column(rows, "best_single_site")
    submit, unaware = column(rows, "run_at_submit"), column(rows, "unaware_at_submit")
    total = result["requests"]
    to_gb = sum(1 for r in rows if r["requests_gb"] == total)
    to_ercot = sum(1 for r in rows if r["requests_gb"] == 0)
    best_gb = sum(1 for r in rows if r["best_site"] == "gb")
    dearer = plan > single * (1 + 1e-6)
    schedules = [
        ("plan (route by site-weighted energy, then place)", plan),
        ("best_single_site (whole batch at one site, placed)", single),
        ("run_at_submit (the plan's routing, at submit)", submit),
        ("unaware split over both sites, at submit", unaware),
    ]
    lines = [
        table(
            ["schedule", "mean carbon g", "plan saving vs it %"],
            [
                [name, fmt(values.mean()), "—" if k == 0 else saving(plan.mean(), values.mean())]
                for k, (name, values) in enumerate(schedules)
            ],
            right=[False, True, True],
        ),
        "",
        f"nights: {len(rows)} (skipped: {skipped}); the plan's routing sends every request to GB on {to_gb} "
        f"nights, every request to ERCOT on {to_ercot}, splits them on {len(rows) - to_gb - to_ercot}; "
        f"the best single site is GB on {best_gb} nights; the plan is dearer than best_single_site on "
        f"{int(dearer.sum())} nights (by at most {fmt(100 * np.nanmax(plan / single - 1), 2)} %); "
        f"largest gap of the placement to its LP bound {fmt(100 * np.nanmax(column(rows, 'gap')), 2)} %",
    ]
    if check is not None:
        same = [r for r in rows if r["day"] == check["day"]]
        mine: dict[str, Any] = same[0] if same else {}
        lines += [
            "",
            f"cross-check, night of {check['day']}: this script against hpcqueue.planner.simulate.simulate "
            f"({check['seconds']:.1f} s; its placement: {check['method']}, gap "
            f"{fmt(100 * (check['gap'] or 0), 3)} %)",
            "",
            table(
                ["", "plan g", "run_at_submit g", "best_single_site g", "best site", "requests at GB"],
                [
                    [
                        label,
                        fmt(got.get("plan", np.nan), 1),
                        fmt(got.get("run_at_submit", np.nan), 1),
                        fmt(got.get("best_single_site", np.nan), 1),
                        got.get("best_site", "?"),
                        got.get("requests_gb", "?"),
                    ]
                    for label, got in (("simulate()", check), ("this script", mine))
                ],
                right=[False, True, True, True, False, True],
            ),
        ]
    return "\n".join(lines)


def wind_table(result: dict) -> tuple[str, list[str]]:
    out, problems = [], []
    for deadline in ("08:00", "24h"):
        rows = [r for r in result["rows"] if f"{deadline}/unlimited" in r]
        skipped = sum(1 for r in result["rows"] if r.get(f"{deadline}/skipped"))
        infeasible = sum(1 for r in rows if r.get(f"{deadline}/infeasible"))
        placed = [r for r in rows if f"{deadline}/plan" in r]
        bound = sum(1 for r in placed if r[f"{deadline}/bound"])
        over = [r["day"] for r in placed if r[f"{deadline}/over"]]
        problems += [f"wind {deadline} {day}: the plan draws more than the available power" for day in over]
        plan = column(placed, f"{deadline}/plan")
        free = column(placed, f"{deadline}/unlimited")
        submit = column(placed, f"{deadline}/run_at_submit")
        free_submit = column(placed, f"{deadline}/unlimited_submit")
        on_time = np.isfinite(submit)
        share = column(placed, f"{deadline}/max_draw_share")
        out.append(
            [
                deadline,
                len(rows),
                skipped,
                infeasible,
                len(placed),
                f"{bound} ({100 * bound / max(len(placed), 1):.0f} %)",
                f"{len(over)}",
                fmt(np.nanmax(share), 3) if share.size else "n/a",
                fmt(plan.mean()),
                fmt(free.mean()),
                f"{saving(plan[on_time].mean(), submit[on_time].mean())} ({int(on_time.sum())})",
                saving(free.mean(), free_submit.mean()),
                saving(free.mean(), plan.mean()),
            ]
        )
    headers = [
        "deadline",
        "nights",
        "skipped",
        "wind too weak (no plan)",
        "planned",
        "power bound",
        "draw > available",
        "max draw / available",
        "carbon g: plan",
        "same without limit",
        "plan vs submit % (wind; nights submit is on time)",
        "vs submit % (no limit)",
        "what the limit costs %",
    ]
    return table(headers, out), problems


# --- the plot ----------------------------------------------------------------------------------------


def plot(results: Sequence[dict], path: Path) -> int:
    """Per zone: mean carbon saving vs run_at_submit of best_window, the naive-forecast plan and the plan at
    both deadlines (bars; hatched: 24 h), and the plan's saving night by night (7-night rolling mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7.2), gridspec_kw={"height_ratios": [1, 1.1]})
    labels = [ZONES.get(r["zone"], r["zone"]) for r in results]
    x = np.arange(len(results))
    series = [
        ("best_window, 08:00", "08:00", "best_window/carbon_g", "#9ecae1", None),
        ("plan, naive forecast, 08:00", "08:00", "naive", "#fdae6b", None),
        ("plan, 08:00", "08:00", "plan/carbon_g", "#3182bd", None),
        ("best_window, 24 h", "24h", "best_window/carbon_g", "#9ecae1", "//"),
        ("plan, naive forecast, 24 h", "24h", "naive", "#fdae6b", "//"),
        ("plan, 24 h", "24h", "plan/carbon_g", "#3182bd", "//"),
    ]
    width = 0.8 / len(series)
    highest = 0.0
    for k, (label, deadline, key, color, hatch) in enumerate(series):
        values = []
        for result in results:
            rows = [r for r in result["rows"] if f"{deadline}/carbon/plan/carbon_g" in r]
            if key == "naive":
                rows = [r for r in rows if f"{deadline}/naive/carbon_g" in r]
                mine = column(rows, f"{deadline}/naive/carbon_g")
            else:
                mine = column(rows, f"{deadline}/carbon/{key}")
            submit = column(rows, f"{deadline}/carbon/run_at_submit/carbon_g")
            values.append(100 * (1 - mine.mean() / submit.mean()) if rows else np.nan)
        highest = max([highest, *(v for v in values if np.isfinite(v))])
        offset = (k - (len(series) - 1) / 2) * width
        top.bar(x + offset, values, width, label=label, color=color, hatch=hatch, edgecolor="white")
    top.set_xticks(x, labels, fontsize=8)
    top.set_ylabel("carbon saving vs run at submit (%)")
    top.axhline(0, color="black", linewidth=0.6)
    top.set_ylim(top=1.4 * highest if highest > 0 else None)
    top.legend(fontsize=7, ncol=3, loc="upper left")
    top.set_title("Overnight batch (18:00 submit), mean over the nights of 2023", fontsize=10)
    for result, label in zip(results, labels, strict=True):
        rows = [r for r in result["rows"] if "08:00/carbon/plan/carbon_g" in r]
        if not rows:
            continue
        days = pd.to_datetime([r["day"] for r in rows])
        per_night = 100 * (
            1
            - column(rows, "08:00/carbon/plan/carbon_g") / column(rows, "08:00/carbon/run_at_submit/carbon_g")
        )
        rolling = pd.Series(per_night, index=days).rolling(7, min_periods=1, center=True).mean()
        bottom.plot(rolling.index, rolling.to_numpy(), label=label, linewidth=1)
    bottom.set_ylabel("plan's saving, 08:00 deadline (%)\n7-night rolling mean")
    bottom.legend(fontsize=7, ncol=3)
    bottom.tick_params(labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path.stat().st_size


# --- main --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--grid-data", type=Path, default=None, help="grid data directory (default: $HPCQUEUE_GRID_DATA)"
    )
    parser.add_argument(
        "--trace", type=Path, default=AZURE, help="token-count trace (default: the Azure code trace)"
    )
    parser.add_argument("--zones", default=",".join(ZONES), help=f"comma-separated, of {', '.join(ZONES)}")
    parser.add_argument("--nights", type=int, default=365, help="the first N nights of 2023 (default: all)")
    parser.add_argument("--parallelism", type=int, default=4, help="array elements of the A100 target")
    parser.add_argument(
        "--two-site-parallelism", type=int, default=2, help="array elements at each of GB, ERCOT"
    )
    parser.add_argument("--jobs", type=int, default=2, help="processes")
    parser.add_argument("--exact", action="store_true", help="let place() run HiGHS's MILP too (slow)")
    parser.add_argument(
        "--cross-check-night",
        type=int,
        default=60,
        help="night number (1 = 1 January; clipped to --nights) run once through simulate() to "
        "cross-check the two-site case; 0: none",
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args()
    grid_dir = grid_data(args.grid_data, parser)
    zones = [z.strip() for z in args.zones.split(",") if z.strip()]
    unknown = [z for z in zones if z not in ZONES]
    if unknown:
        parser.error(f"unknown zone(s) {', '.join(unknown)}; zones: {', '.join(ZONES)}")
    if not args.trace.is_file():
        parser.error(f"{args.trace}: trace not found")
    n_nights = max(1, min(args.nights, 365))

    begun = time.perf_counter()
    requests = requests_table(args.trace)
    frame = chunked(requests, a100("a100", args.parallelism))
    tasks = as_tasks(frame)
    work_h = frame["predicted_runtime_s"].sum() / 3600
    print(
        f"batch: {len(requests):,} requests ({args.trace.name}), {len(frame)} tasks of up to {TASK_SIZE} "
        "requests, "
        f"{work_h:.1f} A100-hours, {frame['predicted_energy_j'].sum() / 3.6e6:.2f} kWh IT, longest task "
        f"{frame['predicted_runtime_s'].max() / 60:.0f} min; {args.parallelism} array elements: about "
        f"{work_h / args.parallelism:.1f} h at submit"
    )
    print(
        f"sites: economizer PUE, wet-bulb WUE, off-site water {WATER_L_PER_KWH} L/kWh (assumed), price "
        "where a file exists; forecast: the actual series (perfect knowledge) unless marked naive; slots "
        f"{SLOT_S / 3600:g} h; placement: "
        + ("MILP as well" if args.exact else "fast path (greedy + LP rounding), gap to the LP bound")
    )
    print(f"nights: the first {n_nights} of 2023; {args.jobs} processes", flush=True)

    # the longest jobs first, so that the processes finish together
    with_unlimited = WIND_ZONE not in zones
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(run_zone, z, grid_dir, tasks, args.parallelism, n_nights, args.exact) for z in zones
        ]
        two = pool.submit(run_two_site, grid_dir, requests, args.two_site_parallelism, n_nights, args.exact)
        wind = pool.submit(run_wind, grid_dir, tasks, args.parallelism, n_nights, args.exact, with_unlimited)
        check = None
        if args.cross_check_night > 0:
            day = date(2023, 1, 1) + timedelta(days=min(args.cross_check_night, n_nights) - 1)
            check = pool.submit(cross_check_two_site, grid_dir, requests, args.two_site_parallelism, day)
        results = [f.result() for f in futures]
        two_result, wind_result = two.result(), wind.result()
        check_result = check.result() if check is not None else None
    free_rows = wind_result["rows"] if with_unlimited else results[zones.index(WIND_ZONE)]["rows"]
    add_unlimited(wind_result, free_rows)

    violations: list[str] = []
    for deadline, title in (
        ("08:00", "deadline 08:00 next morning"),
        ("24h", "deadline 18:00 next day (24 h)"),
    ):
        text, found = zone_tables(results, deadline)
        violations += found
        print(
            f"\nObjective carbon, submit 18:00 local, {title}; mean over nights (g CO2eq per night's batch)\n"
        )
        print(text)
    print(
        "\nThe carbon plan (08:00) in facility energy, water and cost: means over nights, savings of the "
        "plan\n"
    )
    print(co_benefit_table(results))
    print("\nObjectives water and cost (08:00): means over nights\n")
    print(objective_table(results))
    print(
        f"\nTwo sites, {two_result['sites']['gb']} and {two_result['sites']['ercot']}: one A100 target at "
        "each "
        f"({two_result['parallelism']} array elements), submit 18:00 London, due 08:00, objective carbon\n"
    )
    print(two_site_table(two_result, check_result))
    text, problems = wind_table(wind_result)
    violations += problems
    print(
        "\nWind-powered site: ERCOT grid intensity and Dallas weather; available power derived from the "
        "Open-Meteo "
        f"10 m wind speed by a turbine power curve (1 turbine, {WIND_RATED_KW:g} kW rated, "
        "80 m hub, α = 0.14, cut-in 3 / rated 12 / cut-out 25 m/s); "
        f"{wind_result['parallelism']} A100 elements "
        f"of {WIND_NODE_W:g} W (assumed); objective carbon\n"
    )
    print(text)

    if n_nights > 0 and results:
        size = plot(results, args.out_dir / "sites-year-of-nights.png")
        print(f"\nplot: {args.out_dir / 'sites-year-of-nights.png'} ({size / 1000:.0f} kB)")
    print(f"\ntotal: {time.perf_counter() - begun:.0f} s")
    if violations:
        print("\nCHECK FAILED:", file=sys.stderr)
        for line in violations:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(
        "check: carbon(plan) ≤ carbon(best_window) ≤ carbon(run_at_submit) on every night of every zone; "
        "the wind plan never draws more than the available power"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
