"""Profile files, the search path, and the profiles derived from Wilkins et al. (2024)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hpcqueue.errors import PlanningError
from hpcqueue.profiles import Profile, load_profile, save_profile, store, wilkins2024
from tests.conftest import SHIPPED_PROFILES

# t_{0.975, dof} from printed statistical tables.
T_TABLE = {1: 12.7062, 4: 2.7764, 5: 2.5706, 6: 2.4469, 9: 2.2622, 11: 2.2010, 12: 2.1788, 98: 1.9845}

# The paper's pooled J/token (its own filter), as published in the data set's README.
PAPER_INPUT = {
    "M1-Pro": [2.5101, 2.5774, 2.4485, 2.6615, 2.6427, 2.5430, 2.6260, 2.4752, 2.8974],
    "Swing AMD+A100": [3.5457, 2.9645, 2.4019, 1.8505, 1.5286, 1.2823, 1.2142, 1.2432, 1.3561],
    "Palmetto Intel+A100": [3.3461, 2.8183, 2.2578, 1.7841, 1.4595, 1.1303, 0.9559, 0.9539, 1.0447],
    "Palmetto Intel+V100": [22.0238, 17.5837, 14.4523, 14.1138, 12.3382, 11.7079, 11.2530, 11.5357, 12.1220],
}
PAPER_OUTPUT = {
    "M1-Pro": [0.6521, 1.2845, 2.3003, 3.9919, 6.6905, 12.0523, 23.0586],
    "Swing AMD+A100": [0.8672, 1.5968, 2.3938, 3.5771, 5.0186, 7.3071, 11.5496],
    "Palmetto Intel+A100": [0.8005, 1.4179, 2.2581, 3.3804, 4.8131, 6.6841, 9.7822],
    "Palmetto Intel+V100": [5.9635, 10.0667, 15.9161, 26.8710, 40.6881, 64.3741, 108.4114],
}


def _meta(name: str = "demo.cpu.test", **changes: object) -> store.ProfileMeta:
    fields: dict[str, object] = {
        "name": name,
        "model": "org/demo-model",
        "model_aliases": ["demo"],
        "hardware": "cpu-generic",
        "source": "measured",
        "method": "estimated",
        "meters": {"cpu": "estimate"},
        "created": "2025-01-01",
        "kv_cache": True,
    }
    fields.update(changes)
    return store.ProfileMeta(**fields)  # type: ignore[arg-type]


def _points() -> pd.DataFrame:
    rows = []
    for n_in in (8, 64, 512):
        rows.append(("input", n_in, 32, 1, 5, 0.1 * n_in, 0.01, 2.0 * n_in, 0.5))
    for n_out in (8, 64):
        rows.append(("output", 40, n_out, 1, 1, 0.2 * n_out, math.nan, 3.0 * n_out, math.nan))
    # the rows give the first nine point columns: sweep, the grid point, trials, runtime and energy
    frame = pd.DataFrame(rows, columns=list(store.POINT_COLUMNS[:9]))
    frame["energy_cpu_j_mean"] = frame["energy_j_mean"]
    frame["energy_cpu_j_ci95"] = frame["energy_j_ci95"]
    frame["energy_gpu_j_mean"] = math.nan
    frame["energy_gpu_j_ci95"] = math.nan
    frame["total_tokens_mean"] = (frame["input_tokens"] + frame["output_tokens"]).astype(float)
    return frame[list(store.POINT_COLUMNS)]


# --- file format ---------------------------------------------------------------------------------


def test_save_then_load_gives_back_the_same_profile(tmp_path: Path) -> None:
    meta = _meta(extra={"site_note": "kept"})
    profile = Profile(meta=meta, points=_points())
    directory = save_profile(profile, tmp_path)

    assert directory == tmp_path / "demo.cpu.test"
    assert sorted(p.name for p in directory.iterdir()) == ["meta.json", "points.csv"]  # no temp files left
    assert json.loads((directory / "meta.json").read_text())["site_note"] == "kept"
    assert (directory / "points.csv").read_text().splitlines()[0] == ",".join(store.POINT_COLUMNS)

    loaded = load_profile(directory)
    assert loaded.meta == meta
    assert loaded.path == directory
    pd.testing.assert_frame_equal(loaded.points, profile.points, check_dtype=False)


def test_missing_column_error_names_the_file_and_the_column(tmp_path: Path) -> None:
    directory = save_profile(Profile(meta=_meta(), points=_points()), tmp_path)
    points = pd.read_csv(directory / "points.csv").drop(columns=["energy_j_mean"])
    points.to_csv(directory / "points.csv", index=False)
    with pytest.raises(PlanningError, match=r"points\.csv: missing column\(s\) energy_j_mean"):
        load_profile(directory)


def test_bad_value_error_names_the_csv_line_and_the_valid_values(tmp_path: Path) -> None:
    directory = save_profile(Profile(meta=_meta(), points=_points()), tmp_path)
    points = pd.read_csv(directory / "points.csv", dtype=str)
    points.loc[2, "sweep"] = "prefill"
    points.to_csv(directory / "points.csv", index=False)
    with pytest.raises(
        PlanningError, match=r"points\.csv: line 4: column 'sweep' is 'prefill'; valid values"
    ):
        load_profile(directory)

    points.loc[2, "sweep"] = "input"
    points.loc[3, "runtime_s_mean"] = "fast"
    points.to_csv(directory / "points.csv", index=False)
    with pytest.raises(PlanningError, match=r"line 5: column 'runtime_s_mean': 'fast' is not a number"):
        load_profile(directory)


def test_bad_meta_lists_valid_values_and_a_renamed_directory_is_caught(tmp_path: Path) -> None:
    directory = save_profile(Profile(meta=_meta(), points=_points()), tmp_path)
    meta = json.loads((directory / "meta.json").read_text())
    meta["method"] = "guessed"
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(
        PlanningError, match=r"meta\.json: key 'method' is 'guessed'; valid values: measured, estimated"
    ):
        load_profile(directory)

    meta["method"] = "measured"
    (directory / "meta.json").write_text(json.dumps(meta))
    renamed = directory.rename(tmp_path / "other-name")
    with pytest.raises(PlanningError, match=r"'name' is 'demo\.cpu\.test' but the directory is 'other-name'"):
        load_profile(renamed)


def test_the_engine_is_written_and_a_meta_without_it_reads_as_transformers(tmp_path: Path) -> None:
    """Profiles written before engines existed (the shipped ones among them) are transformers profiles."""
    directory = save_profile(Profile(meta=_meta(engine="vllm"), points=_points()), tmp_path)
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["engine"] == "vllm" and load_profile(directory).meta.engine == "vllm"

    del meta["engine"]
    (directory / "meta.json").write_text(json.dumps(meta))
    assert load_profile(directory).meta.engine == "transformers"
    assert {e.meta.engine for e in store.list_profiles([SHIPPED_PROFILES])} == {"transformers"}
    assert "engine" not in json.loads(next(SHIPPED_PROFILES.glob("*/meta.json")).read_text())

    meta["engine"] = ""
    (directory / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(PlanningError, match=r"meta\.json: key 'engine' is ''; .*: transformers, vllm"):
        load_profile(directory)


def test_t_critical_values_and_ci_half_width() -> None:
    for dof, expected in T_TABLE.items():
        assert store.t_critical_95(dof) == pytest.approx(expected, abs=1e-4)
    half = store.ci95_half_width(np.array([2.0, 1.0]), np.array([7, 1]))
    assert half[0] == pytest.approx(2.4469 * 2.0 / math.sqrt(7), abs=1e-4)
    assert math.isnan(half[1])  # one trial: no interval


# --- search path ---------------------------------------------------------------------------------


def test_search_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HPCQUEUE_PROFILE_PATH", f"{tmp_path / 'env-a'}:{tmp_path / 'env-b'}:")
    path = store.profile_search_path([tmp_path / "site"])
    assert path == [
        tmp_path / "site",
        tmp_path / "env-a",
        tmp_path / "env-b",
        tmp_path / "xdg" / "hpcqueue" / "profiles",
        SHIPPED_PROFILES,
    ]
    assert store.shipped_profiles_dir() == SHIPPED_PROFILES


def test_earlier_directory_shadows_a_profile_of_the_same_name(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    save_profile(Profile(meta=_meta(notes="mine"), points=_points()), first)
    save_profile(Profile(meta=_meta(notes="shipped"), points=_points()), second)
    save_profile(Profile(meta=_meta("only.cpu.second"), points=_points()), second)

    assert store.find_profile("demo.cpu.test", [first, second]).meta.notes == "mine"
    assert [(e.name, e.directory.parent) for e in store.list_profiles([first, second])] == [
        ("demo.cpu.test", first),
        ("only.cpu.second", second),
    ]


def test_unknown_profile_name_lists_what_is_available(tmp_path: Path) -> None:
    save_profile(Profile(meta=_meta(), points=_points()), tmp_path)
    with pytest.raises(PlanningError, match=r"no profile named 'nope'.*available: demo\.cpu\.test"):
        store.find_profile("nope", [tmp_path])


def test_find_profiles_for_matches_model_id_alias_or_local_path(tmp_path: Path) -> None:
    save_profile(Profile(meta=_meta("b-imported", source="imported"), points=_points()), tmp_path)
    save_profile(Profile(meta=_meta("z-measured", source="measured"), points=_points()), tmp_path)
    save_profile(Profile(meta=_meta("other-hw", hardware="a100-40g"), points=_points()), tmp_path)

    for model in ("org/demo-model", "DEMO", "/models/demo-model/"):
        found = store.find_profiles_for(model, "cpu-generic", [tmp_path])
        assert [p.name for p in found] == ["z-measured", "b-imported"], model  # measured here first
    assert store.find_profiles_for("org/other-model", "cpu-generic", [tmp_path]) == []
    assert [p.name for p in store.find_profiles_for("demo", "a100-40g", [tmp_path])] == ["other-hw"]


def test_find_profiles_for_an_engine_skips_the_other_engine_s_profiles(tmp_path: Path) -> None:
    save_profile(Profile(meta=_meta("demo.cpu.test"), points=_points()), tmp_path)
    save_profile(Profile(meta=_meta("demo.cpu.test-vllm", engine="vllm"), points=_points()), tmp_path)

    def names(engine: str | None) -> list[str]:
        return [p.name for p in store.find_profiles_for("demo", "cpu-generic", [tmp_path], engine=engine)]

    assert names("vllm") == ["demo.cpu.test-vllm"]
    assert names("transformers") == ["demo.cpu.test"]
    assert names(None) == ["demo.cpu.test", "demo.cpu.test-vllm"]  # any engine


# --- profiles derived from the paper's measurements ----------------------------------------------


@pytest.fixture(scope="module")
def derived(paper_data: Path) -> dict[str, Profile]:
    return {p.name: p for p in wilkins2024.derive(paper_data, created="2025-01-01")}


def test_derive_makes_a_profile_per_system_and_model_with_provenance(derived: dict[str, Profile]) -> None:
    expected = {
        f"{m}.{s}.wilkins2024"
        for m in ("llama-2-7b-chat", "mistral-7b", "falcon-7b")
        for s in ("swing-a100", "palmetto-a100", "palmetto-v100")
    } | {"llama-2-7b-chat.m1-pro.wilkins2024", "mistral-7b.m1-pro.wilkins2024"}  # no Falcon on the M1
    # and one per system with its models pooled, as the paper's threshold scripts pool them
    expected |= {
        f"pooled-7b.{s}.wilkins2024" for s in ("m1-pro", "swing-a100", "palmetto-a100", "palmetto-v100")
    }
    assert set(derived) == expected

    hardware = {
        "m1-pro": "m1-pro",
        "swing-a100": "a100-40g",
        "palmetto-a100": "a100-40g",
        "palmetto-v100": "v100-16g",
    }
    for name, profile in derived.items():
        meta = profile.meta
        assert meta.hardware == hardware[name.split(".")[1]]
        assert (meta.source, meta.method, meta.kv_cache) == ("imported", "measured", False)
        assert "10.1145/3632775.3662830" in meta.source_detail["citation"]
        assert "derived from the authors' published measurements" in meta.notes.lower()
        assert set(profile.points["sweep"]) == {"input", "output"}
    swing = derived["llama-2-7b-chat.swing-a100.wilkins2024"].meta
    assert swing.model == "meta-llama/Llama-2-7b-chat-hf"
    assert swing.fingerprint["gpus"][0]["memory_mb"] == 40960
    assert derived["llama-2-7b-chat.palmetto-a100.wilkins2024"].meta.idle_subtracted == {
        "cpu": True,
        "gpu": False,
    }


def _independent_point(data: Path, system: str, model: str, sweep: str, bucket: int) -> dict[str, float]:
    """Recompute one point straight from the CSV, without the importer's code."""
    raw = pd.read_csv(data / ("all-input-stats.csv" if sweep == "input" else "all-output-stats.csv"))
    bucket_column = "Number of Input Tokens" if sweep == "input" else "Number of Output Tokens"
    rows = raw[
        raw["Phase"].str.contains("inference")
        & (raw["Iteration"] != 0)
        & (raw["System"] == system)
        & (raw["Model"] == model)
        & (raw[bucket_column] == bucket)
    ]
    energy = rows["CPU Energy (J)"] + rows["GPU Energy (J)"]
    n = len(rows)
    return {
        "trials": n,
        "energy_j_mean": energy.mean(),
        "energy_j_ci95": T_TABLE[n - 1] * energy.std() / math.sqrt(n),
        "runtime_s_mean": rows["Runtime (s)"].mean(),
        "runtime_s_ci95": T_TABLE[n - 1] * rows["Runtime (s)"].std() / math.sqrt(n),
        "energy_gpu_j_mean": rows["GPU Energy (J)"].mean(),
        "total_tokens_mean": rows["Total Number of Tokens"].mean(),
    }


