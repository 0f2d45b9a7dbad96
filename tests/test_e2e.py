"""End to end through the real CLI: real demo model, submitit's local executor, a real SQLite ledger."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, run_cli
from tests.helpers import input_ids, ledger_db

pytestmark = pytest.mark.slow


def _ledger_counts(env: dict[str, str]) -> dict[str, int]:
    with ledger_db(env) as db:
        return {
            t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("batches", "tasks", "requests", "measurements")
        }


def _method_of(meter: str) -> str:
    """The method a meter's figures must carry: estimated as soon as the estimate is part of the meter
    (``estimate``, or ``estimate+nvml`` on a GPU node without CPU counters), measured otherwise."""
    return "estimated" if "estimate" in meter.split("+") else "measured"


def test_submit_wait_results_and_resubmit(hq_env: dict[str, str], tmp_path: Path) -> None:
    """The default meter (``auto``) runs in the workers, subprocesses that no fake of this process reaches:
    it uses whatever energy counters this machine has. So the energy is checked for what holds on any
    machine: every figure carries a method and a meter, and a figure of the estimate is never labelled
    measured. The fallback to the estimate without counters is tested in-process with the counters faked
    away (tests/worker/test_runner.py, tests/meters/)."""
    prompts = EXAMPLES / "prompts.jsonl"
    n_lines = len(input_ids(prompts))
    assert n_lines >= 50

    first = run_cli(["submit", str(prompts), "--wait", "--json", "--task-size", "24"], hq_env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    for key in ("batch_id", "requests", "succeeded", "failed", "energy_j", "energy_method", "meters"):
        assert key in report, key
    assert report["requests"] == n_lines
    assert report["succeeded"] == n_lines and report["failed"] == 0
    (meter,) = report["meters"]  # one local target on one machine: one meter
    assert report["energy_method"] == _method_of(meter)  # never claim "measured" for an estimate
    assert report["energy_j"] > 0
    assert report["tasks"]["total"] == -(-n_lines // 24)

    counts = _ledger_counts(hq_env)
    assert counts["batches"] == 1 and counts["requests"] == n_lines
    assert counts["tasks"] == report["tasks"]["total"]
    with ledger_db(hq_env) as db:
        rows = db.execute(
            "SELECT status, target, input_tokens, output_tokens, energy_j, energy_method, attribution_rule, "
            "energy_meter FROM requests"
        ).fetchall()
        task_energy = db.execute("SELECT sum(energy_j) FROM tasks").fetchone()[0]
    assert {r[0] for r in rows} == {"succeeded"}
    assert {r[1] for r in rows} == {"local"}
    assert all(r[2] > 0 and r[3] > 0 and r[4] > 0 for r in rows)
    assert {(r[5], r[7]) for r in rows} == {(report["energy_method"], meter)}
    assert all(r[6] for r in rows)
    assert sum(r[4] for r in rows) == pytest.approx(task_energy, rel=1e-6)

    out = tmp_path / "out.jsonl"
    res = run_cli(["results", report["batch_id"], "-o", str(out)], hq_env)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in lines] == input_ids(prompts)
    assert all(r["error"] is None and isinstance(r["text"], str) for r in lines)
    assert {r["finish_reason"] for r in lines} <= {"stop", "length"}

    again = run_cli(["submit", str(prompts), "--wait", "--json", "--task-size", "24"], hq_env)
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["batch_id"] == report["batch_id"]
    assert second["resumed"] is True and second["submitted_tasks"] == 0
    assert second["succeeded"] == n_lines
    assert _ledger_counts(hq_env) == counts

    collect = run_cli(["collect", report["batch_id"]], hq_env)
    assert collect.returncode == 0, collect.stderr
    assert _ledger_counts(hq_env) == counts

    summary = run_cli(["ledger", "summary", "--by", "target", "--format", "json"], hq_env)
    assert summary.returncode == 0, summary.stderr
    (row,) = json.loads(summary.stdout)
    assert row["target"] == "local" and row["requests"] == n_lines


def _third_line_invalid(tmp_path: Path, third: str) -> Path:
    """Four requests, a completion and a chat among them, whose third line is ``third``."""
    path = tmp_path / "mixed.jsonl"
    lines = [
        '{"id": "a", "prompt": "Name three schedulers.", "max_new_tokens": 8}',
        '{"id": "b", "prompt": "What is RAPL?", "max_new_tokens": 8}',
        third,
        '{"id": "d", "messages": [{"role": "user", "content": "Hello"}], "max_new_tokens": 8}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_invalid_line_three_submits_nothing(hq_env: dict[str, str], tmp_path: Path) -> None:
    bad = _third_line_invalid(tmp_path, '{"id": "c", "prompt": "Why?", "max_new_tokens": -4}')
    result = run_cli(["submit", str(bad), "--wait"], hq_env)
    assert result.returncode == 2
    assert f"{bad}:3" in result.stderr and "max_new_tokens" in result.stderr
    batch_root = Path(hq_env["HPCQUEUE_BATCH_ROOT"])
    assert not batch_root.exists() or not any(batch_root.iterdir())
    ledger = Path(hq_env["HPCQUEUE_DB_URL"].removeprefix("sqlite:///"))
    assert not ledger.exists() or _ledger_counts(hq_env)["batches"] == 0


def test_skip_invalid_runs_the_rest_and_reports_rejects(hq_env: dict[str, str], tmp_path: Path) -> None:
    mixed = _third_line_invalid(tmp_path, '{"id": "c", "prompt": 42}')
    result = run_cli(["submit", str(mixed), "--wait", "--json", "--skip-invalid"], hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["succeeded"] == 3 and report["rejected"] == 1
    batch_dir = Path(report["batch_dir"])
    (reject,) = [json.loads(line) for line in (batch_dir / "rejects.jsonl").read_text().splitlines()]
    assert reject["line"] == 3 and reject["errors"][0]["field"] == "prompt"

    out = tmp_path / "out.jsonl"
    assert run_cli(["results", report["batch_id"], "-o", str(out)], hq_env).returncode == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == ["a", "b", "c", "d"]
    assert records[2]["error"]["code"] == "invalid_input"
    assert records[3]["error"] is None


def test_openai_batch_input_gives_openai_batch_output(hq_env: dict[str, str], tmp_path: Path) -> None:
    source = EXAMPLES / "openai-batch.jsonl"
    result = run_cli(["submit", str(source), "--wait", "--json", "--max-new-tokens", "16"], hq_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    out = tmp_path / "out.jsonl"
    assert run_cli(["results", report["batch_id"], "-o", str(out)], hq_env).returncode == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    requests = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    assert [r["custom_id"] for r in records] == [r["custom_id"] for r in requests]
    for record, request in zip(records, requests, strict=True):
        assert record["error"] is None
        body = record["response"]["body"]
        assert record["response"]["status_code"] == 200
        if request["url"] == "/v1/chat/completions":
            assert body["object"] == "chat.completion"
            assert isinstance(body["choices"][0]["message"]["content"], str)
        else:
            assert body["object"] == "text_completion"
        assert (
            body["usage"]["total_tokens"]
            == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        )


def test_dry_run_writes_nothing(hq_env: dict[str, str]) -> None:
    result = run_cli(["submit", str(EXAMPLES / "prompts.jsonl"), "--dry-run", "--json"], hq_env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["per_target"]["local"]["requests"] == plan["requests"]
    batch_root = Path(hq_env["HPCQUEUE_BATCH_ROOT"])
    assert not batch_root.exists() or not any(batch_root.iterdir())
