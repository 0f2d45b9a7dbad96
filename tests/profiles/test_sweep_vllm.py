"""``hpcqueue profile TARGET --engine vllm``: a real quick sweep with vLLM, and the planner using it.

The profiling job runs with the target's ``python``: the interpreter named by ``HPCQUEUE_TEST_VLLM_PYTHON``
(vLLM pins its own transformers, so it lives in a venv of its own). Without it the test is skipped; under
``CI=true`` it fails. The quick grid on the demo model takes about 40 s on two CPU cores.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from hpcqueue.config import Target
from hpcqueue.models import ModelRef
from hpcqueue.planner import resolve_cost_models
from hpcqueue.profiles import load_profile
from tests.conftest import run_cli

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _vllm_version(python: str) -> str:
    code = "import vllm; print(vllm.__version__)"
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_a_quick_vllm_profile_is_measured_and_planned_with_for_vllm_targets_only(
    vllm_python: str, hq_env: dict[str, str], demo: ModelRef, tmp_path: Path
) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'[targets.local]\nexecutor = "local"\nhardware = "cpu-generic"\npython = "{vllm_python}"\n'
        'meter = "estimate"\n',
        encoding="utf-8",
    )
    result = run_cli(
        ["profile", "local", "--engine", "vllm", "--quick", "--wait", "--json", "-c", str(config)],
        hq_env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    info = json.loads(result.stdout)
    assert info["engine"] == "vllm" and info["name"] == "hpcqueue-demo.local.cpu-generic-vllm"
    directory = Path(info["path"])
    profile = load_profile(directory)

    meta = profile.meta
    assert meta.engine == "vllm" and meta.source == "measured"
    assert meta.batch_size_semantics.startswith("concurrent sequences (vLLM max_num_seqs)")
    assert meta.software["vllm"] == _vllm_version(vllm_python)
    options = meta.software["vllm_options"]
    assert options["max_num_seqs"] == 4 and options["enable_prefix_caching"] is False  # quick: batch 1, 4
    assert options["distributed_executor_backend"] == "uni"  # in this process, where the meter looks
    # every point's sequences fit vLLM's KV cache at once: they really ran concurrently
    assert meta.software["kv_cache_tokens"] > 4 * (512 + 32) and meta.extra["kv_cache_limited_points"] == []
    assert meta.kv_cache is True and meta.software["dtype"] == "float32"
    assert meta.method == "estimated" and meta.meters["cpu"].startswith("estimate (estimated)")
    assert "ESTIMATES" in meta.notes and "vLLM" in meta.notes

    points = profile.points
    assert len(points) == (3 + 2) * 2 and meta.extra["skipped_points"] == []
    assert (points["runtime_s_mean"] > 0).all() and (points["energy_j_mean"] > 0).all()
    assert points["energy_cpu_j_mean"].to_numpy() == pytest.approx(points["energy_j_mean"].to_numpy())
    # exact lengths: every sequence had the nominal prompt and generated exactly the nominal output
    expected = points["batch_size"] * (points["input_tokens"] + points["output_tokens"])
    assert (points["total_tokens_mean"] == expected).all()
    trials = pd.read_csv(directory / "trials.csv")
    assert set(trials["method"]) == {"estimated"} and (trials["duration_s"] > 0).all()

    # the planner takes it for a vLLM target, never for a transformers one on the same hardware
    notes: list[str] = []
    targets = [
        Target(name="fast", hardware="cpu-generic", engine="vllm"),
        Target(name="hf", hardware="cpu-generic", engine="transformers"),
    ]
    models = resolve_cost_models(targets, "hpcqueue-demo", [directory.parent], notes, model_path=demo.path)
    fast, hf = models["fast"], models["hf"]
    assert fast is not None and (fast.method, fast.profile_name) == ("profile", profile.name)
    assert hf is not None and hf.method == "analytic"
    [note] = [n for n in notes if n.startswith("target 'hf'")]
    assert "no transformers profile of 'hpcqueue-demo'" in note and f"{profile.name} (vllm)" in note
