"""The ``rapl`` meter: CPU package and DRAM energy from the Linux powercap interface.

Each RAPL zone is a directory ``/sys/class/powercap/intel-rapl:N`` (a package, ``name`` = ``package-N``
or ``package-N-die-M``) with subzones ``intel-rapl:N:M`` (``core``, ``uncore``, ``dram``). ``energy_uj`` is a
counter in microjoules that wraps to 0 after ``max_energy_range_uj``. Domains reported:

- ``cpu``: the package zones of the packages that hold the job's CPUs, summed;
- ``dram``: the ``dram`` subzones of those packages, summed (where the CPU has them).

Only those packages are read, never the whole node. A package is counted whole even when other jobs run
on its other cores (RAPL cannot split it); ``details`` names the packages and the job's share of their CPUs.

Wrap-around: a reading lower than the previous one means the counter passed ``max_energy_range_uj``. A
background poll (every ``poll_interval_s``, by default at most 60 s) reads the counters often enough that
one cannot wrap twice unseen, so long task intervals stay right.

Since Linux 5.10, ``energy_uj`` is readable by root only (CVE-2020-8694, the PLATYPUS attack): the probe
then says so and names the fix.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from hpcqueue.errors import MeterUnavailableError
from hpcqueue.meters import devices
from hpcqueue.meters.base import Meter, PollingThread, at_least_one, availability, probe_status, unavailable

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from hpcqueue.meters.base import Clocks, Measurement, MeterStatus

POWERCAP_ROOT = Path("/sys/class/powercap")
ROOT_ONLY_HINT = (
    "energy_uj is readable by root only (Linux ≥ 5.10); ask your admin for a udev rule / `chmod o+r` "
    "or run with privileges"
)
# The fastest a package counter is assumed to run, for choosing how often to poll against wrap-around.
_MAX_PACKAGE_POWER_W = 500.0
_ZONE_DIR = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")
_PACKAGE_NAME = re.compile(r"^package-(\d+)(?:-die-(\d+))?$")

Reader = Callable[[Path], str]


def _read_text(path: Path) -> str:
    return path.read_text()


@dataclass(frozen=True)
class RaplZone:
    """One counter the meter reads."""

    zone: str  # "intel-rapl:0" or "intel-rapl:0:2"
    name: str  # "package-0", "dram"
    domain: Literal["cpu", "dram"]
    package: int
    path: Path
    max_energy_range_uj: int


@dataclass(frozen=True)
class RaplProbe:
    """What the probe found: usable or not, why, and the zones of the job's packages."""

    available: bool
    reason: str
    zones: tuple[RaplZone, ...] = ()
    packages: devices.CpuPackages | None = None

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted({zone.domain for zone in self.zones}, key=("cpu", "dram").index))


def discover_zones(root: Path, packages: tuple[int, ...], reader: Reader = _read_text) -> list[RaplZone]:
    """The package and dram zones of ``packages`` under the powercap directory ``root``."""
    package_of_zone: dict[str, int] = {}
    candidates: list[tuple[str, str | None, Path]] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        match = _ZONE_DIR.match(entry.name)
        if match:
            candidates.append((match.group(1), match.group(2), entry))
    zones: list[RaplZone] = []
    for top, sub, path in sorted(candidates, key=lambda c: (int(c[0]), c[1] is not None, c[1] or "")):
        try:
            name = reader(path / "name").strip()
        except OSError:
            continue
        if sub is None:
            match = _PACKAGE_NAME.match(name)
            if not match:
                continue  # psys and other platform zones are not a package's energy
            package = int(match.group(1))
            package_of_zone[top] = package
            domain: Literal["cpu", "dram"] = "cpu"
        else:
            if name != "dram" or top not in package_of_zone:
                continue  # core and uncore are already inside the package counter
            package = package_of_zone[top]
            domain = "dram"
        if package not in packages:
            continue
        max_range = int(reader(path / "max_energy_range_uj").strip())
        zones.append(RaplZone(path.name, name, domain, package, path / "energy_uj", max_range))
    return zones


def probe(
    root: Path | None = None,
    cpus: frozenset[int] | None = None,
    *,
    sysfs_root: Path | None = None,
    reader: Reader | None = None,
) -> RaplProbe:
    """Check that the job's packages have RAPL zones whose counters this process can read.

    Cached for the default reader (the answer does not change while the process runs); ``reader`` is the
    seam through which tests make a read fail as it does for a non-root user.
    """
    resolved_root = root or POWERCAP_ROOT
    resolved_cpus = devices.allocated_cpus() if cpus is None else frozenset(cpus)
    if reader is None:
        return _probe_cached(resolved_root, resolved_cpus, sysfs_root or devices.SYSFS_ROOT)
    return _probe(resolved_root, resolved_cpus, sysfs_root, reader)


@lru_cache(maxsize=8)
def _probe_cached(root: Path, cpus: frozenset[int], sysfs_root: Path) -> RaplProbe:
    return _probe(root, cpus, sysfs_root, _read_text)


