"""The CLI starts light: no torch, ONNX Runtime or SimpleITK at import or for --help (fresh processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "onnxruntime", "SimpleITK")
ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", timeout=60, cwd=ROOT)


def test_importing_the_cli_loads_no_heavy_module() -> None:
    result = _run(f"import sys, labelaudit.cli.app; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_runs_without_heavy_modules() -> None:
    """Every command's --help builds the whole Typer app; none of it may pull in torch."""
    code = (
        "import sys\n"
        "from labelaudit.cli import app\n"
        "try:\n"
        "    app(['--help'], prog_name='labelaudit')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules], code)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert "inspect" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "LOADED [] 0"


def _run_help(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command --help` with Python's import log on stderr (PYTHONPROFILEIMPORTTIME reaches console scripts)."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    return subprocess.run([*command, "--help"], capture_output=True, encoding="utf-8", timeout=60, cwd=ROOT, env=env)


def _imported(stderr: str) -> set[str]:
    names = {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}
    assert "typer" in names  # the log is there, so an absent torch means something
    return names


def test_python_dash_m_help_exits_0_without_torch() -> None:
    result = _run_help([sys.executable, "-m", "labelaudit"])
    assert result.returncode == 0, result.stderr
    assert "Usage: labelaudit" in result.stdout and "inspect" in result.stdout
    assert not _imported(result.stderr) & set(HEAVY)


def test_console_script_help_exits_0_without_torch() -> None:
    script = Path(sys.executable).with_name("labelaudit")
    if not script.exists():
        script = shutil.which("labelaudit")
    if script is None:
        pytest.skip("the labelaudit console script is not installed (pip install -e .)")
    result = _run_help([str(script)])
    assert result.returncode == 0, result.stderr
    assert "Usage: labelaudit" in result.stdout
    assert not _imported(result.stderr) & set(HEAVY)


def test_version() -> None:
    result = subprocess.run([sys.executable, "-m", "labelaudit", "--version"], capture_output=True, encoding="utf-8",
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.startswith("labelaudit ")
