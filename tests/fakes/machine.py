"""Fixtures that fake the machine's energy hardware (registered for every test by tests/conftest.py).

``no_energy_counters`` makes every meter backend but the estimate see a machine without energy counters,
whatever the machine running the tests has: a test that expects the fallback to the estimate (or a named
meter to fail) asks for it instead of assuming that this machine has no RAPL, no GPU and is not a Mac.

Only the outside world is faked (where the backends look, what the libraries find); hpcqueue's selection
logic runs unchanged:

- ``rapl``: ``rapl.POWERCAP_ROOT`` is an empty ``.../sys/class/powercap`` directory (no ``intel-rapl:*``
  zones, as on a VM or a CPU without RAPL);
- ``nvml``: ``import pynvml`` gives a stub of nvidia-ml-py whose ``nvmlInit()`` fails as the real one does
  without a driver (``NVML_ERROR_LIBRARY_NOT_FOUND``: no ``libnvidia-ml.so.1``);
- GPUs: none handed to the job (no ``CUDA_VISIBLE_DEVICES``, no Slurm GPU variables, not in a Slurm job), so
  "every GPU of the machine" is asked for, and the driver-less NVML finds none;
- ``pyjoules``: when pyJoules is installed, its RAPL directory is the empty powercap tree and its NVIDIA
  device uses the driver-less stub (pyJoules then raises ``NoSuchDeviceError`` as on such a machine); when it
  is not installed it is unavailable anyway;
- ``zeus``: not importable (``zeus.monitor`` blocked in ``sys.modules``);
- ``powermetrics``: ``os.uname()`` says Linux, so this is not a Mac.

The backends' cached probes are cleared before the fakes are used and again when the test ends, so neither
a probe of the real machine leaks into the test nor a probe of the fake into later tests.
"""

from __future__ import annotations

import importlib.machinery
import os
import platform
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcqueue.errors import MeterUnavailableError
from hpcqueue.meters import devices, estimate, hardware, nvml, powermetrics, pyjoules, rapl, zeus
from tests.fakes.nvml_stub import NVML_ERROR_LIBRARY_NOT_FOUND, FakeNvml

# The environment variables from which hpcqueue learns the job's GPUs (hpcqueue.meters.devices).
GPU_ENV_VARS = (
    "CUDA_VISIBLE_DEVICES",
    "SLURM_STEP_GPUS",
    "SLURM_JOB_GPUS",
    "GPU_DEVICE_ORDINAL",
    "SLURM_JOB_ID",
)

# Modules whose cached probes describe the machine; every ``lru_cache`` in them is cleared.
_PROBING_MODULES = (rapl, nvml, pyjoules, zeus, powermetrics, estimate, devices, hardware)


def clear_probe_caches() -> None:
    """Forget what the meter backends found out about the machine (their ``lru_cache``-d probes)."""
    for module in _PROBING_MODULES:
        for value in vars(module).values():
            clear = getattr(value, "cache_clear", None)
            if callable(clear) and getattr(value, "__module__", None) == module.__name__:
                clear()


def nvml_module(fake: FakeNvml) -> types.ModuleType:
    """``fake`` as an importable ``pynvml`` module (with a ``__spec__``, as every imported module has), for
    ``sys.modules["pynvml"]``: ``import pynvml`` and ``importlib.util.find_spec("pynvml")`` then see it."""
    module = types.ModuleType("pynvml", "A stub of nvidia-ml-py (tests.fakes.nvml_stub.FakeNvml).")
    module.__spec__ = importlib.machinery.ModuleSpec("pynvml", loader=None)
    for name in dir(fake):
        if not name.startswith("_"):
            setattr(module, name, getattr(fake, name))
    return module


@dataclass(frozen=True)
class NoCounters:
    """What ``no_energy_counters`` put in place of the machine's energy hardware."""

    powercap_root: Path  # rapl.POWERCAP_ROOT: exists, holds no zone
    nvml: types.ModuleType  # sys.modules["pynvml"]: nvmlInit() fails with NVML_ERROR_LIBRARY_NOT_FOUND


@pytest.fixture()
def no_energy_counters(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NoCounters]:
    """A machine without energy counters, seen by every backend but the estimate (see the module docstring).

    Patches go through the test's own ``monkeypatch``, so a test (or a fixture built on this one) may put
    counters back on top of it, and everything is undone in the right order when the test ends.
    """
    powercap_root = tmp_path_factory.mktemp("no-counters") / "sys" / "class" / "powercap"
    powercap_root.mkdir(parents=True)
    driverless = nvml_module(FakeNvml([], init_error=NVML_ERROR_LIBRARY_NOT_FOUND))

    clear_probe_caches()
    # RAPL: the powercap class exists but has no zone.
    monkeypatch.setattr(rapl, "POWERCAP_ROOT", powercap_root)
    # GPUs: none handed to the job, and no NVIDIA driver behind nvidia-ml-py.
    for var in GPU_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    # pyJoules imports its NVML module once: import it (and so the real pynvml, if any) before the stub.
    try:
        api = pyjoules.import_pyjoules()
    except MeterUnavailableError:
        api = None  # not installed: pyJoules cannot find counters here either
    monkeypatch.setitem(sys.modules, "pynvml", driverless)
    if api is not None:
        monkeypatch.setattr(api.rapl_module, "RAPL_API_DIR", str(powercap_root / "intel-rapl"))
        if api.nvidia_module is not None:
            monkeypatch.setattr(api.nvidia_module, "pynvml", driverless)
        else:  # pyJoules without nvidia-ml-py: keep its NVIDIA device from importing the stub for good
            monkeypatch.setitem(sys.modules, "pyJoules.device.nvidia_device", None)
    # zeus: not installed.
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    # powermetrics: not a Mac. platform caches uname(): fill it with the real machine first, so that only the
    # probes, which ask os.uname() each time, see the fake.
    platform.uname()
    real = os.uname()
    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", *tuple(real)[1:])))
    clear_probe_caches()
    try:
        yield NoCounters(powercap_root, driverless)
    finally:
        clear_probe_caches()
