"""`labelaudit check`, the CI gate: verdicts in every output format, the cache, every exit code, no torch,
and the shipped model on demo cases.

Run folders are the hand-built ONNX "oracle" runs of test_scoring (no training): on the tiny synthetic data
clean slices score below 0.05 and a slice whose structure was erased about 0.85, so the runs here carry a
calibrated-looking threshold of 0.3.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from labelaudit import io
from labelaudit.data import discover_dataset
from labelaudit.preprocess import LabelMap
from labelaudit.synth import SynthConfig, write_synth_dataset

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "demo-pint"
THRESHOLD = {"slice": 0.3, "case": 0.3, "rule": "median+k*mad", "k": 3.0, "floor": 0.05, "n_slices": 12,
             "scored": "out-of-fold", "slice_stats": {"median": 0.03, "mad": 0.005}}
PLANTED = ("case_001", 2)


def invoke(*args: object):
    from labelaudit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def erase_slice(label_path: Path, index: int) -> None:
    """Plant a strong error: the annotator forgot the structure on one slice (numpy axis 0 slices here)."""
    label = io.read_volume(label_path)
    label.array[index] = 0
    io.write_volume(label, label_path)


@pytest.fixture(scope="module")
def model(tmp_path_factory, make_run) -> Path:
    base = tmp_path_factory.mktemp("model")
    fit_on = write_synth_dataset(base / "Dataset011_Fit", SynthConfig(cases=1, size=(32, 32, 4), seed=9))
    run_dir = make_run(base / "run", fit_on, threshold=THRESHOLD)
    data = json.loads((run_dir / "run.json").read_text())  # the label names fit would have recorded
    data["classes"]["names"] = list(LabelMap.from_declared(discover_dataset(fit_on).labels).names)
    (run_dir / "run.json").write_text(json.dumps(data))
    return run_dir


@pytest.fixture
def clean(tmp_path) -> Path:
    return write_synth_dataset(tmp_path / "Dataset012_Incoming", SynthConfig(cases=3, size=(32, 32, 4), seed=3))


@pytest.fixture
def planted(clean) -> Path:
    erase_slice(clean / "labelsTr" / f"{PLANTED[0]}.nii.gz", PLANTED[1])
    return clean


def check(incoming: Path, model: Path, *args: object):
    return invoke("check", incoming, "--model", model, "--device", "cpu", *args)


# ----------------------------------------------------------------------------- verdicts

def test_clean_incoming_passes(clean, model, tmp_path):
    result = check(clean, model, "--junit", tmp_path / "junit.xml")
    assert result.exit_code == 0, result.output
    assert "PASS: 0 annotation(s) flagged" in result.stdout
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.get("tests") == "3" and root.get("failures") == "0"
    assert root.find("testsuite/testcase/failure") is None


def test_planted_error_fails_and_is_named_in_text_and_junit(planted, model, tmp_path):
    junit = tmp_path / "reports" / "junit.xml"
    result = check(planted, model, "--junit", junit)
    assert result.exit_code == 1, result.output
    assert "FAIL: 1 annotation(s) flagged" in result.stdout and "case_001" in result.stdout
    assert "slice 2" in result.stdout
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == ("labelaudit.Dataset012_Incoming",
                                                                              "3", "1")
    failed = [c for c in suite.findall("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["case_001"]
    assert "slice 2 (0.8" in failed[0].find("failure").get("message")
    assert failed[0].find("failure").text.startswith(f"label: {planted / 'labelsTr' / 'case_001.nii.gz'}")


def test_planted_error_in_json(planted, model):
    result = check(planted, model, "--format", "json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)  # stdout holds nothing but the JSON
    assert data["flagged"] == ["case_001"] and data["passed"] is False
    top = data["cases"][0]
    assert top["case_id"] == "case_001" and top["worst_slices"][0]["slice_index"] == 2
    assert top["worst_slices"][0]["noise_score"] > 0.5
    assert top["worst_slices"][0]["error_kind"] == "missing_structure"  # the label lacks what the model sees
    assert all(c["noise_score"] < 0.3 for c in data["cases"][1:])
    assert data["threshold"]["source"] == "run.json" and data["provider"] == "CPUExecutionProvider"
    assert data["model"]["path"] == str(model)


def test_planted_error_in_github_annotations(planted, model):
    result = check(planted, model, "--format", "github")
    assert result.exit_code == 1, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("::error file=")
    assert "labelsTr/case_001.nii.gz,title=labelaudit%3A case case_001 slice 2 noise score 0.8" in lines[0]
    assert lines[1].startswith("::notice title=labelaudit check failed::3 annotation(s) checked, 1 flagged")


def test_tolerance_and_threshold_override(planted, model):
    assert check(planted, model, "--max-flagged", "1").exit_code == 0
    assert check(planted, model, "--threshold", "0.95").exit_code == 0  # above the planted slice's score
    result = check(planted, model, "--threshold", "0.0", "--format", "json")  # everything reaches 0
    assert result.exit_code == 1 and len(json.loads(result.stdout)["flagged"]) == 3


# ----------------------------------------------------------------------------- cache

def test_cache_rescores_only_new_or_changed_annotations(clean, model, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = check(clean, model, "--cache", cache, "--format", "json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["counts"] == {"cases": 3, "flagged": 0, "scored": 3, "cached": 0}

    import labelaudit.score.pipeline

    def no_scoring(*args, **kwargs):
        raise AssertionError("an unchanged dataset must not be scored again")

    with monkeypatch.context() as patch:
        patch.setattr(labelaudit.score.pipeline, "score_dataset", no_scoring)
        again = check(clean, model, "--cache", cache, "--format", "json")
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["counts"]["scored"] == 0 and data["counts"]["cached"] == 3 and data["provider"] == "cache"
    assert [c["noise_score"] for c in data["cases"]] == [c["noise_score"] for c in json.loads(first.stdout)["cases"]]

    erase_slice(clean / "labelsTr" / "case_002.nii.gz", 1)  # one changed label
    changed = check(clean, model, "--cache", cache, "--format", "json")
    assert changed.exit_code == 1, changed.output
    data = json.loads(changed.stdout)
    assert data["counts"]["scored"] == 1 and data["counts"]["cached"] == 2 and data["flagged"] == ["case_002"]
    assert {c["case_id"]: c["cached"] for c in data["cases"]} == {"case_000": True, "case_001": True,
                                                                  "case_002": False}
    # a threshold change needs no rescoring: decisions are made afresh from the cached scores
    with monkeypatch.context() as patch:
        patch.setattr(labelaudit.score.pipeline, "score_dataset", no_scoring)
        assert check(clean, model, "--cache", cache, "--threshold", "0.99").exit_code == 0



def test_cache_is_rescored_when_the_noise_scores_change(clean, model, tmp_path, monkeypatch):
    """Cached scores are keyed on the scoring rule too: a labelaudit whose slice or case score changed (same
    version, same run.json) must not serve scores of the earlier rule."""
    cache = tmp_path / "cache"
    assert check(clean, model, "--cache", cache).exit_code == 0
    import labelaudit.gate.check

    monkeypatch.setattr(labelaudit.gate.check, "SLICE_RULE", "an earlier rule")
    again = check(clean, model, "--cache", cache, "--format", "json")
    assert json.loads(again.stdout)["counts"]["scored"] == 3, again.output

# ----------------------------------------------------------------------------- exit codes

@pytest.mark.parametrize("args", [["--no-such-flag"], ["--format", "xml"], ["--threshold", "1.5"],
                                  ["--max-flagged", "-1"], ["--device", "tpu"]])
def test_bad_usage_exits_2(clean, model, args):
    result = check(clean, model, *args)
    assert result.exit_code == 2, result.output


def test_missing_argument_exits_2():
    assert invoke("check").exit_code == 2


def test_unreadable_incoming_exits_3(clean, model, tmp_path):
    assert check(tmp_path / "nowhere", model).exit_code == 3
    (clean / "labelsTr" / "case_002.nii.gz").write_bytes(b"not a nifti file")
    (clean / "labelsTr" / "case_000.nii.gz").unlink()
    result = check(clean, model)
    assert result.exit_code == 3, result.output
    assert "case_000" in result.output and "case_002" in result.output
    assert "could not be checked" in result.output


def _damage(run_dir: Path, how: str) -> None:
    if how == "missing_run_json":
        (run_dir / "run.json").unlink()
    elif how == "corrupt_run_json":
        (run_dir / "run.json").write_text("{ half a file")
    elif how == "corrupt_onnx":
        (run_dir / "fold_0" / "segmenter.onnx").write_bytes(b"\x08\x07garbage" * 20)


@pytest.mark.parametrize("how", ["missing_dir", "missing_run_json", "corrupt_run_json", "corrupt_onnx"])
def test_missing_or_corrupt_model_exits_4(clean, model, tmp_path, how):
    run_dir = tmp_path / "copy"
    if how != "missing_dir":
        shutil.copytree(model, run_dir)
        _damage(run_dir, how)
    result = check(clean, run_dir)
    assert result.exit_code == 4, result.output
    assert str(run_dir) in result.output.replace("\n", "")


def test_no_model_and_no_latest_run_exits_4(clean, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("check", clean)
    assert result.exit_code == 4 and "--model" in result.output, result.output


@pytest.mark.parametrize("change", ["labels", "modality", "channels"])
def test_model_fit_on_other_data_exits_4(clean, model, change):
    meta = json.loads((clean / "dataset.json").read_text())
    if change == "labels":
        meta["labels"] = {"background": 0, "class_1": 1, "class_2": 2}
        expected = "label values [2]"
    elif change == "modality":
        meta["channel_names"] = {"0": "MR"}
        expected = "declares 'MR'"
    else:
        for path in (clean / "imagesTr").glob("*_0000.nii.gz"):
            shutil.copy(path, path.with_name(path.name.replace("_0000", "_0001")))
        meta["channel_names"] = {"0": "CT", "1": "CT"}
        expected = "1 image channel(s)"
    (clean / "dataset.json").write_text(json.dumps(meta))
    result = check(clean, model)
    assert result.exit_code == 4, result.output
    assert expected in result.output.replace("\n", " ")


def test_missing_onnxruntime_exits_5(clean, model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    result = check(clean, model)
    assert result.exit_code == 5, result.output
    assert "pip install onnxruntime" in result.output


def test_crash_while_scoring_exits_70_not_1(planted, model, monkeypatch):
    import labelaudit.score.pipeline

    def crash(self, case, chosen):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(labelaudit.score.pipeline.CaseScorer, "score_case", crash)
    result = check(planted, model, "--format", "json")
    assert result.exit_code == 70, result.output
    assert "internal error" in result.output and "bug" in result.output
    assert result.stdout.strip() == ""  # no verdict was printed


def test_crash_in_the_gate_exits_70(clean, model, monkeypatch):
    import labelaudit.gate.check

    monkeypatch.setattr(labelaudit.gate.check, "decide", lambda entry, threshold: 1 / 0)
    assert check(clean, model).exit_code == 70


# ----------------------------------------------------------------------------- without torch

def test_check_runs_without_torch(planted, model, tmp_path):
    code = "import sys; sys.modules['torch'] = None\n" + textwrap.dedent(f"""
        from labelaudit.cli import app
        try:
            app(['check', {str(planted)!r}, '--model', {str(model)!r}, '--device', 'cpu', '--format', 'json'])
        except SystemExit as exc:
            code = exc.code
        loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'torch' and sys.modules[m] is not None)
        print('TORCH_LOADED', loaded, 'EXIT', code, file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "TORCH_LOADED [] EXIT 1" in result.stderr, result.stderr
    assert json.loads(result.stdout)["flagged"] == ["case_001"]


# ----------------------------------------------------------------------------- the shipped model

DEMO_CASES = ("mni_010", "mni_011", "mni_012")  # held out from the shipped model's training


@pytest.fixture
def demo_incoming(tmp_path) -> Path:
    """Three demo cases the shipped model never saw, as a new nnU-Net dataset."""
    from labelaudit.demo import demo_dataset_path

    source, root = demo_dataset_path(), tmp_path / "incoming"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    meta = json.loads((source / "dataset.json").read_text())
    meta["numTraining"] = len(DEMO_CASES)
    (root / "dataset.json").write_text(json.dumps(meta))
    for case_id in DEMO_CASES:
        shutil.copy(source / "imagesTr" / f"{case_id}_0000.nii.gz", root / "imagesTr")
        shutil.copy(source / "labelsTr" / f"{case_id}.nii.gz", root / "labelsTr")
    return root


def test_shipped_model_passes_clean_demo_cases_and_flags_a_planted_error(demo_incoming):
    assert (SHIPPED / "run.json").is_file(), "models/demo-pint is missing: python tools/train_shipped_model.py"
    result = check(demo_incoming, SHIPPED, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["cases"] == 3

    path = demo_incoming / "labelsTr" / "mni_011.nii.gz"
    label = io.read_volume(path)
    middle = label.array.shape[0] // 2  # the demo's slicing axis is numpy axis 0
    label.array[middle] = np.where(label.array[middle] == 1, 2, np.where(label.array[middle] == 2, 1, 0))
    io.write_volume(label, path)  # white and gray matter swapped on one slice
    result = check(demo_incoming, SHIPPED, "--format", "json")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["flagged"] == ["mni_011"]
    assert data["cases"][0]["worst_slices"][0]["slice_index"] == middle


def test_shipped_model_runs_check_and_names_a_planted_error(demo_incoming, tmp_path):
    """What the shipped model does today: a completed check whose outputs name the planted slice."""
    clean = check(demo_incoming, SHIPPED, "--format", "json")
    assert clean.exit_code in (0, 1), clean.output  # a completed check, whatever its verdict
    before = {c["case_id"]: c["noise_score"] for c in json.loads(clean.stdout)["cases"]}
    path = demo_incoming / "labelsTr" / "mni_011.nii.gz"
    label = io.read_volume(path)
    middle = label.array.shape[0] // 2
    label.array[middle] = np.where(label.array[middle] == 1, 2, np.where(label.array[middle] == 2, 1, 0))
    io.write_volume(label, path)
    result = check(demo_incoming, SHIPPED, "--format", "json", "--junit", tmp_path / "j.xml")
    assert result.exit_code == 1, result.output
    case = next(c for c in json.loads(result.stdout)["cases"] if c["case_id"] == "mni_011")
    assert case["flagged"] and case["noise_score"] > before["mni_011"] + 0.02
    assert middle in [s["slice_index"] for s in case["worst_slices"]]
    failure = ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase[@name='mni_011']/failure")
    assert f"slice {middle} (" in failure.get("message")
