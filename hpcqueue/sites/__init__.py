"""Sites: where work physically runs, and what a kWh of IT energy costs there, hour by hour.

A ``[sites.NAME]`` table of the config (:class:`~hpcqueue.config.SiteSpec`) names a site's data: grid carbon
intensity, weather, electricity price and available power, each a file or a constant, and its cooling and
water models. The flow is::

    files ──read_carbon / read_weather / read_price / read_power──▶ Series (UTC, regular, checked)
    SiteSpec ──load_site──▶ Site (series + PUE(T) model + WUE(T_wet-bulb) model)
    Site.factors(slot starts, slot length) ──▶ SlotFactors (per slot: PUE, gCO2/kWh, L/kWh, USD/MWh, kW)

Every factor says where it came from (``sources``) and what it is (``kinds``: ``"series"`` read from a
file, ``"assumed"`` a constant, ``"derived"`` computed from another series, ``"model"`` a PUE or WUE
model). Bad data raises :class:`~hpcqueue.errors.SiteDataError` naming the file and the line.

Modules: :mod:`~hpcqueue.sites.series` (the series and the CSV readers), :mod:`~hpcqueue.sites.weather`
(Open-Meteo JSON/CSV), :mod:`~hpcqueue.sites.cooling` (PUE models), :mod:`~hpcqueue.sites.water` (wet-bulb
and WUE), :mod:`~hpcqueue.sites.power` (wind power curve), :mod:`~hpcqueue.sites.site` (loading and
resampling, and :meth:`SlotFactors.per_it_kwh`), :mod:`~hpcqueue.sites.windows` (the best windows ahead),
:mod:`~hpcqueue.sites.charts` (the figure of ``sites plot``; not imported here, it needs matplotlib),
:mod:`~hpcqueue.sites.tables` (file parsing and checks shared by the readers).
"""

from hpcqueue.sites.cooling import (
    ChillerPUE,
    ConstantPUE,
    CoolingModel,
    EconomizerPUE,
    TablePUE,
    cooling_model,
)
from hpcqueue.sites.power import wind_power_kw
from hpcqueue.sites.series import Series, read_carbon, read_power, read_price
from hpcqueue.sites.site import PerItKwh, Site, SlotFactors, load_site, load_sites
from hpcqueue.sites.water import ConstantWUE, WetBulbWUE, WueModel, wet_bulb_c, wue_model
from hpcqueue.sites.weather import Weather, read_weather
from hpcqueue.sites.windows import Window, best_window, best_windows, window_means

__all__ = [
    "ChillerPUE",
    "ConstantPUE",
    "ConstantWUE",
    "CoolingModel",
    "EconomizerPUE",
    "PerItKwh",
    "Series",
    "Site",
    "SlotFactors",
    "TablePUE",
    "Weather",
    "WetBulbWUE",
    "Window",
    "WueModel",
    "best_window",
    "best_windows",
    "cooling_model",
    "load_site",
    "load_sites",
    "read_carbon",
    "read_power",
    "read_price",
    "read_weather",
    "wet_bulb_c",
    "wind_power_kw",
    "window_means",
    "wue_model",
]
