"""Available power from the wind: a standard turbine power curve applied to the 10 m wind speed.

There is no measured wind-farm output in hpcqueue's data; a site with ``power = "wind"`` gets its available
power from its weather file's ``windspeed_10m`` through :func:`wind_power_kw`, and every place that shows it
says it is derived.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hpcqueue.sites.tables import FloatArray

KMH_PER_MS = 3.6
#: Height (m) at which Open-Meteo's ``windspeed_10m`` is given.
REFERENCE_HEIGHT_M = 10.0


def wind_power_kw(
    speed_10m_kmh: npt.ArrayLike,
    *,
    rated_kw: float,
    turbines: int,
    hub_height_m: float,
    shear_alpha: float,
    cut_in_ms: float,
    rated_ms: float,
    cut_out_ms: float,
) -> FloatArray:
    """Power (kW) of ``turbines`` identical turbines at the 10 m wind speed ``speed_10m_kmh`` (km/h).

    The speed is taken to hub height by the power law v_h = v_10 · (h / 10 m)^α (α ≈ 0.14 over open land),
    then the power curve of one turbine: 0 below ``cut_in_ms``; rated × (v³ − v_in³) / (v_r³ − v_in³) from
    cut-in to ``rated_ms`` (the wind's power grows as v³); ``rated_kw`` from rated to ``cut_out_ms``; 0 above
    cut-out (the turbine stops to protect itself).
    """
    if not 0 <= cut_in_ms < rated_ms < cut_out_ms:
        raise ValueError(
            "wind speeds must satisfy 0 <= cut-in < rated < cut-out, "
            f"got {cut_in_ms}, {rated_ms}, {cut_out_ms}"
        )
    v10 = np.asarray(speed_10m_kmh, dtype=np.float64) / KMH_PER_MS
    hub = v10 * (hub_height_m / REFERENCE_HEIGHT_M) ** shear_alpha
    ramp = (hub**3 - cut_in_ms**3) / (rated_ms**3 - cut_in_ms**3)
    one = np.where(
        (hub < cut_in_ms) | (hub > cut_out_ms),
        0.0,
        np.where(hub >= rated_ms, 1.0, ramp),
    )
    return np.clip(one, 0.0, 1.0) * rated_kw * turbines
