"""`labelaudit evaluate` end to end on a hand-made audit folder, manifest and clean dataset with known answers."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from labelaudit import io

from labelaudit.evaluate import metrics
from labelaudit.cli import app
from labelaudit.errors import InputError
from labelaudit.config import EvaluateConfig, Level, NoiseKind
from labelaudit.evaluate.evaluate import evaluate_audit
from labelaudit.formats.manifest import read_corruption_manifest, read_manifest
from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Volume, from_slices, to_slices

CASES = ("case_000", "case_001", "case_002")
CORRUPTED_SLICES = {"case_000": {2: "dilation"}, "case_001": {}, "case_002": {1: "erosion", 3: "dilation"}}
CASE_SCORES = {"case_000": 0.9, "case_001": 0.1, "case_002": 0.8}  # a perfect case ranking


def _corrupt_slice(label_slice: np.ndarray, kind: str) -> np.ndarray:
    """Grow or shrink every class by one pixel in-plane (grey dilation/erosion keeps label values)."""
    if kind == "dilation":
        return ndimage.grey_dilation(label_slice, size=(3, 3))
    return ndimage.grey_erosion(label_slice, size=(3, 3))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def make_audit(root: Path, classes: int = 1) -> dict:
    """Clean dataset, noisy copy with corruption.json, and an audit folder whose answers are known.

    - cases.csv ranks the corrupted cases first (AP 1);
    - slices.csv ranks every corrupted slice last (AUROC 0, AP the minimum);
    - the noise map is high exactly where the noisy label differs from the clean one (pixel AP 1);
    - the prediction equals the clean label, except case_001 where it is empty.
    """
    clean = write_synth_dataset(root / "clean", SynthConfig(cases=3, size=(24, 20, 5), classes=classes))
    noisy, audit = root / "noisy", root / "audit"
    (audit / "maps").mkdir(parents=True)
    manifest_cases, slice_rows, total_changed = {}, [], 0
    for case_id in CASES:
        label = io.read_volume(clean / "labelsTr" / f"{case_id}.nii.gz")
        stack = to_slices(label.array, label.geometry).copy()
        slices = []
        for index in range(stack.shape[0]):
            kind = CORRUPTED_SLICES[case_id].get(index)
            before = stack[index].copy()
            if kind:
                stack[index] = _corrupt_slice(stack[index], kind)
            changed = int((stack[index] != before).sum())
            assert not kind or changed > 0, "the fixture must really corrupt its corrupted slices"
            slices.append({"slice_index": index, "corrupted": bool(kind), "kind": kind, "class": 1 if kind else None,
                           "params": {}, "changed_pixels": changed})
            slice_rows.append([case_id, index, 0.05 * index if kind else 0.5 + 0.05 * index, int(not kind)])
        noisy_array = from_slices(stack, label.geometry)
        io.write_like(noisy_array, label.geometry, noisy / "labelsTr" / f"{case_id}.nii.gz")
        wrong = noisy_array != label.array
        total_changed += int(wrong.sum())
        manifest_cases[case_id] = {"corrupted": bool(CORRUPTED_SLICES[case_id]), "changed_pixels": int(wrong.sum()),
                                   "label_file": f"labelsTr/{case_id}.nii.gz", "slices": slices}
        io.write_like((0.05 + 0.9 * wrong).astype(np.float32), label.geometry,
                      audit / "maps" / f"{case_id}_noise.nii.gz")
        pred = label.array if case_id != "case_001" else np.zeros_like(label.array)
        io.write_like(pred, label.geometry, audit / "maps" / f"{case_id}_pred.nii.gz")
    manifest = {"format": 1, "source": str(clean), "rate": 0.5, "level": "slice", "kinds": ["dilation", "erosion"],
                "seed": 0, "cases": manifest_cases}
    (noisy / "corruption.json").write_text(json.dumps(manifest))
    _write_csv(audit / "cases.csv", ["case_id", "noise_score", "flagged"],
               [[c, s, int(s > 0.5)] for c, s in CASE_SCORES.items()])
    _write_csv(audit / "slices.csv", ["case_id", "slice_index", "noise_score", "flagged"], slice_rows)
    (audit / "summary.json").write_text(json.dumps({"dataset": {"path": str(noisy)}}))
    return {"clean": clean, "noisy": noisy, "audit": audit, "truth": noisy / "corruption.json",
            "changed": total_changed, "slices": len(slice_rows)}


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> dict:
    return make_audit(tmp_path_factory.mktemp("evaluate"))


def _invoke(*args: str):
    result = CliRunner().invoke(app, ["evaluate", *map(str, args)])
    return result, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _spacing(path: Path) -> tuple[float, ...]:
    return tuple(reversed(io.read_geometry(path).spacing))


def test_cli_end_to_end_gives_the_known_answers(audit):
    result, text = _invoke(audit["audit"], "--truth", audit["truth"])
    assert result.exit_code == 0, text
    assert "pixel_roi" in result.stdout and "AUROC" in result.stdout and "noisy label" in result.stdout
    data = json.loads((audit["audit"] / "evaluation.json").read_text())
    ranking = data["ranking"]
    assert ranking["case"]["ap"] == 1.0 and ranking["case"]["auroc"] == 1.0
    assert ranking["case"]["precision_at_k"] == 1.0 and (ranking["case"]["k"], ranking["case"]["total"]) == (2, 3)
    # every corrupted slice ranked last: the minimum for 3 positives of 15
    assert ranking["slice"]["auroc"] == 0.0 and ranking["slice"]["precision_at_k"] == 0.0
    assert (ranking["slice"]["positives"], ranking["slice"]["total"]) == (3, audit["slices"])
    assert ranking["slice"]["ap"] == pytest.approx(metrics.minimum_average_precision(3, audit["slices"]))
    assert ranking["slice"]["ap"] == pytest.approx((1 / 13 + 2 / 14 + 3 / 15) / 3)
    for level in ("pixel", "pixel_roi"):
        assert ranking[level]["ap"] == 1.0 and ranking[level]["auroc"] == 1.0, level
        # every changed pixel lies in the ROI (it is foreground in the noisy or the clean label)
        assert ranking[level]["population_positives"] == audit["changed"] and not ranking[level]["sampled"]
    assert ranking["pixel"]["population_total"] == 3 * 24 * 20 * 5
    assert ranking["pixel_roi"]["population_total"] < ranking["pixel"]["population_total"]
    assert data["warnings"] == [] and data["clean"] == str(audit["clean"])

    prediction = data["segmentation"]["prediction"]["classes"]["1"]
    assert prediction["dice"] == pytest.approx(2 / 3)  # 1, 0 (empty prediction), 1
    assert prediction["hd95_mm"] == 0.0 and prediction["undefined_distances"] == 1
    noisy = data["segmentation"]["noisy_label"]
    assert noisy["per_case"]["case_001"]["1"]["dice"] == 1.0 and noisy["per_case"]["case_001"]["1"]["hd95_mm"] == 0.0
    for case_id in ("case_000", "case_002"):
        label = io.read_volume(audit["noisy"] / "labelsTr" / f"{case_id}.nii.gz").array
        clean = io.read_volume(audit["clean"] / "labelsTr" / f"{case_id}.nii.gz").array
        want = metrics.segmentation_scores(label == 1, clean == 1, _spacing(audit["clean"] / "labelsTr" /
                                                                            f"{case_id}.nii.gz"))
        got = noisy["per_case"][case_id]["1"]
        assert got["dice"] == pytest.approx(want.dice) and got["assd_mm"] == pytest.approx(want.assd)
        assert 0 < got["dice"] < 1 and got["hd95_mm"] > 0
    assert noisy["classes"]["1"]["undefined_distances"] == 0


def test_multi_class_reports_each_class_and_the_foreground_mean(tmp_path):
    made = make_audit(tmp_path, classes=2)
    result = evaluate_audit(EvaluateConfig(made["audit"], made["truth"]))
    noisy = next(s for s in result.segmentation if s.source == "noisy_label")
    assert sorted(noisy.classes) == [1, 2] and noisy.classes[2].name == "class_2"
    assert noisy.foreground.dice == pytest.approx((noisy.classes[1].dice + noisy.classes[2].dice) / 2)
    assert all(0 < s.dice < 1 for s in noisy.classes.values())
    assert result.level("pixel").scores.ap == 1.0


def test_json_option_and_explicit_clean(audit, tmp_path):
    manifest = json.loads(audit["truth"].read_text())
    manifest["source"] = str(tmp_path / "moved-away")
    truth = audit["noisy"] / "moved.json"
    truth.write_text(json.dumps(manifest))
    out = tmp_path / "metrics.json"
    result, text = _invoke(audit["audit"], "--truth", truth, "--clean", audit["clean"], "--json", out)
    assert result.exit_code == 0, text
    assert json.loads(out.read_text())["ranking"]["pixel"]["ap"] == 1.0


def test_without_clean_labels_only_case_and_slice_levels(audit, tmp_path):
    manifest = json.loads(audit["truth"].read_text())
    manifest["source"] = str(tmp_path / "gone")
    truth = audit["noisy"] / "no-source.json"
    truth.write_text(json.dumps(manifest))
    result = evaluate_audit(EvaluateConfig(audit["audit"], truth))
    assert [r.level for r in result.ranking] == ["case", "slice"]
    assert result.segmentation == [] and "pass --clean" in result.warnings[0]


def test_pixel_sample_is_bounded_and_deterministic(audit):
    config = EvaluateConfig(audit["audit"], audit["truth"], pixel_sample=500, seed=3)
    first, second = evaluate_audit(config), evaluate_audit(config)
    pixel = first.level("pixel")
    assert pixel.sampled and pixel.scores.total == 500 and pixel.population_total == 3 * 24 * 20 * 5
    assert pixel.scores.ap == 1.0  # the map is perfect, so any sample ranks perfectly
    assert second.level("pixel").scores == pixel.scores
    assert second.level("pixel_roi").scores == first.level("pixel_roi").scores


def _copy_audit(audit: dict, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(audit["audit"], tmp_path / "audit"))


def test_mismatched_case_ids_exit_3(audit, tmp_path):
    copy = _copy_audit(audit, tmp_path)
    _write_csv(copy / "cases.csv", ["case_id", "noise_score", "flagged"],
               [["case_000", 0.9, 1], ["case_002", 0.8, 1], ["case_999", 0.2, 0]])
    result, text = _invoke(copy, "--truth", audit["truth"])
    assert result.exit_code == 3, text
    assert "in the audit but not the manifest: case_999" in text
    assert "in the manifest but not the audit: case_001" in text


def test_missing_slice_is_named(audit, tmp_path):
    copy = _copy_audit(audit, tmp_path)
    with (copy / "slices.csv").open() as handle:
        rows = [r for r in csv.reader(handle)]
    kept = [r for r in rows if r[:2] != ["case_002", "3"]]
    assert len(kept) == len(rows) - 1
    _write_csv(copy / "slices.csv", kept[0], kept[1:])
    with pytest.raises(InputError, match="no score for 1 slice.*case_002 slice 3"):
        evaluate_audit(EvaluateConfig(copy, audit["truth"]))


def test_noise_map_on_another_grid_exit_3(audit, tmp_path):
    copy = _copy_audit(audit, tmp_path)
    path = copy / "maps" / "case_001_noise.nii.gz"
    volume = io.read_volume(path)
    geometry = volume.geometry
    moved = type(geometry)(geometry.size, (1.0, 1.0, 1.0), geometry.origin, geometry.direction)
    io.write_volume(Volume(volume.array, moved), path)
    result, text = _invoke(copy, "--truth", audit["truth"])
    assert result.exit_code == 3, text
    assert "case_001" in text and "does not lie on the grid" in text and "spacing" in text


def test_bad_truth_and_missing_option(audit, tmp_path):
    result, text = _invoke(audit["audit"], "--truth", tmp_path / "nope.json")
    assert result.exit_code == 3 and "manifest not found" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": 2, "cases": {}}))
    result, text = _invoke(audit["audit"], "--truth", bad)
    assert result.exit_code == 3 and "format 2, expected 1" in text
    result, _ = _invoke(audit["audit"])
    assert result.exit_code == 2


def test_nan_json_is_null(audit, tmp_path):
    # a manifest with no corrupted case: AP/AUROC/P@k are undefined and written as null
    manifest = json.loads(audit["truth"].read_text())
    for entry in manifest["cases"].values():
        entry["corrupted"] = False
    truth = audit["noisy"] / "none-corrupted.json"
    truth.write_text(json.dumps(manifest))
    out = tmp_path / "e.json"
    result, text = _invoke(audit["audit"], "--truth", truth, "--json", out)
    assert result.exit_code == 0, text
    case = json.loads(out.read_text())["ranking"]["case"]
    assert case["ap"] is None and case["auroc"] is None and case["positives"] == 0
    assert not math.isnan(json.loads(out.read_text())["ranking"]["slice"]["auroc"])


def _set(path: str, value):
    """A change to the manifest's JSON at `path` (dotted keys and [i] indices); value _DROP removes the key."""
    def change(data: dict) -> None:
        keys = [int(k) if k.isdigit() else k for k in path.replace("[", ".").replace("]", "").split(".")]
        for key in keys[:-1]:
            data = data[key]
        if value is _DROP:
            del data[keys[-1]]
        else:
            data[keys[-1]] = value
    return change


