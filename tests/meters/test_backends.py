"""The measuring meter backends against fakes of the outside world (sysfs, NVML, powermetrics, zeus)."""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
import sys
import textwrap
import threading
import time
import types
from pathlib import Path

import pytest

from hpcqueue.meters import (
    CompositeMeter,
    EstimateMeter,
    MeterUnavailableError,
    auto_selection,
    devices,
    doctor_report,
    get_meter,
    meter_names,
    nvml,
    powermetrics,
    pyjoules,
    rapl,
    zeus,
)
from hpcqueue.meters.base import MeterStatus, PollingThread, availability, probe_status
from tests.fakes.machine import NoCounters, nvml_module
from tests.fakes.nvml_stub import NVML_ERROR_LIBRARY_NOT_FOUND, FakeGpu, FakeNvml, uuid
from tests.fakes.powercap import MAX_RANGE_UJ, FakePowercap, make_topology

FAKES = Path(__file__).resolve().parents[1] / "fakes"
ROOT_ONLY = "energy_uj is readable by root only (Linux ≥ 5.10)"
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL", "SLURM_JOB_ID")


@pytest.fixture()
def no_gpu_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A workstation environment: no Slurm and no CUDA_VISIBLE_DEVICES."""
    for var in GPU_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture()
def two_socket_node(tmp_path: Path) -> tuple[FakePowercap, Path]:
    """A 2-package node with 4 CPUs each (CPUs 0-3 on package 0, 4-7 on package 1), with DRAM zones."""
    powercap = FakePowercap(tmp_path / "powercap")
    powercap.add_package(0)
    powercap.add_package(1)
    sysfs = make_topology(tmp_path / "sys", {cpu: cpu // 4 for cpu in range(8)})
    return powercap, sysfs


# --- which devices the job may charge ---------------------------------------------------------------


def test_job_cpus_map_to_their_packages_only(two_socket_node: tuple[FakePowercap, Path]) -> None:
    _, sysfs = two_socket_node
    on_one = devices.job_packages(frozenset({5, 6}), sysfs_root=sysfs)
    assert on_one.packages == (1,)
    assert on_one.package_cpus == 4
    assert on_one.job_share == pytest.approx(0.5)
    spanning = devices.job_packages(frozenset({3, 4}), sysfs_root=sysfs)
    assert spanning.packages == (0, 1)
    assert spanning.job_share == pytest.approx(2 / 8)


@pytest.mark.parametrize(
    ("env", "source", "ids"),
    [
        (
            {"CUDA_VISIBLE_DEVICES": "2,3", "SLURM_JOB_GPUS": "0,1", "SLURM_JOB_ID": "7"},
            "CUDA_VISIBLE_DEVICES",
            ("2", "3"),
        ),
        ({"CUDA_VISIBLE_DEVICES": ""}, "CUDA_VISIBLE_DEVICES", ()),
        ({"CUDA_VISIBLE_DEVICES": "1,foo,2"}, "CUDA_VISIBLE_DEVICES", ("1",)),  # CUDA stops at a bad entry
        ({"SLURM_STEP_GPUS": "1", "SLURM_JOB_GPUS": "0,1", "SLURM_JOB_ID": "7"}, "SLURM_STEP_GPUS", ("1",)),
        ({"SLURM_JOB_GPUS": "0,3", "SLURM_JOB_ID": "7"}, "SLURM_JOB_GPUS", ("0", "3")),
        ({"GPU_DEVICE_ORDINAL": "2", "SLURM_JOB_ID": "7"}, "GPU_DEVICE_ORDINAL", ("2",)),
        ({"SLURM_JOB_ID": "7"}, "slurm-none", ()),
        ({}, "all", None),
    ],
)
def test_allocated_gpus_follow_cuda_then_slurm_then_the_workstation_default(
    env: dict[str, str], source: str, ids: tuple[str, ...] | None
) -> None:
    selection = devices.allocated_gpus(env)
    assert (selection.source, selection.ids) == (source, ids)


def test_gpu_uuids_and_indices_resolve_to_driver_indices_with_problems_named() -> None:
    uuids = [uuid(n) for n in range(4)]
    selection = devices.GpuSelection("CUDA_VISIBLE_DEVICES", (uuids[3][:12], "1", "7", "MIG-abc/1/0"))
    indices, problems = devices.resolve_gpu_indices(selection, 4, lambda i: uuids[i])
    assert indices == [1, 3]
    assert any("GPU 7" in p for p in problems)
    assert any("MIG" in p for p in problems)


# --- rapl ---------------------------------------------------------------------------------------------


def test_rapl_reads_only_the_packages_of_the_job_cpus(two_socket_node: tuple[FakePowercap, Path]) -> None:
    powercap, sysfs = two_socket_node
    found = rapl.probe(powercap.root, frozenset({4, 5}), sysfs_root=sysfs)
    assert found.available, found.reason
    assert found.domains == ("cpu", "dram")
    meter = rapl.RaplMeter(found.zones, found.packages, poll_interval_s=0)  # type: ignore[arg-type]
    powercap.set_uj("intel-rapl:0", 5_000_000)
    powercap.set_uj("intel-rapl:1", 1_000_000)
    powercap.set_uj("intel-rapl:1:1", 200_000)
    meter.start()
    powercap.set_uj("intel-rapl:0", 900_000_000)  # another job on package 0: not ours
    powercap.set_uj("intel-rapl:1", 31_000_000)
    powercap.set_uj("intel-rapl:1:1", 2_200_000)
    m = meter.stop()
    assert m.energy_j == {"cpu": pytest.approx(30.0), "dram": pytest.approx(2.0)}
    assert (m.method, m.meter) == ("measured", "rapl")
    assert m.details["packages"] == [1]
    assert m.details["job_share"] == pytest.approx(0.5)
    assert "whole package" in m.details["scope"]
    assert "core" not in m.details["zones"].values()  # core is inside the package counter


def test_rapl_counter_wrap_around_adds_the_range(two_socket_node: tuple[FakePowercap, Path]) -> None:
    powercap, sysfs = two_socket_node
    found = rapl.probe(powercap.root, frozenset({0}), sysfs_root=sysfs)
    meter = rapl.RaplMeter(found.zones, found.packages, poll_interval_s=0)  # type: ignore[arg-type]
    powercap.set_uj("intel-rapl:0", MAX_RANGE_UJ - 1_000_000)
    meter.start()
    powercap.set_uj("intel-rapl:0", 2_000_000)
    m = meter.stop()
    assert m.energy_j["cpu"] == pytest.approx(3.0)
    assert m.details["wraps"] == 1


def test_rapl_background_poll_catches_two_wraps_in_one_long_interval(
    two_socket_node: tuple[FakePowercap, Path],
) -> None:
    powercap, sysfs = two_socket_node
    found = rapl.probe(powercap.root, frozenset({0}), sysfs_root=sysfs)
    meter = rapl.RaplMeter(found.zones, found.packages, poll_interval_s=0.01)  # type: ignore[arg-type]
    powercap.set_uj("intel-rapl:0", int(MAX_RANGE_UJ * 0.9))
    meter.start()
    powercap.set_uj("intel-rapl:0", int(MAX_RANGE_UJ * 0.5))  # wrapped once
    time.sleep(0.15)
    powercap.set_uj("intel-rapl:0", int(MAX_RANGE_UJ * 0.2))  # wrapped again
    m = meter.stop()
    assert m.details["wraps"] == 2
    assert m.energy_j["cpu"] == pytest.approx(MAX_RANGE_UJ * 1.3 / 1e6, rel=1e-6)


def test_rapl_probe_says_root_only_when_energy_uj_cannot_be_read(
    two_socket_node: tuple[FakePowercap, Path],
) -> None:
    powercap, sysfs = two_socket_node

    def reader(path: Path) -> str:
        if path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    found = rapl.probe(powercap.root, frozenset({0}), sysfs_root=sysfs, reader=reader)
    assert not found.available
    assert ROOT_ONLY in found.reason and "chmod o+r" in found.reason
    assert f"{powercap.root}/intel-rapl:0/energy_uj: " in found.reason


def test_rapl_probe_root_only_with_real_file_permissions(tmp_path_factory: pytest.TempPathFactory) -> None:
    """energy_uj mode 0400 as the kernel sets it; read by an unprivileged user (a child dropping to nobody
    when the tests run as root), so the PermissionError comes from the kernel."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) if os.geteuid() == 0 else tmp_path_factory.mktemp("rapl")
    tree = Path(tempfile_dir(base))
    powercap = FakePowercap(tree / "powercap")
    powercap.add_package(0, dram=False)
    sysfs = make_topology(tree / "sys", {0: 0})
    energy = powercap.energy_path("intel-rapl:0")
    if os.geteuid() == 0:
        energy.chmod(stat.S_IRUSR)  # 0400 root:root, as on Linux ≥ 5.10
        reason = _probe_as_nobody(powercap.root, sysfs)
    else:
        energy.chmod(0)  # the owner cannot read it either
        reason = rapl.probe(powercap.root, frozenset({0}), sysfs_root=sysfs).reason
    assert ROOT_ONLY in reason


