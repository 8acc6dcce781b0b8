"""Against nnU-Net's own code: validation and prediction files written by nnU-Net v2's export function
(nnunetv2.inference.export_prediction.export_prediction_from_logits), then audited with labelaudit.

No network is trained: nnU-Net's own preprocessing (DefaultPreprocessor.run_case: transpose, crop to the
non-zero region, resample to the plans' spacing) maps each clean label to the network's grid, confident logits
are made from it there, and nnU-Net's export maps them back (resample, softmax, uncrop, transpose back) into
fold_K/validation/CASE.npz, exactly as `nnUNetv2_train ... --npz` does. The plans use a transpose and a
spacing that make every one of those steps do something. Skipped without nnunetv2 (`pip install
'labelaudit[nnunet]'`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelaudit import io
from labelaudit.synth import SynthConfig, write_synth_dataset

pytest.importorskip("nnunetv2")

CONFIG = SynthConfig(cases=5, size=(24, 20, 4), spacing=(0.8, 0.9, 3.0), seed=11)
PLANTED = ("case_003", 2)
CONFIGURATION = "3d_fullres"
MODEL = f"nnUNetTrainer__nnUNetPlans__{CONFIGURATION}"
#: Numpy axes (Z, Y, X) have spacing (3.0, 0.9, 0.8); the transpose [0, 2, 1] puts X before Y on the network's
#: grid, and the target spacing (transposed order) resamples both in-plane axes.
PLANS = {
    "dataset_name": "Dataset031_Export", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 2, 1], "transpose_backward": [0, 2, 1],
    "original_median_spacing_after_transp": [3.0, 0.8, 0.9], "original_median_shape_after_transp": [4, 24, 20],
    "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {
        "max": 300.0, "mean": 0.0, "median": 0.0, "min": -300.0, "percentile_00_5": -250.0,
        "percentile_99_5": 250.0, "std": 100.0}},
    "configurations": {CONFIGURATION: {
        "data_identifier": f"nnUNetPlans_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [4, 32, 32], "median_image_size_in_voxels": [4, 24, 20],
        "spacing": [3.0, 0.6, 0.7], "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {}, "_kw_requires_import": []},
        "batch_dice": False}},
}


def invoke(*args: object):
    from labelaudit.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def read_csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def zero_border(image_path: Path, columns: int = 2) -> None:
    """Set the first image columns to 0, so that nnU-Net's crop to the non-zero region crops them."""
    image = io.read_volume(image_path)
    image.array[..., :columns] = 0
    io.write_volume(image, image_path)


