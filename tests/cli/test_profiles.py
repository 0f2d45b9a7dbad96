"""``hpcqueue profiles list|show|plot|check|import``, ``profile`` and ``doctor`` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from hpcqueue.cli import app
from hpcqueue.profiles import find_profile, list_profiles, load_profile
from hpcqueue.profiles.fingerprint import fingerprint
from hpcqueue.profiles.store import shipped_profiles_dir
from tests.cli import COMMANDS, run_app_in_subprocess
from tests.profiles import measured_profile

M1 = "llama-2-7b-chat.m1-pro.wilkins2024"
SWING = "llama-2-7b-chat.swing-a100.wilkins2024"

runner = CliRunner()


@pytest.fixture()
def env(hq_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """hq_env plus a private user data directory, so only shipped profiles and the test's own are found."""
    hq_env["XDG_DATA_HOME"] = str(tmp_path / "data-home")
    monkeypatch.setenv("XDG_DATA_HOME", hq_env["XDG_DATA_HOME"])
    hq_env.pop("HPCQUEUE_PROFILE_PATH", None)
    monkeypatch.delenv("HPCQUEUE_PROFILE_PATH", raising=False)
    return hq_env


def invoke(*args: str | Path | None) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def test_the_commands_exist() -> None:
    for expected in ["list", "show", "plot", "check", "import"]:
        assert ("profiles", expected) in COMMANDS
    assert ("profiles", "import", "wilkins2024") in COMMANDS
    assert ("profile",) in COMMANDS and ("doctor",) in COMMANDS


def test_show_json_has_the_metadata_and_every_point(env: dict[str, str]) -> None:
    result = invoke("profiles", "show", M1, "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["name"] == M1
    assert shown["meta"]["model"] == "meta-llama/Llama-2-7b-chat-hf"
    assert shown["meta"]["hardware"] == "m1-pro"
    assert shown["meta"]["source"] == "imported"
    assert "citation" in shown["meta"]["source_detail"]
    points = shown["points"]
    assert len(points) == len(find_profile(M1).points)
    required = {"input_tokens", "output_tokens", "batch_size", "energy_j_mean", "runtime_s_mean", "trials"}
    assert all(required <= point.keys() for point in points)
    first = next(p for p in points if p["sweep"] == "input" and p["input_tokens"] == 32)
    assert first["output_tokens"] == 32 and first["trials"] == 6
    assert first["energy_j_mean"] == pytest.approx(158.107008)


def test_show_as_a_table_and_an_unknown_name(env: dict[str, str]) -> None:
    result = invoke("profiles", "show", M1)
    assert result.exit_code == 0, result.output
    assert "Apple M1 Pro" in result.output and "158.1 ± 1.2" in result.output
    missing = invoke("profiles", "show", "no-such-profile")
    assert missing.exit_code == 1
    assert "no-such-profile" in missing.output and M1 in missing.output  # lists what is available


def test_list_json_names_every_shipped_profile_with_its_point_count(env: dict[str, str]) -> None:
    result = invoke("profiles", "list", "--json")
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in json.loads(result.output)["profiles"]}
    shipped = {e.name for e in list_profiles([shipped_profiles_dir()])}
    assert shipped <= listed.keys()
    row = listed[SWING]
    assert row["points"] == len(find_profile(SWING).points)
    assert (row["hardware"], row["source"], row["system"]) == ("a100-40g", "imported", "Swing AMD+A100")
    assert row["engine"] == "transformers"  # the paper measured with transformers' text-generation pipeline
    only = invoke("profiles", "list", "--json", "--hardware", "m1-pro")
    assert {r["hardware"] for r in json.loads(only.output)["profiles"]} == {"m1-pro"}


