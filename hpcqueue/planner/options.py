"""The options a plan is made with: policy, λ, deadline, model, batch size and task size, taken once from the
settings and passed through the planner as one value."""

from __future__ import annotations

from dataclasses import dataclass

from hpcqueue.config import Settings


@dataclass(frozen=True)
class PlanOptions:
    """How to plan.

    ``policy``, ``lam`` (λ, the weight of energy in the cost) and ``deadline_s`` are those of
    :func:`hpcqueue.planner.policies.route`; ``model`` only improves error messages. Costs are predicted at
    each target's ``batch_size``, else ``batch_size`` (None: the profile's own), and a target's requests are
    cut into tasks of its ``task_size``, else ``task_size`` (see :func:`hpcqueue.planner.plan.plan_requests`).
    """

    policy: str = "threshold"
    lam: float = 1.0
    deadline_s: float | None = None
    model: str | None = None
    batch_size: int | None = None
    task_size: int = 256

    @classmethod
    def from_settings(cls, settings: Settings, *, model: str | None = None) -> PlanOptions:
        """The options ``settings`` ask for; ``model`` (e.g. the resolved model's name) stands for
        ``settings.model`` when given."""
        return cls(
            policy=settings.policy,
            lam=settings.lambda_,
            deadline_s=settings.deadline_s,
            model=settings.model if model is None else model,
            batch_size=settings.batch_size,
            task_size=settings.task_size,
        )
