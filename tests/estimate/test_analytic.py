"""The analytic model's physics: roofline regimes, the sums over decode steps, batching, tensor parallelism,
energy by domain, and the errors a user sees for a bad hardware class, dtype, batch size or token count."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from hpcqueue.errors import ConfigError, InputError
from hpcqueue.estimate import KNOWN, AnalyticModel, Factors, build_model
from hpcqueue.estimate.analytic import PCIE_LINK_BPS
from hpcqueue.meters.hardware import get_hardware

LLAMA = replace(KNOWN["llama-2-7b"], dtype="bfloat16")
FACTORS = Factors(
    u_compute=0.5,
    u_memory=0.8,
    overhead_s_per_layer=2e-4,
    convert_weight_reads=4.0,
    power_compute=0.7,
    power_memory=0.3,
    cpu_share=0.5,
)


def model(hardware: str = "a100-40g", **options: object) -> AnalyticModel:
    return build_model(LLAMA, hardware, FACTORS, **options)  # type: ignore[arg-type]


def runtime(m: AnalyticModel, n_in: int, n_out: int) -> float:
    return float(m.predict([n_in], [n_out]).runtime_s[0])


def test_decode_at_batch_1_is_memory_bound_on_an_a100() -> None:
    """A cached decode step of a 7B model reads 13.5 GB of weights for 14 GFLOP: the bandwidth decides."""
    m = model(kv_cache=True)
    step_s = runtime(m, 100, 101) - runtime(m, 100, 100)  # the step at context 199
    spec = m.spec
    weights_s = (LLAMA.weight_bytes() + 200 * LLAMA.kv_bytes_per_token()) / (
        spec.memory_bandwidth_bps * FACTORS.u_memory
    )
    assert step_s == pytest.approx(weights_s + LLAMA.layers * FACTORS.overhead_s_per_layer, rel=1e-9)
    compute_s = LLAMA.decode_step(199).flops / (spec.peak_flops * FACTORS.u_compute)
    assert compute_s < 0.02 * weights_s  # far from the compute roof
    assert 0.010 < step_s < 0.020  # ~11 ms at 80 % of 1,555 GB/s, plus 6 ms of launches


def test_a_2048_token_prefill_is_compute_bound() -> None:
    m = model(kv_cache=True)
    prefill_s = runtime(m, 2048, 1)  # one output token: the prefill alone
    compute_s = LLAMA.prefill(2048).flops / (m.spec.peak_flops * FACTORS.u_compute)
    memory_s = LLAMA.prefill(2048).bytes / (m.spec.memory_bandwidth_bps * FACTORS.u_memory)
    assert compute_s > 5 * memory_s
    assert prefill_s == pytest.approx(compute_s + LLAMA.layers * FACTORS.overhead_s_per_layer, rel=1e-9)


def test_decode_without_a_cache_grows_quadratically_with_the_output_and_with_one_linearly() -> None:
    def growth(kv_cache: bool) -> float:
        m = model(kv_cache=kv_cache)
        t = {n: runtime(m, 32, n) for n in (512, 1024, 2048)}
        return (t[2048] - t[1024]) / (t[1024] - t[512])  # 2 for linear, 4 for quadratic

    assert growth(kv_cache=True) == pytest.approx(2.0, rel=0.05)
    assert 3.5 < growth(kv_cache=False) < 4.2


def test_batching_raises_throughput_where_decode_is_memory_bound() -> None:
    one, eight = model(batch_size=1), model(batch_size=8)
    per_request_1 = one.predict([32], [256])
    per_request_8 = eight.predict([32], [256])
    # eight sequences share every weight read: each request takes well under a quarter of the time
    assert per_request_8.runtime_s[0] < per_request_1.runtime_s[0] / 4
    assert per_request_8.energy_j[0] < per_request_1.energy_j[0] / 3


@pytest.mark.parametrize("hardware", ["a100-40g", "m1-pro", "xeon-6148"])
def test_energy_by_domain_sums_to_the_energy(hardware: str) -> None:
    m = model(hardware)
    estimate = m.predict([8, 512, 2000], [1, 64, 1000])
    domains = estimate.energy_by_domain_j
    assert set(domains) == ({"gpu", "cpu"} if get_hardware(hardware).gpus else {"cpu"})
    assert np.allclose(sum(domains.values()), estimate.energy_j, rtol=1e-12)
    assert (estimate.energy_j > 0).all() and (estimate.runtime_s > 0).all()


def test_power_lies_between_idle_and_full_load() -> None:
    m = model(batch_size=16)
    estimate = m.predict([8, 4000], [500, 4])
    gpu_w = estimate.energy_by_domain_j["gpu"] / estimate.runtime_s / m.tensor_parallel  # per GPU
    assert (gpu_w > m.spec.power_idle_w).all() and (gpu_w < m.spec.power_max_w).all()
    assert gpu_w[1] > gpu_w[0]  # a long prefill draws more than memory-bound decode


def reference_runtime_and_energy(m: AnalyticModel, n_in: int, n_out: int) -> tuple[float, float]:
    """The request pass by pass, from the architecture's own counts of each pass (no table, no sums)."""
    arch, spec, f = m.architecture, m.spec, m.factors
    b, d = m.batch_size, m.tensor_parallel
    if m.kv_cache:
        passes = [arch.prefill(n_in)] + [arch.decode_step(c) for c in range(n_in, n_in + n_out - 1)]
        tokens = [n_in] + [1] * (n_out - 1)
    else:
        passes = [arch.prefill(n) for n in range(n_in, n_in + n_out)]
        tokens = list(range(n_in, n_in + n_out))
    convert_s = 0.0
    if not spec.native_dtype:
        convert_s = f.convert_weight_reads * arch.weight_bytes() / (d * spec.memory_bandwidth_bps)
    time_s = energy_j = 0.0
    for work, n in zip(passes, tokens, strict=True):
        weights = arch.weight_bytes()
        moved = weights + b * (work.bytes - weights)  # the batch reads the weights once
        compute_s = b * work.flops / (d * spec.peak_flops * f.u_compute)
        memory_s = moved / (d * spec.memory_bandwidth_bps * f.u_memory)
        link_s = 0.0
        if d > 1:
            link = spec.link_bandwidth_bps or PCIE_LINK_BPS
            link_s = 2 * arch.layers * 2 * (d - 1) / d * b * n * arch.hidden * arch.dtype_bytes / link
        t = arch.layers * f.overhead_s_per_layer + convert_s + max(compute_s, memory_s) + link_s
        dynamic = f.power_compute * compute_s + f.power_memory * (memory_s + convert_s + link_s)
        gpu_j = d * (spec.power_idle_w * t + (spec.power_max_w - spec.power_idle_w) * dynamic)
        time_s += t
        energy_j += gpu_j + f.cpu_share * m.host_cpu_power_w * t
    return time_s / b, energy_j / b


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize(
    ("hardware", "arch", "batch_size", "gpus"),
    [
        ("a100-40g", LLAMA, 1, None),
        ("v100-16g", replace(KNOWN["mistral-7b"], dtype="bfloat16"), 4, None),  # no native bfloat16, 2 GPUs
        ("a100-40g", replace(KNOWN["llama-2-70b"], dtype="float16"), 2, None),  # tensor parallel over 4
        ("l40s", replace(KNOWN["llama-2-70b"], dtype="float16"), 1, None),  # over PCIe
    ],
)
def test_the_table_sums_equal_the_step_by_step_sums(
    kv_cache: bool, hardware: str, arch: object, batch_size: int, gpus: int | None
) -> None:
    m = build_model(arch, hardware, FACTORS, kv_cache=kv_cache, batch_size=batch_size, gpus=gpus)  # type: ignore[arg-type]
    assert m.tensor_parallel == {"a100-40g": 1 if arch is LLAMA else 4, "v100-16g": 2, "l40s": 4}[hardware]
    requests = [(1, 1), (1, 300), (37, 1), (700, 129), (2048, 2048)]
    estimate = m.predict([r[0] for r in requests], [r[1] for r in requests])
    for i, (n_in, n_out) in enumerate(requests):
        time_s, energy_j = reference_runtime_and_energy(m, n_in, n_out)
        assert estimate.runtime_s[i] == pytest.approx(time_s, rel=1e-9)
        assert estimate.energy_j[i] == pytest.approx(energy_j, rel=1e-9)


