"""Helpers shared by the planner tests (and the CLI's ``plan``/``simulate``)."""

from __future__ import annotations

# The keys every policy comparison report has (hpcqueue.planner.compare; ``simulate --json`` prints one).
REPORT_KEYS = frozenset(
    {
        "policy",
        "lambda",
        "deadline_s",
        "energy_j",
        "runtime_s",
        "makespan_s",
        "per_target",
        "thresholds",
        "baselines",
        "savings_vs_unaware",
        "savings_vs_best_single",
        "best_single",
    }
)
