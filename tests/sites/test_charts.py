"""The figure of ``sites plot``, drawn from small synthetic site files: written as a PNG, with a panel for
each thing the site states, and nothing written when the data do not cover the slots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcqueue.config import SiteSpec
from hpcqueue.errors import SiteDataError
from hpcqueue.sites import load_site
from hpcqueue.sites.charts import plot_site
from tests.conftest import REPO
from tests.helpers import png_size
from tests.sites import write_em_csv, write_open_meteo_json

N_HOURS = 48
STARTS = np.datetime64("2023-01-01T02:00", "s") + np.arange(24) * np.timedelta64(3600, "s")


@pytest.fixture()
def full_spec(tmp_path: Path) -> SiteSpec:
    """A site that states everything: carbon, weather (so PUE and WUE models), price and wind power."""
    hour = np.arange(N_HOURS, dtype=float)
    write_em_csv(tmp_path / "carbon.csv", (300.0 - 5.0 * hour).tolist())
    # On UTC, 0 to 47 °C: every regime of the PUE and WUE models, and a steady wind.
    write_open_meteo_json(
        tmp_path / "weather.json", hour.tolist(), humidity=[50.0] * N_HOURS, wind=[30.0] * N_HOURS, offset_s=0
    )
    return SiteSpec(
        name="west",
        timezone="America/Los_Angeles",
        carbon=str(tmp_path / "carbon.csv"),
        weather=str(tmp_path / "weather.json"),
        cooling="economizer",
        wue="wet-bulb",
        water_per_kwh=2.0,
        price=80.0,
        power="wind",
    )


def test_a_site_plot_is_a_png_with_a_panel_for_each_thing_the_site_states(
    full_spec: SiteSpec, tmp_path: Path
) -> None:
    full = plot_site(load_site(full_spec), STARTS, 3600.0, tmp_path / "plots" / "west.png")
    assert full == tmp_path / "plots" / "west.png"
    width, height = png_size(full)
    assert width > 1000 and height > 800  # the time panels and the model curves below them
    assert full.stat().st_size > 20_000  # lines, labels and legends, not an empty canvas

    # Constants only, no price and no water: carbon, PUE and power panels, and the curves; a shorter figure.
    constants = SiteSpec(name="east", timezone="America/New_York", carbon=400, cooling=1.3, power=500)
    sparse = plot_site(load_site(constants), STARTS, 1800.0, tmp_path / "east.png")
    sparse_width, sparse_height = png_size(sparse)
    assert sparse_width == width and sparse_height < height


def test_slots_beyond_the_data_name_the_file_and_write_nothing(full_spec: SiteSpec, tmp_path: Path) -> None:
    late = STARTS + np.timedelta64(40, "h")
    with pytest.raises(SiteDataError, match=r"\.(csv|json): "):
        plot_site(load_site(full_spec), late, 3600.0, tmp_path / "late.png")
    assert not (tmp_path / "late.png").exists()


def test_importing_the_sites_package_does_not_import_matplotlib() -> None:
    code = "import sys, hpcqueue.sites, hpcqueue.sites.charts; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
