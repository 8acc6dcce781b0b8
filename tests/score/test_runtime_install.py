"""ONNX Runtime missing, installed twice or half-uninstalled: `score` and `check` exit 5 with the pip command.

onnxruntime and onnxruntime-gpu both install the `onnxruntime` module; pip lets both into one environment, and
uninstalling either then leaves the other broken. The import is blocked with sys.modules['onnxruntime'] = None,
and the dist-info folders pip leaves are planted in tmp_path, so nothing here depends on what is installed.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from labelaudit.errors import MissingDependencyError
from labelaudit.score import providers
from labelaudit.synth import SynthConfig, write_synth_dataset

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "demo-pint"


def _plant(folder: Path, *dist_infos: str) -> Path:
    for name in dist_infos:
        (folder / name).mkdir(parents=True)
    return folder


@pytest.fixture
def no_onnxruntime(monkeypatch):
    """`import onnxruntime` raises ImportError, and no ORT distribution is registered anywhere."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(providers, "_installed_runtimes", lambda folders: [])


def test_the_install_command_follows_pyprojects_markers(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    assert providers.onnxruntime_install() == (
        "pip install onnxruntime-gpu   (or, for CPU only: pip install onnxruntime; never both)")
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    assert providers.onnxruntime_install() == "pip install onnxruntime"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert providers.onnxruntime_install() == "pip install onnxruntime"


def test_missing_onnxruntime_is_exit_5_naming_the_pip_command(no_onnxruntime):
    with pytest.raises(MissingDependencyError) as caught:
        providers.require_onnxruntime()
    assert caught.value.exit_code == 5
    assert caught.value.message == "ONNX Runtime (onnxruntime) is not installed"
    assert caught.value.hint == f"install it with: {providers.onnxruntime_install()}"
    with pytest.raises(MissingDependencyError, match="is not installed"):
        providers.choose_device("cpu")  # score's first use of ONNX Runtime


@pytest.mark.parametrize("command", ["check", "score"])
def test_check_and_score_without_onnxruntime_exit_5_with_the_hint(no_onnxruntime, cli, tmp_path, command):
    # the shipped model's channel and labels, so that score gets as far as ONNX Runtime
    dataset = write_synth_dataset(tmp_path / "Dataset031_NoOrt", SynthConfig(cases=1, size=(16, 16, 2), classes=2,
                                                                          modality="MR"))
    classes = json.loads((SHIPPED / "run.json").read_text())["classes"]
    meta = json.loads((dataset / "dataset.json").read_text())
    (dataset / "dataset.json").write_text(json.dumps({**meta, "labels": dict(zip(classes["names"],
                                                                                 classes["values"]))}))
    extra = ["--out", tmp_path / "audit"] if command == "score" else []
    result = cli(command, dataset, "--model", SHIPPED, "--device", "cpu", *extra)
    assert result.exit_code == 5, result.output
    stderr = " ".join(result.stderr.split())
    assert "error: ONNX Runtime (onnxruntime) is not installed" in stderr
    assert f"hint: install it with: {' '.join(providers.onnxruntime_install().split())}" in stderr
    assert not (tmp_path / "audit").exists()


def test_registered_but_unimportable_says_broken_and_how_to_reinstall(monkeypatch, tmp_path):
    site = _plant(tmp_path / "site", "onnxruntime_gpu-1.31.1.dist-info")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(sys, "path", [str(site)])
    with pytest.raises(MissingDependencyError) as caught:
        providers.import_onnxruntime()
    assert caught.value.exit_code == 5
    assert caught.value.message.startswith("ONNX Runtime (onnxruntime) is broken: onnxruntime-gpu 1.31.1 is "
                                           "installed but `import onnxruntime` fails")
    assert caught.value.hint.startswith("install it with: pip uninstall -y onnxruntime onnxruntime-gpu && pip install")


def test_both_runtimes_in_one_environment_is_exit_5(monkeypatch, tmp_path):
    site = _plant(tmp_path / "site", "onnxruntime-1.32.0.dist-info", "onnxruntime_gpu-1.31.1.dist-info",
                  "onnxruntime_extensions-0.14.0.dist-info", "onnxruntime")  # extensions: another module
    fake = types.ModuleType("onnxruntime")
    fake.__path__ = [str(site / "onnxruntime")]
    fake.InferenceSession = object
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    with pytest.raises(MissingDependencyError) as caught:
        providers.import_onnxruntime()
    assert caught.value.message == ("ONNX Runtime is installed twice (onnxruntime 1.32.0 and onnxruntime-gpu "
                                    "1.31.1), and both write the one onnxruntime module")
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime" in caught.value.hint


def test_a_module_left_by_uninstalling_one_of_two_is_exit_5(monkeypatch, tmp_path):
    site = _plant(tmp_path / "site", "onnxruntime_gpu-1.31.1.dist-info", "onnxruntime")
    fake = types.ModuleType("onnxruntime")  # what `import onnxruntime` gives then: a namespace package
    fake.__path__ = [str(site / "onnxruntime")]
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    with pytest.raises(MissingDependencyError, match="is broken: its module has no InferenceSession") as caught:
        providers.import_onnxruntime()
    assert caught.value.exit_code == 5


def test_the_installed_runtime_passes():
    ort = pytest.importorskip("onnxruntime")
    assert providers.import_onnxruntime() is ort
