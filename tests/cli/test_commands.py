"""The CLI's surface: every command has help, errors become exit codes, light commands never import torch."""

from __future__ import annotations

import json

import pytest
import typer.main
from typer.testing import CliRunner

from hpcqueue.cli import app
from tests.cli import COMMANDS, run_app_in_subprocess
from tests.fakes.machine import NoCounters

runner = CliRunner()


def test_the_documented_commands_exist() -> None:
    for expected in [("submit",), ("status",), ("collect",), ("results",), ("ledger", "summary")]:
        assert expected in COMMANDS


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    node = typer.main.get_command(app)
    for name in command:
        node = node.commands[name]  # type: ignore[attr-defined]
    summary = (node.help or "").strip().splitlines()
    assert summary, f"{' '.join(command)} has no help text"
    assert " ".join(summary[0].split()[:4]) in " ".join(result.output.split())


@pytest.mark.parametrize(
    "args",
    [["--help"], ["ledger", "summary"], ["ledger", "batches"], ["status"], ["collect"], ["submit", "--help"]],
    ids=" ".join,
)
def test_commands_that_run_no_model_do_not_import_torch(args: list[str], hq_env: dict[str, str]) -> None:
    proc = run_app_in_subprocess(args, hq_env)
    imported = proc.stdout.strip().endswith("TORCH") and not proc.stdout.strip().endswith("NO-TORCH")
    assert not imported, proc.stdout + proc.stderr
    assert "NO-TORCH" in proc.stdout


def test_unknown_config_key_is_a_clear_error(hq_env: dict[str, str], tmp_path) -> None:
    config = tmp_path / "cluster.toml"
    config.write_text('[targets.gpu]\nexecutor = "slurm"\npartiton = "gpu"\n', encoding="utf-8")
    result = runner.invoke(app, ["ledger", "summary", "--config", str(config)])
    assert result.exit_code == 2
    assert "targets.gpu.partiton: unknown key" in result.output
    assert "partition" in result.output


def test_results_of_unknown_batch_names_the_batch(hq_env: dict[str, str]) -> None:
    result = runner.invoke(app, ["results", "hq-doesnotexist"])
    assert result.exit_code == 1
    assert "hq-doesnotexist" in result.output


def test_ledger_summary_formats_on_an_empty_ledger(hq_env: dict[str, str]) -> None:
    as_json = runner.invoke(app, ["ledger", "summary", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == []
    as_csv = runner.invoke(app, ["ledger", "summary", "--by", "user", "--format", "csv"])
    assert as_csv.exit_code == 0, as_csv.output
    assert as_csv.output.splitlines()[0].startswith("user,")


def test_a_named_meter_that_cannot_work_is_refused_before_anything_runs(
    hq_env: dict[str, str], no_energy_counters: NoCounters
) -> None:
    """No RAPL counters and no NVIDIA driver (faked away, in this process): asking for them fails loudly
    (exit 2, with the reason) instead of estimating."""
    from tests.conftest import EXAMPLES

    result = runner.invoke(app, ["submit", str(EXAMPLES / "prompts.jsonl"), "--meter", "rapl", "--dry-run"])
    assert result.exit_code == 2
    assert "meter 'rapl' is not available" in result.output
    assert f"no RAPL zones under {no_energy_counters.powercap_root} " in result.output
    profiled = runner.invoke(app, ["profile", "local", "--meter", "nvml", "--quick"])
    assert profiled.exit_code == 2
    assert "meter 'nvml' is not available" in profiled.output and "libnvidia-ml.so.1" in profiled.output


def test_table_cells_are_printed_as_data_not_markup() -> None:
    """A reason such as "pip install 'hpcqueue[zeus]'" keeps its brackets in a table."""
    from rich.table import Table

    from hpcqueue.cli.common import add_row, out

    table = Table("reason")
    add_row(table, "install it with `pip install 'hpcqueue[zeus]'`")
    with out.capture() as captured:
        out.print(table)
    assert "hpcqueue[zeus]" in captured.get()
