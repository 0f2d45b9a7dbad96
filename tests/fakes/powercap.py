"""A fake Linux powercap (RAPL) tree and CPU topology, laid out as the kernel lays them out.

The kernel exposes zones twice: nested under the control type (``intel-rapl/intel-rapl:0/intel-rapl:0:2``,
which pyJoules reads) and as flat links in ``/sys/class/powercap`` (``intel-rapl:0``, ``intel-rapl:0:2``).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

# A common value of max_energy_range_uj on Intel server parts (about 262 kJ).
MAX_RANGE_UJ = 262_143_328_850


class FakePowercap:
    """``root`` plays ``/sys/class/powercap``; counters are set by hand with ``set_uj``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.control = root / "intel-rapl"
        self.control.mkdir(parents=True, exist_ok=True)
        (self.control / "enabled").write_text("1\n")
        self.zones: dict[str, Path] = {}

    def add_zone(self, zone: str, name: str, energy_uj: int = 0, max_range_uj: int = MAX_RANGE_UJ) -> Path:
        """Add ``intel-rapl:N`` (a package) or ``intel-rapl:N:M`` (a subzone of package N)."""
        parts = zone.split(":")
        parent = self.control if len(parts) == 2 else self.zones[":".join(parts[:2])]
        path = parent / zone
        path.mkdir()
        (path / "name").write_text(name + "\n")
        (path / "energy_uj").write_text(f"{energy_uj}\n")
        (path / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
        (self.root / zone).symlink_to(path, target_is_directory=True)
        self.zones[zone] = path
        return path

    def add_package(self, package: int, *, dram: bool = True, psys: bool = False) -> None:
        """A package zone with core (and dram) subzones, like a Xeon exposes."""
        self.add_zone(f"intel-rapl:{package}", f"package-{package}")
        self.add_zone(f"intel-rapl:{package}:0", "core")
        if dram:
            self.add_zone(f"intel-rapl:{package}:1", "dram")

    def set_uj(self, zone: str, energy_uj: int) -> None:
        # Replaced whole, as the kernel's counter is: a meter polling in the background never reads it empty.
        path = self.zones[zone] / "energy_uj"
        tmp = path.with_name(".energy_uj.tmp")
        tmp.write_text(f"{energy_uj}\n")
        os.replace(tmp, path)

    def energy_path(self, zone: str) -> Path:
        return self.zones[zone] / "energy_uj"


def make_topology(sysfs_root: Path, package_of_cpu: dict[int, int]) -> Path:
    """``<sysfs_root>/devices/system/cpu/cpuN/topology/physical_package_id`` for each CPU."""
    cpu_root = sysfs_root / "devices" / "system" / "cpu"
    for cpu, package in package_of_cpu.items():
        topology = cpu_root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True, exist_ok=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
    (cpu_root / "cpufreq").mkdir(parents=True, exist_ok=True)  # non-CPU entries exist there too
    (cpu_root / "online").write_text(f"0-{max(package_of_cpu)}\n")
    return sysfs_root


class RunningCounters:
    """Advances a fake tree's counters with the wall clock, as the kernel does: each zone at its own constant
    power, every ``period_s``, wrapping at ``max_energy_range_uj``. Use as a context manager; the thread
    stops on exit.
    """

    def __init__(self, powercap: FakePowercap, watts: dict[str, float], period_s: float = 0.02) -> None:
        self.powercap = powercap
        self.watts = dict(watts)
        self.period_s = period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-rapl", daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.wait(self.period_s):
            elapsed = time.monotonic() - start
            for zone, watts in self.watts.items():
                self.powercap.set_uj(zone, int(watts * elapsed * 1e6) % MAX_RANGE_UJ)

    def __enter__(self) -> RunningCounters:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
