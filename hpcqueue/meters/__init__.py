"""Energy meters: ``get_meter()`` picks a backend, ``Meter.start()`` / ``Meter.stop() -> Measurement``.

One module per backend, each with a cached availability probe that says why not: ``rapl`` (Linux powercap),
``nvml`` (NVIDIA), ``pyjoules`` (RAPL and NVIDIA through pyJoules), ``zeus`` (NVIDIA through zeus),
``powermetrics`` (macOS) and ``estimate`` (nominal power, always available). Third-party libraries are
imported inside the backends, only when probed.

``get_meter("auto")`` combines the best available CPU meter (rapl, then pyjoules) with the best available
GPU meter for the job's GPUs (nvml, then pyjoules, then zeus) into one meter (``rapl+nvml``); on macOS,
powermetrics covers both. With no CPU counter, the CPU side is the estimate and the whole is labelled
estimated. Every backend passed over is logged at INFO with its reason. A backend asked for by name (or
several joined by ``+``) fails loudly with ``MeterUnavailableError`` when it cannot be used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hpcqueue.errors import MeterUnavailableError
from hpcqueue.meters import devices, nvml, powermetrics, pyjoules, rapl, zeus
from hpcqueue.meters.base import (
    Measurement,
    MeasurementHolder,
    Meter,
    MeterStatus,
    Method,
)
from hpcqueue.meters.composite import CompositeMeter
from hpcqueue.meters.estimate import EstimateMeter, estimate_is_available
from hpcqueue.meters.hardware import get_hardware, nominal_cpu_power_w

__all__ = [
    "CompositeMeter",
    "EstimateMeter",
    "Measurement",
    "MeasurementHolder",
    "Meter",
    "MeterStatus",
    "MeterUnavailableError",
    "Method",
    "auto_selection",
    "doctor_report",
    "get_meter",
    "job_cpus",
    "job_devices",
    "meter_names",
    "meter_statuses",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _MeterRequest:
    hardware: str
    nominal_power_w: float | None
    cpus: int


@dataclass(frozen=True)
class _Backend:
    name: str
    status: Callable[[], MeterStatus]  # cached by the backend module
    build: Callable[[_MeterRequest], Meter]


def _build_estimate(request: _MeterRequest) -> Meter:
    power_w = nominal_cpu_power_w(request.hardware, request.cpus, request.nominal_power_w)
    return EstimateMeter(power_w, request.cpus)


# Listing order (meter_statuses, doctor); auto-selection follows _CPU_CHAIN / _GPU_CHAIN below.
_BACKENDS: tuple[_Backend, ...] = (
    _Backend(
        "powermetrics", powermetrics.powermetrics_status, lambda r: powermetrics.build_powermetrics_meter()
    ),
    _Backend("rapl", rapl.rapl_status, lambda r: rapl.build_rapl_meter()),
    _Backend("nvml", nvml.nvml_status, lambda r: nvml.build_nvml_meter()),
    _Backend("pyjoules", pyjoules.pyjoules_status, lambda r: pyjoules.build_pyjoules_meter()),
    _Backend("zeus", zeus.zeus_status, lambda r: zeus.build_zeus_meter()),
    _Backend("estimate", estimate_is_available, _build_estimate),
)
_BY_NAME = {backend.name: backend for backend in _BACKENDS}


def _side_available(name: str, kind: str) -> tuple[bool, str]:
    """Availability of one backend for one side (``cpu`` or ``gpu``) of the job."""
    if name == "rapl":
        return rapl.rapl_available()
    if name == "nvml":
        return nvml.nvml_available()
    if name == "zeus":
        return zeus.zeus_available()
    if name == "pyjoules":
        return pyjoules.pyjoules_available("cpu" if kind == "cpu" else "gpu")
    raise ValueError(f"no {kind} side for backend {name!r}")


_CPU_CHAIN = ("rapl", "pyjoules")
_GPU_CHAIN = ("nvml", "pyjoules", "zeus")


@dataclass(frozen=True)
class AutoSelection:
    """What ``get_meter("auto")`` would build here: the parts, and why better backends were passed over."""

    cpu: str | None  # backend measuring the CPU side, None = the estimate
    gpu: str | None  # backend measuring the job's GPUs, None = none measured
    passed_over: tuple[str, ...]  # "<backend> (<side>): <reason>"

    @property
    def name(self) -> str:
        if self.cpu == "powermetrics":
            return "powermetrics"
        if self.cpu == self.gpu == "pyjoules":
            return "pyjoules"
        return "+".join(part for part in (self.cpu or "estimate", self.gpu) if part)

    @property
    def method(self) -> Method:
        return "measured" if self.cpu is not None else "estimated"


def auto_selection() -> AutoSelection:
    """Decide the ``auto`` meter from the cached probes (no meter is built)."""
    passed: list[str] = []
    ok, why = powermetrics.powermetrics_available()
    if ok:
        return AutoSelection("powermetrics", "powermetrics", ())
    passed.append(f"powermetrics: {why}")
    chosen: dict[str, str | None] = {"cpu": None, "gpu": None}
    gpus = devices.allocated_gpus()
    for kind, chain in (("cpu", _CPU_CHAIN), ("gpu", _GPU_CHAIN)):
        if kind == "gpu" and gpus.ids == ():
            passed.append(f"gpu meters: no GPUs allocated to this job ({gpus.describe})")
            continue
        for name in chain:
            ok, why = _side_available(name, kind)
            if ok:
                chosen[kind] = name
                break
            passed.append(f"{name} ({kind}): {why}")
    return AutoSelection(chosen["cpu"], chosen["gpu"], tuple(passed))


def _build_auto(request: _MeterRequest) -> Meter:
    selection = auto_selection()
    why = "; ".join(selection.passed_over)
    if selection.name == "powermetrics":
        logger.info("meter auto: using 'powermetrics' (measured)")
        return powermetrics.build_powermetrics_meter()
    if selection.name == "pyjoules":
        logger.info("meter auto: using 'pyjoules' for CPU and GPUs (measured; %s)", why)
        return pyjoules.build_pyjoules_meter(("cpu", "gpu"))
    parts: list[Meter] = []
    domains: list[tuple[str, ...]] = []
    if selection.cpu == "rapl":
        parts.append(rapl.build_rapl_meter())
    elif selection.cpu == "pyjoules":
        parts.append(pyjoules.build_pyjoules_meter(("cpu",)))
    else:
        parts.append(_build_estimate(request))
    domains.append(("cpu", "dram"))
    if selection.gpu == "nvml":
        parts.append(nvml.build_nvml_meter())
    elif selection.gpu == "pyjoules":
        parts.append(pyjoules.build_pyjoules_meter(("gpu",)))
    elif selection.gpu == "zeus":
        parts.append(zeus.build_zeus_meter())
    domains.append(("gpu",))
    if selection.method == "estimated":
        what = (
            "CPU energy estimated, GPU energy measured"
            if selection.gpu
            else "energy will be labelled estimated"
        )
        logger.info("meter auto: using %r, %s (%s)", selection.name, what, why)
    else:
        logger.info("meter auto: using %r (measured; %s)", selection.name, why)
    if len(parts) == 1:
        return parts[0]
    return CompositeMeter(parts, domains=domains[: len(parts)])


def meter_names() -> list[str]:
    """Valid values of a target's ``meter`` setting: ``auto`` and every backend (``a+b`` combines them)."""
    return ["auto", *(b.name for b in _BACKENDS)]


