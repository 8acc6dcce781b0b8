"""Shared fixtures: tiny synthetic datasets (rotated, anisotropic grids), a CLI runner, a DICOM writer, run
folders built without torch (`make_run`, `segmenter_graph`) and hand-made audits (`make_audit`, `tiny_view`).

Helpers that tests call with arguments are fixtures returning the function; the labelaudit names they need
are imported inside them, so a moved name breaks only the tests that use it, not collection of every test.
"""

from __future__ import annotations

import importlib.util
import locale
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Volume

REPO = Path(__file__).resolve().parents[1]

#: Small enough for fast tests, still anisotropic (largest spacing along ITK z), offset and rotated.
TINY = SynthConfig(cases=2, size=(24, 20, 4), spacing=(0.8, 0.9, 3.0))


@pytest.fixture(autouse=True)
def _working_directory(tmp_path_factory, monkeypatch) -> Path:
    """Every test runs in a folder of its own: what the CLI writes relative to the working directory
    (runs/, runs/.latest, audits/) never lands in the repository or leaks from one test into another."""
    work = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def tiny_config() -> SynthConfig:
    return TINY


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    """A 2-case nnU-Net v2 dataset (dataset.json, imagesTr/case_00N_0000.nii.gz, labelsTr/)."""
    return write_synth_dataset(tmp_path / "Dataset001_Tiny", TINY)


@pytest.fixture
def paired_dataset(tmp_path: Path) -> Path:
    """A 2-case paired dataset (images/case_00N.nii.gz, labels/case_00N.nii.gz), no dataset.json."""
    return write_synth_dataset(tmp_path / "paired", TINY, layout="paired")


@pytest.fixture
def cli() -> Callable:
    """Run the CLI in-process: `cli("inspect", path)` -> typer.testing.Result (.exit_code, .stdout, .stderr)."""
    from typer.testing import CliRunner

    from labelaudit.cli import app

    runner = CliRunner()

    def invoke(*args: object):
        return runner.invoke(app, [str(a) for a in args])

    return invoke