def export_with_nnunet(root: Path, case_ids: list[str], folder_of, seed: int = 0) -> None:
    """For each case: nnU-Net's preprocessing of its (clean) label, confident logits on the network's grid,
    nnU-Net's export of them into folder_of(case_id)/CASE.{npz,pkl,<ending>}."""
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = json.loads((root / "dataset.json").read_text())
    plans = PlansManager(json.loads(json.dumps(PLANS)))
    configuration = plans.get_configuration(CONFIGURATION)
    rng = np.random.default_rng(seed)
    for case_id in case_ids:
        images = [str(root / "imagesTr" / f"{case_id}_0000.nii.gz")]
        _, seg, properties = DefaultPreprocessor(verbose=False).run_case(
            images, str(root / "labelsTr" / f"{case_id}.nii.gz"), plans, configuration, dataset_json)
        assert seg.shape[1:] != tuple(properties["shape_before_cropping"])  # cropped and resampled: not a no-op
        logits = np.stack([(seg[0] == c) for c in range(2)]).astype(np.float32) * 6.0
        logits += rng.normal(0.0, 0.5, logits.shape).astype(np.float32)
        out = folder_of(case_id)
        out.mkdir(parents=True, exist_ok=True)
        export_prediction_from_logits(logits, properties, configuration, plans, dataset_json, str(out / case_id),
                                      save_probabilities=True, num_threads_torch=1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """(the dataset with one erased slice, nnU-Net's trained-model folder of the clean labels: one case per fold)."""
    base = tmp_path_factory.mktemp("nnunet")
    root = write_synth_dataset(base / PLANS["dataset_name"], CONFIG)
    for image in (root / "imagesTr").iterdir():
        zero_border(image)
    model = base / "nnUNet_results" / root.name / MODEL
    model.mkdir(parents=True)
    shutil.copy(root / "dataset.json", model / "dataset.json")
    (model / "plans.json").write_text(json.dumps(PLANS, indent=2))
    case_ids = sorted(p.name[:-len(".nii.gz")] for p in (root / "labelsTr").iterdir())
    export_with_nnunet(root, case_ids, lambda c: model / f"fold_{case_ids.index(c)}" / "validation")
    label = io.read_volume(root / "labelsTr" / f"{PLANTED[0]}.nii.gz")
    label.array[PLANTED[1]] = 0
    io.write_volume(label, root / "labelsTr" / f"{PLANTED[0]}.nii.gz")
    return root, model


def test_nnunets_validation_files_are_classes_first_on_the_labels_grid(exported):
    root, model = exported
    npz = model / "fold_0" / "validation" / "case_000.npz"
    assert (npz.with_suffix(".pkl")).is_file() and (model / "fold_0" / "validation" / "case_000.nii.gz").is_file()
    prob = np.load(npz, allow_pickle=False)["probabilities"]
    label = io.read_volume(root / "labelsTr" / "case_000.nii.gz").array
    assert prob.shape == (2, *label.shape)  # (C, Z, Y, X), numpy order as SimpleITK reads the label
    assert np.abs(prob.sum(axis=0) - 1).max() < 1e-5
    assert (prob.argmax(axis=0) == label).mean() > 0.95  # back on the label's own voxels (transpose undone)


def test_planted_error_ranks_first_with_nnunets_own_export(exported, tmp_path):
    root, model = exported
    result = invoke("score", root, "--probabilities", model, "--out", tmp_path / "audit")
    assert result.exit_code == 0, result.output
    cases, slices = read_csv(tmp_path / "audit" / "cases.csv"), read_csv(tmp_path / "audit" / "slices.csv")
    assert cases[0]["case_id"] == PLANTED[0] and cases[0]["flagged"] == "true"
    assert (slices[0]["case_id"], int(slices[0]["slice_index"])) == PLANTED
    assert sum(c["flagged"] == "true" for c in cases) == 1
    assert {c["routing"] for c in cases} == {"out-of-fold"}
    assert (tmp_path / "audit" / "calibration" / "run.json").is_file()


def test_check_with_nnunets_predict_output_and_the_calibration(exported, tmp_path):
    root, model = exported
    assert invoke("score", root, "--probabilities", model, "--out", tmp_path / "audit").exit_code == 0
    incoming = tmp_path / "Dataset032_Incoming"
    (incoming / "imagesTr").mkdir(parents=True)
    (incoming / "labelsTr").mkdir()
    shutil.copy(root / "dataset.json", incoming / "dataset.json")
    for case_id in ("case_001", PLANTED[0]):
        shutil.copy(root / "imagesTr" / f"{case_id}_0000.nii.gz", incoming / "imagesTr")
        shutil.copy(root / "labelsTr" / f"{case_id}.nii.gz", incoming / "labelsTr")
    predicted = tmp_path / "predicted"  # what nnUNetv2_predict --save_probabilities leaves: npz, pkl, segmentation
    predicted.mkdir()
    for fold in model.glob("fold_*/validation"):  # the clean labels' predictions, as one flat folder
        for path in fold.iterdir():
            shutil.copy(path, predicted / path.name)
    shutil.copy(model / "dataset.json", predicted / "dataset.json")
    shutil.copy(model / "plans.json", predicted / "plans.json")
    result = invoke("check", incoming, "--probabilities", predicted, "--model", tmp_path / "audit" / "calibration",
                    "--format", "json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["flagged"] == [PLANTED[0]]
