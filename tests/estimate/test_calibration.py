"""Calibration of the analytic model on profiles: which profiles, how well each class's own profiles are
reproduced, regime independence, transfer to hardware without a profile, intervals and caching."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from hpcqueue.errors import ConfigError
from hpcqueue.estimate import KNOWN, analytic_model, build_model, calibrate
from hpcqueue.estimate.calibration import PRIOR_FACTORS
from tests.estimate import SHIPPED, TRUE_FACTORS, synthetic_profile

CLASSES = {"a100-40g", "m1-pro", "v100-16g"}
POOLED = {
    "pooled-7b.m1-pro.wilkins2024",
    "pooled-7b.palmetto-a100.wilkins2024",
    "pooled-7b.palmetto-v100.wilkins2024",
    "pooled-7b.swing-a100.wilkins2024",
}


def test_the_shipped_profiles_calibrate_three_classes_and_leave_out_the_pooled_ones() -> None:
    cal = calibrate([SHIPPED])
    assert set(cal.classes) == CLASSES
    assert len(cal.classes["a100-40g"].profiles) == 6  # Swing and Palmetto: one class
    assert {name for name, _ in cal.skipped} == POOLED
    assert all("no single architecture" in reason for _, reason in cal.skipped)


@pytest.mark.parametrize("hardware", sorted(CLASSES))
def test_each_class_s_own_profiles_are_reproduced(hardware: str) -> None:
    """Five factors per class against 32-114 points spanning 40 J to 590 kJ: within 12 % on energy and
    25 % on runtime (the V100's Mistral profile runs twice as slow per pass as its Llama and Falcon)."""
    fit = calibrate([SHIPPED]).classes[hardware]
    energy_mape, runtime_mape = fit.residuals.mape()
    assert energy_mape <= 0.12
    assert runtime_mape <= 0.25


def test_the_factors_are_physical_and_the_fallback_cost_is_fitted_only_where_a_dtype_is_not_native() -> None:
    cal = calibrate([SHIPPED])
    for fit in cal.classes.values():
        f = fit.factors
        for share in (f.u_compute, f.u_memory, f.power_compute, f.power_memory):
            assert 0 < share <= 1
        assert 1e-6 < f.overhead_s_per_layer < 1e-2  # microseconds to milliseconds per layer
    # bfloat16 on the A100 is native; the V100 and the M1 Pro's GPU have no bfloat16 arithmetic
    assert "convert_weight_reads" not in cal.classes["a100-40g"].fitted
    assert "convert_weight_reads" in cal.classes["v100-16g"].fitted
    assert "convert_weight_reads" in cal.classes["m1-pro"].fitted


def test_a_cached_profile_is_fitted_with_the_cached_form(tmp_path: Path) -> None:
    synthetic_profile(tmp_path, "llama.h100-cached", kv_cache=True, batch_sizes=(1, 8))
    fit = calibrate([tmp_path]).classes["h100-80g"]
    energy_mape, runtime_mape = fit.residuals.mape()
    assert energy_mape < 0.01 and runtime_mape < 0.01
    assert fit.factors.u_compute == pytest.approx(TRUE_FACTORS.u_compute, rel=0.02)  # long prefills decide it


def test_factors_fitted_without_a_cache_predict_the_cached_regime(tmp_path: Path) -> None:
    """The factors describe the hardware, not the regime: fitted on re-run-the-sequence measurements (the
    paper's way), they predict serving with a KV cache as the true factors do."""
    synthetic_profile(tmp_path, "llama.h100-no-cache", kv_cache=False)
    fitted = calibrate([tmp_path]).classes["h100-80g"].factors
    requests = ([16, 512, 2000], [1000, 512, 64])
    arch = KNOWN["llama-2-7b"]
    truth, ours = (
        build_model(arch, "h100-80g", f, dtype="bfloat16", cpus=4).predict(*requests)
        for f in (TRUE_FACTORS, fitted)
    )
    assert np.allclose(ours.runtime_s, truth.runtime_s, rtol=0.03)
    assert np.allclose(ours.energy_j, truth.energy_j, rtol=0.03)


def test_idle_power_subtracted_by_a_profile_is_added_back(tmp_path: Path) -> None:
    synthetic_profile(
        tmp_path,
        "llama.h100-idle",
        idle_subtracted={"gpu": True, "cpu": False},
        extra={"idle_power_w_by_domain": {"gpu:0": 60.0, "cpu": 20.0}},
    )
    (group,) = calibrate([tmp_path]).groups["h100-80g"]
    from hpcqueue.profiles import load_profile

    points = load_profile(tmp_path / "llama.h100-idle").points
    gpu = points["energy_gpu_j_mean"].to_numpy() + 60.0 * points["runtime_s_mean"].to_numpy()
    assert np.allclose(group.energy_gpu_j, gpu)
    assert np.allclose(group.energy_cpu_j, points["energy_cpu_j_mean"].to_numpy())  # not subtracted


def test_estimated_and_demo_model_profiles_are_left_out_with_the_reason(tmp_path: Path) -> None:
    synthetic_profile(tmp_path, "estimated.h100", method="estimated")
    synthetic_profile(tmp_path, "demo.h100", model="hpcqueue-demo")
    synthetic_profile(tmp_path, "unknown-model.h100", model="nobody/no-such-model-7b")
    cal = calibrate([tmp_path])
    reasons = dict(cal.skipped)
    assert not cal.classes
    assert "energy figures are estimated, not measured" in reasons["estimated.h100"]
    assert "demo model" in reasons["demo.h100"]
    assert "no-such-model-7b" in reasons["unknown-model.h100"]


def test_the_compute_efficiency_transfers_only_along_the_same_arithmetic_path() -> None:
    """Tensor-core bfloat16 on the A100 and the float32 fallbacks of the V100 and the M1 Pro are different
    kernels: a native target takes the A100's u_compute, a fallback target the fallbacks' (and their
    conversion cost), never a mix."""
    cal = calibrate([SHIPPED])
    native, sources = cal.transferred("h100-80g")  # bfloat16 is native on an H100
    assert set(sources) == CLASSES
    assert native.u_compute == pytest.approx(cal.classes["a100-40g"].factors.u_compute)
    assert native.convert_weight_reads == PRIOR_FACTORS.convert_weight_reads  # unused where native
    fallback, _ = cal.transferred("h100-80g", native=False)
    ends = sorted(cal.classes[c].factors.u_compute for c in ("m1-pro", "v100-16g"))
    assert ends[0] < fallback.u_compute < ends[1]
    reads = sorted(cal.classes[c].factors.convert_weight_reads for c in ("m1-pro", "v100-16g"))
    assert reads[0] < fallback.convert_weight_reads < reads[1]
    # held out, the A100 has no native class to learn from: the prior's centre, said in the transfer
    assert cal.transfer("a100-40g").donors["u_compute"] == ()
    assert cal.transferred("a100-40g")[0].u_compute == PRIOR_FACTORS.u_compute
    assert calibrate([]).transferred("h100-80g") == (PRIOR_FACTORS, ())


def test_a_factor_weighs_by_how_well_each_class_s_fit_identifies_it() -> None:
    """Where every class's points decide a factor its classes count equally (a geometric mean); where a
    class's points barely bear on it (u_memory of the fallbacks: compute-bound even at short contexts), the
    class that identifies it weighs more."""
    cal = calibrate([SHIPPED])
    fits = cal.classes
    assert fits["a100-40g"].log_sd["u_memory"] < 0.5 * fits["v100-16g"].log_sd["u_memory"]
    factors, _ = cal.transferred("h100-80g")
    power = [fits[c].factors.power_compute for c in sorted(CLASSES)]
    assert factors.power_compute == pytest.approx(math.prod(power) ** (1 / 3), rel=0.05)
    plain = math.prod(fits[c].factors.u_memory for c in sorted(CLASSES)) ** (1 / 3)
    a100 = fits["a100-40g"].factors.u_memory
    assert abs(math.log(factors.u_memory / a100)) < abs(math.log(plain / a100))


def test_the_calibrated_model_carries_its_basis_and_a_90_percent_interval() -> None:
    transferred = analytic_model("llama-2-7b", "h100-80g", search_path=[SHIPPED])
    assert "transferred" in transferred.factors_basis
    low, high = transferred.energy_interval_factors or (math.nan, math.nan)
    assert low < 1 < high
    assert any("spread of the factors between a100-40g, m1-pro, v100-16g" in n for n in transferred.notes)
    own = analytic_model("mistral-7b", "a100-40g", search_path=[SHIPPED])
    assert own.factors_basis.startswith("calibrated on 6 profile(s) of a100-40g")
    assert any("own fit" in note for note in own.notes)
    own_low, own_high = own.runtime_interval_factors or (math.nan, math.nan)
    assert own_low < 1 < own_high and own_high / own_low < high / low  # its own data: a narrower interval
    cpu = analytic_model("llama-2-7b", "xeon-6148", search_path=[SHIPPED])
    assert any("no CPU-only hardware has a profile" in note for note in cpu.notes)
    assert set(cpu.predict([100], [100]).energy_by_domain_j) == {"cpu"}


def test_an_unknown_hardware_class_fails_before_any_calibration() -> None:
    with pytest.raises(ConfigError, match="unknown hardware class 'a100'"):
        analytic_model("llama-2-7b", "a100", search_path=["/nonexistent"])


def test_calibration_is_cached_until_a_profile_changes(tmp_path: Path) -> None:
    shutil.copytree(
        SHIPPED / "llama-2-7b-chat.m1-pro.wilkins2024", tmp_path / "llama-2-7b-chat.m1-pro.wilkins2024"
    )
    first = calibrate([tmp_path])
    assert calibrate([tmp_path]) is first
    points = tmp_path / "llama-2-7b-chat.m1-pro.wilkins2024" / "points.csv"
    stamp = points.stat().st_mtime_ns + 1_000_000_000
    os.utime(points, ns=(stamp, stamp))
    assert calibrate([tmp_path]) is not first
