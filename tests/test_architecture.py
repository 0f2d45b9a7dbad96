"""The package's shape, checked: layering without import cycles, torch only where a model runs, one home for
every exception, and no two modules or classes sharing a name for different things.

The layering is the import-linter contract in pyproject.toml (``[tool.importlinter]``); these tests run the
real ``lint-imports`` over the package, and over a copy with a violation planted in it, to show the contract
can fail.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "hpcqueue"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
#: Kept only so jobs queued by hpcqueue 0.1 still find the collect job (tests/test_upgrade.py).
COMPAT_ALIASES = {"hpcqueue/status.py"}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` run on the package under ``root`` with the contracts of its pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _copy_of_the_package(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(PACKAGE, root / "hpcqueue", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_import_contracts_are_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    ("module", "planted", "broken"),
    [
        # A lower stage importing a higher one (and with it a cycle: the CLI imports the ledger).
        ("hpcqueue/ledger/rows.py", "from hpcqueue.cli import app", "hpcqueue.ledger.rows -> hpcqueue.cli"),
        # Within one layer's siblings: the ledger and the planner must not know each other.
        (
            "hpcqueue/planner/plan.py",
            "import hpcqueue.ledger.db",
            "hpcqueue.planner.plan -> hpcqueue.ledger.db",
        ),
        # Even a lazy import inside a function counts.
        ("hpcqueue/errors.py", "def _f():\n    import hpcqueue.config", "hpcqueue.errors -> hpcqueue.config"),
        # torch in a stage that runs no model.
        ("hpcqueue/planner/costs.py", "import torch", "hpcqueue.planner.costs -> torch"),
    ],
    ids=["lower-imports-higher", "siblings", "lazy", "torch"],
)
def test_a_planted_violation_breaks_the_contract(
    module: str, planted: str, broken: str, tmp_path: Path
) -> None:
    root = _copy_of_the_package(tmp_path)
    assert _lint_imports(root).returncode == 0  # the copy itself is clean
    with open(root / module, "a", encoding="utf-8") as handle:
        handle.write(f"\n\n{planted}\n")
    result = _lint_imports(root)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout and broken in result.stdout, result.stdout


def test_a_new_top_level_module_must_be_placed_in_a_layer(tmp_path: Path) -> None:
    root = _copy_of_the_package(tmp_path)
    (root / "hpcqueue" / "newstage.py").write_text('"""A stage nobody placed."""\n')
    result = _lint_imports(root)
    assert result.returncode != 0 and "hpcqueue.newstage" in result.stdout, result.stdout


def _python_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _base_names(node: ast.ClassDef) -> list[str]:
    names = []
    for base in node.bases:
        if isinstance(base, ast.Name):
            names.append(base.id)
        elif isinstance(base, ast.Attribute):
            names.append(base.attr)
    return names


def test_every_exception_is_defined_in_errors_py() -> None:
    errors = ast.parse((PACKAGE / "errors.py").read_text(encoding="utf-8"))
    ours = {n.name for n in ast.walk(errors) if isinstance(n, ast.ClassDef)}
    exception_bases = {"Exception", "BaseException", "ValueError", "RuntimeError", "OSError", *ours}
    elsewhere = [
        f"{path.relative_to(REPO)}: class {node.name}"
        for path in _python_files()
        if path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef)
        and any(b in exception_bases or b.endswith(("Error", "Exception")) for b in _base_names(node))
    ]
    assert elsewhere == [], "exceptions belong in hpcqueue/errors.py"


def test_no_two_modules_or_public_classes_share_a_name() -> None:
    modules: dict[str, list[str]] = defaultdict(list)
    classes: dict[str, list[str]] = defaultdict(list)
    for path in _python_files():
        relative = str(path.relative_to(REPO))
        if path.stem not in ("__init__", "__main__") and relative not in COMPAT_ALIASES:
            modules[path.stem].append(relative)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                classes[node.name].append(relative)
    assert {name: paths for name, paths in modules.items() if len(paths) > 1} == {}
    assert {name: paths for name, paths in classes.items() if len(paths) > 1} == {}
