"""Energy meters: ``get_meter()`` picks a backend, ``Meter.start()`` / ``Meter.stop() -> Measurement``.

Backends are tried in the order of ``_BACKENDS`` (measuring backends first, the estimate last). With
``name="auto"`` an unusable backend is skipped quietly (logged at INFO with the reason); a backend asked
for by name fails loudly with ``MeterUnavailableError`` when it cannot be used. Third-party libraries a
backend needs are imported inside that backend, never here. docs/meters.md lists the planned backends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

from hpcqueue.hardware import get_hardware, nominal_cpu_power_w
from hpcqueue.meters.base import (
    Measurement,
    MeasurementHolder,
    Meter,
    MeterStatus,
    MeterUnavailableError,
    Method,
)
from hpcqueue.meters.estimate import EstimateMeter, estimate_is_available

__all__ = [
    "PLANNED_METERS",
    "EstimateMeter",
    "Measurement",
    "MeasurementHolder",
    "Meter",
    "MeterStatus",
    "MeterUnavailableError",
    "Method",
    "get_meter",
    "job_cpus",
    "meter_names",
    "meter_statuses",
]

logger = logging.getLogger(__name__)

# Backends designed but not implemented in this version (see docs/meters.md), named so that asking for one
# says "not implemented yet" rather than "unknown".
PLANNED_METERS: tuple[str, ...] = ("pyjoules", "nvml", "rapl", "powermetrics", "zeus")


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


# Auto-selection order: the first available backend wins.
_BACKENDS: tuple[_Backend, ...] = (_Backend("estimate", estimate_is_available, _build_estimate),)


def meter_names() -> list[str]:
    """Valid values of a target's ``meter`` setting: ``auto`` and every implemented backend."""
    return ["auto", *(b.name for b in _BACKENDS)]


def meter_statuses() -> list[MeterStatus]:
    """Availability of every implemented backend, in auto-selection order (what ``doctor`` shows)."""
    return [backend.status() for backend in _BACKENDS]


def job_cpus() -> int:
    """Logical CPUs of the job's CPU set (Slurm's cgroup/affinity), falling back to the node's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def get_meter(
    name: str = "auto",
    *,
    hardware: str,
    nominal_power_w: float | None = None,
    cpus: int | None = None,
) -> Meter:
    """Return a fresh meter (each call a new, independent instance).

    ``name="auto"`` picks the first available backend and logs at INFO why earlier ones were passed over;
    a named backend that is unknown or unavailable raises ``MeterUnavailableError`` saying why.
    ``hardware`` is the target's hardware class (its nominal power feeds the estimate meter unless
    ``nominal_power_w`` overrides it); ``cpus`` defaults to the job's CPU set (``job_cpus()``).
    """
    get_hardware(hardware)  # an unknown class is a config error whichever meter is used
    request = _MeterRequest(hardware, nominal_power_w, job_cpus() if cpus is None else cpus)
    if name == "auto":
        passed_over: list[str] = []
        for backend in _BACKENDS:
            status = backend.status()
            if not status.available:
                passed_over.append(f"{status.name}: {status.reason}")
                continue
            if status.method == "estimated":
                why = "; ".join(passed_over) or "no measuring backend is implemented in this version"
                logger.info(
                    "meter auto: using %r, energy will be labelled estimated (%s; planned: %s)",
                    status.name,
                    why,
                    ", ".join(PLANNED_METERS),
                )
            else:
                logger.info("meter auto: using %r (measured)", status.name)
            return backend.build(request)
        raise MeterUnavailableError(  # unreachable while the estimate backend is registered
            "no energy meter is available: " + "; ".join(passed_over)
        )
    for backend in _BACKENDS:
        if backend.name == name:
            status = backend.status()
            if not status.available:
                raise MeterUnavailableError(
                    f"meter {name!r} is not available on this machine: {status.reason}. "
                    f'Use meter = "auto" to fall back to the best available meter.'
                )
            return backend.build(request)
    valid = ", ".join(meter_names())
    if name in PLANNED_METERS:
        raise MeterUnavailableError(
            f"meter {name!r} is planned but not implemented in this version (see docs/meters.md); "
            f"valid meters: {valid}"
        )
    raise MeterUnavailableError(f"unknown meter {name!r} (a target's 'meter' setting); valid meters: {valid}")
