"""`score` and `check` with the user's own probabilities (`--probabilities`): nnU-Net trained-model folders,
folders of CASE.npz or of multi-component images, several folders (their mean), the calibration folder, and
every refusal with its exit code and the file named.

The folders here are written with numpy alone, in nnU-Net v2's layout (test_nnunet.py writes them with
nnU-Net's own export code): the probabilities are a softmax of the clean labels, and one slice of one label
is then erased, so that slice must rank first.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelaudit import io
from labelaudit.fix.manifest import FIX_MANIFEST_NAME, read_fix_manifest
from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Volume

#: Five cases, one per fold, on a rotated anisotropic grid (slices along numpy axis 0).
CONFIG = SynthConfig(cases=5, size=(24, 20, 4), spacing=(0.8, 0.9, 3.0), seed=3)
PLANTED = ("case_002", 2)
MODEL = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def invoke(*args: object):
    from labelaudit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def softmax_of(label: np.ndarray, num_classes: int, rng: np.random.Generator, sharpness: float = 5.0) -> np.ndarray:
    """A confident, slightly noisy softmax of `label` (Z, Y, X): float32 (C, Z, Y, X), summing to 1."""
    one_hot = np.stack([label == c for c in range(num_classes)]).astype(np.float32)
    logits = sharpness * one_hot + rng.normal(0.0, 0.5, one_hot.shape).astype(np.float32)
    prob = np.exp(logits - logits.max(axis=0, keepdims=True))
    return (prob / prob.sum(axis=0, keepdims=True)).astype(np.float32)


def clean_probabilities(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = sorted((root / "labelsTr").glob("*.nii.gz"))
    return {p.name[:-7]: softmax_of(io.read_volume(p).array, 2, rng) for p in labels}


def write_model_folder(model: Path, root: Path, probabilities: dict[str, np.ndarray]) -> Path:
    """nnU-Net v2's trained-model folder: dataset.json, plans.json, fold_K/validation/CASE.{npz,pkl,nii.gz}."""
    model.mkdir(parents=True)
    shutil.copy(root / "dataset.json", model / "dataset.json")
    (model / "plans.json").write_text(json.dumps({"dataset_name": root.name, "plans_name": "nnUNetPlans",
                                                  "image_reader_writer": "SimpleITKIO"}))
    for fold, (case_id, prob) in enumerate(sorted(probabilities.items())):
        validation = model / f"fold_{fold}" / "validation"
        validation.mkdir(parents=True)
        np.savez_compressed(validation / f"{case_id}.npz", probabilities=prob)
        (validation / f"{case_id}.pkl").write_bytes(pickle.dumps({"spacing": [3.0, 0.9, 0.8]}))
        label = io.read_volume(root / "labelsTr" / f"{case_id}.nii.gz")
        io.write_volume(Volume(prob.argmax(axis=0).astype(np.uint8), label.geometry),
                        validation / f"{case_id}.nii.gz")
    return model


def write_npz_folder(folder: Path, probabilities: dict[str, np.ndarray]) -> Path:
    """nnUNetv2_predict --save_probabilities: CASE.npz beside CASE.nii.gz (here without the segmentation)."""
    folder.mkdir(parents=True, exist_ok=True)
    for case_id, prob in probabilities.items():
        np.savez_compressed(folder / f"{case_id}.npz", probabilities=prob)
    return folder


