"""The meter interface and the estimate meter; ``get_meter`` on a machine whose counters are faked away."""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest

from hpcqueue.errors import ConfigError, HpcqueueError
from hpcqueue.meters import (
    EstimateMeter,
    Measurement,
    MeterUnavailableError,
    auto_selection,
    devices,
    get_meter,
    meter_names,
    meter_statuses,
    pyjoules,
    rapl,
)
from tests.fakes.machine import NoCounters, clear_probe_caches, nvml_module
from tests.fakes.nvml_stub import FakeGpu, FakeNvml, uuid
from tests.fakes.powercap import FakePowercap, make_topology


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def make_meter(power_w: float = 40.0, cpus: int = 4) -> tuple[EstimateMeter, FakeClock, FakeClock, FakeClock]:
    wall, mono, cpu = FakeClock(1_700_000_000.0), FakeClock(100.0), FakeClock(5.0)
    meter = EstimateMeter(power_w, cpus, wall_clock=wall, monotonic=mono, cpu_clock=cpu)
    return meter, wall, mono, cpu


def advance(wall: FakeClock, mono: FakeClock, cpu: FakeClock, wall_s: float, cpu_s: float) -> None:
    wall.now += wall_s
    mono.now += wall_s
    cpu.now += cpu_s


def test_estimate_formula_two_seconds_one_cpu_second_four_cpus_forty_watts_is_ten_joules() -> None:
    meter, wall, mono, cpu = make_meter(40.0, 4)
    meter.start()
    advance(wall, mono, cpu, wall_s=2.0, cpu_s=1.0)
    m = meter.stop()

    assert m.energy_j == {"cpu": pytest.approx(10.0)}
    assert m.total_energy_j == pytest.approx(10.0)
    assert m.duration_s == pytest.approx(2.0)
    assert m.started_at == 1_700_000_000.0
    assert (m.method, m.meter) == ("estimated", "estimate")
    assert m.details["nominal_power_w"] == 40.0
    assert m.details["cpus"] == 4
    assert m.details["cpu_time_s"] == pytest.approx(1.0)
    assert m.details["utilisation"] == pytest.approx(1.0 / (2.0 * 4))
    assert "cpu_time_s" in m.details["formula"]


def test_estimate_charges_cpu_time_even_when_no_wall_time_elapsed() -> None:
    meter, wall, mono, cpu = make_meter(40.0, 4)
    meter.start()
    advance(wall, mono, cpu, wall_s=0.0, cpu_s=0.5)
    m = meter.stop()
    assert m.total_energy_j == pytest.approx(5.0)
    assert m.details["utilisation"] == 0.0


def test_idle_interval_costs_nothing() -> None:
    meter, wall, mono, cpu = make_meter()
    meter.start()
    advance(wall, mono, cpu, wall_s=30.0, cpu_s=0.0)
    assert meter.stop().total_energy_j == 0.0


def test_two_meters_running_at_once_measure_their_own_intervals() -> None:
    wall, mono, cpu = FakeClock(1000.0), FakeClock(0.0), FakeClock(0.0)
    task = EstimateMeter(40.0, 4, wall_clock=wall, monotonic=mono, cpu_clock=cpu)
    batch = EstimateMeter(40.0, 4, wall_clock=wall, monotonic=mono, cpu_clock=cpu)

    task.start()
    advance(wall, mono, cpu, wall_s=1.0, cpu_s=1.0)  # model load
    batch.start()
    advance(wall, mono, cpu, wall_s=2.0, cpu_s=4.0)  # one generation batch
    batch_m = batch.stop()
    advance(wall, mono, cpu, wall_s=1.0, cpu_s=1.0)  # writing outputs
    task_m = task.stop()

    assert batch_m.duration_s == pytest.approx(2.0)
    assert batch_m.started_at == 1001.0
    assert batch_m.total_energy_j == pytest.approx(40.0 * 4.0 / 4)
    assert task_m.duration_s == pytest.approx(4.0)
    assert task_m.started_at == 1000.0
    assert task_m.total_energy_j == pytest.approx(40.0 * 6.0 / 4)


