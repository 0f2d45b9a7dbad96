"""Accounting at the hours work really ran: a plan is a promise, the ledger is the truth.

Once a task is collected, its IT energy is known; what that energy cost at its site depends on *when* it was
drawn. ``account_batch`` takes each collected task's actual run interval — from Slurm accounting (``sacct``'s
Start and End) for a Slurm task, from the worker's own clock for a local one — and averages its site's series
over exactly that interval (:meth:`hpcqueue.sites.Site.factors` on one slot of the run's length): carbon
intensity, price, temperature and humidity; the PUE and WUE models are evaluated on the run's mean weather.
Then:

* facility energy = IT energy × PUE;
* carbon (g) = facility kWh × carbon intensity (g/kWh);
* on-site water (L) = IT kWh × WUE (L/kWh); off-site water (L) = facility kWh × the site's L per kWh;
* cost (USD) = facility MWh × price (USD/MWh).

Every factor keeps its kind (``series``, ``assumed``, ``model``, ``derived``) and source, so a figure resting
on a constant PUE or a derived wind series says so, as estimated energy does. The ledger spreads the task's
figures over its requests by their share of its energy (:meth:`Ledger.record_accounting`).

A Slurm task whose job has not yet reached accounting with an end time is left for the next look; after
:data:`SACCT_GRACE_S` without one (accounting purged, or never kept) the worker's clock is used instead, and
the task says so (``run_times_source``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcqueue.config import SiteSpec
from hpcqueue.dispatch.batchdir import BatchDir
from hpcqueue.errors import HpcqueueError, SlurmError
from hpcqueue.ledger.schema import FOOTPRINT_COLUMNS, SITE_FACTOR_COLUMNS

if TYPE_CHECKING:
    from hpcqueue.dispatch.slurm import JobState
    from hpcqueue.ledger.db import Ledger
    from hpcqueue.sites import Site

log = logging.getLogger(__name__)

#: How long after collection a Slurm task may wait for sacct's end time before the worker's clock is used.
SACCT_GRACE_S = 600.0
_J_PER_KWH = 3.6e6


def account_batch(
    ledger: Ledger,
    batch: BatchDir,
    *,
    poller: Any = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Account every collected, not yet accounted task of ``batch``; returns how many were accounted.

    ``poller`` (a :class:`hpcqueue.dispatch.slurm.SacctPoller`) is asked for the Slurm jobs' times when
    given, else one ``sacct`` call is made. Safe to run at any time and any number of times.
    """
    rows = ledger.tasks_to_account(batch.batch_id)
    if not rows:
        return 0
    manifest = batch.manifest()
    intervals = _intervals(rows, poller=poller, now=clock())
    if not intervals:
        return 0
    sites, load_error = _sites(manifest)
    site_of = {name: spec.get("site") for name, spec in manifest.get("targets", {}).items()}
    records = []
    for row in rows:
        interval = intervals.get(row["task_index"])
        if interval is None:
            continue
        start, end, source = interval
        site_name: str | None = row.get("site") or site_of.get(row["target"])
        record: dict[str, Any] = {
            "task_index": row["task_index"],
            "run_started_at": start,
            "run_ended_at": end,
            "run_times_source": source,
        }
        site = sites.get(site_name) if site_name else None
        record.update(account_task(float(row["energy_j"]), start, end, site, site_name))
        if load_error is not None and site_name not in sites:
            record["factor_sources"] = {"error": load_error}
        records.append(record)
    return ledger.record_accounting(batch.batch_id, records) if records else 0


