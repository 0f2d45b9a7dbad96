"""The ``nvml`` meter: NVIDIA GPU energy through NVML (the ``nvidia-ml-py`` package, module ``pynvml``).

Domains are ``gpu:<index>`` (the NVML index, i.e. the node's numbering, in PCI bus order) for the job's
GPUs only (``devices.allocated_gpus()``: ``CUDA_VISIBLE_DEVICES`` indices or UUIDs, Slurm's GPU variables).
Per GPU, the best source the device offers:

- ``energy_counter``: ``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver was loaded
  (Volta and newer). Read at start and stop; exact, costs two calls.
- ``power_sampling``: ``nvmlDeviceGetPowerUsage`` (milliwatts) sampled by a background thread every
  ``sample_interval_s`` and integrated with the trapezoidal rule (older GPUs). Still a measurement of the
  board's power, but events shorter than the interval are smoothed out; ``details`` says which GPU used it.

The NVML module is a parameter (``nvml=``) so that tests can hand in a stub with the same calls.
"""

from __future__ import annotations

import importlib
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal

from hpcqueue.errors import MeterUnavailableError
from hpcqueue.meters import devices
from hpcqueue.meters.base import Meter, PollingThread, at_least_one, availability, probe_status, usable

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from hpcqueue.meters.base import Clocks, Measurement, MeterStatus

DEFAULT_SAMPLE_INTERVAL_S = 0.1
INSTALL_HINT = "install it with `pip install 'hpcqueue[nvidia]'` (the nvidia-ml-py package)"

Source = Literal["energy_counter", "power_sampling"]


def import_nvml() -> ModuleType:
    """The ``pynvml`` module of nvidia-ml-py, or ``MeterUnavailableError`` saying how to install it."""
    try:
        return importlib.import_module("pynvml")
    except ImportError as e:
        raise MeterUnavailableError(f"NVML bindings are not installed: {INSTALL_HINT}") from e


def nvml_error_reason(nvml: Any, error: BaseException) -> str:
    """A sentence for an ``NVMLError``: what it means on this machine and what to do."""
    value = getattr(error, "value", None)
    known = {
        getattr(nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", -1): (
            "the NVIDIA driver library (libnvidia-ml.so.1) was not found: no NVIDIA driver on this machine"
        ),
        getattr(nvml, "NVML_ERROR_DRIVER_NOT_LOADED", -1): "the NVIDIA kernel driver is not loaded",
        getattr(nvml, "NVML_ERROR_NO_PERMISSION", -1): "NVML refused access (insufficient permissions)",
        getattr(nvml, "NVML_ERROR_GPU_IS_LOST", -1): "the GPU fell off the bus (NVML: GPU is lost)",
    }
    return known.get(value, f"NVML error: {error}")


def _is_not_supported(nvml: Any, error: BaseException) -> bool:
    return getattr(error, "value", None) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", 3)


_init_lock = threading.Lock()
_initialised: weakref.WeakSet[Any] = weakref.WeakSet()


def _ensure_init(nvml: Any) -> None:
    """``nvmlInit()`` once per process and module (NVML stays initialised for the life of the process)."""
    with _init_lock:
        if nvml not in _initialised:
            nvml.nvmlInit()
            _initialised.add(nvml)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_uuid(nvml: Any, index: int) -> str:
    """The UUID (``GPU-...``) of the GPU at NVML index ``index``."""
    return _text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index)))


@dataclass(frozen=True)
class GpuDevice:
    """One GPU the meter reads."""

    index: int
    uuid: str
    name: str
    handle: Any
    source: Source

    @property
    def domain(self) -> str:
        return f"gpu:{self.index}"


@dataclass(frozen=True)
class NvmlProbe:
    available: bool
    reason: str
    gpus: tuple[GpuDevice, ...] = ()
    nvml: Any = None

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(gpu.domain for gpu in self.gpus)


def probe(nvml: Any = None, selection: devices.GpuSelection | None = None) -> NvmlProbe:
    """Find the job's GPUs in NVML and how each one's energy can be read. Cached per module and selection."""
    selection = selection or devices.allocated_gpus()
    if selection.ids == ():
        return NvmlProbe(False, f"no GPUs allocated to this job ({selection.describe})")
    if nvml is None:
        try:
            nvml = import_nvml()
        except MeterUnavailableError as e:
            return NvmlProbe(False, str(e))
    return _probe_cached(nvml, selection)


@lru_cache(maxsize=8)
def _probe_cached(nvml: Any, selection: devices.GpuSelection) -> NvmlProbe:
    error_type = getattr(nvml, "NVMLError", Exception)
    try:
        _ensure_init(nvml)
        count = int(nvml.nvmlDeviceGetCount())
        indices, problems = devices.resolve_gpu_indices(selection, count, lambda i: gpu_uuid(nvml, i))
    except error_type as e:
        return NvmlProbe(False, nvml_error_reason(nvml, e))
    gpus: list[GpuDevice] = []
    for index in indices:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid, name = _text(nvml.nvmlDeviceGetUUID(handle)), _text(nvml.nvmlDeviceGetName(handle))
        except error_type as e:
            problems.append(f"GPU {index}: {nvml_error_reason(nvml, e)}")
            continue
        source: Source | None = None
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            source = "energy_counter"
        except error_type as e:
            if not _is_not_supported(nvml, e):
                problems.append(f"GPU {index}: {nvml_error_reason(nvml, e)}")
                continue
        if source is None:
            try:
                nvml.nvmlDeviceGetPowerUsage(handle)
                source = "power_sampling"
            except error_type as e:
                problems.append(f"GPU {index} ({name}): neither energy counter nor power reading ({e})")
                continue
        gpus.append(GpuDevice(index, uuid, name, handle, source))
    if not gpus:
        found = "; ".join(problems) or f"NVML sees {count} GPU(s), none of them allocated to this job"
        return NvmlProbe(False, f"no readable GPU for this job ({selection.describe}): {found}")
    listed = ", ".join(f"gpu:{g.index} {g.name} ({g.source.replace('_', ' ')})" for g in gpus)
    reason = f"{listed}; GPUs from {selection.describe}"
    if problems:
        reason += "; left out: " + "; ".join(problems)
    return NvmlProbe(True, reason, tuple(gpus), nvml)