def erase_slice(label_path: Path, index: int) -> None:
    label = io.read_volume(label_path)
    label.array[index] = 0
    io.write_volume(label, label_path)


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def training(tmp_path_factory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """(the dataset with one erased slice, an nnU-Net model folder of the clean labels' softmax, the softmax)."""
    base = tmp_path_factory.mktemp("given")
    root = write_synth_dataset(base / "Dataset021_Given", CONFIG)
    probabilities = clean_probabilities(root)
    model = write_model_folder(base / "nnUNet_results" / root.name / MODEL, root, probabilities)
    erase_slice(root / "labelsTr" / f"{PLANTED[0]}.nii.gz", PLANTED[1])
    return root, model, probabilities


@pytest.fixture(scope="module")
def audited(training, tmp_path_factory) -> Path:
    root, model, _ = training
    out = tmp_path_factory.mktemp("audit") / "audit"
    result = invoke("score", root, "--probabilities", model, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def incoming(training, tmp_path) -> tuple[Path, Path]:
    """Two new cases (one with the planted error) and their predicted probabilities (a CASE.npz folder)."""
    root, _, probabilities = training
    new = tmp_path / "Dataset022_Incoming"
    (new / "imagesTr").mkdir(parents=True)
    (new / "labelsTr").mkdir()
    shutil.copy(root / "dataset.json", new / "dataset.json")
    for case_id in ("case_001", PLANTED[0]):
        shutil.copy(root / "imagesTr" / f"{case_id}_0000.nii.gz", new / "imagesTr")
        shutil.copy(root / "labelsTr" / f"{case_id}.nii.gz", new / "labelsTr")
    pred = write_npz_folder(tmp_path / "pred", {c: probabilities[c] for c in ("case_001", PLANTED[0])})
    return new, pred


# ----------------------------------------------------------------------------- nnU-Net model folder


def test_planted_error_ranks_first_from_an_nnunet_model_folder(audited, training):
    root, model, _ = training
    cases, slices = read_csv(audited / "cases.csv"), read_csv(audited / "slices.csv")
    assert cases[0]["case_id"] == PLANTED[0] and cases[0]["flagged"] == "true"
    assert (slices[0]["case_id"], int(slices[0]["slice_index"])) == PLANTED
    assert sum(s["flagged"] == "true" for s in slices) == 1
    assert {c["routing"] for c in cases} == {"out-of-fold"}
    assert {c["model"] for c in cases} == {f"fold_{i}" for i in range(5)}  # each case by the fold that held it out
    summary = json.loads((audited / "summary.json").read_text())
    assert summary["perturbations"] == 1 and summary["provider"] == "given probabilities"
    assert summary["run"]["method"] == "nnU-Net v2" and str(model) in summary["run"]["source"]
    assert summary["dataset"]["fit_dataset"] is True
    assert any("normalised entropy of the given probabilities" in n for n in summary["notes"])
    assert (audited / "maps" / f"{PLANTED[0]}_noise.nii.gz").is_file()
    assert "given probabilities" in (audited / "report.html").read_text()


def test_the_fixed_maps_follow_the_thresholds_derived_from_the_audit(training, tmp_path, monkeypatch):
    from labelaudit.score import decide

    # before the thresholds are derived nothing is flagged, so maps written then would mend nothing
    monkeypatch.setattr(decide, "DEFAULT_THRESHOLD", 1.0)
    root, model, _ = training
    out, fixed = tmp_path / "audit", tmp_path / "fixed"
    assert invoke("score", root, "--probabilities", model, "--out", out).exit_code == 0
    assert invoke("fix", out, "--out", fixed).exit_code == 0
    assert read_fix_manifest(fixed / FIX_MANIFEST_NAME).regions  # the planted error is mended
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        case_id = path.name[:-7]
        np.testing.assert_array_equal(io.read_volume(out / "maps" / f"{case_id}_fixed.nii.gz").array,
                                      io.read_volume(fixed / "labelsTr" / path.name).array, err_msg=case_id)


def test_the_noise_maps_follow_the_ranking_derived_from_the_audit(audited, training):
    # written before the ranking was derived, rescaled after: m_v = (1 - p̄_y) · the slice's noise score
    root, _, probabilities = training
    scores = {(r["case_id"], int(r["slice_index"])): float(r["noise_score"]) for r in read_csv(audited / "slices.csv")}
    assert any(abs(scores[k] - float(r["structure_score"])) > 1e-4
               for r in read_csv(audited / "slices.csv") for k in [(r["case_id"], int(r["slice_index"]))])
    # ranked within the structure score's bands: flagged exactly where the structure score reaches the threshold
    threshold = json.loads((audited / "summary.json").read_text())["threshold"]["slice"]
    for r in read_csv(audited / "slices.csv"):
        assert (r["flagged"] == "true") == (float(r["structure_score"]) >= threshold - 1e-6), r
    for case_id in ("case_000", PLANTED[0]):
        label = io.read_volume(root / "labelsTr" / f"{case_id}.nii.gz").array.astype(np.int64)
        noise = io.read_volume(audited / "maps" / f"{case_id}_noise.nii.gz").array
        p_given = np.take_along_axis(probabilities[case_id], label[None], axis=0)[0]
        for i in range(label.shape[0]):
            np.testing.assert_allclose(noise[i], (1.0 - p_given[i]) * scores[(case_id, i)], atol=2e-5,
                                       err_msg=f"{case_id} slice {i}")


def test_score_saves_a_calibration_that_check_reuses(audited, incoming):
    from labelaudit.formats.probability_run import read_probability_run

    calibration = read_probability_run(audited / "calibration")
    summary = json.loads((audited / "summary.json").read_text())
    assert summary["threshold"]["source"] == "run.json"
    assert calibration.threshold.slice == summary["threshold"]["slice"]
    assert calibration.threshold.scored == "out-of-fold" and calibration.threshold.perturbations == 1
    assert calibration.threshold.structure_prior_mm2 > 0
    assert calibration.label_map.values == (0, 1)
    assert calibration.threshold.slice_ranking is not None  # check ranks new slices as the audit did
    new, pred = incoming
    result = invoke("check", new, "--probabilities", pred, "--model", audited / "calibration", "--format", "json")
    assert result.exit_code == 1, result.output
    verdict = json.loads(result.stdout)
    assert verdict["flagged"] == [PLANTED[0]]
    assert verdict["threshold"]["slice"] == calibration.threshold.slice
    assert verdict["threshold"]["source"] == "run.json"
    (new / "labelsTr" / f"{PLANTED[0]}.nii.gz").unlink()
    (new / "imagesTr" / f"{PLANTED[0]}_0000.nii.gz").unlink()
    assert invoke("check", new, "--probabilities", pred, "--model", audited / "calibration").exit_code == 0


def test_score_replaces_its_own_audit_and_calibration(training, tmp_path):
    root, model, _ = training
    out = tmp_path / "audit"
    assert invoke("score", root, "--probabilities", model, "--out", out).exit_code == 0
    again = invoke("score", root, "--probabilities", model, "--out", out)  # calibration/ is the audit's own
    assert again.exit_code == 0, again.output
    assert (out / "calibration" / "run.json").is_file()


def test_check_without_calibration_flags_at_the_default_and_says_so(incoming):
    new, pred = incoming
    result = invoke("check", new, "--probabilities", pred)
    assert result.exit_code == 1, result.output
    assert "no calibration given" in result.output


def test_check_cache_covers_the_probability_files(incoming, tmp_path):
    new, pred = incoming
    cache = tmp_path / "cache"
    first = invoke("check", new, "--probabilities", pred, "--cache", cache, "--format", "json")
    again = invoke("check", new, "--probabilities", pred, "--cache", cache, "--format", "json")
    assert json.loads(again.stdout)["counts"]["cached"] == 2, again.output
    prob = np.load(pred / "case_001.npz")["probabilities"]
    np.savez_compressed(pred / "case_001.npz", probabilities=prob[::-1].copy())  # a new model's opinion
    changed = invoke("check", new, "--probabilities", pred, "--cache", cache, "--format", "json")
    assert json.loads(changed.stdout)["counts"]["cached"] == 1, changed.output
    assert first.exit_code == 1 and sorted(json.loads(changed.stdout)["flagged"]) == ["case_001", PLANTED[0]]


def test_pickles_beside_the_probabilities_are_never_opened(training, tmp_path):
    root, model, _ = training
    marker = tmp_path / "pickle_was_loaded"
    payload = pickle.dumps(_Touch(marker))
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Touch(probe)))
    assert probe.exists(), "the planted pickle must create its file when loaded"
    evil = tmp_path / MODEL
    shutil.copytree(model, evil)
    for pkl in evil.glob("fold_*/validation/*.pkl"):
        pkl.write_bytes(payload)
    (evil / "fold_0" / "validation" / "debug.pkl").write_bytes(payload)
    result = invoke("score", root, "--probabilities", evil, "--out", tmp_path / "audit")
    assert result.exit_code == 0, result.output
    assert not marker.exists()


