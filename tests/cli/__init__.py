"""Helpers shared by the CLI tests: every command of the app, and the app run in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import typer.main

from hpcqueue.cli import app
from tests.conftest import REPO


def _commands(group: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in getattr(group, "commands", {}).items():
        path = (*prefix, name)
        found.append(path)
        found.extend(_commands(command, path))  # sub-groups (``ledger``) have commands of their own
    return found


# Every command and sub-command as the words a user types: ("submit",), ("profiles", "import", "wilkins2024").
COMMANDS = _commands(typer.main.get_command(app))  # type: ignore[arg-type]


def run_app_in_subprocess(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI with ``args`` in a fresh interpreter, which prints ``EXIT <code>`` when the app exits
    and, last, ``TORCH`` or ``NO-TORCH``: whether the command imported torch."""
    code = (
        "import sys\n"
        "from hpcqueue.cli import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit as exc:\n"
        "    print('EXIT', exc.code)\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