def _probe(root: Path, cpus: frozenset[int], sysfs_root: Path | None, reader: Reader) -> RaplProbe:
    packages = devices.job_packages(cpus, sysfs_root=sysfs_root)
    if not root.is_dir() or not any(_ZONE_DIR.match(p.name) for p in root.iterdir()):
        return RaplProbe(
            False,
            f"no RAPL zones under {root} (intel-rapl:*): this CPU or VM exposes no energy counters, or the "
            "intel_rapl_common kernel module is not loaded",
        )
    try:
        zones = discover_zones(root, packages.packages, reader)
    except (OSError, ValueError) as e:
        return RaplProbe(False, f"cannot read the RAPL zone descriptions under {root}: {e}")
    if not any(zone.domain == "cpu" for zone in zones):
        wanted = ", ".join(map(str, packages.packages))
        return RaplProbe(
            False, f"no RAPL package zone under {root} for package(s) {wanted} of the job's CPUs"
        )
    for zone in zones:
        try:
            int(reader(zone.path).strip())
        except PermissionError:
            return RaplProbe(False, f"{zone.path}: {ROOT_ONLY_HINT}")
        except (OSError, ValueError) as e:
            return RaplProbe(False, f"cannot read {zone.path}: {e}")
    listed = ", ".join(f"{z.zone} ({z.name})" for z in zones)
    return RaplProbe(
        True,
        f"powercap counters of package(s) {', '.join(map(str, packages.packages))} "
        f"holding the job's {len(packages.job_cpus)} CPU(s): {listed}",
        tuple(zones),
        packages,
    )


def rapl_available(root: Path | None = None, *, sysfs_root: Path | None = None) -> tuple[bool, str]:
    """(usable, why) for the job's packages; cached."""
    return availability(probe(root, sysfs_root=sysfs_root))


def rapl_status() -> MeterStatus:
    """The backend's status for ``meter_statuses()`` / ``doctor``."""
    return probe_status(RaplMeter, probe())


def build_rapl_meter(found: RaplProbe | None = None, *, reader: Reader | None = None) -> RaplMeter:
    """A RAPL meter for the job's packages, or ``MeterUnavailableError`` with the probe's reason."""
    found = found or probe()
    if not found.available or found.packages is None:
        raise unavailable(RaplMeter, found.reason)
    return RaplMeter(found.zones, found.packages, reader=reader or _read_text)


class RaplMeter(Meter, name="rapl", method="measured"):
    """Reads the powercap counters of the job's packages at start, stop and every ``poll_interval_s``."""

    def __init__(
        self,
        zones: tuple[RaplZone, ...] | list[RaplZone],
        packages: devices.CpuPackages,
        *,
        reader: Reader = _read_text,
        poll_interval_s: float | None = None,
        **clocks: Unpack[Clocks],
    ) -> None:
        super().__init__(**clocks)
        self.zones = at_least_one(zones, "a RAPL meter needs at least one zone")
        self.packages = packages
        self._reader = reader
        if poll_interval_s is None:
            # A quarter of the time the fastest counter takes to wrap, at most a minute.
            smallest_range_j = min(zone.max_energy_range_uj for zone in self.zones) / 1e6
            poll_interval_s = min(60.0, smallest_range_j / _MAX_PACKAGE_POWER_W / 4)
        self.poll_interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._last_uj: list[int] = []
        self._total_uj: list[int] = []
        self._wraps = 0
        self._poller = (
            PollingThread(
                self._accumulate,
                poll_interval_s,
                name="hpcqueue-rapl-poll",
                reported=(MeterUnavailableError,),
            )
            if poll_interval_s > 0
            else None
        )

    def _read(self, zone: RaplZone) -> int:
        try:
            return int(self._reader(zone.path).strip())
        except PermissionError as e:
            raise MeterUnavailableError(f"meter 'rapl': {zone.path}: {ROOT_ONLY_HINT}") from e
        except (OSError, ValueError) as e:
            raise MeterUnavailableError(f"meter 'rapl': cannot read {zone.path}: {e}") from e

    def _accumulate(self) -> None:
        with self._lock:
            for i, zone in enumerate(self.zones):
                value = self._read(zone)
                delta = value - self._last_uj[i]
                if delta < 0:  # the counter passed max_energy_range_uj and started again from 0
                    delta += zone.max_energy_range_uj
                    self._wraps += 1
                self._total_uj[i] += delta
                self._last_uj[i] = value

    def _begin(self) -> None:
        self._last_uj = [self._read(zone) for zone in self.zones]
        self._total_uj = [0] * len(self.zones)
        self._wraps = 0
        self._mark_start()
        if self._poller is not None:
            self._poller.start()

    def _end(self) -> Measurement:
        if self._poller is not None:
            self._poller.stop()
        self._accumulate()
        duration_s = self._elapsed_s()
        energy_j: dict[str, float] = {}
        for zone, total_uj in zip(self.zones, self._total_uj, strict=True):
            energy_j[zone.domain] = energy_j.get(zone.domain, 0.0) + total_uj / 1e6
        packages = self.packages
        return self._measurement(
            energy_j,
            duration_s,
            details={
                "source": "powercap energy_uj",
                "packages": list(packages.packages),
                "zones": {zone.zone: zone.name for zone in self.zones},
                "wraps": self._wraps,
                "job_cpus": len(packages.job_cpus),
                "package_cpus": packages.package_cpus,
                "job_share": packages.job_share,
                "scope": "whole package(s): other jobs and idle power on these packages are included",
            },
        )
