"""Planning: cost models from profiles, routing policies, and chunking requests into tasks → ``Plan``.

``costs`` predicts a request's energy and runtime on a target from its profile; ``policies`` decides
which target serves each request and cuts each target's share into array tasks.
"""

from __future__ import annotations

from hpcqueue.planner.costs import CostModel, LogLogCurve, Prediction
from hpcqueue.planner.policies import (
    POLICIES,
    Plan,
    make_plan,
    order_by_energy_per_token,
    resolve_cost_models,
    threshold_between,
)

__all__ = [
    "POLICIES",
    "CostModel",
    "LogLogCurve",
    "Plan",
    "Prediction",
    "make_plan",
    "order_by_energy_per_token",
    "resolve_cost_models",
    "threshold_between",
]
