"""The loop closed: what the ledger measured flows back into a target's cost model.

``hpcqueue profiles calibrate TARGET`` reads the target's tasks whose energy was measured
(:meth:`hpcqueue.ledger.Ledger.measured_tasks`), fits the target's current cost model to them phase by phase
(:mod:`hpcqueue.planner.calibrate`) and writes the result as a new profile revision, which the planner and
``hpcqueue estimate`` then use for that target. This module wires the ledger, the planner and the profile
store together; each of them knows nothing of the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcqueue.config import Settings
from hpcqueue.planner.calibrate import MIN_TASKS


@dataclass
class CalibrateOutcome:
    """What ``profiles calibrate`` did: the revision written (or that would be, with ``dry_run``)."""

    target: str
    model: str
    base: str
    base_method: str
    name: str
    path: Path | None
    calibration: Any  # hpcqueue.planner.calibrate.LedgerCalibration

    def to_dict(self) -> dict[str, Any]:
        cal = self.calibration
        return {
            "target": self.target,
            "model": self.model,
            "base": self.base,
            "base_method": self.base_method,
            "revision": self.name,
            "path": None if self.path is None else str(self.path),
            "tasks": len(cal.tasks),
            "batches": sorted({str(b) for b in cal.tasks["batch_id"]}),
            "energy_factors": {"prefill": cal.energy_factors[0], "decode": cal.energy_factors[1]},
            "runtime_factors": {"prefill": cal.runtime_factors[0], "decode": cal.runtime_factors[1]},
            "energy_interval_factors": list(cal.energy_interval_factors),
            "runtime_interval_factors": list(cal.runtime_interval_factors),
            "energy_error_before": cal.error_before,
            "energy_error_after_held_out": cal.error_after,
        }


def calibrate_target(
    settings: Settings,
    target_name: str,
    *,
    min_tasks: int = MIN_TASKS,
    output: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
) -> CalibrateOutcome:
    """Calibrate ``target_name``'s cost model for ``settings.model`` on the ledger's measured tasks and write
    the revision to ``output`` (default: the user's profiles). The base is the target's model without earlier
    calibrations (its profile, else the analytic model), so revisions do not compound: each is fitted on every
    measured task there is. Raises :class:`hpcqueue.errors.PlanningError` below ``min_tasks`` tasks."""
    from hpcqueue.ledger import Ledger
    from hpcqueue.models import resolve_model
    from hpcqueue.planner import calibrate
    from hpcqueue.planner.models import resolve_cost_models
    from hpcqueue.profiles.store import list_profiles, load_profile, profile_search_path, user_profiles_dir

    target = settings.target(target_name)
    model = resolve_model(settings.model, cache_dir=settings.cache_dir)
    search_path = profile_search_path(settings.profile_dirs)
    base = resolve_cost_models(
        [target],
        model.name,
        search_path,
        model_path=model.path,
        cache_dir=settings.cache_dir,
        calibrated=False,
        default_engine=settings.engine,
    )[target.name]
    if base is None:
        from hpcqueue.errors import PlanningError

        raise PlanningError(
            f"target {target.name!r} has no cost model for {model.name!r} to calibrate (no profile, and no "
            "architecture for the analytic model)"
        )
    engine = settings.engine_of(target)
    tasks, requests = Ledger(settings.db_url).measured_tasks(target.name, model.name, engine)
    batch_size = target.batch_size or settings.batch_size
    fitted = calibrate.fit(
        base, requests, tasks, batch_size=batch_size, target=target.name, min_tasks=min_tasks
    )
    existing = [
        load_profile(e.directory) for e in list_profiles(search_path) if e.meta.source == "calibrated"
    ]
    revision = calibrate.revision_profile(
        base,
        fitted,
        requests,
        model=model.name,
        target=target,
        batch_size=batch_size,
        revision=calibrate.next_revision(existing, target.name),
        engine=engine,
    )
    path = None
    if not dry_run:
        path = calibrate.save_revision(revision, Path(output) if output is not None else user_profiles_dir())
    return CalibrateOutcome(
        target.name, model.name, base.profile_name, base.method, revision.name, path, fitted
    )
