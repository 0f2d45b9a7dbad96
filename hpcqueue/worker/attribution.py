"""Energy attribution: how a task's metered energy is split over its requests.

Each rule is versioned: its id is stored with every request's energy in the ledger, and its text with every
task's metrics, so a figure can always be read as what it is. Requests of a task add up to the task's
measurement under either rule.

- ``token-share-v1`` (the transformers engine, fixed batches): a batch's energy goes to that batch's
  requests (``share``).
- ``step-token-share-v1`` (the vLLM engine, continuous batching: requests join and leave the running set at
  every step, so there is no batch to meter): the energy of each interval between two hand-overs goes to the
  requests that processed tokens in it (``share_interval``), and a request's shares add up until it finishes.

Both spread the rest of the task's energy (model load, reading inputs, writing outputs) with
``attribute_rest``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

KeyT = TypeVar("KeyT")

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

#: The rule of engines with continuous batching (vLLM), where requests start and finish at any step.
ATTRIBUTION_RULE_STEPS = "step-token-share-v1"
ATTRIBUTION_RULE_STEPS_TEXT = (
    "step-token-share-v1: the energy metered between two hand-overs of finished requests is split among "
    "the requests that were running in that interval in proportion to the tokens each processed in it (in "
    "the interval its prompt was prefilled, its input_tokens less those served from the engine's prefix "
    "cache; plus the output tokens it generated in the interval); a request's shares add up until it "
    "finishes. The rest of the task's energy (model load, reading inputs, writing outputs) is split over "
    "the requests run in this attempt in proportion to input_tokens + output_tokens, so the requests add up "
    "to the task's energy (if the interval measurements add up to more than the task measurement, the "
    "interval shares are scaled down to it). Requests finished by an earlier, interrupted attempt keep the "
    "energy recorded then."
)

#: Every rule's text by its id, for the metrics of a task run under it.
RULE_TEXTS = {ATTRIBUTION_RULE: ATTRIBUTION_RULE_TEXT, ATTRIBUTION_RULE_STEPS: ATTRIBUTION_RULE_STEPS_TEXT}


def _weights(records: Sequence[dict[str, Any]]) -> list[float]:
    return [float((r.get("input_tokens") or 0) + (r.get("output_tokens") or 0)) for r in records]


def share(records: Sequence[dict[str, Any]], energy_j: float) -> None:
    """Set each record's ``energy_j`` to its token share of ``energy_j`` (equal shares if no tokens)."""
    weights = _weights(records)
    total = sum(weights)
    for record, weight in zip(records, weights, strict=True):
        record["energy_j"] = energy_j * (weight / total if total > 0 else 1.0 / len(records))


def share_interval(tokens: Mapping[KeyT, int], energy_j: float) -> dict[KeyT, float]:
    """Split one interval's energy over the requests that ran in it (``step-token-share-v1``).

    ``tokens`` maps each request that ran in the interval to the tokens it processed in it (prompt tokens
    when prefilled, plus the tokens generated); the shares are proportional to them, equal when every
    count is zero, and add up to ``energy_j`` (an empty mapping gets none).
    """
    total = sum(tokens.values())
    if total > 0:
        return {key: energy_j * count / total for key, count in tokens.items()}
    return {key: energy_j / len(tokens) for key in tokens}


def attribute_rest(records: list[dict[str, Any]], task_energy_j: float, batch_energy_j: float) -> None:
    """Add the task's energy outside the metered batches or intervals to this attempt's records (the same for
    ``token-share-v1`` and ``step-token-share-v1``)."""
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