def write_dicom_series(volume: Volume, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> Path:
    """Write a 3D integer `volume` as a DICOM series, one file per slice, with its geometry.

    After SimpleITK's "Dicom Series From Array" example: position and orientation tags per slice.
    """
    from labelaudit.io.image import to_sitk

    folder.mkdir(parents=True, exist_ok=True)
    saved = {category: locale.setlocale(category) for category in (locale.LC_CTYPE, locale.LC_NUMERIC)}
    try:
        return _write_slices(to_sitk(volume), volume, folder, series_uid)
    finally:  # GDCM's writer switches the process locale to "C" (ASCII) and leaves it so
        for category, value in saved.items():
            locale.setlocale(category, value)


def _write_slices(image, volume: Volume, folder: Path, series_uid: str) -> Path:
    import SimpleITK as sitk

    d = volume.geometry.direction
    orientation = "\\".join(f"{v:.10f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    now = time.strftime("%Y%m%d"), time.strftime("%H%M%S")
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        for tag, value in (("0008|0021", now[0]), ("0008|0031", now[1]), ("0008|0060", "CT"),
                           ("0020|000e", series_uid), ("0020|0037", orientation), ("0020|0032", position),
                           ("0020|0013", str(k + 1)), ("0008|0018", f"{series_uid}.{k + 1}"),
                           ("0018|0050", f"{volume.geometry.spacing[2]:.6f}")):
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(plane)
    return folder


@pytest.fixture
def dicom_writer() -> Callable[[Volume, Path], Path]:
    """`write_dicom_series(volume, folder)`: a tiny DICOM series folder for reading tests."""
    return write_dicom_series


# ----------------------------------------------------------------------------- run folders without torch

#: The default ChannelNorm of `make_run`: the synthetic CT class means become (-100 + 80 k + 60) / 40.
CT_NORM = dict(kind="ct", clip_low=-1000.0, clip_high=1000.0, mean=-60.0, std=40.0)


def class_means(num_classes: int) -> np.ndarray:
    return -1.0 + 2.0 * np.arange(num_classes, dtype=np.float32)


def _segmenter_graph(path: Path, in_channels: int, num_classes: int, constant_class: int | None = None,
                     sharpness: float = 4.0, smooth: int = 5) -> Path:
    """Write a segmenter.onnx that follows the contract (image + noise in, prob_mean + uncertainty out).

    Each pass k classifies the 5x5-smoothed channel 0 of image + noise[k] with equal-variance Gaussian
    logits around `class_means`; `constant_class` makes a model that predicts that class everywhere.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    mus = class_means(num_classes)
    weight = np.zeros((num_classes, in_channels), dtype=np.float32)
    bias = np.zeros(num_classes, dtype=np.float32)
    if constant_class is None:
        weight[:, 0] = sharpness * mus
        bias[:] = -sharpness * mus ** 2 / 2
    else:
        bias[:] = -8.0
        bias[constant_class] = 8.0
    kernel = np.full((in_channels, 1, smooth, smooth), 1.0 / smooth ** 2, dtype=np.float32)
    pad = smooth // 2
    inits = [
        numpy_helper.from_array(kernel, "kernel"), numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias.reshape(1, 1, num_classes, 1, 1), "bias"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array(1e-8, dtype=np.float32), "eps"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array(-1.0 / math.log(max(num_classes, 2)), dtype=np.float32), "scale"),
    ]
    conv = dict(group=in_channels, pads=[pad] * 4, kernel_shape=[smooth, smooth])
    nodes = [
        helper.make_node("Conv", ["image", "kernel"], ["image_s"], **conv),
        helper.make_node("Conv", ["noise", "kernel"], ["noise_s"], **conv),
        helper.make_node("Unsqueeze", ["image_s", "axis1"], ["image_u"]),
        helper.make_node("Unsqueeze", ["noise_s", "axis0"], ["noise_u"]),
        helper.make_node("Add", ["image_u", "noise_u"], ["x"]),
        helper.make_node("Einsum", ["x", "weight"], ["z"], equation="nkchw,dc->nkdhw"),
        helper.make_node("Add", ["z", "bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=2),
        helper.make_node("ReduceMean", ["probs"], ["prob_mean"], axes=[1], keepdims=0),
        helper.make_node("Clip", ["prob_mean", "eps", "one"], ["clipped"]),
        helper.make_node("Log", ["clipped"], ["log_p"]),
        helper.make_node("Mul", ["prob_mean", "log_p"], ["p_log_p"]),
        helper.make_node("ReduceSum", ["p_log_p", "axis1"], ["neg_entropy"], keepdims=0),
        helper.make_node("Mul", ["neg_entropy", "scale"], ["uncertainty"]),
    ]
    graph = helper.make_graph(
        nodes, "oracle_segmenter",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", in_channels, "H", "W"]),
         helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["K", in_channels, "H", "W"])],
        [helper.make_tensor_value_info("prob_mean", TensorProto.FLOAT, ["N", num_classes, "H", "W"]),
         helper.make_tensor_value_info("uncertainty", TensorProto.FLOAT, ["N", "H", "W"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _make_run(run_dir: Path, dataset_root: Path, num_classes: int = 2, in_channels: int = 1, norm=None,
              folds: list[list[str]] | None = None, constant_folds: dict[int, int] | None = None,
              target_spacing: tuple[float, float] | None = None, k: int = 2, threshold: dict | None = None) -> Path:
    """A run folder fit (on paper) on `dataset_root`; one oracle model per entry of `folds` (held-out ids).

    `norm`: the ChannelNorm of every channel (default: CT_NORM). run.json is written as its on-disk format and
    passed through RunInfo.from_json, so the helper follows the reader's validation, whatever RunInfo's fields.
    """
    from labelaudit.data import discover_dataset, fingerprint
    from labelaudit.formats.run import RUN_FORMAT, FoldModel, RunInfo, save_run
    from labelaudit.preprocess import ChannelNorm, Preprocessing

    norm = norm if norm is not None else ChannelNorm(**CT_NORM)
    dataset = discover_dataset(dataset_root)
    folds = folds if folds is not None else [[]]
    models = []
    for i, held_out in enumerate(folds):
        rel = f"fold_{i}/segmenter.onnx"
        _segmenter_graph(run_dir / rel, in_channels, num_classes, (constant_folds or {}).get(i))
        models.append(FoldModel(fold=i if len(folds) > 1 else -1, segmenter=rel,
                                weights=f"fold_{i}/weights.safetensors", held_out=list(held_out)).to_json())
    data = {
        "format": RUN_FORMAT, "method": "pint",
        "dataset": {"path": str(dataset.root.resolve()), "name": dataset.name, "layout": dataset.layout,
                    "file_ending": dataset.file_ending, "fingerprint": fingerprint(dataset),
                    "cases": [r.case_id for r in dataset.cases]},
        "classes": _fit_label_map(dataset, num_classes).to_json(),
        "channel_names": _fit_channel_names(dataset, in_channels),
        "preprocessing": Preprocessing(tuple([norm] * in_channels), target_spacing).to_json(),
        "perturbations": {"k": k}, "models": models, "threshold": threshold or {},
    }
    save_run(run_dir, RunInfo.from_json(data, run_dir / "run.json"))
    return run_dir


def _fit_label_map(dataset, num_classes: int):
    """The classes fit would record: dataset.json's names when they are these values, else automatic names."""
    from labelaudit.preprocess import LabelMap

    declared = LabelMap.from_declared(dataset.labels) if dataset.labels else None
    if declared is not None and declared.values == tuple(range(num_classes)):
        return declared
    return LabelMap(tuple(range(num_classes)), tuple("background" if i == 0 else f"label_{i}"
                                                     for i in range(num_classes)))


def _fit_channel_names(dataset, in_channels: int) -> list[str]:
    """The channel names fit would record: dataset.json's when they count `in_channels`, else CT."""
    names = dataset.channel_names or {}
    return [names[k] for k in sorted(names, key=int)] if len(names) == in_channels else ["CT"] * in_channels


@pytest.fixture(scope="session")
def segmenter_graph() -> Callable[..., Path]:
    """`segmenter_graph(path, in_channels, num_classes, constant_class=None)`: an oracle segmenter.onnx (no torch)."""
    return _segmenter_graph


@pytest.fixture(scope="session")
def make_run() -> Callable[..., Path]:
    """`make_run(run_dir, dataset_root, num_classes=2, ...)`: a run folder of oracle models (see _make_run)."""
    return _make_run


# ----------------------------------------------------------------------------- hand-made audits

#: A case id that is also markup: the report must show it as text.
EVIL = "<script>alert(1)</script>"


def _tiny_view(case_id: str, slice_index: int = 0, images=("img.nii.gz",), label: str = "lab.nii.gz"):
    """A CaseView with one 24x24 thumbnail: a disk label, a shifted prediction, noise where they differ."""
    from labelaudit.report.views import CaseView, Orientation, make_slice_view

    y, x = np.mgrid[:24, :24]
    lab = ((y - 12) ** 2 + (x - 11) ** 2 <= 25).astype(np.uint8)
    pred = ((y - 12) ** 2 + (x - 14) ** 2 <= 25).astype(np.uint8)
    image = (100 + 50 * lab + np.sin(x) * 5).astype(np.float32)
    view = CaseView(case_id, tuple(images), label, Orientation("axial", 2, 4, spacing=(0.9, 0.8)))
    view.slices[slice_index] = make_slice_view(slice_index, image, lab, pred, (lab != pred).astype(np.float32),
                                               view.orientation)
    return view


def _make_audit(case_ids: list[str], name: str = "Dataset009_Hand", with_views: bool = True):
    """An Audit built by hand: case i has score 0.9 - 0.2 i, slices 0..3, slice 1 the worst; thumbnails for all."""
    from labelaudit.diagnosis import ErrorKind
    from labelaudit.types import (
        Audit, AuditDataset, AuditRun, CaseScore, SliceScore, Threshold, ThresholdSource,
    )

    kinds = [ErrorKind.OVER, ErrorKind.MISSING, ErrorKind.SHIFTED, ErrorKind.WRONG_CLASS]
    audit = Audit(dataset=AuditDataset(name, "/data/" + name, "nnunet", True),
                  run=AuditRun("/runs/r", "pint", "2025-01-02T03:04:05+00:00", ("fold_0", "fold_1"), name,
                               len(case_ids)),
                  provider="CPUExecutionProvider", device="cpu", device_reason="test", pixel_score="disagreement",
                  threshold=Threshold(0.3, 0.3, ThresholdSource.OVERRIDE), perturbations=2, out_dir=Path("/a"))
    for i, case_id in enumerate(case_ids):
        score = 0.9 - 0.2 * i
        audit.cases.append(CaseScore(case_id, score, score >= 0.3, 1, 0.2, 4, int(score >= 0.3), "fold_0",
                                     "out-of-fold", f"maps/{case_id}_noise.nii.gz", f"maps/{case_id}_pred.nii.gz",
                                     kinds[i % 4].value))
        for j, factor in enumerate((0.5, 1.0, 0.3, 0.1)):
            audit.slices.append(SliceScore(case_id, j, score * factor, score * factor >= 0.3, 0.1, 0.25, 40, 45,
                                           kinds[i % 4].value if j == 1 else "none"))
        if with_views:
            audit.views[case_id] = _tiny_view(case_id, 1, images=(f"/data/{name}/imagesTr/{case_id}_0000.nii.gz",),
                                              label=f"/data/{name}/labelsTr/{case_id}.nii.gz")
    audit.slices.sort(key=lambda s: (-s.noise_score, s.case_id, s.slice_index))
    return audit


@pytest.fixture(scope="session")
def evil() -> str:
    """A case id that is also markup (`<script>alert(1)</script>`)."""
    return EVIL


@pytest.fixture(scope="session")
def tiny_view() -> Callable:
    """`tiny_view(case_id, slice_index=0, images=..., label=...)`: a CaseView with one 24x24 thumbnail."""
    return _tiny_view


@pytest.fixture(scope="session")
def make_audit() -> Callable:
    """`make_audit(case_ids, name="Dataset009_Hand", with_views=True)`: an Audit built by hand."""
    return _make_audit


# ----------------------------------------------------------------------------- bench scripts

@pytest.fixture(scope="session")
def bench_script() -> Callable[[str], object]:
    """`bench_script("baselines")`: bench/baselines.py loaded as a module from its path (no sys.path edits)."""
    loaded: dict[str, object] = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up there
            spec.loader.exec_module(module)
            loaded[name] = module
        return loaded[name]

    return load
