"""The architecture and the style, checked in every test run: import-linter's contracts (layers,
recipes independent of each other, nothing importing the command line, no import cycles), ruff and
pyright."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    proc = run("lint-imports", "--no-cache")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_finds_nothing():
    proc = run("ruff", "check", "mentor", "tests", "bench", "examples")
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_pyright_finds_no_type_error_in_the_job_model_training_and_the_server():
    """pyright in basic mode on mentor/jobs, mentor/training and mentor/server ([tool.pyright] in
    pyproject.toml): any error fails the run. Its node package comes inside the pinned wheel and runs
    on the machine's node (or one nodeenv fetches); it takes about 45 s of one core."""
    env = {**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}  # no look-up of a newer version on PyPI
    proc = subprocess.run([str(BIN / "pyright"), "--outputjson"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        message = f"pyright did not run (exit {proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        raise AssertionError(message) from None
    errors = [f"{Path(d['file']).relative_to(ROOT)}:{d['range']['start']['line'] + 1}: {d['message']} "
              f"({d.get('rule', '')})" for d in report["generalDiagnostics"] if d["severity"] == "error"]
    checked = [p for package in ("jobs", "training", "server") for p in (ROOT / "mentor" / package).rglob("*.py")]
    assert report["summary"]["filesAnalyzed"] >= len(checked), report["summary"]  # every module of the three
    assert not errors, f"{len(errors)} pyright errors:\n" + "\n".join(errors)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_command_line_starts_without_loading_ml_libraries():
    code = ("import sys; from mentor.cli import build_parser; build_parser(['tune']); "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# files only their owner names: it reads and writes them for everyone else, so each format has one
# definition (and one migration) that every reader and writer goes through
OWNED_FILES = {"mentor_model.json": "mentor/model_record.py", "state.json": "mentor/job_files.py",
               "result.json": "mentor/job_files.py", "config.yaml": "mentor/job_files.py"}


def _code_strings(path: Path) -> list[ast.Constant]:
    """The string constants of a module's code: not its docstrings, which may name a file to explain it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_only_its_owner_names_a_folder_file():
    """A model folder's record goes through mentor.model_record, a job folder's own files through
    mentor.job_files and the job layer's readers: a module naming one of these files (an f-string
    part counts) would bypass the owner, unseen by the import contracts."""
    patterns = {name: re.compile(rf"(?<![\w.-]){re.escape(name)}") for name in OWNED_FILES}  # not trainer_state.json
    offenders = [f"{path.relative_to(ROOT)}:{node.lineno} names {name} (go through {owner})"
                 for folder in ("mentor", "bench", "examples") for path in sorted((ROOT / folder).rglob("*.py"))
                 for node in _code_strings(path) for name, owner in OWNED_FILES.items()
                 if path.relative_to(ROOT).as_posix() != owner and patterns[name].search(node.value)]
    assert not offenders, "\n".join(offenders)


def test_no_route_module_imports_another():
    """Routes are thin adapters (parse, call a service, shape the answer): what two routes share lives in
    mentor.server.services, so a route module never imports another route module (any new one included)."""
    routes = ROOT / "mentor" / "server" / "routes"
    offenders = []
    for path in sorted(routes.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            if any(n.startswith(("mentor.server.routes", ".")) for n in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, "route modules importing route modules (move the shared code into a service):\n" + \
        "\n".join(offenders)