def test_plot_writes_two_pngs_and_prints_their_paths(env: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "plots"
    result = invoke("profiles", "plot", M1, SWING, "--output", out)
    assert result.exit_code == 0, result.output
    paths = [Path(line) for line in result.output.split()]
    assert paths == [out / "input-sweep.png", out / "output-sweep.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_import_wilkins2024_reproduces_the_shipped_profiles(
    env: dict[str, str], tmp_path: Path, paper_data: Path
) -> None:
    shipped = {e.name: e for e in list_profiles([shipped_profiles_dir()])}
    created = shipped[M1].meta.created
    result = invoke(
        "profiles", "import", "wilkins2024", paper_data, "--output", tmp_path, "--created", created
    )
    assert result.exit_code == 0, result.output
    written = sorted(p.parent.name for p in tmp_path.glob("*/meta.json"))
    assert written == sorted(shipped)
    for name in written:
        mine, theirs = load_profile(tmp_path / name), load_profile(shipped[name].directory)
        assert mine.meta.to_dict() == theirs.meta.to_dict()
        pd.testing.assert_frame_equal(mine.points, theirs.points, rtol=1e-9)
    assert f"{len(written)} profile(s) written to {tmp_path}" in " ".join(result.output.split())


def test_import_into_the_user_profile_dir_by_default(env: dict[str, str], paper_data: Path) -> None:
    result = invoke("profiles", "import", "wilkins2024", paper_data, "--json")
    assert result.exit_code == 0, result.output
    user_dir = Path(env["XDG_DATA_HOME"]) / "hpcqueue" / "profiles"
    assert json.loads(result.output)["output"] == str(user_dir)
    assert (user_dir / M1 / "points.csv").is_file()


def test_import_from_a_directory_without_the_data_names_the_files(
    env: dict[str, str], tmp_path: Path
) -> None:
    result = invoke("profiles", "import", "wilkins2024", tmp_path / "empty", "--output", tmp_path / "out")
    assert result.exit_code == 2  # an input error
    assert "all-input-stats.csv" in result.output


def _config(tmp_path: Path, profiles: Path) -> Path:
    config = tmp_path / "cluster.toml"
    config.write_text(
        f'profile_dirs = ["{profiles}"]\n\n[targets.local]\nexecutor = "local"\nhardware = "cpu-generic"\n',
        encoding="utf-8",
    )
    return config


def test_check_flags_a_profile_measured_on_other_hardware(env: dict[str, str], tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    measured_profile(
        profiles,
        "demo.local",
        "cpu-generic",
        {**fingerprint(), "cpu_model": "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"},
    )
    config = _config(tmp_path, profiles)

    result = invoke("profiles", "check", "--config", config)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "stale" in text and "Xeon(R) Gold 6148" in text
    assert f"hpcqueue profile local --config {config}" in text

    as_json = invoke("profiles", "check", "--config", config, "--json")
    assert as_json.exit_code == 1
    [check] = json.loads(as_json.output)["checks"]
    assert (check["target"], check["profile"], check["status"]) == ("local", "demo.local", "stale")
    assert check["refresh"] == f"hpcqueue profile local --config {config}"


def test_check_is_ok_when_the_profile_was_measured_here(env: dict[str, str], tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    measured_profile(profiles, "demo.local", "cpu-generic", fingerprint())
    result = invoke("profiles", "check", "--config", _config(tmp_path, profiles), "--json")
    assert result.exit_code == 0, result.output
    [check] = json.loads(result.output)["checks"]
    assert (check["status"], check["differences"]) == ("ok", [])


def test_check_without_a_profile_says_how_to_measure_one(env: dict[str, str], tmp_path: Path) -> None:
    result = invoke("profiles", "check", "--config", _config(tmp_path, tmp_path / "none"), "--model", "org/m")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "missing" in text and "hpcqueue profile local --model org/m" in text


def test_profile_of_an_unknown_target_lists_the_targets(env: dict[str, str], tmp_path: Path) -> None:
    result = invoke("profile", "gpu", "--config", _config(tmp_path, tmp_path / "none"))
    assert result.exit_code == 2
    assert "unknown target 'gpu'" in result.output and "local" in result.output


def test_profile_with_an_unknown_engine_lists_the_engines(env: dict[str, str], tmp_path: Path) -> None:
    result = invoke("profile", "local", "--engine", "tgi", "--config", _config(tmp_path, tmp_path / "none"))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--engine" in text and "'transformers' or 'vllm'" in text and "tgi" in text


def test_doctor_lists_the_meters(env: dict[str, str]) -> None:
    result = invoke("doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    meters = report["meters"] if isinstance(report, dict) else report
    estimate = next(m for m in meters if m["name"] == "estimate")
    assert estimate["available"] is True and estimate["method"] == "estimated" and estimate["reason"]


@pytest.mark.parametrize(
    "args",
    [
        ["profiles", "list"],
        ["profiles", "show", M1],
        ["profiles", "check"],
        ["profiles", "plot", M1, "--output", "{tmp}"],
        ["profiles", "import", "wilkins2024", "{paper_data}", "--output", "{tmp}"],  # needs the paper's data
        ["doctor"],
        ["profile", "--help"],
    ],
    ids=" ".join,
)
def test_commands_that_run_no_model_do_not_import_torch(
    args: list[str], env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if "{paper_data}" in args:  # only this case needs the paper's raw data (and skips without it)
        paper_data: Path = request.getfixturevalue("paper_data")
        args = [a.replace("{paper_data}", str(paper_data)) for a in args]
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_app_in_subprocess(args, env)
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "NO-TORCH", proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
