"""Profile staleness: a profile measured on other hardware than the target's is flagged, with the fix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcqueue.config import Settings, Target
from hpcqueue.profiles import profile_search_path, staleness
from hpcqueue.profiles.fingerprint import fingerprint
from hpcqueue.profiles.staleness import check_targets, checks_cache_path, profile_warnings
from tests.profiles import SHIPPED, measured_profile


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No profiles from the user's data directory or $HPCQUEUE_PROFILE_PATH leak into a test."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data-home"))
    monkeypatch.delenv("HPCQUEUE_PROFILE_PATH", raising=False)


def settings_for(tmp_path: Path, targets: dict[str, dict[str, Any]], profiles: Path) -> Settings:
    return Settings.model_validate(
        {"targets": targets, "profile_dirs": [str(profiles)], "cache_dir": str(tmp_path / "cache")}
    )


def by_target(checks: list[staleness.ProfileCheck]) -> dict[str, staleness.ProfileCheck]:
    return {c.target: c for c in checks}


def test_a_local_profile_measured_here_is_ok_and_one_from_another_cpu_is_stale(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    here = fingerprint()
    measured_profile(profiles, "demo.here", "cpu-generic", here)
    settings = settings_for(tmp_path, {"local": {"hardware": "cpu-generic"}}, profiles)

    [check] = check_targets(settings)
    assert (check.status, check.profile, check.differences) == ("ok", "demo.here", [])

    measured_profile(profiles, "demo.here", "cpu-generic", {**here, "cpu_model": "Intel Xeon Gold 6148"})
    [check] = check_targets(settings)
    assert check.status == "stale"
    assert any("Intel Xeon Gold 6148" in d and "cpu_model" in d for d in check.differences)
    assert check.refresh == "hpcqueue profile local"


def test_missing_and_imported_profiles(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    settings = settings_for(
        tmp_path,
        {
            "local": {"hardware": "cpu-generic"},
            "named": {"hardware": "cpu-generic", "profile": "no-such-profile"},
            # A shipped profile, imported from the paper: nothing of this machine to compare it with.
            "lowpower": {
                "executor": "slurm",
                "partition": "lowpower",
                "hardware": "m1-pro",
                "profile": SHIPPED,
            },
        },
        profiles,
    )
    checks = by_target(check_targets(settings, model="hpcqueue-demo"))
    assert checks["local"].status == "missing"
    assert "cpu-generic" in checks["local"].differences[0]
    assert checks["named"].status == "missing"
    assert "no-such-profile" in checks["named"].differences[0]
    assert checks["lowpower"].status == "unknown"
    assert checks["lowpower"].profile == SHIPPED
    assert "imported" in checks["lowpower"].differences[0]
    assert checks["lowpower"].refresh == "hpcqueue profile lowpower"


def test_a_model_other_than_the_configs_is_named_in_the_refresh_command(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, {"local": {"hardware": "cpu-generic"}}, tmp_path / "profiles")
    [check] = check_targets(settings, model="org/other-model")
    assert check.refresh == "hpcqueue profile local --model org/other-model"


def test_a_target_is_checked_against_a_profile_of_its_own_engine(tmp_path: Path) -> None:
    """A vLLM target's profile is a vLLM profile: the transformers one of the same model and hardware is not
    its profile, and the fix measures with ``--engine vllm``."""
    profiles = tmp_path / "profiles"
    measured_profile(profiles, "demo.here", "cpu-generic", fingerprint())
    targets = {"hf": {"hardware": "cpu-generic"}, "fast": {"hardware": "cpu-generic", "engine": "vllm"}}
    settings = settings_for(tmp_path, targets, profiles)

    checks = by_target(check_targets(settings))
    assert (checks["hf"].status, checks["hf"].profile) == ("ok", "demo.here")
    assert checks["fast"].status == "missing"
    assert "no vllm profile of model 'hpcqueue-demo'" in checks["fast"].differences[0]
    assert checks["fast"].refresh == "hpcqueue profile fast --engine vllm"
    [warning] = profile_warnings(list(settings.targets.values()), "hpcqueue-demo", [profiles], None)
    assert warning.startswith("target 'fast' has no profile: no vllm profile")
    assert warning.endswith("hpcqueue profile fast --model hpcqueue-demo --engine vllm")

    measured_profile(profiles, "demo.here-vllm", "cpu-generic", fingerprint(), engine="vllm")
    checks = by_target(check_targets(settings))
    assert (checks["fast"].status, checks["fast"].profile) == ("ok", "demo.here-vllm")
    assert (checks["hf"].status, checks["hf"].profile) == ("ok", "demo.here")
    # the top-level engine applies to targets that name none
    hf = settings.target("hf")
    assert profile_warnings([hf], "hpcqueue-demo", [profiles], None, default_engine="vllm") == []
    assert staleness.resolve_profile(hf, "hpcqueue-demo", [profiles], "vllm")[0].name == "demo.here-vllm"


def test_slurm_target_uses_the_partitions_fingerprint_and_the_cached_result_warns_later(
    tmp_path: Path,
) -> None:
    profiles = tmp_path / "profiles"
    a100 = {
        "cpu_model": "AMD EPYC 7742",
        "cpu_count": 8,
        "gpus": [{"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960}],
        "driver": "535.104.05",
    }
    measured_profile(profiles, "demo.gpu", "a100-40g", a100)
    targets = {"gpu": {"executor": "slurm", "partition": "gpu", "hardware": "a100-40g"}}
    settings = settings_for(tmp_path, targets, profiles)
    now = {**a100, "gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}], "driver": "550.54.15"}

    [check] = check_targets(settings, current_fingerprints={"gpu": now})
    assert check.status == "stale"
    assert any("H100" in d for d in check.differences)
    assert any("driver" in d for d in check.differences)

    cache_file = tmp_path / "cache" / "profile-checks.json"
    stored = json.loads(cache_file.read_text())["checks"]["gpu"]["demo.gpu"]
    assert stored["status"] == "stale" and stored["checked_at"] > 0

    target = settings.target("gpu")
    warnings = profile_warnings([target], "hpcqueue-demo", [profiles], settings.cache_dir)
    assert len(warnings) == 1
    assert "demo.gpu" in warnings[0] and "H100" in warnings[0]
    assert "hpcqueue profile gpu --model hpcqueue-demo" in warnings[0]

    # Measured again on the new hardware: the old check no longer applies.
    measured_profile(profiles, "demo.gpu", "a100-40g", now)
    assert profile_warnings([target], "hpcqueue-demo", [profiles], cache_file) == []
    [check] = check_targets(settings, current_fingerprints={"gpu": now})
    assert check.status == "ok"


def test_a_partition_whose_fingerprint_job_fails_is_unknown_not_ok(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpcqueue.errors import DispatchError

    profiles = tmp_path / "profiles"
    measured_profile(profiles, "demo.gpu", "a100-40g", fingerprint())

    def no_cluster(target: Target, folder: Path, **_: Any) -> dict[str, Any]:
        raise DispatchError(f"could not submit the fingerprint job to target {target.name!r}: no controller")

    monkeypatch.setattr(staleness, "remote_fingerprint", no_cluster)
    settings = settings_for(
        tmp_path, {"gpu": {"executor": "slurm", "partition": "gpu", "hardware": "a100-40g"}}, profiles
    )
    [check] = check_targets(settings)
    assert check.status == "unknown"
    assert "no controller" in check.differences[0]


def test_profile_warnings_are_cheap_and_name_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profiles = tmp_path / "profiles"
    measured_profile(profiles, "demo.local", "cpu-generic", {**fingerprint(), "cpu_count": 4096})

    def no_jobs(*_: Any, **__: Any) -> dict[str, Any]:
        raise AssertionError("profile_warnings must not submit jobs")

    monkeypatch.setattr(staleness, "remote_fingerprint", no_jobs)
    targets = [
        Target(name="local", hardware="cpu-generic"),
        Target(name="gpu", executor="slurm", partition="gpu", hardware="v100-16g"),
        Target(name="lowpower", executor="slurm", partition="lowpower", hardware="m1-pro", profile=SHIPPED),
    ]
    search_path = profile_search_path([profiles])  # the shipped profiles too
    warnings = profile_warnings(targets, "hpcqueue-demo", search_path, tmp_path / "no-cache-yet")
    assert len(warnings) == 2, warnings
    stale, missing = warnings
    assert "demo.local" in stale and "4096" in stale and "hpcqueue profile local" in stale
    assert "'gpu'" in missing and "v100-16g" in missing and "hpcqueue profile gpu" in missing


def test_checks_cache_path_accepts_a_directory_or_the_file(tmp_path: Path) -> None:
    assert checks_cache_path(tmp_path) == tmp_path / "profile-checks.json"
    assert checks_cache_path(tmp_path / "mine.json") == tmp_path / "mine.json"
