"""`labelaudit fix` and the `_fixed` map: planted errors are found, named and fixed; the inputs stay untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from labelaudit import io
from labelaudit.config import FixConfig, FixMode, FixParams, ScoreConfig
from labelaudit.diagnosis import ErrorKind
from labelaudit.errors import InputError, UsageError
from labelaudit.fix.dataset import fix_dataset
from labelaudit.fix.manifest import FIX_MANIFEST_NAME, read_fix_manifest
from labelaudit.fix.rule import (agreement_counts, apply_fix, class_agreement, fixed_label, judge_regions,
                                 slice_flags, untrusted_classes)
from labelaudit.formats.manifest import Corruption
from labelaudit.noise.ops import apply_corruption
from labelaudit.score.pipeline import score_dataset
from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import from_slices, to_slices

#: Large enough that the ring of class 1 around class 2 is a few pixels thick; 8 slices per case.
DATA = SynthConfig(cases=2, size=(64, 60, 8), spacing=(0.8, 0.9, 3.0), classes=2, seed=3)
PLANTS = {  # case -> slice -> (corruption, the kind the region gets)
    "case_000": {2: (Corruption("missing", 2, {}), ErrorKind.MISSING),
                 3: (Corruption("dilation", 2, {"radius": 2}), ErrorKind.OVER),
                 5: (Corruption("shift", 1, {"dy": 0, "dx": 3}), ErrorKind.SHIFTED)},
    "case_001": {2: (Corruption("erosion", 2, {"radius": 2}), ErrorKind.UNDER),
                 3: (Corruption("spurious", 2, {"center": [6, 6], "radius": 4, "near": False}), ErrorKind.SPURIOUS),
                 5: (Corruption("wrong_class", 1, {"to": 2}), ErrorKind.WRONG_CLASS)},
}


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _stack(path: Path) -> np.ndarray:
    volume = io.read_volume(path)
    return to_slices(volume.array, volume.geometry)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, make_run):
    """A 2-class dataset with six planted errors (a copy keeps the clean labels), scored by an oracle model."""
    base = tmp_path_factory.mktemp("fix")
    root = write_synth_dataset(base / "Dataset011_Fix", DATA)
    clean = {}
    for case_id, plants in PLANTS.items():
        path = root / "labelsTr" / f"{case_id}.nii.gz"
        volume = io.read_volume(path)
        stack = to_slices(volume.array, volume.geometry).copy()
        clean[case_id] = stack.copy()
        for index, (corruption, _) in plants.items():
            stack[index] = apply_corruption(stack[index], corruption)
            assert (stack[index] != clean[case_id][index]).any()
        io.write_like(from_slices(stack, volume.geometry), volume.geometry, path)
    run_dir = make_run(base / "run", root, num_classes=3)
    audit = score_dataset(ScoreConfig(run_dir=run_dir, out_dir=base / "audit", device="cpu", threshold=0.1))
    return {"root": root, "audit": base / "audit", "clean": clean, "base": base, "scored": audit}


def test_fix_names_and_fixes_every_planted_error(planted, cli):
    out = planted["base"] / "fixed"
    before = {**_digest(planted["root"]), **{f"audit/{k}": v for k, v in _digest(planted["audit"]).items()}}
    result = cli("fix", planted["audit"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "fixed dataset:" in result.stdout and FIX_MANIFEST_NAME in result.stdout
    after = {**_digest(planted["root"]), **{f"audit/{k}": v for k, v in _digest(planted["audit"]).items()}}
    assert after == before  # the inputs are never modified
    manifest = read_fix_manifest(out / FIX_MANIFEST_NAME)
    assert manifest.mode is FixMode.REPLACE and manifest.ignore_label is None
    names = {v: k for k, v in json.loads((planted["root"] / "dataset.json").read_text())["labels"].items()}
    assert manifest.classes == {1: names[1], 2: names[2]}
    for case_id, plants in PLANTS.items():
        noisy = _stack(planted["root"] / "labelsTr" / f"{case_id}.nii.gz")
        fixed = _stack(out / "labelsTr" / f"{case_id}.nii.gz")
        regions = manifest.cases[case_id].regions
        for index, (_, kind) in plants.items():
            here = [r for r in regions if r.slice_index == index]
            assert here, f"{case_id} slice {index}: no region judged wrong"
            assert max(here, key=lambda r: r.pixels).kind is kind, [(r.kind, r.pixels) for r in here]
            clean = planted["clean"][case_id][index]
            planted_wrong = noisy[index] != clean
            repaired = int((planted_wrong & (fixed[index] == clean)).sum())
            assert repaired >= 0.8 * planted_wrong.sum(), (case_id, index, kind, int(planted_wrong.sum()), repaired)
        for r in regions:  # every record says where, how large, how sure, and which class
            assert r.pixels > 0 and 0 <= r.score <= 1 and r.class_name == names[r.label_class]
            r0, r1, c0, c1 = r.bbox
            assert 0 <= r0 < r1 <= noisy.shape[1] and 0 <= c0 < c1 <= noisy.shape[2]
        assert manifest.cases[case_id].changed_pixels == int((fixed != noisy).sum()) > 0
    # a complete copy: every file is there; images are the same bytes
    copied = _digest(out)
    assert set(copied) == set(_digest(planted["root"])) | {FIX_MANIFEST_NAME}
    assert all(copied[k] == v for k, v in _digest(planted["root"]).items() if k.startswith("imagesTr/"))
    image = next((planted["root"] / "imagesTr").iterdir())
    assert (out / "imagesTr" / image.name).stat().st_ino == image.stat().st_ino  # hard-linked, same file system
    assert (out / "labelsTr" / "case_000.nii.gz").stat().st_ino != (planted["root"] / "labelsTr" /
                                                                     "case_000.nii.gz").stat().st_ino


def test_score_writes_the_same_fixed_map_as_fix_replace(planted, cli):
    out = planted["base"] / "fixed_again"
    assert cli("fix", planted["audit"], "--out", out, "--mode", "replace").exit_code == 0
    for case_id in PLANTS:
        fixed_map = _stack(planted["audit"] / "maps" / f"{case_id}_fixed.nii.gz")
        np.testing.assert_array_equal(fixed_map, _stack(out / "labelsTr" / f"{case_id}.nii.gz"))
        # fix writes the label file's own type (score reads labels widened to int16)
        assert _stack(out / "labelsTr" / f"{case_id}.nii.gz").dtype == _stack(
            planted["root"] / "labelsTr" / f"{case_id}.nii.gz").dtype


def test_ignore_mode_declares_the_ignore_label_as_nnunet_expects(planted, cli):
    out = planted["base"] / "ignored"
    result = cli("fix", planted["audit"], "--out", out, "--mode", "ignore")
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "dataset.json").read_text())
    original = json.loads((planted["root"] / "dataset.json").read_text())
    assert meta["labels"] == {**original["labels"], "ignore": 3}  # the highest label value + 1
    assert {k: v for k, v in meta.items() if k != "labels"} == {k: v for k, v in original.items() if k != "labels"}
    manifest = read_fix_manifest(out / FIX_MANIFEST_NAME)
    assert manifest.ignore_label == 3
    for case_id in PLANTS:
        noisy = _stack(planted["root"] / "labelsTr" / f"{case_id}.nii.gz")
        ignored = _stack(out / "labelsTr" / f"{case_id}.nii.gz")
        replaced = _stack(planted["audit"] / "maps" / f"{case_id}_fixed.nii.gz")
        np.testing.assert_array_equal(ignored == 3, replaced != noisy)  # ignore exactly where replace changes
        np.testing.assert_array_equal(ignored[ignored != 3], noisy[ignored != 3])
    assert cli("inspect", out, "--strict").exit_code == 0


@pytest.mark.parametrize("where", ["dataset", "inside dataset", "audit", "inside audit", "holds dataset"])
def test_fix_refuses_an_output_that_is_or_lies_inside_an_input(planted, cli, where):
    target = {"dataset": planted["root"], "inside dataset": planted["root"] / "fixed", "audit": planted["audit"],
              "inside audit": planted["audit"] / "fixed", "holds dataset": planted["base"]}[where]
    before = _digest(planted["base"])
    result = cli("fix", planted["audit"], "--out", target)
    assert result.exit_code == 2, result.output
    assert "--out" in result.stderr
    assert _digest(planted["base"]) == before


def test_an_existing_folder_that_is_not_a_fix_output_is_refused(planted, cli, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    result = cli("fix", planted["audit"], "--out", keep)
    assert result.exit_code == 2 and "not a fixed dataset" in result.stderr
    assert (keep / "notes.txt").read_text() == "mine"
    out = tmp_path / "fixed"
    assert cli("fix", planted["audit"], "--out", out).exit_code == 0
    assert cli("fix", planted["audit"], "--out", out, "--mode", "ignore").exit_code == 0  # a fix output: replaced
    assert read_fix_manifest(out / FIX_MANIFEST_NAME).mode is FixMode.IGNORE


def test_bad_audit_folders_are_input_errors(planted, tmp_path, cli):
    assert cli("fix", tmp_path / "nowhere", "--out", tmp_path / "out").exit_code == 3
    broken = tmp_path / "audit"
    broken.mkdir()
    (broken / "summary.json").write_text(json.dumps({"dataset": {"path": 3}, "cases": []}))
    with pytest.raises(InputError, match="field 'dataset.path': expected a string"):
        fix_dataset(FixConfig(broken, tmp_path / "out"))
    with pytest.raises(UsageError, match="region-score"):
        FixParams(1.5)


def test_manifest_round_trip_and_typed_reading(planted, tmp_path):
    manifest = fix_dataset(FixConfig(planted["audit"], tmp_path / "fixed", params=FixParams(0.2)))
    again = read_fix_manifest(tmp_path / "fixed" / FIX_MANIFEST_NAME)
    assert again == manifest and again.params.region_score == 0.2
    data = json.loads((tmp_path / "fixed" / FIX_MANIFEST_NAME).read_text())
    data["cases"]["case_000"]["regions"][0]["kind"] = "broken"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"bad.json: field 'cases.case_000.regions\[0\].kind': expected one of"):
        read_fix_manifest(tmp_path / "bad.json")


def test_the_rule_on_arrays():
    label = np.zeros((3, 20, 20), dtype=np.uint8)
    label[:, 5:15, 5:15] = 1
    pred = label.copy()
    label[1, 2:4, 2:6] = 1  # a spurious blob on slice 1 (8 pixels)
    label[2, 2:4, 2:6] = 1  # and on slice 2, which is not flagged
    scores = np.array([0.0, 0.5, 0.5])
    # the noise map is the pixel's disagreement (0.8 on the blobs) times its slice's score
    noise = np.where(label != pred, 0.8, 0.0).astype(np.float32) * scores[:, None, None].astype(np.float32)
    flags = np.array([False, True, False])
    judged = judge_regions(label, pred, noise, flags, scores)
    assert [(j.region.slice_index, j.region.kind, j.region.pixels, j.score) for j in judged] == [
        (1, ErrorKind.SPURIOUS, 8, pytest.approx(0.8))]
    fixed = fixed_label(label, pred, noise, flags, scores)
    assert fixed.dtype == label.dtype and (fixed[1] == pred[1]).all() and (fixed[2] == label[2]).all()
    assert judge_regions(label, pred, noise, flags, scores, FixParams(0.9)) == []
    ignored = apply_fix(label, pred, judged, FixMode.IGNORE, ignore_value=300)
    assert ignored.dtype == np.uint16 and int((ignored == 300).sum()) == 8
    np.testing.assert_array_equal(slice_flags(np.array([0.2, 0.9, 0.5, 0.9]), 2), [False, True, False, True])
    np.testing.assert_array_equal(slice_flags(np.array([0.2, 0.5]), 0), [False, False])


def test_a_class_the_model_does_not_segment_is_never_mended():
    label = np.zeros((2, 20, 20), dtype=np.uint8)
    label[:, 5:15, 5:15] = 1
    label[:, 2:4, 2:6] = 2  # a small class the model never predicts
    pred = np.where(label == 2, 0, label)
    counts: dict[int, list[int]] = {}
    agreement_counts(label, pred, counts)
    assert counts == {1: [400, 400], 2: [0, 16]}
    agreement = class_agreement(counts)
    assert agreement == {1: 1.0, 2: 0.0}
    assert untrusted_classes(agreement) == frozenset({2}) and untrusted_classes(None) == frozenset()
    assert untrusted_classes(agreement, FixParams(min_agreement=0.0)) == frozenset()
    scores = np.array([0.5, 0.5])
    noise = np.where(label != pred, 0.9, 0.0).astype(np.float32) * 0.5
    flags = np.array([True, True])
    assert {j.region.label_value for j in judge_regions(label, pred, noise, flags, scores)} == {2}
    assert judge_regions(label, pred, noise, flags, scores, untrusted=frozenset({2})) == []


def test_fix_follows_the_calibrations_class_agreement(planted, tmp_path):
    audit = tmp_path / "audit"
    shutil.copytree(planted["audit"], audit)
    summary = json.loads((audit / "summary.json").read_text())
    summary["threshold"]["class_agreement"] = {"1": 0.2, "2": 0.9}  # as a calibration would record it
    (audit / "summary.json").write_text(json.dumps(summary))
    manifest = fix_dataset(FixConfig(audit, tmp_path / "fixed"))
    assert manifest.unmended == {1: 0.2}
    assert all(r.label_value != 1 and r.pred_value != 1 for _, r in manifest.regions)
    assert read_fix_manifest(tmp_path / "fixed" / FIX_MANIFEST_NAME).unmended == {1: 0.2}
    assert fix_dataset(FixConfig(planted["audit"], tmp_path / "all")).unmended == {}  # none recorded: all mended
