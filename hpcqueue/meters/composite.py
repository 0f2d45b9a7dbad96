"""A meter made of parts with disjoint domains (a CPU meter and a GPU meter), reported as one Measurement.

Its name lists the parts (``rapl+nvml``). ``method`` is ``measured`` only when every part measured; with
an estimated part (``estimate+nvml``: measured GPUs, estimated CPU) the whole is ``estimated`` and
``details["domain_methods"]`` says which domain was which.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from hpcqueue.meters.base import Measurement, Meter, Method


class CompositeMeter(Meter, name="composite", method="measured"):
    """Starts its parts in order, stops them in reverse, and merges their domains.

    The class's ``name`` and ``method`` are placeholders: an instance's ``name`` lists its parts, and its
    ``method`` is "estimated" when any part estimates.
    """

    def __init__(
        self,
        parts: Sequence[Meter],
        *,
        domains: Sequence[Sequence[str]] | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(wall_clock=wall_clock, monotonic=monotonic)
        if len(parts) < 2:
            raise ValueError("a composite meter needs at least two parts")
        if domains is not None:
            seen: set[str] = set()
            for part, part_domains in zip(parts, domains, strict=True):
                overlap = seen.intersection(part_domains)
                if overlap:
                    raise ValueError(f"meter {part.name!r} would count domain(s) {sorted(overlap)} twice")
                seen.update(part_domains)
        self.parts = list(parts)
        self.name = "+".join(part.name for part in self.parts)  # type: ignore[misc]
        method: Method = "measured" if all(part.method == "measured" for part in self.parts) else "estimated"
        self.method = method  # type: ignore[misc]

    def _begin(self) -> None:
        started: list[Meter] = []
        try:
            for part in self.parts:
                part.start()
                started.append(part)
        except BaseException:
            for part in reversed(started):
                part.stop()
            raise
        self._mark_start()

    def _end(self) -> Measurement:
        measurements: list[Measurement] = []
        error: BaseException | None = None
        for part in reversed(self.parts):
            try:
                measurements.append(part.stop())
            except BaseException as e:  # stop every part before reporting the first failure
                error = error or e
        if error is not None:
            raise error
        duration_s = self._elapsed_s()
        measurements.reverse()
        energy_j: dict[str, float] = {}
        domain_methods: dict[str, str] = {}
        parts: dict[str, Any] = {}
        for m in measurements:
            for domain, joules in m.energy_j.items():
                if domain in energy_j:
                    raise RuntimeError(f"meters {self.name!r} both report domain {domain!r}")
                energy_j[domain] = joules
                domain_methods[domain] = m.method
            parts[m.meter] = {"method": m.method, "duration_s": m.duration_s, **m.details}
        method: Method = "measured" if all(v == "measured" for v in domain_methods.values()) else "estimated"
        return Measurement(
            energy_j=energy_j,
            duration_s=duration_s,
            method=method,
            meter=self.name,
            started_at=self._started_at,
            details={"domain_methods": domain_methods, "parts": parts},
        )
