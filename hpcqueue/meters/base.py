"""The meter interface: ``start()`` / ``stop() -> Measurement``.

A meter measures (or estimates) the energy spent over one interval. Every ``Measurement`` carries
its ``method`` (``measured`` or ``estimated``) and the ``meter`` that produced it, so a number is
never presented as measured when it was estimated.

Backends subclass ``Meter`` and fill in two hooks, ``_begin()`` and ``_end()``; the base class owns
the running/stopped bookkeeping and the interval's (injectable) clocks, so every backend fails the same way
when it is misused. Each meter instance keeps its own state: a task meter and a batch meter can run at the
same time.

Also shared by the backends: the ``Probe`` protocol of their cached probes with the functions that turn one
into ``(usable, why)`` (``availability``), a ``MeterStatus`` (``probe_status``) or the error of a backend
asked for where it cannot be used (``unavailable``), and ``PollingThread``, which reads counters in the
background between ``start()`` and ``stop()``.
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, TypedDict, TypeVar, get_args

from hpcqueue.errors import MeterUnavailableError

Method = Literal["measured", "estimated"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass(frozen=True)
class MeterStatus:
    """Whether one meter backend can be used here, and why not when it cannot."""

    name: str
    available: bool
    method: Method
    reason: str
    domains: tuple[str, ...] = ()  # what it would measure for this job: "cpu", "dram", "gpu:0"...


@dataclass(frozen=True)
class Measurement:
    """The energy spent over one metered interval.

    ``energy_j`` maps a domain to joules: ``"cpu"`` (CPU package), ``"dram"``, ``"gpu:0"``, ``"gpu:1"``...
    Only the devices allocated to the job are measured. ``started_at`` is epoch seconds (wall clock);
    ``duration_s`` comes from a monotonic clock. ``details`` holds backend-specific inputs of the
    number (for the estimate meter: nominal power, CPU count, CPU time, utilisation, formula).
    """

    energy_j: dict[str, float]
    duration_s: float
    method: Method
    meter: str
    started_at: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def total_energy_j(self) -> float:
        """Joules summed over all domains."""
        return float(sum(self.energy_j.values()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``metrics.json`` (the worker adds ``scope`` and ``seq``)."""
        return {
            "started_at": self.started_at,
            "duration_s": self.duration_s,
            "method": self.method,
            "meter": self.meter,
            "energy_j": dict(self.energy_j),
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """Rebuild a measurement from ``to_dict()`` output; extra keys (``scope``, ``seq``) are ignored.

        Raises ``ValueError`` naming the missing or invalid key, so a reader of a damaged
        ``metrics.json`` can say which entry is wrong.
        """
        missing = [k for k in ("started_at", "duration_s", "method", "meter", "energy_j") if k not in data]
        if missing:
            raise ValueError(f"measurement is missing key(s) {', '.join(missing)}")
        method = data["method"]
        if method not in METHODS:
            raise ValueError(f"measurement 'method' is {method!r}; valid values: {', '.join(METHODS)}")
        energy = data["energy_j"]
        if not isinstance(energy, dict):
            raise ValueError(f"measurement 'energy_j' must be an object of domain -> joules, not {energy!r}")
        energy_j: dict[str, float] = {}
        for domain, joules in energy.items():
            value = _number(joules, f"energy_j[{domain!r}]")
            energy_j[str(domain)] = value
        details = data.get("details") or {}
        if not isinstance(details, dict):
            raise ValueError(f"measurement 'details' must be an object, not {details!r}")
        return cls(
            energy_j=energy_j,
            duration_s=_number(data["duration_s"], "duration_s"),
            method=method,
            meter=str(data["meter"]),
            started_at=_number(data["started_at"], "started_at"),
            details=dict(details),
        )


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"measurement {key!r} must be a finite number, not {value!r}")
    return float(value)


class MeasurementHolder:
    """What ``Meter.measure()`` yields: ``measurement`` is None inside the block, set when it exits."""

    __slots__ = ("measurement",)

    def __init__(self) -> None:
        self.measurement: Measurement | None = None


class Clocks(TypedDict, total=False):
    """The injectable clocks of a meter; a backend's constructor passes them on as ``**clocks``."""

    wall_clock: Callable[[], float]  # epoch seconds; time.time by default
    monotonic: Callable[[], float]  # time.monotonic by default


