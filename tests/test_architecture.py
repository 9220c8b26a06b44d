"""The architecture of docs/architecture.md holds: the import contracts of pyproject.toml ([tool.importlinter])
and short functions."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("contract", "trainer", "dataset", "backend")
NOT_CODE = (REPO / "backend" / "migrations",)  # generated-style migration scripts read top to bottom
MAX_FUNCTION_LINES = 60


def test_import_contracts_of_pyproject_hold():
    # import-linter finds the packages on sys.path: this checkout's, not whichever one is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    r = subprocess.run([sys.executable, "-c", command, "--no-cache"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"import-linter found broken contracts (pyproject.toml):\n{r.stdout}{r.stderr}"


def _functions(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


def test_no_function_is_longer_than_sixty_lines():
    too_long = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if any(path.is_relative_to(skipped) for skipped in NOT_CODE):
                continue
            for fn in _functions(path):
                lines = fn.end_lineno - fn.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.relative_to(REPO)}:{fn.lineno} {fn.name} ({lines} lines)")
    assert not too_long, (f"{len(too_long)} functions longer than {MAX_FUNCTION_LINES} lines; split them:\n"
                          + "\n".join(too_long))