def test_llama_70b_in_float16_is_split_over_four_a100s() -> None:
    arch = KNOWN["llama-2-70b"]  # 138 GB of float16 weights
    m = build_model(arch, "a100-40g", FACTORS, dtype="float16")
    assert m.tensor_parallel == 4
    assert any("tensor parallel over 4 GPUs" in note for note in m.notes)
    wider = build_model(arch, "a100-40g", FACTORS, dtype="float16", batch_size=64)  # + 86 GB of KV cache
    assert wider.tensor_parallel == 8
    assert build_model(arch, "h100-80g", FACTORS, dtype="float16").tensor_parallel == 2
    assert build_model(arch, "a100-40g", FACTORS, dtype="float16", gpus=4).tensor_parallel == 4


def test_a_model_that_does_not_fit_the_gpus_given_says_what_and_how_much() -> None:
    with pytest.raises(ConfigError) as info:
        build_model(KNOWN["llama-2-70b"], "a100-40g", FACTORS, dtype="float16", gpus=1)
    message = str(info.value)
    assert "llama-2-70b in float16 does not fit" in message
    assert "138.0 GB of weights" in message and "42.9 GB per GPU" in message
    assert "1 GPU(s) may be used" in message and "at least 4 GPUs" in message
    with pytest.raises(ConfigError, match="even the node's 8 GPUs hold only"):
        build_model(KNOWN["llama-2-70b"], "a100-40g", FACTORS, dtype="float32", batch_size=64)