@pytest.mark.parametrize(
    ("name", "system", "model", "sweep", "bucket", "fixed"),
    [
        ("llama-2-7b-chat.swing-a100.wilkins2024", "Swing AMD+A100", "Llama-2 (7B)", "input", 1024, 32),
        ("llama-2-7b-chat.swing-a100.wilkins2024", "Swing AMD+A100", "Llama-2 (7B)", "output", 1024, 38),
        ("llama-2-7b-chat.m1-pro.wilkins2024", "M1-Pro", "Llama-2 (7B)", "output", 32, 38),  # two runs pooled
        ("mistral-7b.palmetto-v100.wilkins2024", "Palmetto Intel+V100", "Mistral (7B)", "input", 8, 32),
    ],
)
def test_derived_points_match_the_raw_rows(
    derived: dict[str, Profile],
    paper_data: Path,
    name: str,
    system: str,
    model: str,
    sweep: str,
    bucket: int,
    fixed: int,
) -> None:
    points = derived[name].points
    swept, other = (
        ("input_tokens", "output_tokens") if sweep == "input" else ("output_tokens", "input_tokens")
    )
    row = points[(points["sweep"] == sweep) & (points[swept] == bucket)].iloc[0]
    assert row[other] == fixed
    assert row["batch_size"] == 1
    for key, value in _independent_point(paper_data, system, model, sweep, bucket).items():
        assert row[key] == pytest.approx(value, rel=1e-4), key


