"""The ``pyjoules`` meter: RAPL and NVIDIA energy through pyJoules 0.5.1, wrapped against its failure modes.

pyJoules reads ``/sys/class/powercap/intel-rapl/intel-rapl:N/energy_uj`` (package ``package_N``, subzone
``dram_N``) and ``nvmlDeviceGetTotalEnergyConsumption`` (``nvidia_gpu_N``). How it fails, and what this
wrapper does about it:

- Absent devices raise ``NoSuchDeviceError()`` with an empty message: the probe asks each device class for
  its domains first and writes the reason itself.
- ``@measure_energy`` creates its devices when the decorator is applied, so a module using it fails at
  import on a machine without devices: it is never used here.
- Without ``domains``, ``EnergyMeter``/``EnergyContext`` autodetect; with no device at all the body runs and
  then ``TypeError: reduce() of empty iterable`` is raised, losing the result: domains are always explicit.
- Its trace mixes units: RAPL differences are microjoules, NVIDIA differences are the NVML counter's
  millijoules. Each is converted to joules by its own factor.
- A RAPL counter that wrapped gives a negative difference; it is corrected with ``max_energy_range_uj``.
- It reads every GPU by NVML index and ignores ``CUDA_VISIBLE_DEVICES``: the wrapper hands it the job's
  GPUs only (``devices.allocated_gpus()``), and the job's packages only.
- Its NVIDIA support imports ``pynvml`` at import time and logs a warning when it is missing: depend on
  ``nvidia-ml-py`` (not ``pyJoules[nvidia]``, which pulls the deprecated ``pynvml`` shim).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpcqueue.errors import MeterUnavailableError
from hpcqueue.meters import devices
from hpcqueue.meters.base import Meter, at_least_one, availability, probe_status, unavailable
from hpcqueue.meters.nvml import gpu_uuid
from hpcqueue.meters.rapl import ROOT_ONLY_HINT

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from hpcqueue.meters.base import Clocks, Measurement, MeterStatus

Kind = Literal["cpu", "gpu"]
INSTALL_HINT = "install it with `pip install 'hpcqueue[pyjoules]'` (and nvidia-ml-py for GPUs)"


class _DropPynvmlWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pynvml not found" not in record.getMessage()


@contextmanager
def _quiet_import() -> Iterator[None]:
    """pyJoules logs on the root logger at import when pynvml is absent; that is reported by the probe."""
    drop = _DropPynvmlWarning()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


@dataclass(frozen=True)
class PyJoulesApi:
    """The parts of pyJoules this wrapper uses (imported on demand)."""

    NoSuchDeviceError: type[BaseException]
    DeviceFactory: Any
    EnergyMeter: Any
    RaplDevice: Any
    RaplPackageDomain: Any
    RaplDramDomain: Any
    NvidiaGPUDevice: Any  # None without pynvml
    NvidiaGPUDomain: Any
    rapl_module: Any
    nvidia_module: Any


def import_pyjoules() -> PyJoulesApi:
    """Import pyJoules, or raise ``MeterUnavailableError`` saying how to install it."""
    try:
        with _quiet_import():
            exception = importlib.import_module("pyJoules.exception")
            factory = importlib.import_module("pyJoules.device.device_factory")
            energy_meter = importlib.import_module("pyJoules.energy_meter")
            rapl = importlib.import_module("pyJoules.device.rapl_device")
    except ImportError as e:
        raise MeterUnavailableError(f"pyJoules is not installed: {INSTALL_HINT}") from e
    nvidia: Any = None
    try:
        has_nvml = "pynvml" in sys.modules or importlib.util.find_spec("pynvml") is not None
    except ValueError:  # a pynvml module without __spec__ (an embedded or substituted one)
        has_nvml = True
    if has_nvml:
        try:
            nvidia = importlib.import_module("pyJoules.device.nvidia_device")
        except ImportError:
            nvidia = None
    return PyJoulesApi(
        NoSuchDeviceError=exception.NoSuchDeviceError,
        DeviceFactory=factory.DeviceFactory,
        EnergyMeter=energy_meter.EnergyMeter,
        RaplDevice=rapl.RaplDevice,
        RaplPackageDomain=rapl.RaplPackageDomain,
        RaplDramDomain=rapl.RaplDramDomain,
        NvidiaGPUDevice=nvidia.NvidiaGPUDevice if nvidia else None,
        NvidiaGPUDomain=nvidia.NvidiaGPUDomain if nvidia else None,
        rapl_module=rapl,
        nvidia_module=nvidia,
    )


@dataclass(frozen=True)
class SideProbe:
    """One side (CPU or GPU) of pyJoules: usable or not, why, and the pyJoules domains to read."""

    available: bool
    reason: str
    domains: tuple[Any, ...] = ()  # pyJoules Domain objects

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(_our_domain(str(d)) for d in self.domains)


@dataclass(frozen=True)
class PyJoulesProbe:
    cpu: SideProbe
    gpu: SideProbe
    api: PyJoulesApi | None = None
    packages: devices.CpuPackages | None = None

    @property
    def available(self) -> bool:
        return self.cpu.available or self.gpu.available

    @property
    def reason(self) -> str:
        return f"CPU: {self.cpu.reason}; GPU: {self.gpu.reason}"

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.cpu.names + self.gpu.names))

    def side(self, kind: Kind) -> SideProbe:
        return self.cpu if kind == "cpu" else self.gpu


def _our_domain(pyjoules_domain: str) -> str:
    """``package_0`` → ``cpu``, ``dram_1`` → ``dram``, ``nvidia_gpu_2`` → ``gpu:2``."""
    if pyjoules_domain.startswith("nvidia_gpu_"):
        return "gpu:" + pyjoules_domain.removeprefix("nvidia_gpu_")
    return "cpu" if pyjoules_domain.startswith("package_") else pyjoules_domain.split("_")[0]


def probe(
    cpus: frozenset[int] | None = None,
    selection: devices.GpuSelection | None = None,
    *,
    sysfs_root: Path | None = None,
) -> PyJoulesProbe:
    """Ask pyJoules, device class by device class, what it can read for this job. Cached."""
    return _probe_cached(
        devices.allocated_cpus() if cpus is None else frozenset(cpus),
        selection or devices.allocated_gpus(),
        sysfs_root or devices.SYSFS_ROOT,
    )


@lru_cache(maxsize=8)
def _probe_cached(cpus: frozenset[int], selection: devices.GpuSelection, sysfs_root: Path) -> PyJoulesProbe:
    try:
        api = import_pyjoules()
    except MeterUnavailableError as e:
        side = SideProbe(False, str(e))
        return PyJoulesProbe(side, side)
    packages = devices.job_packages(cpus, sysfs_root=sysfs_root)
    return PyJoulesProbe(_probe_cpu(api, packages), _probe_gpu(api, selection), api, packages)


def _first_read(api: PyJoulesApi, domains: list[Any]) -> None:
    """Create pyJoules devices for ``domains`` and read them once (where a permission problem shows)."""
    for device in api.DeviceFactory.create_devices(domains):
        device.get_energy()


def _probe_cpu(api: PyJoulesApi, packages: devices.CpuPackages) -> SideProbe:
    rapl_dir = api.rapl_module.RAPL_API_DIR
    try:
        available = api.RaplDevice.available_domains()
    except api.NoSuchDeviceError:
        return SideProbe(
            False,
            f"no RAPL interface at {rapl_dir} (pyJoules raised NoSuchDeviceError, which has no message)",
        )
    wanted = [api.RaplPackageDomain(p) for p in packages.packages]
    wanted += [api.RaplDramDomain(p) for p in packages.packages]
    domains = [d for d in wanted if d in available]
    if not any(isinstance(d, api.RaplPackageDomain) for d in domains):
        listed = ", ".join(map(str, packages.packages))
        return SideProbe(
            False, f"pyJoules finds no RAPL package zone for package(s) {listed} under {rapl_dir}"
        )
    try:
        _first_read(api, domains)
    except PermissionError:
        return SideProbe(False, f"{rapl_dir}/intel-rapl:*/{ROOT_ONLY_HINT}")
    except (OSError, ValueError, api.NoSuchDeviceError) as e:
        return SideProbe(
            False, f"pyJoules cannot read RAPL under {rapl_dir}: {type(e).__name__} {e}".rstrip()
        )
    return SideProbe(True, "RAPL " + ", ".join(map(str, domains)), tuple(domains))


def _probe_gpu(api: PyJoulesApi, selection: devices.GpuSelection) -> SideProbe:
    if selection.ids == ():
        return SideProbe(False, f"no GPUs allocated to this job ({selection.describe})")
    if api.NvidiaGPUDevice is None:
        return SideProbe(
            False, "NVML bindings are not installed: install nvidia-ml-py for pyJoules' GPU support"
        )
    nvml = api.nvidia_module.pynvml
    try:
        available = api.NvidiaGPUDevice.available_domains()  # calls nvmlInit()
    except api.NoSuchDeviceError:
        return SideProbe(
            False,
            "NVML could not be initialised, no NVIDIA driver here "
            "(pyJoules raised NoSuchDeviceError, which has no message)",
        )
    try:
        indices, problems = devices.resolve_gpu_indices(
            selection, len(available), lambda i: gpu_uuid(nvml, i)
        )
        domains = [api.NvidiaGPUDomain(i) for i in indices]
        if not domains:
            return SideProbe(False, "no allocated GPU is visible to NVML: " + "; ".join(problems))
        _first_read(api, domains)
    except nvml.NVMLError as e:
        return SideProbe(False, f"pyJoules needs the GPU energy counter (Volta and newer): NVML error: {e}")
    return SideProbe(True, "NVML " + ", ".join(map(str, domains)), tuple(domains))


def pyjoules_available(kind: Kind | None = None) -> tuple[bool, str]:
    """(usable, why), for the CPU side, the GPU side, or either (``kind=None``); cached."""
    found = probe()
    return availability(found if kind is None else found.side(kind))


def pyjoules_status() -> MeterStatus:
    """The backend's status for ``meter_statuses()`` / ``doctor``."""
    return probe_status(PyJoulesMeter, probe())