_DROP = object()
BAD_MANIFESTS = [
    (_set("cases.case_000.corrupted", "yes"), r"field 'cases\.case_000\.corrupted': expected true or false, found 'yes'"),
    (_set("cases.case_000.slices[2].slice_index", "2"), r"'cases\.case_000\.slices\[2\]\.slice_index': expected an integer"),
    (_set("cases.case_000.slices[1].corrupted", _DROP), r"lacks the field 'cases\.case_000\.slices\[1\]\.corrupted'"),
    (_set("cases.case_000.slices", {}), r"field 'cases\.case_000\.slices': expected a list"),
    (_set("cases.case_001", []), r"field 'cases\.case_001': expected an object"),
    (_set("cases.case_002.label_file", _DROP), r"lacks the field 'cases\.case_002\.label_file'"),
    (_set("cases.case_002.label_file", 7), r"field 'cases\.case_002\.label_file': expected a string, found 7"),
    (_set("cases.case_002.changed_pixels", 1.5), r"field 'cases\.case_002\.changed_pixels': expected an integer"),
    (_set("cases.case_002.slices[1].kind", "blur"), r"field 'cases\.case_002\.slices\[1\]\.kind': expected one of"),
    (_set("cases.case_002.slices[1].class", "1"), r"field 'cases\.case_002\.slices\[1\]\.class': expected an integer"),
    (_set("cases.case_002.slices[3].slice_index", 1), r"case case_002: slice 1 is listed twice"),
    (_set("rate", "0.5"), r"field 'rate': expected a finite number, found '0\.5'"),
    (_set("level", "volume"), r"field 'level': expected one of 'slice', 'case', found 'volume'"),
    (_set("kinds", ["dilation", 3]), r"field 'kinds\[1\]': expected a string, found 3"),
    (_set("kinds", ["dilation", "blur"]), r"field 'kinds\[1\]': expected one of 'dilation'.*found 'blur'"),
    (_set("noise_params", {"dilation_radius": [1]}), r"field 'noise_params\.dilation_radius': expected a list of 2"),
    (_set("skipped", {"case_009": "unreadable"}), r"field 'skipped\.case_009': expected a list"),
    (_set("cases", {}), r"the manifest lists no case"),
    (_set("cases", []), r"expected a corruption manifest"),
]