def test_warm_up_filter_keeps_iterations_ending_in_zero_and_the_long_output_buckets(
    derived: dict[str, Profile],
) -> None:
    points = derived["llama-2-7b-chat.swing-a100.wilkins2024"].points
    outputs = points[points["sweep"] == "output"].set_index("output_tokens")
    assert list(outputs.index) == [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert outputs.loc[1024, "trials"] == 99  # 100 calls, warm-up dropped; the paper's filter drops them all


def test_paper_energy_per_token_tables_are_reproduced(paper_data: Path) -> None:
    for sweep, expected in (("input", PAPER_INPUT), ("output", PAPER_OUTPUT)):
        table = wilkins2024.paper_energy_per_token_table(paper_data, sweep)  # type: ignore[arg-type]
        for system, values in expected.items():
            buckets = [8 * 2**i for i in range(len(values))]
            got = table.loc[system, buckets].to_numpy(dtype=float)
            np.testing.assert_allclose(got, values, atol=1e-3, err_msg=f"{sweep} {system}")
    output = wilkins2024.paper_energy_per_token_table(paper_data, "output")
    assert output.loc["Swing AMD+A100"].dropna().index.max() == 512  # the '0' filter drops 1024+


def test_shipped_profiles_are_what_the_importer_derives(derived: dict[str, Profile]) -> None:
    shipped = {e.name for e in store.list_profiles([SHIPPED_PROFILES])}
    assert shipped == set(derived)
    for name, profile in derived.items():
        on_disk = load_profile(SHIPPED_PROFILES / name)
        assert on_disk.meta.source_detail == profile.meta.source_detail
        assert on_disk.meta.notes == profile.meta.notes
        expected = profile.points.sort_values(["sweep", "input_tokens", "output_tokens"]).reset_index(
            drop=True
        )
        pd.testing.assert_frame_equal(on_disk.points, expected, check_dtype=False, rtol=1e-8)


def test_shipped_readme_carries_the_citation_and_the_derivation_note() -> None:
    text = (SHIPPED_PROFILES / "README.md").read_text(encoding="utf-8")
    assert "10.1145/3632775.3662830" in text
    assert "derived from the authors' published measurements" in text.lower()


def test_importer_command_line_writes_loadable_profiles(tmp_path: Path, paper_data: Path) -> None:
    assert wilkins2024.main([str(paper_data), str(tmp_path), "--created", "2025-01-01"]) == 0
    profile = store.find_profile("llama-2-7b-chat.m1-pro.wilkins2024", [tmp_path])
    assert profile.meta.created == "2025-01-01"
    assert len(profile.points) == 16  # 9 input buckets + 7 output buckets (the M1 stops at 512)


def test_pooled_profile_pools_the_models_of_a_system(derived: dict[str, Profile], paper_data: Path) -> None:
    """The pooled M1-Pro point: the mean over Llama-2 and Mistral rows (warm-up dropped), recomputed."""
    pooled = derived["pooled-7b.m1-pro.wilkins2024"]
    assert pooled.meta.source_detail["model_label"] == "Llama-2 (7B), Mistral (7B)"
    raw = pd.read_csv(paper_data / "all-input-stats.csv")
    rows = raw[
        raw["Phase"].str.contains("inference")
        & (raw["Iteration"] != 0)
        & (raw["System"] == "M1-Pro")
        & (raw["Number of Input Tokens"] == 128)
    ]
    point = pooled.points[(pooled.points["sweep"] == "input") & (pooled.points["input_tokens"] == 128)].iloc[
        0
    ]
    assert point["trials"] == len(rows)
    assert point["energy_j_mean"] == pytest.approx((rows["CPU Energy (J)"] + rows["GPU Energy (J)"]).mean())
    outputs = pooled.points[pooled.points["sweep"] == "output"]
    assert outputs["input_tokens"].nunique() == 1  # one prompt length for the whole output sweep