class Meter(ABC):
    """Measures energy over an interval. Subclasses give their ``name`` and ``method`` in the class
    statement (``class RaplMeter(Meter, name="rapl", method="measured")``) and implement the hooks.

    ``wall_clock`` (epoch seconds) and ``monotonic`` are injectable so that tests can drive them (a
    backend's constructor takes them as ``**clocks: Unpack[Clocks]``); backends call ``_mark_start()`` in
    ``_begin()`` and ``_elapsed_s()`` in ``_end()``.
    """

    name: ClassVar[str]
    method: ClassVar[Method]
    #: Wall-clock start of the current interval, set by ``_mark_start()``.
    _started_at: float = 0.0

    def __init_subclass__(cls, *, name: str, method: Method, **kwargs: Any) -> None:
        """Label the backend: a subclass that does not say what it is and whether it measures or
        estimates fails when it is defined, not when its first figure is reported."""
        super().__init_subclass__(**kwargs)
        cls.name = name
        cls.method = method

    def __init__(
        self,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._running = False
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._t0 = 0.0

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()``."""
        return self._running

    def start(self) -> None:
        """Begin an interval. A stopped meter can be started again for a new interval."""
        if self._running:
            raise RuntimeError(f"meter {self.name!r} is already running: call stop() before start() again")
        self._begin()
        self._running = True

    def stop(self) -> Measurement:
        """End the interval begun by ``start()`` and return what was spent in it."""
        if not self._running:
            raise RuntimeError(f"meter {self.name!r} was stopped without being started: call start() first")
        self._running = False
        return self._end()

    @contextmanager
    def measure(self) -> Iterator[MeasurementHolder]:
        """Meter a ``with`` block; the holder's ``measurement`` is set on exit, also when the block raises
        (energy spent on failed work was still spent)."""
        holder = MeasurementHolder()
        self.start()
        try:
            yield holder
        finally:
            holder.measurement = self.stop()

    def _mark_start(self) -> None:
        """Note the start of the interval on both clocks (``_started_at``: wall clock; ``_t0``: monotonic)."""
        self._started_at = self._wall_clock()
        self._t0 = self._monotonic()

    def _elapsed_s(self) -> float:
        """Monotonic seconds since ``_mark_start()``, never negative."""
        return max(0.0, self._monotonic() - self._t0)

    @abstractmethod
    def _begin(self) -> None:
        """Read the counters/clocks at the start of an interval."""

    @abstractmethod
    def _end(self) -> Measurement:
        """Read them again and build the interval's ``Measurement`` (with ``_measurement``)."""

    def _measurement(
        self, energy_j: dict[str, float], duration_s: float, details: dict[str, Any]
    ) -> Measurement:
        """The interval's reading, labelled with this meter's name and method: a figure never loses where it
        came from."""
        return Measurement(
            energy_j=energy_j,
            duration_s=duration_s,
            method=self.method,
            meter=self.name,
            started_at=self._started_at,
            details=details,
        )


class Probe(Protocol):
    """What a backend's probe found: whether the backend can be used here, and why (not)."""

    @property
    def available(self) -> bool: ...

    @property
    def reason(self) -> str: ...


class DomainProbe(Probe, Protocol):
    """A probe that also names the domains the backend would measure for this job."""

    @property
    def domains(self) -> tuple[str, ...]: ...


def availability(found: Probe) -> tuple[bool, str]:
    """``(usable, why)``: what a backend's ``*_available()`` says."""
    return found.available, found.reason


def probe_status(meter: type[Meter], found: DomainProbe) -> MeterStatus:
    """The status of the backend of ``meter`` (a ``Meter`` class) as its probe found it, for
    ``meter_statuses()`` / ``doctor``."""
    return MeterStatus(meter.name, found.available, meter.method, found.reason, found.domains)


def unavailable(meter: type[Meter], reason: str) -> MeterUnavailableError:
    """The error for the backend of ``meter`` asked for where its probe says no (``reason`` says why)."""
    return MeterUnavailableError(f"meter {meter.name!r} is not available on this machine: {reason}")


FoundT = TypeVar("FoundT", bound=Probe)
ItemT = TypeVar("ItemT")


def usable(meter: type[Meter], found: FoundT) -> FoundT:
    """``found`` when it says the backend of ``meter`` can be used, else raises ``unavailable()`` with its
    reason: what a backend's ``build_*_meter()`` starts with."""
    if not found.available:
        raise unavailable(meter, found.reason)
    return found


def at_least_one(items: Iterable[ItemT], problem: str) -> tuple[ItemT, ...]:
    """``items`` as a tuple, or ``ValueError(problem)`` when there are none (a meter with nothing to read)."""
    found = tuple(items)
    if not found:
        raise ValueError(problem)
    return found


class PollingThread:
    """Calls ``poll()`` every ``interval_s`` seconds in a daemon thread, from ``start()`` until ``stop()``.

    The first error of a type in ``reported`` ends the polling and is kept for ``stop()``, which raises it in
    the caller's thread (where the meter is stopped); other errors end the thread as any thread's would.
    """

    def __init__(
        self,
        poll: Callable[[], None],
        interval_s: float,
        *,
        name: str,
        reported: tuple[type[Exception], ...] = (Exception,),
    ) -> None:
        self._poll = poll
        self.interval_s = interval_s
        self.name = name
        self._reported = reported
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._poll()
            except self._reported as e:  # reported by stop()
                self._error = e
                return

    def start(self) -> None:
        self._error = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for the thread; raise the error that ended it early, if any."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