def test_stop_without_start_is_a_clear_error() -> None:
    meter, *_ = make_meter()
    with pytest.raises(RuntimeError, match="without being started"):
        meter.stop()


def test_start_twice_is_a_clear_error_and_a_stopped_meter_can_start_again() -> None:
    meter, wall, mono, cpu = make_meter(40.0, 4)
    meter.start()
    with pytest.raises(RuntimeError, match="already running"):
        meter.start()
    meter.stop()
    meter.start()
    advance(wall, mono, cpu, wall_s=1.0, cpu_s=2.0)
    assert meter.stop().total_energy_j == pytest.approx(20.0)


def test_measure_sets_the_measurement_on_exit_also_when_the_block_fails() -> None:
    meter, wall, mono, cpu = make_meter(40.0, 4)
    with meter.measure() as held:
        assert held.measurement is None
        advance(wall, mono, cpu, wall_s=2.0, cpu_s=1.0)
    assert held.measurement is not None
    assert held.measurement.total_energy_j == pytest.approx(10.0)

    with pytest.raises(ZeroDivisionError), meter.measure() as failed:
        advance(wall, mono, cpu, wall_s=1.0, cpu_s=0.4)
        1 / 0  # noqa: B018
    assert failed.measurement is not None
    assert failed.measurement.total_energy_j == pytest.approx(4.0)
    assert not meter.running


def test_measurement_round_trips_through_json_as_stored_in_metrics() -> None:
    original = Measurement(
        energy_j={"cpu": 12.5, "dram": 1.25, "gpu:0": 300.0},
        duration_s=3.5,
        method="measured",
        meter="rapl",
        started_at=1_732_219_200.1,
        details={"domains": ["package-0"], "wraps": 1},
    )
    stored = json.loads(json.dumps({"scope": "generation_batch", "seq": 3, **original.to_dict()}))
    assert set(stored) == {
        "scope",
        "seq",
        "started_at",
        "duration_s",
        "method",
        "meter",
        "energy_j",
        "details",
    }
    back = Measurement.from_dict(stored)
    assert back == original
    assert back.total_energy_j == pytest.approx(313.75)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "guessed"}, "valid values: measured, estimated"),
        ({"energy_j": {"cpu": "lots"}}, "energy_j\\['cpu'\\]"),
        ({"duration_s": None}, "duration_s"),
    ],
)
def test_damaged_measurement_names_the_bad_key(change: dict, message: str) -> None:
    data = {"started_at": 1.0, "duration_s": 1.0, "method": "estimated", "meter": "estimate", "energy_j": {}}
    with pytest.raises(ValueError, match=message):
        Measurement.from_dict({**data, **change})
    incomplete = dict(data)
    del incomplete["meter"]
    with pytest.raises(ValueError, match=r"missing key.*meter"):
        Measurement.from_dict(incomplete)


def test_get_meter_auto_returns_a_fresh_estimate_meter_and_says_why(
    no_energy_counters: NoCounters, caplog: pytest.LogCaptureFixture
) -> None:
    """Without energy counters (faked away), ``auto`` is the estimate; the log says what was passed over."""
    with caplog.at_level(logging.INFO, logger="hpcqueue.meters"):
        first = get_meter(hardware="cpu-generic", cpus=4)
    second = get_meter("auto", hardware="cpu-generic", cpus=4)
    assert isinstance(first, EstimateMeter)
    assert first is not second
    assert first.nominal_power_w == 40.0  # cpu-generic: 10 W per logical CPU
    assert "estimated" in caplog.text and "rapl (cpu): no RAPL zones" in caplog.text


def test_get_meter_uses_the_job_cpu_set_by_default(no_energy_counters: NoCounters) -> None:
    """The estimate (``auto`` on a machine whose counters are faked away) is sized to the job's CPU set."""
    meter = get_meter(hardware="cpu-generic")
    assert isinstance(meter, EstimateMeter)
    assert meter.cpus == len(os.sched_getaffinity(0))
    assert meter.nominal_power_w == 10.0 * meter.cpus