def test_an_npz_holding_pickled_objects_is_refused_unopened(training, tmp_path):
    root, _, probabilities = training
    marker = tmp_path / "pickle_was_loaded"
    pred = write_npz_folder(tmp_path / "pred", probabilities)
    np.savez(pred / "case_000.npz", probabilities=np.array([_Touch(marker)], dtype=object))
    result = invoke("check", root, "--probabilities", pred)
    assert result.exit_code == 4, result.output
    assert "case_000.npz" in result.output and "pickled" in result.output
    assert not marker.exists()


class _Touch:
    """Creates `path` when unpickled: what a malicious .pkl could do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


# ----------------------------------------------------------------------------- other sources


def test_npz_and_multicomponent_images_score_alike(training, tmp_path):
    import SimpleITK as sitk

    root, _, probabilities = training
    pred = write_npz_folder(tmp_path / "npz", probabilities)
    images = tmp_path / "images"
    images.mkdir()
    for case_id, prob in probabilities.items():
        label = io.read_volume(root / "labelsTr" / f"{case_id}.nii.gz")
        image = sitk.GetImageFromArray(np.moveaxis(prob, 0, -1), isVector=True)
        image.SetSpacing(label.geometry.spacing)
        image.SetOrigin(label.geometry.origin)
        image.SetDirection(label.geometry.direction)
        sitk.WriteImage(image, str(images / f"{case_id}.nii.gz"))
    a = invoke("score", root, "--probabilities", pred, "--out", tmp_path / "a")
    b = invoke("score", root, "--probabilities", images, "--out", tmp_path / "b")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    rows_a, rows_b = read_csv(tmp_path / "a" / "slices.csv"), read_csv(tmp_path / "b" / "slices.csv")
    assert [(r["case_id"], r["slice_index"], r["noise_score"]) for r in rows_a] == \
        [(r["case_id"], r["slice_index"], r["noise_score"]) for r in rows_b]
    assert (rows_a[0]["case_id"], int(rows_a[0]["slice_index"])) == PLANTED
    assert {c["routing"] for c in read_csv(tmp_path / "a" / "cases.csv")} == {"new-data"}


def test_several_folders_score_their_mean(training, tmp_path):
    root, _, probabilities = training
    rng = np.random.default_rng(7)
    other = {c: softmax_of(p.argmax(axis=0), 2, rng, sharpness=2.0) for c, p in probabilities.items()}
    one, two = write_npz_folder(tmp_path / "fold_a", probabilities), write_npz_folder(tmp_path / "fold_b", other)
    mean = write_npz_folder(tmp_path / "mean", {c: (probabilities[c] + other[c]) / np.float32(2) for c in other})
    both = invoke("score", root, "--probabilities", one, "--probabilities", two, "--out", tmp_path / "both")
    single = invoke("score", root, "--probabilities", mean, "--out", tmp_path / "single")
    assert both.exit_code == 0 and single.exit_code == 0, both.output + single.output
    rows = read_csv(tmp_path / "both" / "slices.csv")
    assert [r["noise_score"] for r in rows] == [r["noise_score"] for r in read_csv(tmp_path / "single" / "slices.csv")]
    assert (rows[0]["case_id"], int(rows[0]["slice_index"])) == PLANTED
    assert {c["model"] for c in read_csv(tmp_path / "both" / "cases.csv")} == {"mean(fold_a+fold_b)"}
    notes = json.loads((tmp_path / "both" / "summary.json").read_text())["notes"]
    assert any("mean of the folders' probabilities" in n for n in notes)


def test_a_two_dimensional_case_takes_nnunets_extra_axis(tmp_path):
    root = write_synth_dataset(tmp_path / "Dataset023_Flat", SynthConfig(cases=2, size=(24, 20, 1), two_d=True))
    rng = np.random.default_rng(1)
    pred = tmp_path / "pred"
    pred.mkdir()
    for label_path in sorted((root / "labelsTr").iterdir()):
        prob = softmax_of(io.read_volume(label_path).array, 2, rng)  # (C, Y, X)
        np.savez_compressed(pred / f"{label_path.name[:-4]}.npz", probabilities=prob[:, np.newaxis])
    result = invoke("check", root, "--probabilities", pred, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["counts"]["cases"] == 2


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("change, expected", [
    (lambda p: p[:, :, :, :-1], "probabilities of shape (2, 4, 20, 23)"),
    (lambda p: np.concatenate([p, np.zeros_like(p[:1])]), "probabilities of 3 classes"),
    (lambda p: p * 0.5, "do not sum to 1"),
    (lambda p: np.where(p > 0.9, np.nan, p), "not finite"),
    (lambda p: np.log(p), "expected probabilities in [0, 1]"),
    (lambda p: (p > 0.5).astype(np.uint8), "expected floating point"),
], ids=["shape", "classes", "not-normalised", "non-finite", "logits", "integers"])
def test_bad_probabilities_exit_4_naming_the_file(incoming, change, expected):
    new, pred = incoming
    path = pred / f"{PLANTED[0]}.npz"
    np.savez_compressed(path, probabilities=change(np.load(path)["probabilities"]))
    result = invoke("check", new, "--probabilities", pred)
    assert result.exit_code == 4, result.output
    text = " ".join(result.output.split())
    assert str(path) in text and expected in text


def test_a_probability_image_off_the_labels_grid_exits_4(incoming, tmp_path):
    import SimpleITK as sitk

    new, pred = incoming
    images = tmp_path / "images"
    images.mkdir()
    for npz in pred.glob("*.npz"):
        label = io.read_volume(new / "labelsTr" / f"{npz.stem}.nii.gz")
        image = sitk.GetImageFromArray(np.moveaxis(np.load(npz)["probabilities"], 0, -1), isVector=True)
        image.SetSpacing(label.geometry.spacing)
        image.SetOrigin(tuple(o + 5.0 for o in label.geometry.origin))
        image.SetDirection(label.geometry.direction)
        sitk.WriteImage(image, str(images / f"{npz.stem}.nrrd"))
    result = invoke("check", new, "--probabilities", images)
    assert result.exit_code == 4, result.output
    assert "grid does not match" in result.output and "origin" in result.output and ".nrrd" in result.output


def test_cases_without_probabilities_exit_4(incoming):
    new, pred = incoming
    (pred / "case_001.npz").unlink()
    result = invoke("check", new, "--probabilities", pred)
    assert result.exit_code == 4, result.output
    assert "no probabilities for 1 case(s)" in result.output and "case_001" in result.output


def test_label_values_outside_the_classes_are_the_datas_fault_exit_3(incoming):
    new, pred = incoming
    label = io.read_volume(new / "labelsTr" / "case_001.nii.gz")
    label.array[0, 0, 0] = 5
    io.write_volume(label, new / "labelsTr" / "case_001.nii.gz")
    result = invoke("check", new, "--probabilities", pred)
    assert result.exit_code == 3, result.output
    assert "case_001" in result.output and "[5]" in result.output


def test_region_based_models_are_refused(training, tmp_path):
    root, model, _ = training
    regions = tmp_path / MODEL
    shutil.copytree(model, regions)
    meta = json.loads((regions / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    meta["regions_class_order"] = [1, 2]
    (regions / "dataset.json").write_text(json.dumps(meta))
    result = invoke("score", root, "--probabilities", regions, "--out", tmp_path / "audit")
    assert result.exit_code == 4, result.output
    assert "region-based" in result.output and "dataset.json" in result.output


def test_a_model_folder_without_validation_probabilities_exits_4(training, tmp_path):
    root, _, _ = training
    empty = tmp_path / MODEL
    (empty / "fold_0").mkdir(parents=True)
    shutil.copy(root / "dataset.json", empty / "dataset.json")
    result = invoke("score", root, "--probabilities", empty, "--out", tmp_path / "audit")
    assert result.exit_code == 4, result.output
    assert "--npz" in result.output


def test_run_folders_and_calibration_folders_are_not_mixed_up(audited, incoming, tmp_path):
    new, pred = incoming
    fit_run = tmp_path / "run"
    fit_run.mkdir()
    (fit_run / "run.json").write_text(json.dumps({"format": 1, "method": "pint", "models": []}))
    result = invoke("check", new, "--probabilities", pred, "--model", fit_run)
    assert result.exit_code == 4 and "run folder of `labelaudit fit`" in result.output, result.output
    result = invoke("check", new, "--model", audited / "calibration")
    assert result.exit_code == 4, result.output
    assert "calibration of given probabilities" in result.output and "--probabilities" in result.output


def test_the_probabilities_need_a_dataset(training):
    _, model, _ = training
    result = invoke("score", "--probabilities", model)
    assert result.exit_code == 2 and "DATASET" in result.output, result.output


# ----------------------------------------------------------------------------- the light CI path


def test_check_with_probabilities_needs_neither_torch_nor_onnxruntime(audited, incoming, tmp_path):
    new, pred = incoming
    code = "import sys; sys.modules['torch'] = None; sys.modules['onnxruntime'] = None\n" + textwrap.dedent(f"""
        from labelaudit.cli import app
        try:
            app(['check', {str(new)!r}, '--probabilities', {str(pred)!r}, '--model',
                 {str(audited / 'calibration')!r}, '--format', 'json'])
        except SystemExit as exc:
            code = exc.code
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime')
                        and sys.modules[m] is not None)
        print('LOADED', loaded, 'EXIT', code, file=sys.stderr)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "LOADED [] EXIT 1" in result.stderr, result.stderr
    assert json.loads(result.stdout)["flagged"] == [PLANTED[0]]


def test_the_missing_training_extra_hint_prints_in_full(tmp_path):
    root = write_synth_dataset(tmp_path / "Dataset024_Hint", SynthConfig(cases=1, size=(8, 8, 2)))
    code = "import sys; sys.modules['torch'] = None\n" + textwrap.dedent(f"""
        from labelaudit.cli import app
        try:
            app(['fit', {str(root)!r}, '--out', {str(tmp_path / 'run')!r}])
        except SystemExit as exc:
            print('EXIT', exc.code)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "EXIT 5" in result.stdout, result.stdout + result.stderr
    assert "hint: install it with: pip install 'labelaudit[train]'" in " ".join(result.stderr.split())