@pytest.mark.parametrize("change, message", BAD_MANIFESTS, ids=[m for _, m in BAD_MANIFESTS])
def test_a_manifest_field_of_the_wrong_type_is_an_input_error_naming_it(audit, tmp_path, change, message):
    data = json.loads(audit["truth"].read_text())
    change(data)
    bad = tmp_path / "corruption.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message) as info:
        read_corruption_manifest(bad)
    assert str(bad) in info.value.message and info.value.exit_code == 3


def test_cli_names_the_bad_manifest_field_and_exits_3(audit, tmp_path):
    data = json.loads(audit["truth"].read_text())
    data["cases"]["case_000"]["slices"][0]["corrupted"] = "no"
    bad = audit["noisy"] / "bad-type.json"
    bad.write_text(json.dumps(data))
    result, text = _invoke(audit["audit"], "--truth", bad)
    assert result.exit_code == 3, text
    assert "cases.case_000.slices[0].corrupted" in text and "bad-type.json" in text


def test_a_hand_made_manifest_reads_with_defaults(audit):
    manifest = read_corruption_manifest(audit["truth"])
    assert manifest.level is Level.SLICE and manifest.kinds == (NoiseKind.DILATION, NoiseKind.EROSION)
    assert manifest.population_size is None and manifest.noise_params is None and manifest.skipped == {}
    record = manifest.cases["case_002"].slices[1]
    assert record.corrupted and record.corruption.kind is NoiseKind.EROSION and record.eligible is None
    assert manifest.cases["case_001"].slices[0].corruption is None
    truth = read_manifest(audit["truth"])
    assert truth.cases["case_002"].slices == {0: False, 1: True, 2: False, 3: True, 4: False}
    assert truth.source == audit["clean"] and truth.record == manifest


