"""Available power from the wind: a standard turbine power curve applied to the 10 m wind speed.

There is no measured wind-farm output in hpcqueue's data; a site with ``power = "wind"`` gets its available
power from its weather file's ``windspeed_10m`` through :func:`wind_power_kw`, and every place that shows it
says it is derived.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hpcqueue.config import WindTurbines
from hpcqueue.sites.tables import FloatArray

KMH_PER_MS = 3.6
#: Height (m) at which Open-Meteo's ``windspeed_10m`` is given.
REFERENCE_HEIGHT_M = 10.0


def wind_power_kw(speed_10m_kmh: npt.ArrayLike, wind: WindTurbines) -> FloatArray:
    """Power (kW) of the ``wind`` turbines at the 10 m wind speed ``speed_10m_kmh`` (km/h).

    The speed is taken to hub height by the power law v_h = v_10 · (h / 10 m)^α (α ≈ 0.14 over open land),
    then the power curve of one turbine: 0 below ``cut_in_ms``; rated × (v³ − v_in³) / (v_r³ − v_in³) from
    cut-in to ``rated_ms`` (the wind's power grows as v³); ``rated_kw`` from rated to ``cut_out_ms``; 0 above
    cut-out (the turbine stops to protect itself).
    """
    v10 = np.asarray(speed_10m_kmh, dtype=np.float64) / KMH_PER_MS
    hub = v10 * (wind.hub_height_m / REFERENCE_HEIGHT_M) ** wind.shear_alpha
    ramp = (hub**3 - wind.cut_in_ms**3) / (wind.rated_ms**3 - wind.cut_in_ms**3)
    one = np.where(
        (hub < wind.cut_in_ms) | (hub > wind.cut_out_ms),
        0.0,
        np.where(hub >= wind.rated_ms, 1.0, ramp),
    )
    return np.clip(one, 0.0, 1.0) * wind.rated_kw * wind.turbines


def describe_turbines(wind: WindTurbines) -> str:
    """The turbine curve in words, for every place that shows a derived wind power."""
    return (
        f"power law v_h = v_10·(h/10)^α with α = {wind.shear_alpha:g}, hub {wind.hub_height_m:g} m; "
        f"{wind.turbines} × {wind.rated_kw:g} kW rated; 0 below cut-in {wind.cut_in_ms:g} m/s, cubic to "
        f"rated {wind.rated_ms:g} m/s, flat to cut-out {wind.cut_out_ms:g} m/s, 0 above"
    )
