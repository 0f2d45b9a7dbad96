"""The options a plan is made with — policy, λ or the objective's weights, start, deadline and slot, model,
batch size and task size — taken once from the settings and passed through the planner as one value."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

from hpcqueue.config import Settings


@dataclass(frozen=True)
class PlanOptions:
    """How to plan.

    ``policy``, ``lam`` (λ, the weight of energy in the routing cost) and ``deadline_s`` are those of
    :func:`hpcqueue.planner.policies.route`; ``model`` only improves error messages. Costs are predicted at
    each target's ``batch_size``, else ``batch_size`` (None: the profile's own), and a target's requests are
    cut into tasks of its ``task_size``, else ``task_size`` (see :func:`hpcqueue.planner.plan.plan_requests`).

    In time (:mod:`hpcqueue.planner.schedule`): tasks may start from ``start`` (None: now) and must finish
    by the deadline — ``deadline_at``, else ``deadline_s`` seconds after the start —, planned in slots of
    ``slot_s`` seconds to minimise the weighted ``objective`` (None: λ's, energy λ and runtime 1 − λ);
    ``defer=False`` starts every task as soon as capacity allows.
    """

    policy: str = "threshold"
    lam: float = 1.0
    deadline_s: float | None = None
    model: str | None = None
    batch_size: int | None = None
    task_size: int = 256
    start: datetime | None = None
    deadline_at: datetime | None = None
    slot_s: float = 3600.0
    objective: dict[str, float] | None = field(default=None, hash=False)
    defer: bool = True

    @classmethod
    def from_settings(cls, settings: Settings, *, model: str | None = None) -> PlanOptions:
        """The options ``settings`` ask for; ``model`` (e.g. the resolved model's name) stands for
        ``settings.model`` when given."""
        same = ("policy", "deadline_s", "batch_size", "task_size", "start", "deadline_at", "slot_s", "defer")
        return cls(
            lam=settings.lambda_,
            model=settings.model if model is None else model,
            objective=settings.objective,
            **{name: getattr(settings, name) for name in same},
        )

    @property
    def weights(self) -> dict[str, float]:
        """The objective's weights; without an objective, λ's: energy λ, runtime 1 − λ."""
        if self.objective is not None:
            return dict(self.objective)
        return {k: w for k, w in (("energy", self.lam), ("runtime", 1.0 - self.lam)) if w > 0}

    def start_time(self) -> datetime:
        """The plan's start: ``start``, else now (to the second, UTC)."""
        if self.start is not None:
            return self.start
        return datetime.now(timezone.utc).replace(microsecond=0)

    def deadline_after(self, start: datetime) -> float | None:
        """Seconds from ``start`` to the deadline (None: no deadline)."""
        if self.deadline_at is not None:
            return (self.deadline_at - start).total_seconds()
        return self.deadline_s
