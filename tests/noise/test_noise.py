"""Noise synthesis: the pure per-slice corruptions and `labelaudit corrupt` on tiny synthetic datasets."""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from typer.testing import CliRunner

from labelaudit import io
from labelaudit.cli import app
from labelaudit.config import CorruptConfig, NoiseKind, NoiseParams
from labelaudit.errors import MissingDependencyError, UsageError
from labelaudit.formats.manifest import (
    Corruption,
    CorruptionManifest,
    read_corruption_manifest,
    read_manifest,
    write_corruption_manifest,
)
from labelaudit.noise.corrupt import corrupt_dataset, remove_stale_partials
from labelaudit.noise.ops import apply_corruption, corrupt_slice, sample_corruption, sample_systematic
from labelaudit.synth import SynthConfig, synth_label, write_synth_dataset
from labelaudit.types import to_slices

ALL_KINDS = tuple(k.value for k in NoiseKind)  # elasticdeform is installed in the test environment
MULTI = SynthConfig(cases=4, size=(32, 28, 6), spacing=(0.8, 0.9, 3.0), classes=2, seed=5)
# the largest spacing on ITK x: slices are taken along numpy axis 2, not 0
SIDEWAYS = SynthConfig(cases=2, size=(5, 28, 24), spacing=(2.5, 0.7, 0.7), classes=1, seed=6)
PNG2D = SynthConfig(cases=6, size=(40, 36, 1), spacing=(0.5, 0.5, 1.0), two_d=True, classes=2, seed=7)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("noise")
    multi = write_synth_dataset(root / "Dataset002_Multi", MULTI)
    for path in (multi / "labelsTr").iterdir():  # bytes SimpleITK would not write, so a rewrite shows
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=1, mtime=1234567))
    return {
        "multi": multi,
        "sideways": write_synth_dataset(root / "Dataset003_Sideways", SIDEWAYS),
        "png": write_synth_dataset(root / "png_paired", PNG2D, layout="paired"),
    }


def _tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _label_stacks(root: Path, manifest: dict | None = None) -> dict[str, np.ndarray]:
    """Label slice stacks (S, H, W) of every label file under labelsTr/ or labels/."""
    folder = root / "labelsTr" if (root / "labelsTr").is_dir() else root / "labels"
    stacks = {}
    for path in sorted(folder.iterdir()):
        volume = io.read_volume(path)
        stacks[io.split_ending(path)[0]] = to_slices(volume.array, volume.geometry)
    return stacks


def _run(clean: Path, out: Path, **kwargs) -> CorruptionManifest:
    return corrupt_dataset(CorruptConfig(clean=clean, out=out, **kwargs))


# ----------------------------------------------------------------------------- pure functions

def _slice(seed: int, classes: int = 2, shape=(28, 32)) -> np.ndarray:
    return synth_label((1, *shape), classes, np.random.default_rng(seed))[0]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(ALL_KINDS))
def test_every_kind_changes_only_its_class_and_keeps_declared_values(seed, kind):
    label = _slice(seed)
    rng = np.random.default_rng(seed)
    noisy, corruption = corrupt_slice(label, [kind], [1, 2], rng)
    assert corruption is not None and corruption.kind == kind
    changed = noisy != label
    assert changed.any()
    c = corruption.label_class
    # one class at a time: every changed pixel was that class before or is it now
    assert np.all((label[changed] == c) | (noisy[changed] == c))
    assert set(np.unique(noisy)) <= {0, 1, 2}
    assert noisy.dtype == label.dtype
    # replayable from its JSON record alone
    replay = Corruption.from_json(json.loads(json.dumps(corruption.to_json())))
    np.testing.assert_array_equal(apply_corruption(label, replay), noisy)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), radius=st.integers(1, 3), label_class=st.sampled_from([1, 2]))
def test_dilation_only_adds_and_erosion_only_removes_within_the_radius(seed, radius, label_class):
    label = _slice(seed)
    before = label == label_class
    envelope = ndimage.binary_fill_holes(before)
    disk = np.add.outer(np.arange(-radius, radius + 1) ** 2, np.arange(-radius, radius + 1) ** 2) <= radius ** 2

    grown = apply_corruption(label, Corruption("dilation", label_class, {"radius": radius}))
    after = grown == label_class
    assert np.all(after[before]) and after.sum() > before.sum()
    assert not np.any((grown != label) & ~ndimage.binary_dilation(envelope, structure=disk))

    shrunk = apply_corruption(label, Corruption("erosion", label_class, {"radius": radius}))
    after = shrunk == label_class
    assert not np.any(after & ~before) and after.sum() < before.sum()
    assert not np.any((shrunk != label) & ~before)  # only pixels of the class change