def tempfile_dir(base: Path) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="hq-rapl-", dir=base)
    os.chmod(path, 0o755)  # traversable by the unprivileged reader
    return path


def _probe_as_nobody(root: Path, sysfs: Path) -> str:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop privileges, probe, report the reason
        try:
            os.setgid(65534)
            os.setuid(65534)
            reason = rapl.probe(root, frozenset({0}), sysfs_root=sysfs).reason
            os.write(write_end, reason.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


def test_rapl_meter_turns_a_permission_error_into_meter_unavailable(
    two_socket_node: tuple[FakePowercap, Path],
) -> None:
    powercap, sysfs = two_socket_node
    found = rapl.probe(powercap.root, frozenset({0}), sysfs_root=sysfs)
    denied = {"on": False}

    def reader(path: Path) -> str:
        if denied["on"] and path.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    meter = rapl.RaplMeter(found.zones, found.packages, reader=reader, poll_interval_s=0)  # type: ignore[arg-type]
    meter.start()
    denied["on"] = True
    with pytest.raises(MeterUnavailableError, match="readable by root only") as info:
        meter.stop()
    assert isinstance(info.value.__cause__, PermissionError)


def test_rapl_error_in_the_background_poll_is_raised_by_stop(
    two_socket_node: tuple[FakePowercap, Path],
) -> None:
    powercap, sysfs = two_socket_node
    found = rapl.probe(powercap.root, frozenset({0}), sysfs_root=sysfs)
    deny, denied = threading.Event(), threading.Event()

    def reader(path: Path) -> str:
        if deny.is_set() and path.name == "energy_uj":
            denied.set()
            raise PermissionError(13, "Permission denied", str(path))
        return path.read_text()

    meter = rapl.RaplMeter(found.zones, found.packages, reader=reader, poll_interval_s=0.01)  # type: ignore[arg-type]
    meter.start()
    deny.set()
    assert denied.wait(5)
    deny.clear()  # readable again at stop: the error can only come from the poll
    with pytest.raises(MeterUnavailableError, match="readable by root only"):
        meter.stop()


def test_rapl_probe_of_a_missing_powercap_directory_says_there_are_no_zones() -> None:
    ok, reason = rapl.rapl_available(Path("/nonexistent/powercap"))
    assert not ok
    assert "no RAPL zones" in reason


# --- nvml ---------------------------------------------------------------------------------------------


def test_nvml_energy_counter_is_millijoules(no_gpu_env: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(uuid(0), energy_mj=1_000_000)
    stub = FakeNvml([gpu])
    found = nvml.probe(stub, devices.GpuSelection("all", None))
    assert found.available, found.reason
    meter = nvml.build_nvml_meter(found)
    meter.start()
    gpu.energy_mj += 150_000  # 150 J
    m = meter.stop()
    assert m.energy_j == {"gpu:0": pytest.approx(150.0)}
    assert m.details["source"] == {"gpu:0": "energy_counter"}
    assert m.details["gpus"][0]["uuid"] == uuid(0)
    assert "power" not in gpu.reads  # no sampling when the counter exists


def test_nvml_power_sampling_integrates_when_there_is_no_counter() -> None:
    gpu = FakeGpu(uuid(0), name="Tesla P100-PCIE-16GB", energy_mj=None, power_mw=200_000)
    found = nvml.probe(FakeNvml([gpu]), devices.GpuSelection("all", None))
    assert found.available and "power sampling" in found.reason
    meter = nvml.build_nvml_meter(found, sample_interval_s=0.02)
    meter.start()
    time.sleep(0.3)
    m = meter.stop()
    assert m.details["source"] == {"gpu:0": "power_sampling"}
    assert m.details["samples"] >= 5
    assert m.energy_j["gpu:0"] == pytest.approx(200.0 * m.duration_s, rel=0.05)


def test_trapezoid_integrates_a_power_ramp() -> None:
    # 100 W rising to 300 W over 1 s, then 300 W for 0.5 s: 200 J + 150 J.
    assert nvml.trapezoid_j([(0.0, [100.0]), (1.0, [300.0]), (1.5, [300.0])]) == [pytest.approx(350.0)]


def test_nvml_reads_only_the_gpus_named_by_uuid_in_cuda_visible_devices() -> None:
    gpus = [FakeGpu(uuid(n), energy_mj=0) for n in range(4)]
    stub = FakeNvml(gpus)
    env = {"CUDA_VISIBLE_DEVICES": f"{uuid(2)},{uuid(0)[:14]}", "SLURM_JOB_ID": "42"}
    found = nvml.probe(stub, devices.allocated_gpus(env))
    assert found.domains == ("gpu:0", "gpu:2")
    meter = nvml.build_nvml_meter(found)
    meter.start()
    for n, gpu in enumerate(gpus):
        gpu.energy_mj += 10_000 * (n + 1)
    m = meter.stop()
    assert m.energy_j == {"gpu:0": pytest.approx(10.0), "gpu:2": pytest.approx(30.0)}
    assert gpus[1].reads == [] and gpus[3].reads == []


def test_nvml_without_driver_or_allocated_gpus_says_why() -> None:
    no_driver = nvml.probe(
        FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND), devices.GpuSelection("all", None)
    )
    assert not no_driver.available and "libnvidia-ml.so.1" in no_driver.reason
    slurm_without_gpus = nvml.probe(
        FakeNvml([FakeGpu(uuid(0))]), devices.allocated_gpus({"SLURM_JOB_ID": "1"})
    )
    assert not slurm_without_gpus.available and "no GPUs allocated" in slurm_without_gpus.reason


def test_real_nvidia_ml_py_without_a_driver_finds_no_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real nvidia-ml-py (installed by the dev extra) on a machine without the NVIDIA driver, faked where
    the driver is looked for: the dynamic loader finds no libnvidia-ml.so.1. A fresh copy of the module is
    used, as in a process that never loaded the driver, so a GPU node's loaded driver cannot leak in."""
    spec = importlib.util.find_spec("pynvml")
    assert spec is not None and spec.loader is not None, "nvidia-ml-py is not installed"
    pynvml = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pynvml", pynvml)  # the module looks itself up there as it loads
    spec.loader.exec_module(pynvml)

    def no_library(name: str, *args: object, **kwargs: object) -> None:
        raise OSError(f"{name}: cannot open shared object file: No such file or directory")

    monkeypatch.setattr(pynvml, "CDLL", no_library)
    found = nvml.probe(pynvml, devices.GpuSelection("all", None))
    assert not found.available
    assert "the NVIDIA driver library (libnvidia-ml.so.1) was not found" in found.reason


def test_nvml_meter_translates_errors_during_measurement() -> None:
    gpu = FakeGpu(uuid(0), energy_mj=0)
    stub = FakeNvml([gpu])
    meter = nvml.build_nvml_meter(nvml.probe(stub, devices.GpuSelection("all", None)))
    meter.start()
    stub.initialised = False  # the driver went away under us
    with pytest.raises(MeterUnavailableError, match="gpu:0") as info:
        meter.stop()
    assert isinstance(info.value.__cause__, stub.NVMLError)


def test_nvml_error_while_sampling_power_is_raised_by_stop() -> None:
    gpu = FakeGpu(uuid(0), energy_mj=None, power_mw=200_000)
    stub = FakeNvml([gpu])
    meter = nvml.build_nvml_meter(nvml.probe(stub, devices.GpuSelection("all", None)), sample_interval_s=0.01)
    meter.start()
    stub.initialised = False  # the driver went away while the thread samples
    time.sleep(0.1)
    with pytest.raises(MeterUnavailableError, match="power of gpu:0") as info:
        meter.stop()
    assert isinstance(info.value.__cause__, stub.NVMLError)


def test_a_probe_gives_the_availability_status_and_error_of_its_backend() -> None:
    found = nvml.NvmlProbe(False, "no driver here")
    assert availability(found) == (False, "no driver here")
    assert probe_status(nvml.NvmlMeter, found) == MeterStatus("nvml", False, "measured", "no driver here", ())
    with pytest.raises(MeterUnavailableError) as info:
        nvml.build_nvml_meter(found)
    assert str(info.value) == "meter 'nvml' is not available on this machine: no driver here"


def test_polling_thread_keeps_the_first_error_for_stop_and_forgets_it_at_the_next_start() -> None:
    calls: list[int] = []

    def poll() -> None:
        calls.append(len(calls))
        if len(calls) == 2:
            raise MeterUnavailableError("counter gone")

    def wait_for(count: int) -> None:
        deadline = time.monotonic() + 5
        while len(calls) < count and time.monotonic() < deadline:
            time.sleep(0.005)

    poller = PollingThread(poll, 0.005, name="hpcqueue-test-poll")
    poller.start()
    wait_for(2)
    time.sleep(0.05)
    assert len(calls) == 2  # the error ended the polling
    with pytest.raises(MeterUnavailableError, match="counter gone"):
        poller.stop()
    poller.start()
    wait_for(3)
    poller.stop()  # polls again, and the old error is gone
    assert len(calls) >= 3


# --- pyjoules -----------------------------------------------------------------------------------------


def test_pyjoules_without_counters_fails_the_ways_it_does_and_the_probe_names_them(
    no_energy_counters: NoCounters,
) -> None:
    """The real pyJoules on a machine without RAPL or an NVIDIA driver (both faked away)."""
    from pyJoules.device import DeviceFactory
    from pyJoules.device.rapl_device import RaplPackageDomain
    from pyJoules.energy_meter import EnergyContext
    from pyJoules.exception import NoSuchDeviceError

    with pytest.raises(NoSuchDeviceError) as empty:
        DeviceFactory.create_devices([RaplPackageDomain(0)])
    assert str(empty.value) == ""  # why the wrapper writes its own reasons
    ran = []
    with pytest.raises(TypeError, match="reduce"), EnergyContext():  # autodetect: body runs, then raises
        ran.append(True)
    assert ran == [True]

    found = pyjoules.probe(selection=devices.GpuSelection("all", None))
    assert not found.available
    assert "no RAPL interface" in found.cpu.reason and "NoSuchDeviceError" in found.cpu.reason
    assert "NVML could not be initialised" in found.gpu.reason
    with pytest.raises(MeterUnavailableError, match="meter 'pyjoules' is not available"):
        pyjoules.build_pyjoules_meter(found=found)


def test_pyjoules_units_are_converted_per_device_and_wraps_corrected(
    two_socket_node: tuple[FakePowercap, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyJoules reports RAPL differences in µJ and NVML differences in the counter's mJ, in one dict."""
    powercap, sysfs = two_socket_node
    gpus = [FakeGpu(uuid(0), energy_mj=0), FakeGpu(uuid(1), energy_mj=0)]
    api = pyjoules.import_pyjoules()
    monkeypatch.setattr(api.rapl_module, "RAPL_API_DIR", str(powercap.control))
    monkeypatch.setattr(api.nvidia_module, "pynvml", FakeNvml(gpus))
    found = pyjoules.probe(
        frozenset({0, 1}), devices.GpuSelection("CUDA_VISIBLE_DEVICES", ("1",)), sysfs_root=sysfs
    )
    assert found.cpu.available, found.cpu.reason
    assert found.gpu.available, found.gpu.reason
    assert found.domains == ("cpu", "dram", "gpu:1")
    powercap.set_uj("intel-rapl:0", MAX_RANGE_UJ - 500_000)
    meter = pyjoules.build_pyjoules_meter(found=found)
    meter.start()
    powercap.set_uj("intel-rapl:0", 1_500_000)  # wrapped: 2 J
    powercap.set_uj("intel-rapl:0:1", 4_000_000)  # 4 J of DRAM
    powercap.set_uj("intel-rapl:1", 99_000_000)  # package 1 is not the job's
    gpus[1].energy_mj = 5_000  # 5 J
    gpus[0].energy_mj = 9_000_000  # not allocated
    m = meter.stop()
    assert m.energy_j == {"cpu": pytest.approx(2.0), "dram": pytest.approx(4.0), "gpu:1": pytest.approx(5.0)}
    assert m.details["raw_units"] == {"package_0": "uJ", "dram_0": "uJ", "nvidia_gpu_1": "mJ"}
    assert m.details["wraps"] == ["package_0"]


# --- powermetrics -------------------------------------------------------------------------------------


def test_powermetrics_plist_parser_reads_recorded_apple_silicon_output() -> None:
    samples = powermetrics.parse_plist_samples((FAKES / "powermetrics_m1pro.plist").read_bytes())
    assert len(samples) == 3  # the fourth, cut short when the process stopped, is skipped
    assert samples[1].elapsed_s == pytest.approx(0.100298041)
    assert samples[1].cpu_power_w == pytest.approx(8.12)
    assert samples[1].gpu_power_w == pytest.approx(2.45025)
    energy, covered_s = powermetrics.integrate_j(samples)
    expected_cpu = 5.2305 * 0.100412958 + 8.12 * 0.100298041 + 7.41075 * 0.100355210
    assert energy["cpu"] == pytest.approx(expected_cpu)
    assert covered_s == pytest.approx(0.301066209)


def test_powermetrics_text_parser_matches_the_plist_figures() -> None:
    samples = powermetrics.parse_text_samples((FAKES / "powermetrics_m1pro.txt").read_text())
    assert [round(s.elapsed_s, 5) for s in samples] == [0.10041, 0.1003, 0.10036]
    assert [s.cpu_power_w for s in samples] == [
        pytest.approx(5.23),
        pytest.approx(8.12),
        pytest.approx(7.411),
    ]
    assert samples[2].gpu_power_w == pytest.approx(3.01)


def test_powermetrics_energy_is_scaled_to_the_metered_duration() -> None:
    samples = [powermetrics.PowerSample(0.5, 10.0, 2.0)]
    energy, _ = powermetrics.integrate_j(samples, duration_s=1.0)
    assert energy == {"cpu": pytest.approx(10.0), "gpu:0": pytest.approx(2.0)}


def test_powermetrics_probe_says_why_not(no_energy_counters: NoCounters) -> None:
    """Not a Mac (faked: ``os.uname()`` says Linux), then a Mac without the binary, without sudo, with it."""
    assert powermetrics.powermetrics_available() == (False, "powermetrics runs on macOS only (this is Linux)")
    assert powermetrics.powermetrics_status() == MeterStatus(
        "powermetrics", False, "measured", "powermetrics runs on macOS only (this is Linux)", ()
    )
    no_binary = powermetrics.probe(system="Darwin", which=lambda _: None)
    assert not no_binary[0] and "not on PATH" in no_binary[1]
    no_sudo = powermetrics.probe(
        system="Darwin", which=lambda _: "/usr/bin/powermetrics", is_root=False, sudo_ok=lambda _: False
    )
    assert not no_sudo[0] and "NOPASSWD: /usr/bin/powermetrics" in no_sudo[1]
    with_sudo = powermetrics.probe(
        system="Darwin", which=lambda _: "/usr/bin/powermetrics", is_root=False, sudo_ok=lambda _: True
    )
    assert with_sudo == (True, "/usr/bin/powermetrics through password-less sudo", ("sudo", "-n"))


def test_powermetrics_meter_runs_the_command_and_integrates_its_samples(tmp_path: Path) -> None:
    """A stand-in ``powermetrics`` that prints the recorded samples at its interval until stopped."""
    fake = tmp_path / "powermetrics"
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import sys, time
            chunks = open({str(FAKES / "powermetrics_m1pro.plist")!r}, "rb").read().split(b"\\0")[:3]
            interval = int(sys.argv[sys.argv.index("-i") + 1]) / 1000
            while True:
                for chunk in chunks:
                    time.sleep(interval)
                    sys.stdout.buffer.write(chunk + b"\\0")
                    sys.stdout.flush()
            """
        )
    )
    fake.chmod(0o755)
    meter = powermetrics.PowermetricsMeter(interval_ms=100, executable=str(fake))
    assert meter.command[1:] == ["--samplers", "cpu_power,gpu_power", "-i", "100", "-f", "plist"]
    meter.start()
    time.sleep(0.4)
    m = meter.stop()
    assert (m.method, m.meter) == ("measured", "powermetrics")
    assert m.details["samples"] >= 2
    assert set(m.energy_j) == {"cpu", "gpu:0"}
    assert 5.2 * m.duration_s < m.energy_j["cpu"] < 8.2 * m.duration_s  # between the samples' powers


# --- zeus ---------------------------------------------------------------------------------------------


class _ZeusResult:
    def __init__(self, time_s: float, gpu_energy: dict[int, float]) -> None:
        self.time = time_s
        self.gpu_energy = gpu_energy


def _fake_zeus(gpus_present: int) -> types.ModuleType:
    """A stand-in for ``zeus.monitor`` behaving like zeus 0.16 on a node with ``gpus_present`` GPUs."""

    class ZeusMonitor:
        def __init__(self, gpu_indices=None, cpu_indices=None, approx_instant_energy=False):  # type: ignore[no-untyped-def]
            if gpu_indices and max(gpu_indices) >= gpus_present:
                raise ValueError(f"GPU index {max(gpu_indices)} out of range")
            self.gpu_indices = list(range(gpus_present)) if gpu_indices is None else gpu_indices
            self.windows: dict[str, float] = {}

        def begin_window(self, key: str, sync_execution: bool = True) -> None:
            self.windows[key] = time.time()

        def end_window(self, key: str, sync_execution: bool = True) -> _ZeusResult:
            elapsed = time.time() - self.windows.pop(key)
            return _ZeusResult(elapsed, {i: 100.0 * (i + 1) for i in self.gpu_indices})

    module = types.ModuleType("zeus.monitor")
    module.ZeusMonitor = ZeusMonitor  # type: ignore[attr-defined]
    return module


def test_zeus_unavailable_reasons(no_energy_counters: NoCounters) -> None:
    assert zeus.zeus_available() == (False, f"zeus is not installed: {zeus.INSTALL_HINT}")  # faked absent
    nothing = zeus.probe(devices.GpuSelection("all", None), zeus_monitor=_fake_zeus(0))
    assert not nothing.available and "time only" in nothing.reason
    absent = zeus.probe(devices.GpuSelection("SLURM_JOB_GPUS", ("3",)), zeus_monitor=_fake_zeus(2))
    assert not absent.available and "ValueError" in absent.reason
    uuids = zeus.probe(devices.GpuSelection("CUDA_VISIBLE_DEVICES", (uuid(1),)), zeus_monitor=_fake_zeus(2))
    assert not uuids.available and "indices only" in uuids.reason


def test_zeus_meter_maps_cuda_visible_indices_back_to_node_gpus() -> None:
    found = zeus.probe(devices.GpuSelection("CUDA_VISIBLE_DEVICES", ("2", "3")), zeus_monitor=_fake_zeus(2))
    assert found.domains == ("gpu:2", "gpu:3")
    meter = zeus.build_zeus_meter(found)
    meter.start()
    m = meter.stop()
    assert m.energy_j == {"gpu:2": 100.0, "gpu:3": 200.0}
    assert (m.method, m.meter) == ("measured", "zeus")


# --- selection ----------------------------------------------------------------------------------------


def test_auto_without_counters_falls_back_to_the_estimate_and_logs_every_reason(
    no_energy_counters: NoCounters, caplog: pytest.LogCaptureFixture
) -> None:
    """No RAPL, no NVIDIA driver, no zeus, not a Mac (all faked): the estimate, and every reason logged."""
    with caplog.at_level(logging.INFO, logger="hpcqueue.meters"):
        meter = get_meter(hardware="cpu-generic", cpus=2)
    assert isinstance(meter, EstimateMeter)
    assert "labelled estimated" in caplog.text
    for why in (
        f"rapl (cpu): no RAPL zones under {no_energy_counters.powercap_root} ",
        "nvml (gpu): the NVIDIA driver library",
        "pyjoules (cpu)",
        "zeus (gpu): zeus is not installed",
        "powermetrics: powermetrics runs on macOS only",
    ):
        assert why in caplog.text
    selection = auto_selection()
    assert (selection.name, selection.method) == ("estimate", "estimated")


@pytest.fixture()
def measured_node(
    no_energy_counters: NoCounters,
    two_socket_node: tuple[FakePowercap, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[FakePowercap, list[FakeGpu]]:
    """A machine without counters (whatever this one has), given a fake powercap tree, fake topology and
    an NVML driver (stub) with 2 GPUs, GPU 1 handed to the job. pyJoules, zeus and powermetrics still
    see no counters."""
    powercap, sysfs = two_socket_node
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", powercap.root)
    monkeypatch.setattr(devices, "SYSFS_ROOT", sysfs)
    gpus = [FakeGpu(uuid(0), energy_mj=0), FakeGpu(uuid(1), energy_mj=0)]
    monkeypatch.setitem(sys.modules, "pynvml", nvml_module(FakeNvml(gpus)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    return powercap, gpus


def test_auto_combines_rapl_and_nvml_into_one_measured_measurement(
    measured_node: tuple[FakePowercap, list[FakeGpu]],
) -> None:
    powercap, gpus = measured_node
    meter = get_meter(hardware="a100-40g")
    assert isinstance(meter, CompositeMeter) and meter.name == "rapl+nvml"
    meter.start()
    powercap.set_uj("intel-rapl:0", 12_000_000)
    gpus[1].energy_mj = 40_000
    gpus[0].energy_mj = 7_000_000  # not the job's
    m = meter.stop()
    assert m.meter == "rapl+nvml" and m.method == "measured"
    assert m.energy_j == {"cpu": pytest.approx(12.0), "dram": 0.0, "gpu:1": pytest.approx(40.0)}
    assert m.details["parts"]["rapl"]["packages"] == [0]
    report = {row["name"]: row for row in doctor_report()}
    assert report["rapl"]["used_by_auto"] and report["nvml"]["used_by_auto"]
    assert report["nvml"]["domains"] == ["gpu:1"]
    assert report["rapl"]["job"]["gpus"] == "1 from CUDA_VISIBLE_DEVICES"


def test_auto_with_gpus_but_no_cpu_counter_is_labelled_estimated_per_domain(
    measured_node: tuple[FakePowercap, list[FakeGpu]],
    no_energy_counters: NoCounters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, gpus = measured_node
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", no_energy_counters.powercap_root)  # the CPU counters go
    meter = get_meter(hardware="a100-40g", cpus=2)
    assert meter.name == "estimate+nvml"
    meter.start()
    gpus[1].energy_mj = 1_000
    m = meter.stop()
    assert m.method == "estimated"
    assert m.details["domain_methods"] == {"cpu": "estimated", "gpu:1": "measured"}


def test_named_meter_fails_loudly_with_the_probe_reason(no_energy_counters: NoCounters) -> None:
    """No RAPL zones and no NVIDIA driver (faked away): a meter asked for by name fails with the reason."""
    with pytest.raises(MeterUnavailableError, match=r"meter 'rapl' is not available.*no RAPL zones") as info:
        get_meter("rapl", hardware="cpu-generic")
    assert info.value.exit_code == 2
    with pytest.raises(MeterUnavailableError, match=r"meter 'nvml' is not available.*NVIDIA driver"):
        get_meter("nvml", hardware="cpu-generic")
    with pytest.raises(MeterUnavailableError, match=r"unknown meter 'joules'.*auto, powermetrics, rapl"):
        get_meter("joules", hardware="cpu-generic")
    assert meter_names() == ["auto", "powermetrics", "rapl", "nvml", "pyjoules", "zeus", "estimate"]


def test_named_combination_refuses_to_count_a_domain_twice(
    measured_node: tuple[FakePowercap, list[FakeGpu]],
) -> None:
    assert get_meter("rapl+nvml", hardware="cpu-generic").name == "rapl+nvml"
    with pytest.raises(MeterUnavailableError, match="twice"):
        get_meter("rapl+estimate", hardware="cpu-generic")


def test_doctor_report_lists_every_backend_and_what_the_job_sees(no_energy_counters: NoCounters) -> None:
    """On a machine without counters (faked away) only the estimate is available, and ``auto`` uses it."""
    rows = doctor_report()
    assert [row["name"] for row in rows] == meter_names()[1:]
    assert all(set(row) >= {"name", "available", "method", "domains", "reason", "job"} for row in rows)
    estimate = rows[-1]
    assert estimate["available"] and estimate["used_by_auto"] and estimate["method"] == "estimated"
    assert estimate["job"]["cpu_count"] == len(os.sched_getaffinity(0))
    assert not any(row["available"] for row in rows[:-1])
