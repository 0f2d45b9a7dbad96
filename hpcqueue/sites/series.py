"""Time series of a site, and the readers of its carbon, price and power CSVs (weather files are read by
:mod:`hpcqueue.sites.weather`).

A :class:`Series` is a regular, UTC-stamped sequence of samples; each sample holds from its time until the
next one (``[t, t + step)``), which is how Electricity Maps and Open-Meteo stamp their hourly values. A
planner asks for the series on its own slots with :meth:`Series.on_slots`: the time-weighted mean over each
slot, so a 15-minute slot inside an hour gets that hour's value and a 2-hour slot the mean of two hours.

A constant from the config is a series too (:meth:`Series.constant`, kind ``"assumed"``), so every factor
is read the same way and says where it came from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np

from hpcqueue.errors import SiteDataError
from hpcqueue.sites.tables import (
    FloatArray,
    Table,
    TimeArray,
    check_range,
    format_step,
    format_time,
    read_table,
    regular_step_s,
)

#: A constant covers all time; its span is reported as these two instants.
ALL_TIME = (np.datetime64("0001-01-01T00:00:00", "s"), np.datetime64("9999-12-31T23:59:59", "s"))

_TIME_COLUMNS = ("Datetime (UTC)", "time", "datetime", "timestamp")
_CARBON_COLUMNS = {
    "direct": ("Carbon intensity gCO₂eq/kWh (direct)", "Carbon intensity gCO2eq/kWh (direct)", "value"),
    "lifecycle": (
        "Carbon intensity gCO₂eq/kWh (Life cycle)",
        "Carbon intensity gCO₂eq/kWh (LCA)",
        "Carbon intensity gCO2eq/kWh (Life cycle)",
        "Carbon intensity gCO2eq/kWh (LCA)",
        "value",
    ),
}


@dataclass(frozen=True, eq=False)
class Series:
    """A regular time series in UTC, or a constant (``step_s`` infinite, kind ``"assumed"``).

    ``times`` are naive ``datetime64[s]`` meaning UTC, strictly increasing by ``step_s``; ``values`` are
    float64, one per time. The arrays are copied and made read-only. ``kind`` says what the numbers are:
    ``"series"`` read from the file ``source``, ``"assumed"`` a constant from the config, ``"derived"``
    computed from another series (``note`` says how).
    """

    name: str
    unit: str
    source: str
    kind: str
    times: TimeArray
    values: FloatArray
    step_s: float
    note: str = ""

    def __post_init__(self) -> None:
        times = np.array(self.times, dtype="datetime64[s]").reshape(-1)
        values = np.array(self.values, dtype=np.float64).reshape(-1)
        if times.size != values.size or times.size == 0:
            raise SiteDataError(
                f"{self.source}: {self.name} has {times.size} time(s) and {values.size} value(s); it needs "
                "the same number, at least one"
            )
        if not self.is_constant:
            step = float(self.step_s)
            diffs = np.diff(times).astype(np.int64)
            if not step > 0 or np.any(diffs != step):
                raise SiteDataError(f"{self.source}: {self.name} is not a regular series of step {step:g} s")
        times.flags.writeable = False
        values.flags.writeable = False
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)

    @cached_property
    def _integral(self) -> tuple[FloatArray, FloatArray]:
        """The series' running integral at every sample boundary (s since the first time, Σ value × step),
        which is exact for a series held constant over each step."""
        knots = np.arange(self.values.size + 1, dtype=np.float64) * float(self.step_s)
        return knots, np.concatenate(([0.0], np.cumsum(self.values * float(self.step_s))))

    @classmethod
    def constant(cls, value: float, name: str, unit: str, note: str = "") -> Series:
        """A value that holds at all times (kind ``"assumed"``, source ``"constant"``)."""
        return cls(
            name=name,
            unit=unit,
            source="constant",
            kind="assumed",
            times=np.array([ALL_TIME[0]]),
            values=np.array([float(value)]),
            step_s=math.inf,
            note=note,
        )

    @property
    def is_constant(self) -> bool:
        return math.isinf(self.step_s)

    def span(self) -> tuple[np.datetime64, np.datetime64]:
        """The time the series covers, ``[first time, last time + step)`` in UTC (all time for a constant)."""
        if self.is_constant:
            return ALL_TIME
        return self.times[0], self.times[-1] + np.timedelta64(int(self.step_s), "s")

    def on_slots(self, starts: TimeArray, slot_s: float) -> FloatArray:
        """The time-weighted mean of the series over each slot ``[start, start + slot_s)``.

        Each sample holds over its own step, so a slot shorter than the step gets the value of the sample it
        falls in, and a longer or unaligned slot the mean of the samples it overlaps, weighted by the
        overlap. Raises :class:`SiteDataError` naming the file and both spans when a slot falls outside
        :meth:`span`.
        """
        # to the microsecond: a task's run interval is not aligned to whole seconds
        starts = np.asarray(starts).astype("datetime64[us]").reshape(-1)
        if not (slot_s > 0 and math.isfinite(slot_s)):
            raise ValueError(f"a slot must last a positive, finite number of seconds, got {slot_s!r}")
        if self.is_constant:
            return np.full(starts.size, float(self.values[0]))
        if starts.size == 0:
            return np.empty(0)
        knots, integral = self._integral
        begin = (starts - self.times[0]).astype("timedelta64[us]").astype(np.int64) / 1e6
        end = begin + float(slot_s)
        if begin.min() < 0 or end.max() > knots[-1]:
            first, last = self.span()
            needed_from = starts.min().astype("datetime64[s]")
            needed_to = needed_from + np.timedelta64(math.ceil(end.max() - begin.min()), "s")
            raise SiteDataError(
                f"{self.source}: {self.name} covers {format_time(first)} to {format_time(last)} (UTC); "
                f"the plan needs {format_time(needed_from)} to {format_time(needed_to)}"
            )
        area = np.interp(end, knots, integral) - np.interp(begin, knots, integral)
        return area / float(slot_s)

    def describe(self) -> str:
        """One line: kind, source, note and unit, and for a file its span and step."""
        text = f"{self.kind}: {self.name} ({self.unit})"
        if self.is_constant:
            text += f" = {float(self.values[0]):g}"
        else:
            first, last = self.span()
            text += (
                f" from {self.source}, {format_time(first)} to {format_time(last)} UTC every "
                f"{format_step(self.step_s)}"
            )
        return f"{text}; {self.note}" if self.note else text


def _read_values(
    path: str | Path,
    *,
    what: str,
    name: str,
    value_columns: tuple[str, ...],
    minimum: float | None = None,
) -> tuple[Table, str, TimeArray, FloatArray, float]:
    """A CSV of times and values, checked: the table, the value column's header, times, values, step."""
    table = read_table(path, what)
    time_column = table.column("the time", _TIME_COLUMNS)
    value_column = table.column(name, value_columns)
    assert time_column is not None and value_column is not None
    times = table.times(time_column)
    values = table.numbers(value_column)
    check_range(values, table.path, table.where, name, minimum=minimum)
    step = regular_step_s(times, table.path, table.where, name)
    return table, value_column, times, values, step