def test_enclosed_class_takes_the_outer_label_and_outer_class_leaves_the_inner_alone():
    label = _slice(3)
    assert (label == 2).any() and (label == 1).any()
    inner_gone = apply_corruption(label, Corruption("missing", 2, {}))
    assert not (inner_gone == 2).any()
    assert np.all(inner_gone[label == 2] == 1)  # the tumour becomes the organ around it, not background
    outer_gone = apply_corruption(label, Corruption("missing", 1, {}))
    assert not (outer_gone == 1).any()
    np.testing.assert_array_equal(outer_gone == 2, label == 2)  # the enclosed class is untouched
    assert np.all(outer_gone[label == 1] == 0)


def test_spurious_paints_only_background_and_works_on_an_empty_slice():
    empty = np.zeros((30, 30), dtype=np.uint8)
    rng = np.random.default_rng(0)
    noisy, corruption = corrupt_slice(empty, ["dilation", "missing", "spurious"], [1, 2], rng)
    assert corruption is not None and corruption.kind == "spurious"
    assert corruption.label_class in (1, 2) and (noisy == corruption.label_class).sum() > 0
    # an empty slice cannot get a kind that needs a structure
    noisy, corruption = corrupt_slice(empty, ["dilation", "erosion", "missing"], [1], rng)
    assert corruption is None and not noisy.any()

    label = _slice(4)
    blob = sample_corruption(label, "spurious", [1, 2], np.random.default_rng(1))
    noisy = apply_corruption(label, blob)
    changed = noisy != label
    assert changed.any() and np.all(label[changed] == 0) and np.all(noisy[changed] == blob.label_class)
    assert not ndimage.binary_dilation(changed).__and__(label != 0).any()  # it does not touch the structure


@pytest.mark.parametrize("seed", range(6))
def test_a_corruption_that_changes_nothing_is_retried_with_another_kind(seed):
    full = np.ones((12, 12), dtype=np.uint8)  # dilation and shift-free dilation cannot change it
    noisy, corruption = corrupt_slice(full, ["dilation", "erosion"], [1], np.random.default_rng(seed))
    assert corruption is not None and corruption.kind == "erosion"
    assert (noisy != full).any()


def test_shift_moves_the_outline_by_its_offset():
    label = np.zeros((30, 30), dtype=np.uint8)
    label[10:18, 8:20] = 1
    noisy = apply_corruption(label, Corruption("shift", 1, {"dy": 2, "dx": -3}))
    expected = np.zeros_like(label)
    expected[12:20, 5:17] = 1
    np.testing.assert_array_equal(noisy, expected)


def test_missing_elasticdeform_is_exit_5(monkeypatch, data, tmp_path):
    monkeypatch.setitem(sys.modules, "elasticdeform", None)  # import now raises ImportError
    with pytest.raises(MissingDependencyError, match="elasticdeform") as info:
        _run(data["multi"], tmp_path / "out", kinds=("elastic",))
    assert info.value.exit_code == 5 and "--no-binary elasticdeform" in str(info.value)
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["corrupt", str(data["multi"]), str(tmp_path / "o2"), "--kinds", "mcpm"])
    assert result.exit_code == 5


def test_systematic_error_uses_one_corruption_for_every_slice():
    stack = synth_label((6, 28, 32), 2, np.random.default_rng(2))
    noisy, corruption, changed = sample_systematic(stack, ["shift"], [1, 2], np.random.default_rng(0))
    assert corruption is not None and changed.sum() > 0
    assert changed.shape == (6,)
    for s in range(6):
        np.testing.assert_array_equal(noisy[s], apply_corruption(stack[s], corruption))
        assert changed[s] == (noisy[s] != stack[s]).sum()


# ----------------------------------------------------------------------------- dataset level

def test_same_seed_gives_identical_files_and_another_seed_does_not(data, tmp_path):
    clean_before = _tree_digest(data["multi"])
    a = _run(data["multi"], tmp_path / "a", rate=0.5, kinds=ALL_KINDS, seed=11)
    b = _run(data["multi"], tmp_path / "b", rate=0.5, kinds=ALL_KINDS, seed=11)
    _run(data["multi"], tmp_path / "c", rate=0.5, kinds=ALL_KINDS, seed=12)
    assert a == b
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    assert _tree_digest(tmp_path / "a") != _tree_digest(tmp_path / "c")
    assert _tree_digest(data["multi"]) == clean_before  # nothing written into CLEAN