def test_a_request_longer_than_the_model_was_sized_for_fails_only_when_it_no_longer_fits() -> None:
    m = build_model(LLAMA, "a100-40g", FACTORS, max_context_tokens=1024)
    assert m.tensor_parallel == 1
    assert m.predict([4000], [4000]).runtime_s[0] > 0  # 4 GB of KV cache still fits one GPU
    with pytest.raises(InputError, match="build it with max_context_tokens >= 100000"):
        m.predict([50_000], [50_000])


def test_bad_inputs_are_errors_that_list_the_valid_values() -> None:
    with pytest.raises(ConfigError, match=r"unknown hardware class 'tpu-v5e'.*known classes: a100-40g"):
        build_model(LLAMA, "tpu-v5e", FACTORS)
    with pytest.raises(ConfigError, match=r"dtype 'int4' is not supported; valid dtypes: float32, float16"):
        build_model(LLAMA, "a100-40g", FACTORS, dtype="int4")
    with pytest.raises(ConfigError, match=r"cannot run dtype 'float8'.*supported dtypes: float32, float16"):
        build_model(LLAMA, "a100-40g", FACTORS, dtype="float8")
    with pytest.raises(ConfigError, match="batch size must be a whole number >= 1, got 0"):
        build_model(LLAMA, "a100-40g", FACTORS, batch_size=0)
    with pytest.raises(ConfigError, match="gpus must be a whole number from 1 to 8"):
        build_model(LLAMA, "a100-40g", FACTORS, gpus=9)
    with pytest.raises(ConfigError, match="has no GPUs"):
        build_model(LLAMA, "xeon-6148", FACTORS, gpus=2)
    m = model()
    with pytest.raises(
        InputError, match=r"output_tokens must be whole numbers >= 1; row 1 has 0 \(1 bad row"
    ):
        m.predict([5, 6], [3, 0])
    with pytest.raises(InputError, match="same length"):
        m.predict([5, 6], [3])
    with pytest.raises(ValueError, match="factor u_memory must be a finite number > 0"):
        replace(FACTORS, u_memory=math.nan)


def test_intervals_multiply_predictions_and_sums_alike() -> None:
    m = build_model(LLAMA, "a100-40g", FACTORS, energy_interval_factors=(0.5, 2.0))
    energy = m.predict([10, 20], [30, 40]).energy_j
    low, high = m.interval(energy, "energy")
    assert np.allclose(low, energy / 2) and np.allclose(high, energy * 2)
    total_low, total_high = m.interval(energy.sum(), "energy")
    assert total_low == pytest.approx(low.sum()) and total_high == pytest.approx(high.sum())
    with pytest.raises(ValueError, match="without interval factors"):
        m.interval(energy, "runtime")


def test_a_dtype_without_native_arithmetic_pays_for_its_conversion() -> None:
    native = build_model(LLAMA, "v100-16g", FACTORS, dtype="float16", max_context_tokens=2048)
    fallback = build_model(LLAMA, "v100-16g", FACTORS, dtype="bfloat16", max_context_tokens=2048)
    assert native.tensor_parallel == fallback.tensor_parallel == 1  # 14.6 GB on one 16 GB V100
    assert native.spec.native_dtype and not fallback.spec.native_dtype
    assert any("no native bfloat16" in note for note in fallback.notes)
    step = {m.dtype: runtime(m, 100, 101) - runtime(m, 100, 100) for m in (native, fallback)}
    conversion_s = FACTORS.convert_weight_reads * LLAMA.weight_bytes() / native.spec.memory_bandwidth_bps
    assert step["bfloat16"] - step["float16"] == pytest.approx(conversion_s, rel=1e-9)
