"""Energy attribution: how a task's metered energy is split over its requests.

The rule is versioned: its id is stored with every request's energy in the ledger, and its text with every
task's metrics, so a figure can always be read as what it is. Requests of a task add up to the task's
measurement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The rule's id, stored with every request's energy in the ledger; the text below says what it means.
ATTRIBUTION_RULE = "token-share-v1"
ATTRIBUTION_RULE_TEXT = (
    "token-share-v1: each generation batch's energy is split among that batch's requests in proportion "
    "to input_tokens + output_tokens; the rest of the task's energy (model load, reading inputs, writing "
    "outputs) is split over the requests run in this attempt in the same proportion, so the requests add "
    "up to the task's energy (if the batch measurements add up to more than the task measurement, the "
    "batch shares are scaled down to it). Requests finished by an earlier, interrupted attempt keep the "
    "energy recorded then."
)


def _weights(records: Sequence[dict[str, Any]]) -> list[float]:
    return [float((r.get("input_tokens") or 0) + (r.get("output_tokens") or 0)) for r in records]


def share(records: Sequence[dict[str, Any]], energy_j: float) -> None:
    """Set each record's ``energy_j`` to its token share of ``energy_j`` (equal shares if no tokens)."""
    weights = _weights(records)
    total = sum(weights)
    for record, weight in zip(records, weights, strict=True):
        record["energy_j"] = energy_j * (weight / total if total > 0 else 1.0 / len(records))


def attribute_rest(records: list[dict[str, Any]], task_energy_j: float, batch_energy_j: float) -> None:
    """Add the task's energy outside generation batches to this attempt's records (token-share-v1)."""
    if not records:
        return
    rest_j = task_energy_j - batch_energy_j
    if rest_j < 0:  # meters disagree: scale the batch shares down to the task total
        scale = task_energy_j / batch_energy_j if batch_energy_j > 0 else 0.0
        for record in records:
            record["energy_j"] = float(record.get("energy_j") or 0.0) * scale
        rest_j = 0.0
    weights = _weights(records)
    total = sum(weights)
    for record, weight in zip(records, weights, strict=True):
        share = weight / total if total > 0 else 1.0 / len(records)
        record["energy_j"] = float(record.get("energy_j") or 0.0) + rest_j * share