def meter_statuses() -> list[MeterStatus]:
    """Availability of every backend with its reason and the domains it would measure for this job."""
    return [backend.status() for backend in _BACKENDS]


def job_cpus() -> int:
    """Logical CPUs of the job's CPU set (Slurm's cgroup/affinity), falling back to the node's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_ranges(cpus: frozenset[int]) -> str:
    ordered, ranges = sorted(cpus), list[list[int]]()
    for cpu in ordered:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def job_devices() -> dict[str, Any]:
    """What the job may charge: its CPU set, the packages holding it, and its GPUs (with where from)."""
    packages = devices.job_packages()
    gpus = devices.allocated_gpus()
    return {
        "cpus": _cpu_ranges(packages.job_cpus),
        "cpu_count": len(packages.job_cpus),
        "packages": list(packages.packages),
        "package_cpus": packages.package_cpus,
        "gpus": gpus.describe,
    }


def doctor_report() -> list[dict[str, Any]]:
    """One row per backend for ``hpcqueue doctor``: name, available, method, domains, reason, whether
    ``auto`` uses it, and what the job is allowed to see (``job``: CPUs, packages, GPUs)."""
    selection = auto_selection()
    used = set(selection.name.split("+"))
    job = job_devices()
    return [
        {
            "name": status.name,
            "available": status.available,
            "method": status.method,
            "domains": list(status.domains),
            "reason": status.reason,
            "used_by_auto": status.name in used,
            "job": job,
        }
        for status in meter_statuses()
    ]


def _build_named(name: str, request: _MeterRequest) -> Meter:
    backend = _BY_NAME.get(name)
    if backend is None:
        valid = ", ".join(meter_names())
        raise MeterUnavailableError(
            f"unknown meter {name!r} (a target's 'meter' setting); valid meters: {valid} "
            "(or several joined by '+', e.g. rapl+nvml)"
        )
    status = backend.status()
    if not status.available:
        raise MeterUnavailableError(
            f"meter {name!r} is not available on this machine: {status.reason}. "
            f'Use meter = "auto" to fall back to the best available meter.'
        )
    return backend.build(request)


def get_meter(
    name: str = "auto",
    *,
    hardware: str,
    nominal_power_w: float | None = None,
    cpus: int | None = None,
) -> Meter:
    """Return a fresh meter (each call a new, independent instance).

    ``name="auto"`` combines the best available CPU and GPU meters (falling back to the estimate) and logs
    at INFO why better ones were passed over. A named backend, or several joined by ``+`` (``rapl+nvml``),
    that is unknown or unavailable raises ``MeterUnavailableError`` with the probe's reason; it never falls
    back. ``hardware`` is the target's hardware class (its nominal power feeds the estimate meter unless
    ``nominal_power_w`` overrides it); ``cpus`` defaults to the job's CPU set (``job_cpus()``).
    """
    get_hardware(hardware)  # an unknown class is a config error whichever meter is used
    request = _MeterRequest(hardware, nominal_power_w, job_cpus() if cpus is None else cpus)
    if name == "auto":
        return _build_auto(request)
    names = [part.strip() for part in name.split("+")]
    if len(names) == 1:
        return _build_named(names[0], request)
    parts = [_build_named(part, request) for part in names]
    domains = [_BY_NAME[part].status().domains or (("cpu",) if part == "estimate" else ()) for part in names]
    try:
        return CompositeMeter(parts, domains=domains)
    except ValueError as e:
        raise MeterUnavailableError(f"meter {name!r} cannot be combined: {e}") from e
