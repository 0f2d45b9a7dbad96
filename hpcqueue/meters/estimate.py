"""The estimate meter: nominal CPU power × the CPU-time share of the worker's process tree. Always available.

Over an interval of ``duration_s`` seconds (monotonic clock) the worker's process tree used ``cpu_time_s``
seconds of CPU (user + system, all threads) on a job whose CPU set has ``cpus`` logical CPUs with a nominal
power of ``nominal_power_w`` watts for the whole set::

    utilisation = cpu_time_s / (duration_s × cpus)     (share of the job's CPU set that was busy)
    energy_j    = nominal_power_w × utilisation × duration_s
                = nominal_power_w × cpu_time_s / cpus   (what is computed: defined even when duration_s ≈ 0)

Every CPU-second is charged ``nominal_power_w / cpus`` joules. The CPU clock (``process_tree_cpu_time_s``)
counts this process, the children it has reaped and every live descendant (with the children those reaped):
an inference engine that runs its model in worker processes (vLLM with tensor parallelism) is charged for
them too. Idle power is not charged and GPUs and DRAM are not estimated. The result is labelled
``method="estimated"``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from functools import lru_cache

from hpcqueue.meters.base import Measurement, Meter, MeterStatus

FORMULA = "energy_j = nominal_power_w * cpu_time_s / cpus  (= nominal_power_w * utilisation * duration_s)"


def process_tree_cpu_time_s() -> float:
    """CPU seconds (user + system) used so far by this process and its descendants.

    The sum of this process's own time, its reaped children's (``os.times``), and every live descendant's
    own time plus that of the children it reaped (``psutil``). A descendant that exits between two readings
    is skipped; its time comes back once its parent reaps it (it moves into the parent's children's time),
    except for a process whose parent left before it (re-parented out of the tree).
    """
    import psutil

    own = os.times()
    total_s = time.process_time() + own.children_user + own.children_system
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:  # gone (or a zombie the kernel no longer reports) since the listing
            continue
        total_s += times.user + times.system + times.children_user + times.children_system
    return total_s


@lru_cache(maxsize=1)
def estimate_is_available() -> MeterStatus:
    """The estimate meter needs only clocks, so it is always available."""
    return MeterStatus(
        name=EstimateMeter.name,
        available=True,
        method=EstimateMeter.method,
        reason=(
            "always available: nominal CPU power × the CPU-time share of the worker's processes (an estimate)"
        ),
    )


class EstimateMeter(Meter, name="estimate", method="estimated"):
    """Estimates CPU energy from nominal power and the CPU time of the worker's process tree (see the module
    docstring).

    ``nominal_power_w`` is the nominal power of the job's whole CPU set of ``cpus`` logical CPUs.
    The clocks are injectable so tests can drive them deterministically; ``cpu_clock`` defaults to
    ``process_tree_cpu_time_s``.
    """

    def __init__(
        self,
        nominal_power_w: float,
        cpus: int,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = process_tree_cpu_time_s,
    ) -> None:
        super().__init__(wall_clock=wall_clock, monotonic=monotonic)
        if not (isinstance(nominal_power_w, (int, float)) and math.isfinite(nominal_power_w)) or (
            nominal_power_w <= 0
        ):
            raise ValueError(f"nominal_power_w must be a positive number of watts, not {nominal_power_w!r}")
        if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
            raise ValueError(f"cpus must be a positive integer (logical CPUs of the job), not {cpus!r}")
        self.nominal_power_w = float(nominal_power_w)
        self.cpus = cpus
        self._cpu_clock = cpu_clock
        self._cpu0 = 0.0

    def _begin(self) -> None:
        self._mark_start()
        self._cpu0 = self._cpu_clock()

    def _end(self) -> Measurement:
        cpu_time_s = max(0.0, self._cpu_clock() - self._cpu0)
        duration_s = self._elapsed_s()
        energy_j = self.nominal_power_w * cpu_time_s / self.cpus
        utilisation = cpu_time_s / (duration_s * self.cpus) if duration_s > 0 else 0.0
        return self._measurement(
            {"cpu": energy_j},
            duration_s,
            details={
                "nominal_power_w": self.nominal_power_w,
                "cpus": self.cpus,
                "cpu_time_s": cpu_time_s,
                "utilisation": utilisation,
                "formula": FORMULA,
            },
        )