def test_rate_zero_copies_labels_byte_for_byte(data, tmp_path):
    manifest = _run(data["multi"], tmp_path / "out", rate=0.0)
    assert _tree_digest(tmp_path / "out") == {**_tree_digest(data["multi"]),
                                              "corruption.json": _tree_digest(tmp_path / "out")["corruption.json"]}
    assert manifest.corrupted_count == 0
    assert not any(c.corrupted or any(s.corrupted for s in c.slices) for c in manifest.cases.values())


@settings(max_examples=8, deadline=None)
@given(rate=st.floats(0.0, 1.0), seed=st.integers(0, 1000))
def test_slice_rate_is_exact_and_the_manifest_matches_the_files(data, rate, seed):
    clean = data["multi"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        manifest = _run(clean, out, rate=rate, kinds=ALL_KINDS, seed=seed)
        before, after = _label_stacks(clean), _label_stacks(out)
        population = sum(int((s != 0).any()) for stack in before.values() for s in stack)
        assert manifest.population_size == population
        expected = math.floor(rate * population + 0.5)
        differing = 0
        for case_id, entry in manifest.cases.items():
            assert len(entry.slices) == before[case_id].shape[0]  # every slice listed
            assert [s.slice_index for s in entry.slices] == list(range(before[case_id].shape[0]))
            for item, old, new in zip(entry.slices, before[case_id], after[case_id]):
                assert item.changed_pixels == int((old != new).sum())
                assert item.corrupted == bool(item.changed_pixels)
                differing += item.corrupted
                if item.corrupted:  # the recorded corruption replays exactly
                    replay = Corruption(item.corruption.kind, item.corruption.label_class, item.corruption.params)
                    np.testing.assert_array_equal(apply_corruption(old, replay), new)
            assert entry.changed_pixels == sum(s.changed_pixels for s in entry.slices)
            assert set(np.unique(after[case_id])) <= {0, 1, 2}
        assert differing == expected == manifest.corrupted_count


@pytest.mark.parametrize("rate", [0.25, 0.5, 1.0])
def test_case_rate_is_exact_with_one_systematic_error_per_case(data, tmp_path, rate):
    manifest = _run(data["multi"], tmp_path / "out", rate=rate, level="case", seed=3, kinds=ALL_KINDS)
    before, after = _label_stacks(data["multi"]), _label_stacks(tmp_path / "out")
    corrupted = [cid for cid, entry in manifest.cases.items() if entry.corrupted]
    assert len(corrupted) == math.floor(rate * MULTI.cases + 0.5) == manifest.corrupted_count
    for case_id, entry in manifest.cases.items():
        diff = (before[case_id] != after[case_id]).reshape(len(entry.slices), -1).sum(axis=1)
        assert [s.changed_pixels for s in entry.slices] == diff.tolist()
        if entry.corrupted:
            records = {(s.corruption.kind, s.corruption.label_class, json.dumps(s.corruption.params))
                       for s in entry.slices if s.corrupted}
            assert len(records) == 1  # one annotator's systematic error
            assert diff.sum() > 0
        else:
            assert diff.sum() == 0


def test_geometry_and_dtype_kept_and_images_untouched(data, tmp_path):
    out = tmp_path / "out"
    _run(data["multi"], out, rate=1.0, kinds=ALL_KINDS, seed=1)
    clean = data["multi"]
    for path in sorted((clean / "labelsTr").iterdir()):
        original, written = io.read_volume(path), io.read_volume(out / "labelsTr" / path.name)
        assert written.geometry.size == original.geometry.size
        assert original.geometry.differences(written.geometry) == []
        assert written.array.dtype == original.array.dtype
        assert (written.array != original.array).any()
    for path in sorted((clean / "imagesTr").iterdir()):
        copy = out / "imagesTr" / path.name
        assert copy.read_bytes() == path.read_bytes()
    assert (out / "dataset.json").read_text() == (clean / "dataset.json").read_text()


def test_sideways_slicing_axis_is_used(data, tmp_path):
    clean = data["sideways"]
    manifest = _run(clean, tmp_path / "out", rate=1.0, kinds=("dilation",), seed=0)
    geometry = io.read_geometry(next((clean / "labelsTr").iterdir()))
    assert geometry.slicing_axis() == 2
    for case_id, entry in manifest.cases.items():
        assert len(entry.slices) == SIDEWAYS.size[0]  # slices along ITK x
        original = io.read_volume(clean / "labelsTr" / f"{case_id}.nii.gz").array
        written = io.read_volume(tmp_path / "out" / entry.label_file).array
        for item in entry.slices:  # every change lies in its own slice along numpy axis 2
            i = item.slice_index
            assert (original[:, :, i] != written[:, :, i]).sum() == item.changed_pixels


def test_png_paired_layout(data, tmp_path):
    clean, out = data["png"], tmp_path / "out"
    manifest = _run(clean, out, rate=0.5, kinds=("dilation", "erosion", "missing", "spurious"), seed=2)
    assert manifest.population_size == PNG2D.cases and manifest.corrupted_count == 3
    for case_id, entry in manifest.cases.items():
        assert len(entry.slices) == 1 and entry.label_file == f"labels/{case_id}.png"
        original, written = io.read_volume(clean / entry.label_file), io.read_volume(out / entry.label_file)
        assert written.geometry.size == original.geometry.size and written.array.dtype == np.uint8
        assert ((original.array != written.array).sum() > 0) == entry.corrupted
    image = next((clean / "images").iterdir())
    copy = out / "images" / image.name
    assert copy.read_bytes() == image.read_bytes()
    assert os.path.samefile(copy, image)  # hard-linked on the same file system


def test_out_folder_rules(data, tmp_path):
    clean = data["multi"]
    with pytest.raises(UsageError, match="inside CLEAN"):
        _run(clean, clean / "noisy")
    with pytest.raises(UsageError, match="inside CLEAN"):
        _run(clean, clean)
    with pytest.raises(UsageError, match="CLEAN .* is inside OUT"):
        _run(clean, clean.parent)
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        _run(clean, other)
    with pytest.raises(UsageError, match="not the output of 'labelaudit corrupt'"):
        _run(clean, other, force=True)
    assert (other / "keep.txt").read_text() == "mine"
    first = _run(clean, tmp_path / "out", rate=0.5, seed=1)
    second = _run(clean, tmp_path / "out", rate=0.0, force=True)
    assert first.corrupted_count > 0 and second.corrupted_count == 0
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial folder left behind


def _leave_partial(out: Path, wait: bool) -> subprocess.Popen:
    """A process that makes the partial folder a `corrupt` run of its own would, then exits (killed) or waits."""
    code = (f"import os, sys; p = os.path.join({str(out.parent)!r}, '.' + {out.name!r} + '.partial-' + str(os.getpid()));"
            "os.mkdir(p); open(os.path.join(p, 'half.nii.gz'), 'w').close(); print(p, flush=True);"
            + ("sys.stdin.read()" if wait else "os._exit(9)"))
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_a_rerun_removes_the_partial_folders_of_killed_runs_only(data, tmp_path):
    out = tmp_path / "out"
    killed = _leave_partial(out, wait=False)
    dead = Path(killed.stdout.readline().strip())
    killed.wait()
    running = _leave_partial(out, wait=True)
    try:
        alive = Path(running.stdout.readline().strip())
        other = tmp_path / ".other.partial-1"  # another OUT's partial folder is not ours to remove
        other.mkdir()
        assert dead.is_dir() and alive.is_dir()
        _run(data["multi"], out, rate=0.5, seed=1)
        assert not dead.exists()  # its process is gone: removed
        assert alive.is_dir() and other.is_dir()  # a run still writing, another OUT: kept
        assert (out / "corruption.json").is_file()
    finally:
        running.stdin.close()
        running.wait(timeout=30)
    assert remove_stale_partials(out) == [alive]


def test_the_written_manifest_reads_back_as_the_returned_one(data, tmp_path):
    for level, out in (("slice", tmp_path / "s"), ("case", tmp_path / "c")):
        manifest = _run(data["multi"], out, rate=0.5, seed=2, level=level, kinds=ALL_KINDS)
        path = out / "corruption.json"
        again = read_corruption_manifest(path)
        assert again == manifest and again.path == path
        assert write_corruption_manifest(again, tmp_path / "copy.json").read_bytes() == path.read_bytes()
        truth = read_manifest(path)
        assert {c for c, t in truth.cases.items() if t.corrupted} == {c for c, e in manifest.cases.items()
                                                                       if e.corrupted}
        assert all(truth.cases[c].label_path == out / e.label_file for c, e in manifest.cases.items())
        if level == "case":
            assert all((e.corruption is not None) == e.corrupted for e in manifest.cases.values())


def test_cli_summary_and_exit_codes(data, tmp_path):
    runner = CliRunner()
    clean = str(data["multi"])
    result = runner.invoke(app, ["corrupt", clean, str(tmp_path / "out"), "--rate", "0.5", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "manifest:" in result.stdout and "corruption.json" in result.stdout
    assert "achieved rate: 12/24 slices" in result.stdout
    manifest = json.loads((tmp_path / "out" / "corruption.json").read_text())
    assert set(manifest["kinds"]) == {"dilation", "erosion", "shift", "missing", "spurious"}  # the default mix
    assert manifest["source"] == str(Path(clean).resolve()) and manifest["format"] == 1
    assert runner.invoke(app, ["corrupt", clean, str(tmp_path / "x"), "--kinds", "dilation,blur"]).exit_code == 2
    assert runner.invoke(app, ["corrupt", clean, str(tmp_path / "x"), "--rate", "1.5"]).exit_code == 2
    assert runner.invoke(app, ["corrupt", clean, str(tmp_path / "x"), "--level", "volume"]).exit_code == 2
    assert runner.invoke(app, ["corrupt", str(tmp_path / "missing"), str(tmp_path / "x")]).exit_code == 3
    assert runner.invoke(app, ["corrupt", clean, str(tmp_path / "out")]).exit_code == 2  # exists, no --force
    assert not (tmp_path / "x").exists()


def test_problem_cases_are_skipped_listed_and_copied(data, tmp_path):
    import shutil

    clean = tmp_path / "clean"
    shutil.copytree(data["multi"], clean)
    orphan = clean / "labelsTr" / "case_099.nii.gz"  # a label without image
    shutil.copy(clean / "labelsTr" / "case_000.nii.gz", orphan)
    manifest = _run(clean, tmp_path / "out", rate=1.0, seed=0)
    assert "case_099" in manifest.skipped and "label without image" in manifest.skipped["case_099"][0]
    assert "case_099" not in manifest.cases and len(manifest.cases) == MULTI.cases
    assert (tmp_path / "out" / "labelsTr" / "case_099.nii.gz").read_bytes() == orphan.read_bytes()
    result = CliRunner().invoke(app, ["corrupt", str(clean), str(tmp_path / "strict"), "--strict"])
    assert result.exit_code == 3 and "label without image" in result.output


def test_noise_params_set_the_magnitudes():
    label = _slice(1)
    params = NoiseParams(dilation_radius=(4, 4), shift_px=(3, 3), spurious_radius=(6, 6))
    rng = np.random.default_rng(0)
    assert sample_corruption(label, "dilation", [1, 2], rng, params).params == {"radius": 4}
    shift = sample_corruption(label, "shift", [1, 2], rng, params).params
    assert round(math.hypot(shift["dy"], shift["dx"])) == 3
    assert sample_corruption(label, "spurious", [1, 2], rng, params).params["radius"] == 6


def test_wrong_class_relabels_one_component_never_to_the_class_around_it():
    label = _slice(3)  # class 2 inside a ring of class 1
    rng = np.random.default_rng(0)
    for _ in range(5):
        noisy, corruption = corrupt_slice(label, ["wrong_class"], [1, 2], rng)
        assert corruption is not None and corruption.kind == "wrong_class"
        # class 2 sits in class 1, so only the ring can change: relabelled 2, never background
        assert corruption.label_class == 1 and corruption.params["to"] == 2
        changed = noisy != label
        np.testing.assert_array_equal(changed, label == 1)
        assert set(np.unique(noisy[changed])) == {2}
        np.testing.assert_array_equal(apply_corruption(label, Corruption.from_json(corruption.to_json())), noisy)
    # two separate structures: the component "at" changes, the other one of its class stays
    two = np.zeros((20, 30), dtype=np.uint8)
    two[2:8, 2:8], two[12:18, 2:8], two[2:8, 20:26] = 1, 1, 2
    moved = apply_corruption(two, Corruption("wrong_class", 1, {"to": 2, "at": [12, 2]}))
    assert (moved[12:18, 2:8] == 2).all() and (moved[2:8, 2:8] == 1).all()
    # level case: the whole class, in every slice
    stack = np.stack([two, two])
    noisy, corruption, changed = sample_systematic(stack, ["wrong_class"], [1, 2], np.random.default_rng(1))
    assert corruption is not None and "at" not in corruption.params
    assert list(changed) == [72, 72] or list(changed) == [36, 36]  # all of class 1 (72 px) or of class 2 (36)


def test_wrong_class_needs_two_foreground_classes(data, tmp_path):
    with pytest.raises(UsageError, match="multi-class"):
        corrupt_slice(_slice(1, classes=1), ["wrong_class"], [1], np.random.default_rng(0))
    result = CliRunner().invoke(app, ["corrupt", str(data["sideways"]), str(tmp_path / "out"), "--kinds",
                                      "wrong_class"])
    assert result.exit_code == 2 and "multi-class" in result.output + (result.stderr or "")
    assert not (tmp_path / "out").exists()
