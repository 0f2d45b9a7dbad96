"""PUE (facility energy / IT energy) as a function of the outdoor temperature (°C).

Four models, chosen by a site's ``cooling`` key (:func:`cooling_model`):

* :class:`ConstantPUE` — a number; without one, :data:`~hpcqueue.config.DEFAULT_PUE` (1.58, the average of
  the Uptime Institute Global Data Center Survey 2023), labelled as assumed;
* :class:`TablePUE` — a measured or published table T → PUE, interpolated linearly, held at its ends;
* :class:`ChillerPUE` — mechanical (chiller) cooling, whose efficiency falls as it gets hotter outside;
* :class:`EconomizerPUE` — free air cooling when it is cool, the chiller when it is hot, a blend between.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from hpcqueue.config import COOLING_MODELS, SiteSpec
from hpcqueue.errors import SiteDataError
from hpcqueue.sites.tables import FloatArray, read_table

#: Where the default PUE comes from (see :data:`hpcqueue.config.DEFAULT_PUE`).
DEFAULT_PUE_NOTE = "Uptime Institute Global Data Center Survey 2023 average"
#: The highest effective chiller COP :class:`ChillerPUE` allows (a small lift does not make cooling free).
MAX_COP = 20.0


def ramp(values: npt.ArrayLike, low: float, high: float) -> FloatArray:
    """0 at or below ``low``, 1 at or above ``high``, linear between (a step at ``high`` when they are
    equal): the share of a load that a second way of cooling takes over as the temperature rises."""
    x = np.asarray(values, dtype=np.float64)
    if high > low:
        return np.asarray(np.clip((x - low) / (high - low), 0.0, 1.0), dtype=np.float64)
    return (x >= high).astype(np.float64)


class Parameters:
    """``parameters()`` of a site model (a dataclass): its ``model`` name, then its fields under their own
    names — the site config's keys — with arrays as lists and a nested model as its own parameters."""

    model: ClassVar[str]

    def parameters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model}
        for item in fields(self):  # type: ignore[arg-type]
            if item.init:
                value = getattr(self, item.name)
                if isinstance(value, Parameters):
                    value = value.parameters()
                out[item.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


class SiteModel(Protocol):
    """What the site needs from any of its models (cooling, water)."""

    @property
    def needs_weather(self) -> bool: ...

    @property
    def kind(self) -> str: ...

    def describe(self) -> str: ...

    def parameters(self) -> dict[str, Any]: ...


class CoolingModel(SiteModel, Protocol):
    """A cooling model: PUE at the ambient temperature."""

    def pue(self, temp_c: npt.ArrayLike) -> FloatArray: ...


@dataclass(frozen=True)
class ConstantPUE(Parameters):
    """One PUE at every temperature (kind ``"assumed"``); ``note`` says where the number comes from."""

    model: ClassVar[str] = "constant"
    value: float
    note: str = DEFAULT_PUE_NOTE
    needs_weather: bool = field(default=False, init=False, repr=False)
    kind: str = field(default="assumed", init=False, repr=False)

    def pue(self, temp_c: npt.ArrayLike) -> FloatArray:
        return np.full(np.shape(temp_c), float(self.value))

    def describe(self) -> str:
        return f"constant PUE {self.value:g} ({self.note})"


@dataclass(frozen=True, eq=False)
class TablePUE(Parameters):
    """PUE interpolated linearly in a table of (temperature °C, PUE), held at the table's first and last PUE
    outside it."""

    model: ClassVar[str] = "table"
    temperatures_c: FloatArray
    pues: FloatArray
    source: str
    needs_weather: bool = field(default=True, init=False, repr=False)
    kind: str = field(default="model", init=False, repr=False)

    @classmethod
    def from_csv(cls, path: str | Path) -> TablePUE:
        """Read a CSV with a temperature column (``temperature_c``, ``temperature`` or ``t``) and ``pue``,
        sorted by strictly increasing temperature; a PUE below 1 is an error naming its line."""
        table = read_table(path, "cooling table (temperature → PUE)")
        t_column = table.column("the temperature (°C)", ("temperature_c", "temperature", "t"))
        pue_column = table.column("the PUE", ("pue",))
        assert t_column is not None and pue_column is not None
        temps, pues = table.numbers(t_column), table.numbers(pue_column)
        below = np.flatnonzero(pues < 1.0)
        if below.size:
            i = int(below[0])
            raise SiteDataError(
                f"{table.path}: {table.where(i)}: PUE {pues[i]:g} is below 1 (facility energy cannot be less "
                "than IT energy)"
            )
        unsorted = np.flatnonzero(np.diff(temps) <= 0)
        if unsorted.size:
            i = int(unsorted[0]) + 1
            raise SiteDataError(
                f"{table.path}: {table.where(i)}: temperature {temps[i]:g} does not increase on "
                f"{temps[i - 1]:g}; sort the table by strictly increasing temperature"
            )
        return cls(temps, pues, str(table.path))

    def pue(self, temp_c: npt.ArrayLike) -> FloatArray:
        return np.interp(np.asarray(temp_c, dtype=np.float64), self.temperatures_c, self.pues)

    def describe(self) -> str:
        return (
            f"PUE table from {self.source}: {len(self.pues)} points, {self.temperatures_c[0]:g} to "
            f"{self.temperatures_c[-1]:g} °C, PUE {self.pues.min():g} to {self.pues.max():g}, linear "
            "between points, held outside"
        )


def moore_cop(supply_c: npt.ArrayLike) -> FloatArray:
    """Chiller coefficient of performance at a chilled-air supply temperature (°C): the fit of Moore et al.
    2005, "Making Scheduling 'Cool'" (USENIX ATC), COP(T) = 0.0068 T² + 0.0008 T + 0.458."""
    t = np.asarray(supply_c, dtype=np.float64)
    return 0.0068 * t**2 + 0.0008 * t + 0.458


@dataclass(frozen=True)
class ChillerPUE(Parameters):
    """Mechanical cooling: PUE = 1 + overhead + 1 / COP_eff(T_ambient).

    hpcqueue's combination of two standard pieces, not a published model:

    * Moore et al. 2005 ("Making Scheduling 'Cool'", USENIX ATC) fit the COP of a chiller against the
      temperature of the air it supplies: COP(T_supply) = 0.0068 T² + 0.0008 T + 0.458 (:func:`moore_cop`).
      Their fit does not depend on the outdoor temperature.
    * A chiller pumps heat from the supply temperature up to the ambient one, and the work it needs grows
      with that lift (the Carnot limit is proportional to it). So Moore's COP is taken to hold at the design
      ambient ``design_ambient_c`` and scaled by the lift ratio elsewhere:
      COP_eff(T_amb) = COP(T_supply) × (T_design − T_supply) / max(T_amb − T_supply, 1 K), capped at
      :data:`MAX_COP`. Colder outside: a smaller lift, a better COP, a lower PUE; at the design ambient the
      PUE is 1 + overhead + 1 / COP(T_supply).

    ``facility_overhead`` is the non-cooling overhead (power distribution, lighting) as a share of IT energy.
    """

    model: ClassVar[str] = "chiller"
    supply_temperature_c: float
    facility_overhead: float
    design_ambient_c: float = 35.0
    needs_weather: bool = field(default=True, init=False, repr=False)
    kind: str = field(default="model", init=False, repr=False)

    def cop(self, temp_c: npt.ArrayLike) -> FloatArray:
        """The chiller's effective COP at the ambient temperature ``temp_c`` (°C)."""
        lift = np.maximum(np.asarray(temp_c, dtype=np.float64) - self.supply_temperature_c, 1.0)
        design_lift = self.design_ambient_c - self.supply_temperature_c
        return np.minimum(moore_cop(self.supply_temperature_c) * design_lift / lift, MAX_COP)

    def pue(self, temp_c: npt.ArrayLike) -> FloatArray:
        return 1.0 + self.facility_overhead + 1.0 / self.cop(temp_c)

    def describe(self) -> str:
        return (
            f"chiller PUE = 1 + overhead {self.facility_overhead:g} + 1/COP: COP fit of Moore et al. 2005 "
            f"(USENIX ATC) at supply {self.supply_temperature_c:g} °C "
            f"({float(moore_cop(self.supply_temperature_c)):.3g}), "
            f"scaled by the Carnot lift to the ambient, design ambient {self.design_ambient_c:g} °C, "
            f"COP at most {MAX_COP:g} (hpcqueue's combination)"
        )

    def parameters(self) -> dict[str, Any]:
        return super().parameters() | {
            "cop_at_supply": float(moore_cop(self.supply_temperature_c)),
            "max_cop": MAX_COP,
            "source": "COP(T) = 0.0068 T² + 0.0008 T + 0.458, Moore et al. 2005, USENIX ATC; Carnot lift "
            "scaling to the ambient (hpcqueue)",
        }


@dataclass(frozen=True)
class EconomizerPUE(Parameters):
    """Free air cooling when it is cool enough, the chiller when it is not.

    At or below ``free_cooling_below_c`` the PUE is ``free_cooling_pue``; at or above ``mechanical_above_c``
    it is the chiller's (never below ``free_cooling_pue``: a site would not run the chiller where free
    cooling does better); in between, the share of the load on the chiller grows linearly. The PUE never
    falls as the temperature rises.
    """

    model: ClassVar[str] = "economizer"
    free_cooling_below_c: float
    mechanical_above_c: float
    free_cooling_pue: float
    chiller: ChillerPUE
    needs_weather: bool = field(default=True, init=False, repr=False)
    kind: str = field(default="model", init=False, repr=False)

    def pue(self, temp_c: npt.ArrayLike) -> FloatArray:
        t = np.asarray(temp_c, dtype=np.float64)
        share = ramp(t, self.free_cooling_below_c, self.mechanical_above_c)
        mechanical = np.maximum(self.chiller.pue(t), self.free_cooling_pue)
        return self.free_cooling_pue + share * (mechanical - self.free_cooling_pue)

    def describe(self) -> str:
        return (
            f"economizer: free cooling PUE {self.free_cooling_pue:g} at or below "
            f"{self.free_cooling_below_c:g} °C, "
            f"chiller at or above {self.mechanical_above_c:g} °C, linear blend between; "
            f"chiller: {self.chiller.describe()}"
        )


def cooling_model(spec: SiteSpec) -> CoolingModel:
    """The cooling model a site's ``cooling`` key names: a number is a constant PUE (the default one is
    labelled with its survey), ``"economizer"``/``"economiser"`` and ``"chiller"`` the models above, any
    other string the path of a T → PUE table."""
    cooling = spec.cooling
    if isinstance(cooling, (int, float)):
        stated = "cooling" in spec.model_fields_set
        return ConstantPUE(
            float(cooling), f"stated in site {spec.name}'s config" if stated else DEFAULT_PUE_NOTE
        )
    if cooling not in COOLING_MODELS:
        return TablePUE.from_csv(cooling)
    chiller = ChillerPUE(spec.supply_temperature_c, spec.facility_overhead, spec.design_ambient_c)
    if cooling == "chiller":
        return chiller
    return EconomizerPUE(spec.free_cooling_below_c, spec.mechanical_above_c, spec.free_cooling_pue, chiller)
