from __future__ import annotations

import pytest

from hpcqueue.errors import ConfigError
from hpcqueue.meters.hardware import (
    CPU_IDLE_SHARE,
    HARDWARE_CLASSES,
    ROOFLINE_DTYPES,
    ComputeSpec,
    HardwareClass,
    PeakRate,
    get_hardware,
    nominal_cpu_power_w,
)

CLASSES = (
    "a100-40g, a100-80g, a40, b200, cpu-generic, h100-80g, h200, l40s, m1-max, m1-pro, m2-max, m2-pro, "
    "m3-max, m3-pro, mi250x, mi300x, v100-16g, v100-32g, xeon-6148"
)
GIB = 2**30


def test_the_documented_classes_exist_with_their_vendor_figures() -> None:
    assert set(CLASSES.split(", ")) == set(HARDWARE_CLASSES)
    assert get_hardware("a100-40g").gpu_power_w == 400.0
    assert get_hardware("v100-16g").gpu_power_w == 300.0
    assert get_hardware("xeon-6148").cpu_power_w == 150.0
    assert get_hardware("m1-pro").cpu_power_w == 30.0
    assert get_hardware("cpu-generic").cpu_power_w_per_cpu == 10.0


def test_unknown_class_error_lists_every_known_class() -> None:
    with pytest.raises(ConfigError, match="'tpu-v5e'") as info:
        get_hardware("tpu-v5e")
    assert f"known classes: {CLASSES}" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("name", "cpus", "expected_w"),
    [
        ("cpu-generic", 4, 40.0),  # 10 W per logical CPU of the job
        ("cpu-generic", 1, 10.0),
        ("xeon-6148", 40, 150.0),  # a whole socket (40 logical CPUs) is its TDP
        ("xeon-6148", 80, 300.0),  # the whole two-socket node
        ("xeon-6148", 4, 15.0),
        ("m1-pro", 10, 30.0),  # the whole package
        ("a100-40g", 16, 225.0 * 16 / 128),  # host CPUs of a 16-CPU job on an EPYC 7742 node
    ],
)
def test_nominal_cpu_power_is_the_job_cpu_set_share_of_the_package(
    name: str, cpus: int, expected_w: float
) -> None:
    assert nominal_cpu_power_w(name, cpus) == pytest.approx(expected_w)


def test_override_wins_and_must_be_positive() -> None:
    assert nominal_cpu_power_w("xeon-6148", 4, override=65.0) == 65.0
    with pytest.raises(ConfigError, match="nominal_power_w must be > 0"):
        nominal_cpu_power_w("xeon-6148", 4, override=0.0)


def test_override_does_not_hide_an_unknown_class() -> None:
    with pytest.raises(ConfigError, match="known classes"):
        nominal_cpu_power_w("no-such-node", 4, override=65.0)


def test_zero_cpus_is_rejected() -> None:
    with pytest.raises(ConfigError, match="cpus must be a positive integer"):
        nominal_cpu_power_w("cpu-generic", 0)


# ------------------------------------------------------------------------------- roofline figures


@pytest.mark.parametrize("name", sorted(HARDWARE_CLASSES))
def test_every_class_has_a_sourced_spec_with_positive_figures(name: str) -> None:
    hw = get_hardware(name)
    spec = hw.compute_spec("float16" if hw.gpus else "float32")
    assert spec.kind == ("gpu" if hw.gpus else "cpu")
    assert spec.devices == (hw.gpus if hw.gpus else 1)
    assert spec.peak_flops > 0 and spec.memory_bandwidth_bps > 0
    assert spec.power_max_w > spec.power_idle_w > 0
    assert spec.memory_bytes is None or spec.memory_bytes > 0
    assert spec.link_bandwidth_bps is None or spec.link_bandwidth_bps > 0
    assert spec.sources and all(source.strip() for source in spec.sources)
    if hw.gpus:
        assert spec.power_max_w == hw.gpu_power_w and spec.memory_bytes == hw.gpu_memory_gb * GIB


