"""Submitting through submitit: what the caller of a local submission gets back, and when."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO

SUBMIT_A_LONG_LOCAL_JOB = """
import sys, time
from hpcqueue.dispatch.executor import JobSpec, submit
job = submit(time.sleep, 60, job=JobSpec(folder=sys.argv[1], cluster="local", parameters={"timeout_min": 5},
             what="a sleeping job", private=True))
print(job.job_id)
"""


def test_a_local_job_does_not_hold_the_submitter_s_output_open(tmp_path: Path) -> None:
    """``hpcqueue submit --json | jq`` returns when the submission is done, not when a local worker waiting
    for a later begin time ends: the controller that outlives the submitter does not inherit its stdout."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SUBMIT_A_LONG_LOCAL_JOB, str(tmp_path / "logs")],
        capture_output=True,  # a pipe, as a shell pipeline or a calling program has
        text=True,
        timeout=45,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    try:
        assert time.monotonic() - started < 30
        assert done.stdout.strip().isdigit()  # what the submitter printed still reaches its own stdout
    finally:
        pid = int(done.stdout.strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)  # how cancel_jobs ends a local worker
    assert (tmp_path / "logs" / "controller.log").stat().st_mode & 0o777 == 0o600


def _wrapped() -> str | None:
    return os.environ.get("HQ_TEST_WRAPPED")


def test_a_job_runs_with_the_target_s_python(tmp_path: Path) -> None:
    """A target's ``python`` is the interpreter its jobs start with (quoted: a path with a space works)."""
    from hpcqueue.dispatch.executor import JobSpec, submit

    folder = tmp_path / "with space"
    folder.mkdir()
    wrapper = folder / "python"
    wrapper.write_text(f'#!/bin/sh\nHQ_TEST_WRAPPED=yes exec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    spec = JobSpec(folder=tmp_path / "logs", cluster="local", parameters={"timeout_min": 2}, what="a probe")
    assert submit(_wrapped, job=spec).result() is None  # this interpreter: not wrapped
    wrapped = JobSpec(**{**spec.__dict__, "python": str(wrapper)})
    assert submit(_wrapped, job=wrapped).result() == "yes"
