"""The CLI layer's layout (issue 22): every command is one module under lrt/cli reached through the one
dispatch table, argparse lives only there, and the light commands do not pay for torch."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from lrt.cli import BENCH, COMMANDS

LRT = Path(__file__).resolve().parents[1] / "lrt"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (function-level imports count)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_argparse_only_in_the_cli_package():
    offenders = [str(p.relative_to(LRT.parent)) for p in sorted(LRT.rglob("*.py"))
                 if "cli" not in p.relative_to(LRT).parts[:1] and "argparse" in _imports(p)]
    assert offenders == []


def test_nothing_below_the_cli_imports_it():
    offenders = [str(p.relative_to(LRT.parent)) for p in sorted(LRT.rglob("*.py"))
                 if "cli" not in p.relative_to(LRT).parts[:1]
                 and any(m == "lrt.cli" or m.startswith("lrt.cli.") for m in _imports(p))]
    assert offenders == []


@pytest.mark.parametrize("module", [*(m for m in COMMANDS.values()), *BENCH.values()])
def test_every_table_entry_is_a_cli_module_with_main(module):
    assert module.startswith("lrt.cli.")
    assert callable(importlib.import_module(module).main)


@pytest.mark.parametrize("argv", [["--help"], ["eval", "--help"], ["validate", "--help"], ["recipes", "list"]])
def test_light_commands_do_not_import_torch(argv):
    code = ("import sys, contextlib, io\nfrom lrt.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        rc = main(sys.argv[1:])\n    except SystemExit as e:\n        rc = e.code\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules)\n"
            "print(rc, heavy)\n")
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] in ("0 []", "None []"), p.stdout