def account_task(
    energy_j: float, start: float, end: float, site: Site | None, site_name: str | None = None
) -> dict[str, Any]:
    """What ``energy_j`` of IT energy drawn from ``start`` to ``end`` (epoch s) cost at ``site``: the
    factors averaged over the interval and the figures they give (the columns of
    :meth:`Ledger.record_accounting`). Unknown factors give ``None``; a site that cannot say (no site, or a
    series that does not cover the interval) gives ``None`` figures and the reason in ``factor_sources``."""
    empty: dict[str, Any] = dict.fromkeys((*SITE_FACTOR_COLUMNS, *FOOTPRINT_COLUMNS))
    if site is None:
        reason = (
            f"site {site_name!r} is not declared in the batch's config"
            if site_name and site_name != "default"
            else "the target states no site: facility energy, carbon, water and cost are unknown"
        )
        return empty | {"factor_kinds": {}, "factor_sources": {"site": reason}}
    duration = max(end - start, 1.0)
    try:
        factors = site.factors(np.array([np.datetime64(round(start * 1e6), "us")]), duration)
    except HpcqueueError as exc:
        return empty | {"factor_kinds": {}, "factor_sources": {"error": str(exc)}}

    def first(values: Any) -> float | None:
        if values is None:
            return None
        value = float(np.asarray(values, dtype=float)[0])
        return value if np.isfinite(value) else None

    pue = first(factors.pue)
    carbon = first(factors.carbon_g_per_kwh)
    wue = first(factors.wue_l_per_kwh)
    offsite = first(factors.water_l_per_kwh)
    price = first(factors.price_usd_per_mwh)
    it_kwh = energy_j / _J_PER_KWH
    facility_kwh = None if pue is None else it_kwh * pue
    sources = dict(factors.sources)
    if "pue" in sources and site.weather is not None:
        sources["pue"] += "; evaluated at the run's mean outdoor temperature"
    return {
        "pue": pue,
        "carbon_g_per_kwh": carbon,
        "temperature_c": first(factors.temperature_c),
        "price_usd_per_mwh": price,
        "wue_l_per_kwh": wue,
        "offsite_water_l_per_kwh": offsite,
        "facility_energy_j": None if facility_kwh is None else facility_kwh * _J_PER_KWH,
        "carbon_g": _times(facility_kwh, carbon),
        "water_onsite_l": _times(it_kwh, wue),
        "water_offsite_l": _times(facility_kwh, offsite),
        "cost_usd": _times(facility_kwh, None if price is None else price / 1000.0),
        "factor_kinds": dict(factors.kinds),
        "factor_sources": sources,
    }


def _times(amount: float | None, rate: float | None) -> float | None:
    return None if amount is None or rate is None else amount * rate


def _sites(manifest: Mapping[str, Any]) -> tuple[dict[str, Site], str | None]:
    """The batch's sites as its config declared them (the series files are read again now, so a file
    updated with what really happened is what the ledger uses); an error reading them is returned, not
    raised, so that collecting never fails on accounting."""
    from hpcqueue.sites import load_sites

    specs = (manifest.get("settings") or {}).get("sites") or {}
    if not specs:
        return {}, None
    try:
        return load_sites({name: SiteSpec(**spec) for name, spec in specs.items()}), None
    except (HpcqueueError, ValueError, TypeError) as exc:
        log.warning("cannot read the batch's site data; its tasks are accounted without it: %s", exc)
        return {}, f"cannot read the batch's site data: {exc}"


def _intervals(rows: list[dict[str, Any]], *, poller: Any, now: float) -> dict[int, tuple[float, float, str]]:
    """Each task's actual run interval ``(start, end, source)``; tasks whose interval is not known yet are
    left out."""
    out: dict[int, tuple[float, float, str]] = {}
    slurm_rows = [r for r in rows if r["executor"] == "slurm" and r.get("job_id")]
    jobs: Mapping[str, JobState] = {}
    asked = False
    if slurm_rows:
        try:
            jobs = _job_times([str(r["job_id"]) for r in slurm_rows], poller)
            asked = True
        except SlurmError as exc:
            log.warning("cannot read Slurm accounting; tasks are accounted later: %s", exc)
    for row in rows:
        worker = _worker_interval(row)
        if row["executor"] != "slurm" or not row.get("job_id"):
            if worker is not None:
                out[row["task_index"]] = (*worker, "worker")
            continue
        job = jobs.get(str(row["job_id"]))
        if job is not None and job.finished and job.start is not None and job.end is not None:
            out[row["task_index"]] = (job.start, max(job.end, job.start), "sacct")
            continue
        waited = now - float(row.get("collected_at") or now)
        if asked and worker is not None and waited > SACCT_GRACE_S:
            out[row["task_index"]] = (*worker, "worker")
    return out


def _job_times(job_ids: list[str], poller: Any) -> Mapping[str, JobState]:
    if poller is not None:
        states = poller.states(job_ids)
        if poller.last_error is not None:
            raise poller.last_error
        return dict(states)
    from hpcqueue.dispatch.slurm import sacct

    return sacct(job_ids)


def _worker_interval(row: Mapping[str, Any]) -> tuple[float, float] | None:
    start, end = row.get("started_at"), row.get("ended_at")
    if start is None or end is None:
        return None
    return float(start), max(float(end), float(start))
