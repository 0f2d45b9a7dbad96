"""On-site water: the wet-bulb temperature, and WUE (litres evaporated on site per IT kWh).

A cooling tower rejects heat by evaporating water, and how much of the heat must go that way depends on
the wet-bulb temperature (the lowest temperature evaporation can cool to). :func:`wet_bulb_c` computes it
from temperature and relative humidity; :class:`WetBulbWUE` turns it into litres per IT kWh.
Off-site water (at the power plants) is not modelled here: it is a site's ``water_per_kwh``, per kWh of
electricity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from hpcqueue.config import SiteSpec
from hpcqueue.errors import SiteDataError
from hpcqueue.sites.cooling import Parameters, SiteModel, ramp
from hpcqueue.sites.tables import FloatArray

#: Latent heat of vaporisation of water at about 20 °C (MJ/kg), and 1 kWh in MJ.
LATENT_HEAT_MJ_PER_KG = 2.45
MJ_PER_KWH = 3.6
#: Litres (kg) of water evaporated per kWh of heat rejected by evaporation alone: 3.6 / 2.45 ≈ 1.47.
EVAPORATION_L_PER_KWH = MJ_PER_KWH / LATENT_HEAT_MJ_PER_KG


def wet_bulb_c(temp_c: npt.ArrayLike, rh_pct: npt.ArrayLike) -> FloatArray:
    """Wet-bulb temperature (°C) from air temperature (°C) and relative humidity (%).

    Stull, R. (2011), "Wet-Bulb Temperature from Relative Humidity and Air Temperature", J. Appl. Meteor.
    Climatol. 50, 2267–2269, at sea-level pressure:
    Tw = T·atan(0.151977·(RH + 8.313659)^0.5) + atan(T + RH) − atan(RH − 1.676331)
    + 0.00391838·RH^1.5·atan(0.023101·RH) − 4.686035.
    The fit is valid for about RH 5–99 % and T −20…50 °C (within about ±1 °C, most errors below 0.3 °C);
    outside that range it is extrapolated. The result is capped at the dry-bulb temperature, which the fit
    can exceed by a few tenths near saturation.
    """
    t = np.asarray(temp_c, dtype=np.float64)
    rh = np.asarray(rh_pct, dtype=np.float64)
    tw = (
        t * np.arctan(0.151977 * np.sqrt(rh + 8.313659))
        + np.arctan(t + rh)
        - np.arctan(rh - 1.676331)
        + 0.00391838 * rh**1.5 * np.arctan(0.023101 * rh)
        - 4.686035
    )
    return np.minimum(tw, t)


class WueModel(SiteModel, Protocol):
    """An on-site water model: litres per IT kWh at the temperature and humidity."""

    def wue(self, temp_c: npt.ArrayLike, rh_pct: npt.ArrayLike | None) -> FloatArray: ...


@dataclass(frozen=True)
class ConstantWUE(Parameters):
    """One WUE (L per IT kWh) at all times (kind ``"assumed"``)."""

    model: ClassVar[str] = "constant"
    value: float
    note: str = ""
    needs_weather: bool = field(default=False, init=False, repr=False)
    kind: str = field(default="assumed", init=False, repr=False)

    def wue(self, temp_c: npt.ArrayLike, rh_pct: npt.ArrayLike | None = None) -> FloatArray:
        return np.full(np.shape(temp_c), float(self.value))

    def describe(self) -> str:
        return f"constant WUE {self.value:g} L per IT kWh" + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class WetBulbWUE(Parameters):
    """A cooling tower's make-up water per IT kWh as a function of the wet-bulb temperature.

    A simple physical model, not one fitted to measurements:

    * each IT kWh becomes 1 kWh of heat to reject (the overhead's own heat is left out);
    * rejected by evaporation, 1 kWh (3.6 MJ) evaporates 3.6 / 2.45 ≈ 1.47 L of water (latent heat of
      vaporisation at about 20 °C);
    * the tower also bleeds water (blowdown) to keep dissolved solids down: at N cycles of concentration
      the make-up water is the evaporation × N / (N − 1);
    * at or below ``free_below_wb_c`` (wet-bulb) the tower is not needed (dry or free cooling, 0 L); at or
      above ``full_above_wb_c`` all the heat goes through evaporation; linear in between.
    """

    model: ClassVar[str] = "wet-bulb"
    free_below_wb_c: float = 10.0
    full_above_wb_c: float = 20.0
    cycles_of_concentration: float = 5.0
    needs_weather: bool = field(default=True, init=False, repr=False)
    kind: str = field(default="model", init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.cycles_of_concentration > 1:
            raise SiteDataError(
                f"wet-bulb WUE: cycles_of_concentration must be above 1, got {self.cycles_of_concentration}"
            )
        if self.full_above_wb_c < self.free_below_wb_c:
            raise SiteDataError(
                f"wet-bulb WUE: full_above_wb_c ({self.full_above_wb_c:g}) is below free_below_wb_c "
                f"({self.free_below_wb_c:g})"
            )

    @property
    def max_l_per_kwh(self) -> float:
        """Make-up water when all the heat goes through evaporation (L per IT kWh)."""
        n = self.cycles_of_concentration
        return EVAPORATION_L_PER_KWH * n / (n - 1)

    def wue(self, temp_c: npt.ArrayLike, rh_pct: npt.ArrayLike | None) -> FloatArray:
        if rh_pct is None:
            raise SiteDataError("wue = 'wet-bulb' needs the relative humidity, and the weather has none")
        share = ramp(wet_bulb_c(temp_c, rh_pct), self.free_below_wb_c, self.full_above_wb_c)
        return share * self.max_l_per_kwh

    def describe(self) -> str:
        return (
            f"wet-bulb WUE: 0 L at or below {self.free_below_wb_c:g} °C wet-bulb, "
            f"{self.max_l_per_kwh:.3g} L per IT kWh at or above {self.full_above_wb_c:g} °C (evaporation "
            f"3.6/2.45 L/kWh × N/(N−1), N = {self.cycles_of_concentration:g} cycles of concentration), "
            "linear between; wet-bulb by Stull (2011); a simple physical model, not a fitted one"
        )

    def parameters(self) -> dict[str, Any]:
        return super().parameters() | {"max_l_per_kwh": self.max_l_per_kwh}


def wue_model(spec: SiteSpec) -> WueModel | None:
    """The WUE model a site's ``wue`` key names: none (unknown), a number (constant), or ``"wet-bulb"``."""
    if spec.wue is None:
        return None
    if isinstance(spec.wue, (int, float)):
        return ConstantWUE(float(spec.wue), f"stated in site {spec.name}'s config")
    return WetBulbWUE(cycles_of_concentration=spec.cycles_of_concentration)
