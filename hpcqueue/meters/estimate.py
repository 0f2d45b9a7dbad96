"""The estimate meter: nominal CPU power × the process's CPU-time share. Always available.

Over an interval of ``duration_s`` seconds (monotonic clock) the process used ``cpu_time_s`` seconds of
CPU (user + system, all its threads: ``time.process_time``) on a job whose CPU set has ``cpus`` logical
CPUs with a nominal power of ``nominal_power_w`` watts for the whole set::

    utilisation = cpu_time_s / (duration_s × cpus)     (share of the job's CPU set that was busy)
    energy_j    = nominal_power_w × utilisation × duration_s
                = nominal_power_w × cpu_time_s / cpus   (what is computed: defined even when duration_s ≈ 0)

Every CPU-second is charged ``nominal_power_w / cpus`` joules. Idle power is not charged, GPUs and DRAM
are not estimated, and child processes are not counted. The result is labelled ``method="estimated"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import lru_cache

from hpcqueue.meters.base import Measurement, Meter, MeterStatus

FORMULA = "energy_j = nominal_power_w * cpu_time_s / cpus  (= nominal_power_w * utilisation * duration_s)"


@lru_cache(maxsize=1)
def estimate_is_available() -> MeterStatus:
    """The estimate meter needs only clocks, so it is always available."""
    return MeterStatus(
        name=EstimateMeter.name,
        available=True,
        method=EstimateMeter.method,
        reason="always available: nominal CPU power × the process's CPU-time share (an estimate)",
    )


class EstimateMeter(Meter, name="estimate", method="estimated"):
    """Estimates CPU energy from nominal power and process CPU time (see the module docstring).

    ``nominal_power_w`` is the nominal power of the job's whole CPU set of ``cpus`` logical CPUs.
    The clocks are injectable so tests can drive them deterministically.
    """

    def __init__(
        self,
        nominal_power_w: float,
        cpus: int,
        *,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.process_time,
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