def read_carbon(path: str | Path, column: Literal["direct", "lifecycle"] = "direct") -> Series:
    """Grid carbon intensity (gCO2eq/kWh) from an Electricity Maps CSV or a ``time,value`` CSV.

    Both Electricity Maps headers are read (``Carbon intensity gCO₂eq/kWh (direct)`` / ``(Life cycle)``
    and the older ``Carbon Intensity gCO₂eq/kWh (direct)`` / ``(LCA)``), names compared case-insensitively;
    ``column="lifecycle"`` takes the life-cycle column. ``Datetime (UTC)`` is UTC; a ``time`` with an offset
    is converted to UTC, one without is UTC. Negative values are errors; the note names the zone.
    """
    if column not in _CARBON_COLUMNS:
        raise ValueError(f"column is 'direct' or 'lifecycle', got {column!r}")
    name = "carbon intensity"
    table, value_column, times, values, step = _read_values(
        path, what="carbon intensity CSV", name=name, value_columns=_CARBON_COLUMNS[column], minimum=0.0
    )
    if value_column.lower() == "value":
        note = f"time,value CSV (read as {column} intensity)"
    else:
        zone_column = table.column("the zone", ("Zone id",), required=False)
        zone = str(table.frame[zone_column].iloc[0]).strip() if zone_column else ""
        note = f"{value_column} of Electricity Maps" + (f", zone {zone}" if zone else "")
    return Series(name, "gCO2eq/kWh", str(table.path), "series", times, values, step, note)


def read_price(path: str | Path) -> Series:
    """Electricity price (USD/MWh) from a GreenDCC CSV (``Datetime (UTC)``, ``Price (USD/MWh)``) or a
    ``time,value`` CSV. Prices may be negative (wholesale markets have such hours)."""
    table, value_column, times, values, step = _read_values(
        path, what="price CSV", name="price", value_columns=("Price (USD/MWh)", "price_usd_per_mwh", "value")
    )
    note = "time,value CSV" if value_column.lower() == "value" else f"{value_column} (GreenDCC format)"
    return Series("price", "USD/MWh", str(table.path), "series", times, values, step, note)


def read_power(path: str | Path) -> Series:
    """Available power (kW) from a ``time,value`` or ``time,power_kw`` CSV; negative values are errors."""
    table, value_column, times, values, step = _read_values(
        path, what="power CSV", name="available power", value_columns=("power_kw", "value"), minimum=0.0
    )
    note = f"time,{value_column} CSV"
    return Series("available power", "kW", str(table.path), "series", times, values, step, note)
