"""The ``zeus`` meter: GPU energy through ``zeus.monitor.ZeusMonitor`` (``pip install 'hpcqueue[zeus]'``).

ZeusMonitor measures windows (``begin_window`` / ``end_window``) on the GPUs it is given, by index as the
CUDA runtime sees them (after ``CUDA_VISIBLE_DEVICES``). One monitor is shared by all meters of the process
(each meter opens its own window), because creating one initialises NVML and may start a power poller.
Only the job's GPUs are given to it; CPU measurement is left to the ``rapl`` meter (``cpu_indices=[]``).

Failure modes handled: zeus not installed; a monitor with nothing to measure, which zeus accepts and then
reports time only (0 J, no error) — treated as unavailable, never as 0 J measured; ``ValueError`` (and
other errors) for GPUs that are absent; ``CUDA_VISIBLE_DEVICES`` given as UUIDs, which zeus does not read.
"""

from __future__ import annotations

import importlib
import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from hpcqueue.errors import MeterUnavailableError
from hpcqueue.meters import devices
from hpcqueue.meters.base import Meter, availability, probe_status, usable

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from hpcqueue.meters.base import Clocks, Measurement, MeterStatus

INSTALL_HINT = "install it with `pip install 'hpcqueue[zeus]'`"


@dataclass(frozen=True)
class ZeusProbe:
    available: bool
    reason: str
    monitor: Any = None
    domain_of: tuple[tuple[int, str], ...] = ()  # zeus GPU index -> our domain ("gpu:<node index>")

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(domain for _, domain in self.domain_of)


def _zeus_indices(selection: devices.GpuSelection) -> tuple[list[int] | None, dict[int, str]] | str:
    """Zeus GPU indices for the selection and the domain each maps to, or why they cannot be given."""
    if selection.ids is None:
        return None, {}
    if any(not item.isdigit() for item in selection.ids):
        return f"zeus reads {selection.source} as indices only, not UUIDs ({','.join(selection.ids)})"
    if selection.source == "CUDA_VISIBLE_DEVICES":  # zeus applies CUDA_VISIBLE_DEVICES itself
        return list(range(len(selection.ids))), {i: f"gpu:{item}" for i, item in enumerate(selection.ids)}
    nodes = [int(item) for item in selection.ids]
    return nodes, {i: f"gpu:{i}" for i in nodes}


def probe(selection: devices.GpuSelection | None = None, *, zeus_monitor: Any = None) -> ZeusProbe:
    """Build a ZeusMonitor on the job's GPUs and check that it measures energy. Cached per selection.

    ``zeus_monitor`` is the ``zeus.monitor`` module (imported when None); tests hand in a stand-in.
    """
    selection = selection or devices.allocated_gpus()
    if selection.ids == ():
        return ZeusProbe(False, f"no GPUs allocated to this job ({selection.describe})")
    if zeus_monitor is None:
        try:
            zeus_monitor = importlib.import_module("zeus.monitor")
        except ImportError:
            return ZeusProbe(False, f"zeus is not installed: {INSTALL_HINT}")
    return _probe_cached(zeus_monitor, selection)


@lru_cache(maxsize=8)
def _probe_cached(zeus_monitor: Any, selection: devices.GpuSelection) -> ZeusProbe:
    resolved = _zeus_indices(selection)
    if isinstance(resolved, str):
        return ZeusProbe(False, resolved)
    indices, domain_of = resolved
    try:
        monitor = zeus_monitor.ZeusMonitor(gpu_indices=indices, cpu_indices=[], approx_instant_energy=True)
    except Exception as e:  # ValueError for absent GPUs; zeus raises several init errors
        return ZeusProbe(False, f"ZeusMonitor cannot measure GPUs {indices}: {type(e).__name__}: {e}")
    gpu_indices = list(getattr(monitor, "gpu_indices", []) or [])
    if not gpu_indices:
        return ZeusProbe(False, "ZeusMonitor found no GPU to measure (it would report time only, not energy)")
    mapping = tuple((i, domain_of.get(i, f"gpu:{i}")) for i in gpu_indices)
    return ZeusProbe(True, "ZeusMonitor on " + ", ".join(d for _, d in mapping), monitor, mapping)


def zeus_available() -> tuple[bool, str]:
    """(usable, why) for the job's GPUs; cached."""
    return availability(probe())


def zeus_status() -> MeterStatus:
    """The backend's status for ``meter_statuses()`` / ``doctor``."""
    return probe_status(ZeusMeter, probe())


def build_zeus_meter(found: ZeusProbe | None = None) -> ZeusMeter:
    """A zeus meter on the job's GPUs, or ``MeterUnavailableError`` with the probe's reason."""
    found = usable(ZeusMeter, found or probe())
    return ZeusMeter(found.monitor, dict(found.domain_of))


_window_ids = itertools.count()


class ZeusMeter(Meter, name="zeus", method="measured"):
    """One zeus measurement window per interval on the shared monitor."""

    def __init__(
        self,
        monitor: Any,
        domain_of: dict[int, str],
        **clocks: Unpack[Clocks],
    ) -> None:
        super().__init__(**clocks)
        self._monitor = monitor
        self._domain_of = domain_of
        self._key = ""

    def _begin(self) -> None:
        self._key = f"hpcqueue-{next(_window_ids)}"
        try:
            self._monitor.begin_window(self._key, sync_execution=False)
        except Exception as e:
            raise MeterUnavailableError(f"meter 'zeus': begin_window failed: {type(e).__name__}: {e}") from e
        self._mark_start()

    def _end(self) -> Measurement:
        try:
            result = self._monitor.end_window(self._key, sync_execution=False)
        except Exception as e:
            raise MeterUnavailableError(f"meter 'zeus': end_window failed: {type(e).__name__}: {e}") from e
        duration_s = self._elapsed_s()
        gpu_energy = dict(getattr(result, "gpu_energy", {}) or {})
        if not gpu_energy:
            raise MeterUnavailableError("meter 'zeus' reported time only, no GPU energy")
        return self._measurement(
            {self._domain_of.get(i, f"gpu:{i}"): float(j) for i, j in sorted(gpu_energy.items())},
            duration_s,
            details={
                "source": "zeus ZeusMonitor",
                "zeus_gpu_indices": sorted(gpu_energy),
                "zeus_time_s": float(getattr(result, "time", duration_s)),
            },
        )