def test_get_meter_builds_the_estimate_from_the_hardware_class_or_the_override() -> None:
    xeon = get_meter("estimate", hardware="xeon-6148", cpus=40)
    assert isinstance(xeon, EstimateMeter)
    assert xeon.nominal_power_w == pytest.approx(150.0)  # one full socket
    custom = get_meter("estimate", hardware="xeon-6148", cpus=8, nominal_power_w=55.0)
    assert isinstance(custom, EstimateMeter)
    assert custom.nominal_power_w == 55.0


def test_get_meter_unknown_name_lists_valid_meters() -> None:
    with pytest.raises(
        MeterUnavailableError,
        match=r"unknown meter 'joulemeter'.*valid meters: auto, powermetrics, rapl, nvml, pyjoules, zeus, "
        r"estimate",
    ):
        get_meter("joulemeter", hardware="cpu-generic")


def test_a_named_meter_that_cannot_work_here_fails_loudly_with_the_reason(
    no_energy_counters: NoCounters,
) -> None:
    """No RAPL counters (an empty powercap class, faked): asking for rapl by name is an error that says why
    (no fallback)."""
    with pytest.raises(MeterUnavailableError, match=r"rapl.*no RAPL zones under ") as info:
        get_meter("rapl", hardware="cpu-generic")
    assert f"no RAPL zones under {no_energy_counters.powercap_root} " in str(info.value)
    assert isinstance(info.value, HpcqueueError)
    assert info.value.exit_code == 2


def test_get_meter_unknown_hardware_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown hardware class 'tpu-v9'"):
        get_meter(hardware="tpu-v9")


def test_meter_statuses_report_the_estimate_meter_as_available() -> None:
    statuses = meter_statuses()
    assert [s.name for s in statuses] == meter_names()[1:]
    estimate = statuses[-1]
    assert (estimate.name, estimate.available, estimate.method) == ("estimate", True, "estimated")
    assert estimate.reason


def test_real_clocks_busy_loop_gives_positive_energy_and_plausible_utilisation(
    no_energy_counters: NoCounters,
) -> None:
    """``auto`` without counters (faked away) is the estimate; on real clocks it charges a busy loop."""
    meter = get_meter(hardware="cpu-generic")
    meter.start()
    deadline = time.monotonic() + 0.2
    spins = 0
    while time.monotonic() < deadline:
        spins += 1
    m = meter.stop()
    assert spins > 0
    assert m.total_energy_j > 0
    assert m.duration_s >= 0.2
    assert 0 < m.details["utilisation"] <= 1.05
    assert m.method == "estimated"


