"""The soak's CI variant (bench/faults_soak.py runs the full 10,000 requests): a few hundred requests on the
local Slurm cluster while workers are SIGKILLed at random moments, recovered by `status` and `retry` alone,
then checked exactly once over the input, the result files and the ledger."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from bench.faults_soak import soak

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_small_soak_with_random_kills_ends_exactly_once(tmp_path: Path) -> None:
    args = argparse.Namespace(
        requests=300,
        task_size=30,
        batch_size=4,
        policy=None,
        kills_per_minute=20.0,
        max_kills=6,  # then the batch finishes: a slow machine is not killed forever
        seed=3,
        timeout=420.0,
        poll=2.0,
        keep=False,
    )
    row, exactly_once = soak(args, tmp_path)
    assert exactly_once, json.dumps(row)  # a string: shown whole
    assert (row["succeeded"], row["failed"], row["pending"]) == (300, 0, 0)
    assert (row["duplicates"], row["lost"]) == (0, 0)
    # the faults really happened and were recovered from: some workers were killed, and retried
    assert row["kills injected"] >= 1 and row["retries run"] >= 1, row