def test_spec_sheet_figures_of_nvidia_and_amd_gpus() -> None:
    a100 = get_hardware("a100-80g").compute_spec("bfloat16")
    assert (a100.peak_flops, a100.memory_bandwidth_bps) == (312e12, 2.039e12)  # dense, not 624 sparse
    assert a100.memory_bytes == 80 * GIB and a100.devices == 8 and a100.power_max_w == 400.0
    assert get_hardware("a100-40g").compute_spec("float16").memory_bandwidth_bps == 1.555e12
    h100 = get_hardware("h100-80g").compute_spec("bfloat16")
    assert h100.peak_flops == pytest.approx(989e12, rel=1e-3)
    assert h100.memory_bandwidth_bps == 3.35e12 and h100.power_max_w == 700.0
    assert h100.link_bandwidth_bps == 450e9  # each way: NVIDIA's 900 GB/s counts both directions
    assert get_hardware("h100-80g").compute_spec("float8").peak_flops == pytest.approx(
        2 * h100.peak_flops, rel=1e-3
    )
    assert get_hardware("h100-80g").compute_spec("float32").peak_flops == 67e12  # CUDA cores, not TF32
    assert get_hardware("h200").compute_spec("bfloat16").memory_bandwidth_bps == 4.8e12
    v100 = get_hardware("v100-32g").compute_spec("float16")
    assert (v100.peak_flops, v100.memory_bandwidth_bps, v100.memory_bytes) == (125e12, 900e9, 32 * GIB)
    mi300x = get_hardware("mi300x").compute_spec("float16")
    assert (mi300x.peak_flops, mi300x.memory_bandwidth_bps, mi300x.power_max_w) == (1307.4e12, 5.3e12, 750.0)
    gcd = get_hardware("mi250x").compute_spec("bfloat16")  # one GCD: half a 383 TFLOPS, 3.2 TB/s package
    assert (gcd.devices, gcd.peak_flops, gcd.memory_bytes) == (8, 383e12 / 2, 64 * GIB)


def test_speeds_are_ordered_across_generations() -> None:
    def fp16(name: str) -> float:
        return get_hardware(name).compute_spec("float16").peak_flops

    assert fp16("b200") > fp16("h100-80g") > fp16("a100-40g") > fp16("v100-16g") > fp16("m1-max")
    assert fp16("a100-40g") == fp16("a100-80g")
    assert fp16("m1-max") == pytest.approx(2 * fp16("m1-pro"), rel=0.01)  # twice the GPU cores
    bandwidth = [
        get_hardware(n).compute_spec("float16").memory_bandwidth_bps for n in ("v100-16g", "a100-40g")
    ]
    assert bandwidth == sorted(bandwidth)


def test_bfloat16_without_tensor_cores_on_v100_is_a_slow_fallback() -> None:
    hw = get_hardware("v100-16g")
    bf16, fp16, fp32 = (hw.compute_spec(d) for d in ("bfloat16", "float16", "float32"))
    assert not bf16.native_dtype and fp16.native_dtype
    assert bf16.peak_flops == fp32.peak_flops and bf16.peak_flops < fp16.peak_flops / 5
    assert any("V100" in note and "bfloat16" in note for note in bf16.notes)
    assert get_hardware("a100-40g").compute_spec("bfloat16").native_dtype


def test_apple_gpus_run_float16_at_the_float32_rate_and_bfloat16_as_a_fallback() -> None:
    hw = get_hardware("m3-max")
    fp16, fp32, bf16 = (hw.compute_spec(d) for d in ("float16", "float32", "bfloat16"))
    assert fp16.kind == "gpu" and fp16.devices == 1 and fp16.link_bandwidth_bps is None
    assert fp16.peak_flops == fp32.peak_flops == bf16.peak_flops
    assert fp16.native_dtype and not bf16.native_dtype
    assert fp16.memory_bytes == 128 * GIB and fp16.memory_bandwidth_bps == 400e9
    assert any("Apple publishes none" in note for note in fp16.notes)


@pytest.mark.parametrize(
    ("name", "dtype", "supported"),
    [
        ("v100-16g", "float8", "float32, float16, bfloat16"),
        ("a100-80g", "float8", "float32, float16, bfloat16"),
        ("m1-pro", "float8", "float32, float16, bfloat16"),
        ("xeon-6148", "float8", "float32, float16, bfloat16"),
        ("h100-80g", "int4", "float32, float16, bfloat16, float8"),
        ("cpu-generic", "fp16", "float32, float16, bfloat16"),
    ],
)
def test_a_dtype_the_device_cannot_run_names_the_class_and_the_valid_dtypes(
    name: str, dtype: str, supported: str
) -> None:
    with pytest.raises(ConfigError, match=f"hardware class '{name}' cannot run dtype '{dtype}'") as info:
        get_hardware(name).compute_spec(dtype)
    assert str(info.value).endswith(f"supported dtypes: {supported}")
    assert info.value.exit_code == 2
    if dtype not in ROOFLINE_DTYPES:
        assert "float32, float16, bfloat16, float8" in str(info.value)