#: A child that burns ``argv[1]`` seconds of CPU, says so, and waits for its stdin to close before it exits.
_BURNER = (
    "import sys, time\n"
    "end = time.process_time() + float(sys.argv[1])\n"
    "while time.process_time() < end:\n"
    "    pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_the_estimate_counts_the_cpu_time_of_child_processes_alive_or_reaped() -> None:
    """An engine that generates in worker processes (vLLM with tensor parallelism) is charged for them: the
    default CPU clock covers the process tree, where this process's own clock sees nothing of a child."""
    tree = EstimateMeter(40.0, 4)
    own = EstimateMeter(40.0, 4, cpu_clock=time.process_time)  # the clock of this process alone
    tree.start()
    own.start()
    child = subprocess.Popen(
        [sys.executable, "-c", _BURNER, "0.5"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "burnt\n"
        alive = tree.stop()  # the child has burnt its CPU and still runs
        alone = own.stop()  # at the same moment, with this process's clock alone
        reaping = EstimateMeter(40.0, 4)
        reaping.start()
        child.communicate(input="", timeout=30)  # it exits and is reaped
        reaped = reaping.stop()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert alive.details["cpu_time_s"] >= 0.5
    assert alive.total_energy_j == pytest.approx(40.0 * alive.details["cpu_time_s"] / 4)
    # the old clock: the child's half second is missing (whatever this busy process spent itself)
    assert alive.details["cpu_time_s"] - alone.details["cpu_time_s"] >= 0.45
    # its time moves from the live child to the reaped children's: counted once, not twice
    assert reaped.details["cpu_time_s"] < 0.25

    tree.start()
    subprocess.run(
        [sys.executable, "-c", _BURNER, "0.5"], input="", text=True, capture_output=True, check=True
    )
    assert tree.stop().details["cpu_time_s"] >= 0.5  # a child that ran and exited within the interval


# --- no_energy_counters holds on a machine that has them -----------------------------------------------


def _linux_gpu_node(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, set[str]]:
    """RAPL zones for the job's CPUs, an NVIDIA driver with one GPU handed to the job, pyJoules and zeus
    that can read them: what ``auto`` combines on a GPU node (Linux, so powermetrics stays out)."""
    platform.uname()  # platform caches the real machine before os.uname() is faked
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", *tuple(real)[1:])))
    powercap = FakePowercap(tmp_path / "powercap")
    powercap.add_package(0)
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", powercap.root)
    monkeypatch.setattr(
        devices, "SYSFS_ROOT", make_topology(tmp_path / "sys", dict.fromkeys(os.sched_getaffinity(0), 0))
    )
    driver = nvml_module(FakeNvml([FakeGpu(uuid(0), energy_mj=0)]))
    api = pyjoules.import_pyjoules()
    monkeypatch.setitem(sys.modules, "pynvml", driver)
    monkeypatch.setattr(api.rapl_module, "RAPL_API_DIR", str(powercap.control))
    if api.nvidia_module is not None:
        monkeypatch.setattr(api.nvidia_module, "pynvml", driver)

    class ZeusMonitor:
        def __init__(self, gpu_indices, cpu_indices, approx_instant_energy):  # type: ignore[no-untyped-def]
            self.gpu_indices = [0] if gpu_indices is None else gpu_indices  # None: every GPU of the node

    zeus_monitor = types.ModuleType("zeus.monitor")
    zeus_monitor.ZeusMonitor = ZeusMonitor  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "zeus", types.ModuleType("zeus"))
    monkeypatch.setitem(sys.modules, "zeus.monitor", zeus_monitor)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    clear_probe_caches()  # this machine's probes run afresh, not what an earlier test cached
    return "rapl+nvml", {"rapl", "nvml", "pyjoules", "zeus"}


def _mac(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, set[str]]:
    """macOS with ``powermetrics`` on PATH, run as root."""
    platform.uname()  # platform caches the real machine before os.uname() is faked
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Darwin", *tuple(real)[1:])))
    binary = tmp_path / "bin" / "powermetrics"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    clear_probe_caches()  # this machine's probes run afresh, not what an earlier test cached
    return "powermetrics", {"powermetrics"}


@pytest.mark.parametrize("machine", [_linux_gpu_node, _mac], ids=["linux-gpu-node", "mac"])
def test_no_energy_counters_hides_the_counters_of_a_machine_that_has_them(
    machine: Callable[[pytest.MonkeyPatch, Path], tuple[str, set[str]]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The fixture fakes the absence itself: on a machine with counters (faked here too), whose probes have
    already been cached, ``auto`` still falls back to the estimate, and no backend but the estimate works
    when asked for by name."""
    auto, measuring = machine(monkeypatch, tmp_path)
    assert auto_selection().name == auto  # the counters are there, and the probes have cached them
    assert {s.name for s in meter_statuses() if s.available} >= measuring | {"estimate"}

    no_counters: NoCounters = request.getfixturevalue("no_energy_counters")

    selection = auto_selection()
    assert (selection.name, selection.method) == ("estimate", "estimated")
    assert isinstance(get_meter(hardware="cpu-generic", cpus=2), EstimateMeter)
    assert {s.name for s in meter_statuses() if s.available} == {"estimate"}
    for name in sorted(measuring):
        with pytest.raises(MeterUnavailableError, match=f"meter '{name}' is not available"):
            get_meter(name, hardware="cpu-generic")
    assert sys.modules["pynvml"] is no_counters.nvml
    assert no_counters.powercap_root == rapl.POWERCAP_ROOT
