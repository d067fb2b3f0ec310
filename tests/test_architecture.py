"""The architecture and the style, checked in every test run: import-linter's contracts (layers,
recipes independent of each other, nothing importing the command line, no import cycles) and ruff."""

from __future__ import annotations

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


def test_the_command_line_starts_without_loading_ml_libraries():
    code = ("import sys; from mentor.cli import build_parser; build_parser(['tune']); "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# files whose names only their owner may write: the owner reads and writes them for everyone else
OWNED_FILES = {"mentor_model.json": "mentor/model_record.py"}


def test_only_its_owner_names_a_folder_file():
    """A model folder's record is read and written through mentor.model_record alone, so its format
    has one definition (and one migration); a module naming the file would bypass both."""
    offenders = [f"{path.relative_to(ROOT)} names {name} (use {owner})"
                 for folder in ("mentor", "bench", "examples") for path in sorted((ROOT / folder).rglob("*.py"))
                 for name, owner in OWNED_FILES.items()
                 if str(path.relative_to(ROOT)) != owner and name in path.read_text(encoding="utf-8")]
    assert not offenders, "\n".join(offenders)
