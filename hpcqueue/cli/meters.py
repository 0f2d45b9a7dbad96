"""``hpcqueue doctor``: what this machine offers hpcqueue: its energy meters (and why one cannot be used), and
per target, whether the target's interpreter can run its engine and on which device."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from hpcqueue.cli.common import add_row, fail, out, print_json, resolve_settings
from hpcqueue.cli.params import ConfigOpt, EngineOpt, JsonOpt
from hpcqueue.errors import HpcqueueError


def doctor(config: ConfigOpt = None, engine: EngineOpt = None, as_json: JsonOpt = False) -> None:
    """What this machine offers hpcqueue: its energy meters (and why a meter cannot be used here), and for
    each target of the config whether its interpreter can run the target's engine, on which device.

    The interpreters are asked on this machine: for Slurm targets that holds when the compute nodes share
    its file system and software.
    """
    from hpcqueue.dispatch.interpreters import probe_interpreter
    from hpcqueue.meters import doctor_report

    try:
        settings = resolve_settings(config, engine=engine)
        report: dict[str, Any] = {"meters": doctor_report()}
        report["targets"] = [
            probe_interpreter(t.python, target=t.name, engine=settings.engine_of(t)).to_dict()
            for t in settings.targets.values()
        ]
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json(report)
        return
    _render_report(report["meters"], title="energy meters")
    _render_report(report["targets"], title="targets: interpreter and engine")


def _render_report(report: Any, title: str | None = None) -> None:
    """A dict of sections: lists of records become tables, the rest key/value lines."""
    if isinstance(report, list) and report and all(isinstance(r, dict) for r in report):
        columns = list(dict.fromkeys(k for r in report for k in r))
        # A nested value every row shares (the job's devices...) is printed once, under the table.
        shared = [
            c
            for c in columns
            if len(report) > 1
            and isinstance(report[0].get(c), dict)
            and all(r.get(c) == report[0].get(c) for r in report)
        ]
        table = Table(*[c for c in columns if c not in shared], title=title)
        for row in report:
            add_row(table, *[_cell(row.get(c)) for c in columns if c not in shared])
        out.print(table)
        for column in shared:
            out.print(f"{column}: {_cell(report[0][column])}", markup=False, soft_wrap=True)
        return
    if isinstance(report, dict):
        scalars = {k: v for k, v in report.items() if not isinstance(v, (list, dict)) or not v}
        if scalars:
            table = Table("key", "value", show_header=False, title=title)
            for key, value in scalars.items():
                add_row(table, key, _cell(value))
            out.print(table)
        for key, value in report.items():
            if key not in scalars:
                _render_report(value, title=key)
        return
    out.print(f"{title}: {_cell(report)}" if title else _cell(report))


def _cell(value: Any) -> str:
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)
