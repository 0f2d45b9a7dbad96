"""Batch ids, the batch directory and task states read back from it."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pandas as pd
import pytest

from hpcqueue.config import Settings, Target
from hpcqueue.dispatch.batchdir import (
    BatchDir,
    batch_id_for,
    create_batch,
    is_locked,
    latest_batch,
    open_batch,
    task_location,
)
from hpcqueue.errors import BatchNotFoundError

SETTINGS = Settings().model_dump(mode="json")
TARGETS = {"local": Target(name="local").model_dump(mode="json")}


def _id(**changes: object) -> str:
    settings = {**SETTINGS, **{k: v for k, v in changes.items() if k in SETTINGS}}
    return batch_id_for(
        str(changes.get("sha", "ab" * 32)),
        settings,
        changes.get("targets", TARGETS),  # type: ignore[arg-type]
        str(changes.get("fingerprint", "f00d")),
        skip_invalid=bool(changes.get("skip_invalid", False)),
    )


def test_batch_id_is_stable_and_depends_on_what_changes_results() -> None:
    assert _id() == _id()
    assert _id().startswith("hq-") and len(_id()) == 19
    assert _id(sha="cd" * 32) != _id()
    assert _id(model="other/model") != _id()
    assert _id(max_new_tokens=5) != _id()
    assert _id(policy="single:local") != _id()
    assert _id(fingerprint="beef") != _id()
    assert _id(skip_invalid=True) != _id()
    assert _id(targets={"local": {**TARGETS["local"], "hardware": "m1-pro"}}) != _id()


def test_batch_id_ignores_where_things_are_kept() -> None:
    assert _id(db_url="postgresql://db/ledger", batch_root="/elsewhere", cache_dir="/tmp/c") == _id()


def _make(tmp_path: Path, n_tasks: int = 2) -> BatchDir:
    plan = pd.DataFrame({"line": [1, 2, 4], "task_index": [1, 0, 1], "id": ["a", "b", "d"]})
    raws = pd.Series(['{"prompt":"a"}', '{"prompt":"b"}', '{"prompt":"d"}'])
    specs = [{"task_index": i, "n_requests": int((plan.task_index == i).sum())} for i in range(n_tasks)]
    manifest = {"batch_id": "hq-test", "tasks": specs}
    return create_batch(tmp_path, "hq-test", manifest=manifest, plan=plan, task_specs=specs, raw_lines=raws)


def test_create_batch_writes_task_inputs_in_plan_order(tmp_path: Path) -> None:
    batch = _make(tmp_path)
    task1 = (batch.task_dir(1) / "input.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in task1] == [
        {"line": 1, "request": {"prompt": "a"}},
        {"line": 4, "request": {"prompt": "d"}},
    ]
    assert json.loads((batch.task_dir(0) / "task.json").read_text())["n_requests"] == 1
    assert list(batch.plan()["line"]) == [1, 2, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["hq-test"]  # no staging directory left behind


def test_failed_creation_leaves_no_batch(tmp_path: Path) -> None:
    plan = pd.DataFrame({"line": [1], "task_index": [0]})
    with pytest.raises(KeyError):
        create_batch(
            tmp_path,
            "hq-x",
            manifest={},
            plan=plan,
            task_specs=[{"no_index": 0}],
            raw_lines=pd.Series(["{}"]),
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(BatchNotFoundError, match="hq-x"):
        open_batch(tmp_path, "hq-x")


def test_task_states_follow_the_files(tmp_path: Path) -> None:
    batch = _make(tmp_path)
    assert batch.task_states() == {0: "pending", 1: "pending"}
    lock_path = batch.task_dir(0) / "lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # flock locks belong to the open file description: a second open() in this process cannot take it
        assert is_locked(lock_path)
        assert batch.task_state(0) == "running"
    finally:
        os.close(fd)
    assert not is_locked(lock_path)
    (batch.task_dir(0) / "metrics.json").write_text('{"state": "completed"}')
    (batch.task_dir(1) / "metrics.json").write_text('{"state": "failed", "error": "boom"}')
    assert batch.task_states() == {0: "completed", 1: "failed"}


def test_latest_batch_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(BatchNotFoundError, match="submit one"):
        latest_batch(tmp_path)
    batch = _make(tmp_path)
    assert latest_batch(tmp_path).path == batch.path
    assert open_batch(tmp_path, "hq-test").path == batch.path


def _make_scheduled(tmp_path: Path, schedule: dict | None) -> BatchDir:
    plan = pd.DataFrame({"line": [1, 2, 3], "task_index": [0, 1, 2]})
    specs = [{"task_index": i, "n_requests": 1} for i in range(3)]
    return create_batch(
        tmp_path,
        "hq-sched",
        manifest={"batch_id": "hq-sched", "tasks": specs},
        plan=plan,
        task_specs=specs,
        raw_lines=pd.Series(["{}"] * 3),
        schedule=schedule,
    )


def test_schedule_is_written_with_the_batch_and_read_back(tmp_path: Path) -> None:
    batch = _make_scheduled(
        tmp_path, {"deadline_at": 1_800_000_000.5, "begin_at": {"1": 1_799_990_000.0, 2: 1_799_995_000}}
    )
    assert batch.deadline_at() == 1_800_000_000.5
    assert batch.begin_times() == {1: 1_799_990_000.0, 2: 1_799_995_000.0}
    on_disk = json.loads((batch.path / "schedule.json").read_text())
    assert on_disk == {
        "deadline_at": 1_800_000_000.5,
        "begin_at": {"1": 1_799_990_000.0, "2": 1_799_995_000.0},
    }
    assert (batch.path / "schedule.json").stat().st_mode & 0o777 == 0o600


def test_a_batch_from_before_schedules_has_no_deadline_and_starts_everything_now(tmp_path: Path) -> None:
    batch = _make_scheduled(tmp_path, None)
    assert not (batch.path / "schedule.json").exists()
    assert batch.begin_times() == {} and batch.deadline_at() is None


def test_begin_times_merge_and_none_removes(tmp_path: Path) -> None:
    batch = _make_scheduled(tmp_path, {"deadline_at": None, "begin_at": {"0": 100.0, "1": 200.0}})
    batch.set_begin_times({1: None, 2: 300.0, 0: 150.0})
    assert batch.begin_times() == {0: 150.0, 2: 300.0}
    batch.set_deadline(400.0)
    assert batch.deadline_at() == 400.0 and batch.begin_times() == {0: 150.0, 2: 300.0}
    with pytest.raises(ValueError, match="task 2"):
        batch.set_begin_times({2: float("nan")})
    assert batch.begin_times() == {0: 150.0, 2: 300.0}  # a refused update changes nothing


def test_an_old_batch_gets_an_owner_only_schedule_when_re_planned(tmp_path: Path) -> None:
    batch = _make_scheduled(tmp_path, None)
    old_umask = os.umask(0o022)
    try:
        batch.set_begin_times({2: 500.0})
    finally:
        os.umask(old_umask)
    assert batch.begin_times() == {2: 500.0} and batch.deadline_at() is None
    for name in ("schedule.json", "schedule.lock"):
        assert (batch.path / name).stat().st_mode & 0o777 == 0o600, name


def test_a_damaged_schedule_names_the_file_and_the_format(tmp_path: Path) -> None:
    batch = _make_scheduled(tmp_path, None)
    (batch.path / "schedule.json").write_text('{"begin_at": {"x": 1}}')
    with pytest.raises(ValueError, match=r"schedule\.json is not a batch schedule.*begin_at"):
        batch.begin_times()


def test_a_bad_schedule_leaves_no_batch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="deadline_at"):
        _make_scheduled(tmp_path, {"deadline_at": "tomorrow", "begin_at": {}})
    assert list(tmp_path.iterdir()) == []


def test_task_location_finds_the_batch_of_a_task_directory(tmp_path: Path) -> None:
    batch = _make_scheduled(tmp_path, None)
    assert task_location(batch.task_dir(2)) == (batch, 2)
    assert task_location(tmp_path / "by-hand" / "000002") is None
    assert task_location(batch.path / "tasks" / "notes") is None