def build_pyjoules_meter(
    kinds: tuple[Kind, ...] = ("cpu", "gpu"), found: PyJoulesProbe | None = None
) -> PyJoulesMeter:
    """A pyJoules meter for the available sides among ``kinds``, or ``MeterUnavailableError`` why not."""
    found = found or probe()
    if found.api is None or not any(found.side(k).available for k in kinds):
        why = "; ".join(f"{k.upper()}: {found.side(k).reason}" for k in kinds)
        raise unavailable(PyJoulesMeter, why)
    domains = [d for k in kinds if found.side(k).available for d in found.side(k).domains]
    return PyJoulesMeter(found.api, domains)


class PyJoulesMeter(Meter, name="pyjoules", method="measured"):
    """Start/stop of a pyJoules ``EnergyMeter`` on explicit domains; the trace converted to joules."""

    def __init__(
        self,
        api: PyJoulesApi,
        domains: list[Any],
        **clocks: Unpack[Clocks],
    ) -> None:
        super().__init__(**clocks)
        self._api = api
        never_autodetect = "a pyJoules meter needs at least one domain (never let pyJoules autodetect)"
        self.domains = list(at_least_one(domains, never_autodetect))
        try:
            self._devices = api.DeviceFactory.create_devices(self.domains)
        except api.NoSuchDeviceError as e:
            raise MeterUnavailableError("meter 'pyjoules': a device disappeared since the probe") from e
        self._meter: Any = None

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except PermissionError as e:
            raise MeterUnavailableError(f"meter 'pyjoules': {what}: {ROOT_ONLY_HINT}") from e
        except Exception as e:  # pyJoules and NVML raise many types; all mean "cannot measure"
            raise MeterUnavailableError(f"meter 'pyjoules': {what}: {type(e).__name__}: {e}") from e

    def _begin(self) -> None:
        self._meter = self._api.EnergyMeter(self._devices)
        self._guard("reading the counters at start", lambda: self._meter.start(tag="hpcqueue"))
        self._mark_start()

    def _end(self) -> Measurement:
        self._guard("reading the counters at stop", self._meter.stop)
        duration_s = self._elapsed_s()
        trace = self._guard("reading the trace", self._meter.get_trace)
        raw: dict[str, float] = dict(trace[0].energy)
        energy_j: dict[str, float] = {}
        wraps: list[str] = []
        for key, value in raw.items():
            if key.startswith("nvidia_gpu_"):
                joules = value / 1e3  # NVML's total-energy counter is in millijoules
            else:
                if value < 0:
                    value += self._rapl_range_uj(key)
                    wraps.append(key)
                joules = value / 1e6  # powercap energy_uj is in microjoules
            domain = _our_domain(key)
            energy_j[domain] = energy_j.get(domain, 0.0) + joules
        return self._measurement(
            energy_j,
            duration_s,
            details={
                "source": "pyJoules",
                "pyjoules_domains": sorted(raw),
                "raw_units": {k: ("mJ" if k.startswith("nvidia_gpu_") else "uJ") for k in raw},
                "wraps": wraps,
                "scope": "whole package(s) for cpu/dram: other jobs and idle power included",
            },
        )

    def _rapl_range_uj(self, key: str) -> float:
        """``max_energy_range_uj`` of pyJoules' zone ``package_N`` / ``dram_N`` (to undo a wrap)."""
        kind, socket = key.rsplit("_", 1)
        base = Path(self._api.rapl_module.RAPL_API_DIR) / f"intel-rapl:{socket}"
        zone = base
        if kind != "package":
            for sub in sorted(base.glob(f"intel-rapl:{socket}:*")):
                if (sub / "name").read_text().strip() == kind:
                    zone = sub
                    break
        return float((zone / "max_energy_range_uj").read_text())
