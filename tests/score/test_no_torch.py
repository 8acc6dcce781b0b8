"""The CI path is light: `score` runs with torch impossible to import, and the CLI starts without loading it.

Each check runs in a fresh interpreter, so what the test process itself imported does not matter.
sys.modules['torch'] = None makes every `import torch` raise ImportError there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from labelaudit.synth import SynthConfig, write_synth_dataset

BLOCK_TORCH = "import sys; sys.modules['torch'] = None\n"
REPORT_TORCH = textwrap.dedent("""
    loaded = sorted(m for m in sys.modules if (m == 'torch' or m.startswith('torch.')) and sys.modules[m] is not None)
    print('TORCH_LOADED', loaded)
""")


def _python(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, make_run) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("notorch")
    root = write_synth_dataset(base / "Dataset006_NoTorch", SynthConfig(cases=2, size=(24, 20, 3), seed=5))
    run_dir = make_run(base / "run", root, folds=[["case_000"], ["case_001"]])  # ONNX built here, beforehand
    return root, run_dir


def test_scoring_end_to_end_without_torch(tiny_run, tmp_path):
    root, run_dir = tiny_run
    code = BLOCK_TORCH + textwrap.dedent(f"""
        from pathlib import Path
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit('torch should be unimportable here')
        from labelaudit.config import ScoreConfig
        from labelaudit.score.pipeline import score_dataset
        audit = score_dataset(ScoreConfig(run_dir=Path({str(run_dir)!r}), out_dir=Path('api'), device='cpu'))
        print('SLICES', len(audit.slices))
        from labelaudit.cli import app
        try:
            app(['score', {str(root)!r}, '--model', {str(run_dir)!r}, '--out', 'cli', '--device', 'cpu'])
        except SystemExit as exc:
            print('EXIT', exc.code)
    """) + REPORT_TORCH
    result = _python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SLICES 6" in result.stdout
    assert "EXIT 0" in result.stdout, result.stdout + result.stderr
    assert "TORCH_LOADED []" in result.stdout
    for folder in ("api", "cli"):
        summary = json.loads((tmp_path / folder / "summary.json").read_text())
        assert summary["counts"]["slices"] == 6
        assert sorted(p.name for p in (tmp_path / folder / "maps").iterdir()) == [
            "case_000_fixed.nii.gz", "case_000_noise.nii.gz", "case_000_pred.nii.gz",
            "case_001_fixed.nii.gz", "case_001_noise.nii.gz", "case_001_pred.nii.gz"]


def test_importing_the_cli_loads_neither_torch_nor_onnxruntime():
    code = textwrap.dedent("""
        import sys
        import labelaudit.cli.app
        print('HEAVY', sorted(m for m in ('torch', 'onnxruntime', 'SimpleITK', 'monai') if m in sys.modules))
    """)
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["score", "--help"]])
def test_help_works_without_torch(args):
    code = BLOCK_TORCH + textwrap.dedent(f"""
        from labelaudit.cli import app
        try:
            app({args!r})
        except SystemExit as exc:
            print('EXIT', exc.code)
    """) + REPORT_TORCH
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "EXIT 0" in result.stdout and "TORCH_LOADED []" in result.stdout
    assert ("score" in result.stdout) and ("--model" in result.stdout if args[0] == "score" else True)
