"""What a target's interpreter can run (``hpcqueue doctor``), asked of real interpreters."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hpcqueue.cli import app
from hpcqueue.dispatch.interpreters import probe_interpreter


def test_this_interpreter_runs_transformers_and_says_why_not_vllm() -> None:
    import transformers

    found = probe_interpreter(None, target="local", engine="transformers")
    assert found.ready and found.python == sys.executable
    assert found.transformers == transformers.__version__ and found.device == "cpu"
    assert found.reason == f"runs transformers {transformers.__version__} on cpu"
    # the test venv has no vLLM (its pins need a venv of its own): the reason says what to do
    vllm = probe_interpreter(None, target="local", engine="vllm")
    assert not vllm.ready and vllm.vllm is None
    assert "cannot import vllm" in vllm.reason and 'python = "/path/bin/python"' in vllm.reason


def test_a_missing_or_broken_interpreter_is_named(tmp_path: Path) -> None:
    missing = probe_interpreter(str(tmp_path / "nope"), target="gpu", engine="vllm")
    assert (
        not missing.ready
        and missing.reason == f"{tmp_path / 'nope'} is not an executable file on this machine"
    )
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no such module: encodings' >&2\nexit 1\n")
    broken.chmod(0o755)
    found = probe_interpreter(str(broken), target="gpu", engine="transformers")
    assert not found.ready and "could not run the probe (exit 1): no such module: encodings" in found.reason


@pytest.mark.slow
@pytest.mark.vllm
def test_doctor_reports_each_target_s_interpreter_and_engine(
    vllm_python: str, hq_env: dict[str, str], tmp_path: Path
) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        '[targets.cpu]\nexecutor = "local"\n\n'
        f'[targets.fast]\nexecutor = "local"\nengine = "vllm"\npython = "{vllm_python}"\n\n'
        '[targets.wrong]\nexecutor = "local"\nengine = "vllm"\n'
    )
    result = CliRunner().invoke(app, ["doctor", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert any(m["name"] == "estimate" and m["available"] for m in report["meters"])
    targets = {t["target"]: t for t in report["targets"]}
    assert (targets["cpu"]["engine"], targets["cpu"]["ready"]) == ("transformers", True)
    fast = targets["fast"]
    assert fast["ready"] and fast["python"] == vllm_python and fast["vllm"] and fast["device"] == "cpu"
    assert fast["reason"] == f"runs vllm {fast['vllm']} on cpu"
    assert not targets["wrong"]["ready"] and "cannot import vllm" in targets["wrong"]["reason"]
    # --engine applies to every target: the vLLM venv also runs transformers
    result = CliRunner().invoke(
        app, ["doctor", "--config", str(config), "--engine", "transformers", "--json"]
    )
    assert {t["target"]: t["ready"] for t in json.loads(result.output)["targets"]} == {
        "cpu": True,
        "fast": True,
        "wrong": True,
    }