def nvml_available() -> tuple[bool, str]:
    """(usable, why) for the job's GPUs; cached."""
    return availability(probe())


def nvml_status() -> MeterStatus:
    """The backend's status for ``meter_statuses()`` / ``doctor``."""
    return probe_status(NvmlMeter, probe())


def build_nvml_meter(found: NvmlProbe | None = None, **kwargs: Any) -> NvmlMeter:
    """An NVML meter for the job's GPUs, or ``MeterUnavailableError`` with the probe's reason."""
    found = usable(NvmlMeter, found or probe())
    return NvmlMeter(found.gpus, found.nvml, **kwargs)


class PowerSampler:
    """Samples ``read_power_w()`` (one value per device) in a daemon thread; integrates with trapezoids.

    ``start()`` and ``stop()`` each take a sample in the caller's thread, so the integral covers exactly
    the interval between them; the thread adds one every ``interval_s`` in between.
    """

    def __init__(
        self,
        read_power_w: Callable[[], list[float]],
        interval_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"sample interval must be > 0 seconds, not {interval_s!r}")
        self._read = read_power_w
        self._monotonic = monotonic
        self.samples: list[tuple[float, list[float]]] = []
        self._poller = PollingThread(self._sample, interval_s, name="hpcqueue-power-sampler")

    @property
    def interval_s(self) -> float:
        return self._poller.interval_s

    def _sample(self) -> None:
        self.samples.append((self._monotonic(), self._read()))

    def start(self) -> None:
        self.samples = []
        self._sample()
        self._poller.start()

    def stop(self) -> list[float]:
        """Stop sampling and return joules per device over the sampled interval."""
        self._poller.stop()
        self._sample()
        return trapezoid_j(self.samples)


def trapezoid_j(samples: list[tuple[float, list[float]]]) -> list[float]:
    """Integrate power samples ``(t_s, [watts per device])`` over time: joules per device."""
    if not samples:
        return []
    energy = [0.0] * len(samples[0][1])
    for (t0, p0), (t1, p1) in itertools.pairwise(samples):
        dt = t1 - t0
        for i, (a, b) in enumerate(zip(p0, p1, strict=True)):
            energy[i] += (a + b) / 2 * dt
    return energy


class NvmlMeter(Meter, name="nvml", method="measured"):
    """GPU energy of the job's GPUs from NVML (energy counter, or sampled power where there is none)."""

    def __init__(
        self,
        gpus: tuple[GpuDevice, ...] | list[GpuDevice],
        nvml: Any,
        *,
        sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
        **clocks: Unpack[Clocks],
    ) -> None:
        super().__init__(**clocks)
        self.gpus = at_least_one(gpus, "an NVML meter needs at least one GPU")
        self._nvml = nvml
        self.sample_interval_s = sample_interval_s
        self._counted = [g for g in self.gpus if g.source == "energy_counter"]
        self._sampled = [g for g in self.gpus if g.source == "power_sampling"]
        self._sampler = (
            PowerSampler(self._read_power_w, sample_interval_s, self._monotonic) if self._sampled else None
        )
        self._start_mj: list[int] = []

    def _call(self, what: str, fn: Callable[[Any], Any], handle: Any) -> Any:
        try:
            return fn(handle)
        except self._nvml.NVMLError as e:
            raise MeterUnavailableError(f"meter 'nvml': {what}: {nvml_error_reason(self._nvml, e)}") from e

    def _read_counters_mj(self) -> list[int]:
        read = self._nvml.nvmlDeviceGetTotalEnergyConsumption
        return [int(self._call(f"energy counter of gpu:{g.index}", read, g.handle)) for g in self._counted]

    def _read_power_w(self) -> list[float]:
        read = self._nvml.nvmlDeviceGetPowerUsage
        return [self._call(f"power of gpu:{g.index}", read, g.handle) / 1000.0 for g in self._sampled]

    def _begin(self) -> None:
        self._start_mj = self._read_counters_mj()
        self._mark_start()
        if self._sampler is not None:
            self._sampler.start()

    def _end(self) -> Measurement:
        sampled_j = self._sampler.stop() if self._sampler is not None else []
        end_mj = self._read_counters_mj()
        duration_s = self._elapsed_s()
        energy_j: dict[str, float] = {}
        for gpu, start, end in zip(self._counted, self._start_mj, end_mj, strict=True):
            energy_j[gpu.domain] = max(0, end - start) / 1000.0  # the counter is in millijoules
        for gpu, joules in zip(self._sampled, sampled_j, strict=True):
            energy_j[gpu.domain] = joules
        details: dict[str, Any] = {
            "source": {g.domain: g.source for g in self.gpus},
            "gpus": [
                {"domain": g.domain, "index": g.index, "uuid": g.uuid, "name": g.name} for g in self.gpus
            ],
        }
        if self._sampler is not None:
            details["sample_interval_s"] = self.sample_interval_s
            details["samples"] = len(self._sampler.samples)
            details["integration"] = "trapezoidal over nvmlDeviceGetPowerUsage (mW)"
        return self._measurement(
            dict(sorted(energy_j.items(), key=lambda kv: int(kv[0].split(":")[1]))),
            duration_s,
            details=details,
        )