def test_float8_runs_where_the_hardware_has_it() -> None:
    for name in ("l40s", "h100-80g", "h200", "b200", "mi300x"):
        spec = get_hardware(name).compute_spec("float8")
        assert spec.native_dtype
        # twice the 16-bit rate, within the datasheets' rounding (L40S: 733 vs 2 x 362.05 TFLOPS)
        assert spec.peak_flops == pytest.approx(
            2 * get_hardware(name).compute_spec("bfloat16").peak_flops, rel=0.02
        )


def test_a_cpu_job_gets_its_share_of_the_node() -> None:
    hw = get_hardware("xeon-6148")
    node = hw.compute_spec("float32")
    assert node.kind == "cpu" and node.devices == 1 and node.link_bandwidth_bps is None
    assert node.peak_flops == pytest.approx(2 * 20 * 2.4e9 * 64)  # sockets x cores x clock x AVX-512 FMA
    assert node.memory_bandwidth_bps == pytest.approx(2 * 6 * 2666e6 * 8)  # sockets x DDR4-2666 channels
    assert node.power_max_w == pytest.approx(300.0)  # both sockets' TDP
    half = hw.compute_spec("float32", cpus=40)
    assert half.peak_flops == pytest.approx(node.peak_flops / 2)
    assert half.memory_bandwidth_bps == pytest.approx(node.memory_bandwidth_bps / 2)
    assert half.power_max_w == pytest.approx(nominal_cpu_power_w("xeon-6148", 40)) == pytest.approx(150.0)
    assert half.power_idle_w == pytest.approx(CPU_IDLE_SHARE * 150.0)
    bf16 = hw.compute_spec("bfloat16", cpus=40)
    assert not bf16.native_dtype and bf16.peak_flops == half.peak_flops
    with pytest.raises(ConfigError, match="80 logical CPUs per node"):
        hw.compute_spec("float32", cpus=81)


def test_cpu_generic_scales_per_logical_cpu_from_a_documented_default() -> None:
    hw = get_hardware("cpu-generic")
    default = hw.compute_spec("float32")
    assert default.power_max_w == pytest.approx(nominal_cpu_power_w("cpu-generic", 8))
    sixteen = hw.compute_spec("float32", cpus=16)
    assert sixteen.peak_flops == pytest.approx(2 * default.peak_flops)
    assert sixteen.memory_bandwidth_bps == pytest.approx(2 * default.memory_bandwidth_bps)
    assert sixteen.power_max_w == pytest.approx(160.0)
    assert default.memory_bytes is None


def test_cpus_must_be_a_positive_integer_and_do_not_change_a_gpu_spec() -> None:
    hw = get_hardware("a100-40g")
    assert hw.compute_spec("float16", cpus=16) == hw.compute_spec("float16")
    for bad in (0, -2, True):
        with pytest.raises(ConfigError, match="cpus must be a positive integer"):
            hw.compute_spec("float16", cpus=bad)


def test_a_class_without_roofline_figures_says_which_is_missing() -> None:
    bare = HardwareClass(
        "bare", "a GPU node", 100.0, None, 300.0, gpus=1, memory_gb=None, cpu_logical_per_socket=8
    )
    with pytest.raises(
        ConfigError, match=r"hardware class 'bare' has no figure for the peak FLOP/s.*gpu_peak_flops"
    ):
        bare.compute_spec("float16")
    no_bandwidth = HardwareClass(
        "half",
        "a GPU node",
        100.0,
        None,
        300.0,
        gpus=1,
        memory_gb=None,
        cpu_logical_per_socket=8,
        gpu_peak_flops=(PeakRate("float16", 1e14),),
    )
    with pytest.raises(ConfigError, match="gpu_memory_bandwidth_bps"):
        no_bandwidth.compute_spec("float16")
    with pytest.raises(ValueError, match="repeat or are unknown"):
        HardwareClass(
            "twice",
            "",
            1.0,
            None,
            None,
            gpus=0,
            memory_gb=None,
            cpu_logical_per_socket=1,
            cpu_peak_flops_per_cpu=(PeakRate("float32", 1e9), PeakRate("float32", 2e9)),
        )


def test_compute_spec_is_a_plain_frozen_record() -> None:
    spec = get_hardware("l40s").compute_spec("float8")
    assert isinstance(spec, ComputeSpec)
    assert (spec.hardware, spec.dtype, spec.devices, spec.link_bandwidth_bps) == ("l40s", "float8", 4, None)
    with pytest.raises(AttributeError):
        spec.peak_flops = 0.0  # type: ignore[misc]
