"""Planning: cost models from profiles, routing policies, and chunking requests into tasks → ``Plan``.

``costs`` predicts a request's energy and runtime on a target from its profile (``evaluate`` cross-validates
it); ``workload`` groups requests into token-count classes and prices every class on every target;
``policies`` decides which target serves each request under a policy (``thresholds`` and ``optimal`` hold
the two searches) and compares policies; ``plan`` turns a routing into a plan of array tasks; ``simulate``
runs the planner over a token-count trace. ``options`` holds what a plan is made with (policy, λ, deadline,
model, batch and task size), taken from the settings once.
"""

from __future__ import annotations

from hpcqueue.planner.costs import CostModel, Prediction
from hpcqueue.planner.models import PlannerCostModel, resolve_cost_models
from hpcqueue.planner.options import PlanOptions
from hpcqueue.planner.plan import (
    POLICIES,
    TIME_LIMIT_SHARE,
    Plan,
    make_plan,
    plan_requests,
)
from hpcqueue.planner.policies import Routing, compare, route, summarize
from hpcqueue.planner.workload import CostTable, Workload

__all__ = [
    "POLICIES",
    "TIME_LIMIT_SHARE",
    "CostModel",
    "CostTable",
    "Plan",
    "PlanOptions",
    "PlannerCostModel",
    "Prediction",
    "Routing",
    "Workload",
    "compare",
    "make_plan",
    "plan_requests",
    "resolve_cost_models",
    "route",
    "summarize",
]