def test_kind_accuracy_is_a_confusion_matrix_against_the_corruption(audit, tmp_path):
    copy = _copy_audit(audit, tmp_path)
    named = {("case_000", 2): "over_segmentation", ("case_002", 1): "shifted_boundary",
             ("case_002", 3): "over_segmentation"}
    rows = [[c, i, 0.5, 0, named.get((c, i), "none")] for c in CASES for i in range(5)]
    _write_csv(copy / "slices.csv", ["case_id", "slice_index", "noise_score", "flagged", "error_kind"], rows)
    result, text = _invoke(copy, "--truth", audit["truth"])
    assert result.exit_code == 0, text
    assert "kind accuracy 0.67" in result.stdout
    kinds = json.loads((copy / "evaluation.json").read_text())["kinds"]
    assert kinds["counts"]["dilation"]["over_segmentation"] == 2 and kinds["counts"]["erosion"] == {
        **{k: 0 for k in kinds["counts"]["erosion"]}, "shifted_boundary": 1}
    assert kinds["row_accuracy"] == {"dilation": 1.0, "erosion": 0.0}  # no clean row: the file says no eligibility
    assert kinds["accuracy"] == pytest.approx(2 / 3) and kinds["expected"]["erosion"] == "under_segmentation"
    # an audit without the error_kind column has nothing to compare
    assert evaluate_audit(EvaluateConfig(audit["audit"], audit["truth"])).kinds is None
