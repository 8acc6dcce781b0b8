"""The preprocessed folder: streaming statistics, written once and reused, rebuilt when stale, and training from
its memory maps giving exactly the weights of training from arrays in memory."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from labelaudit.config import FitConfig, LoopParams, NetParams
from labelaudit.data import discover_dataset, iter_cases
from labelaudit.preprocess import CT_PERCENTILES, ChannelNorm, LabelMap, fit_preprocessing, is_ct, prepare_case
from labelaudit.preprocessed import MANIFEST, PreparedCase, PreprocessedWriter, open_preprocessed
from labelaudit.synth import SynthConfig, write_synth_dataset

#: 3 cases of 5 slices at 40x36 (not multiples of 16), 2 CT channels, 3 classes.
DATA = SynthConfig(cases=3, size=(40, 36, 5), spacing=(0.8, 0.9, 3.0), classes=2, channels=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_synth_dataset(tmp_path_factory.mktemp("prepdata") / "Dataset003_Prep", DATA)


def _entry(config: FitConfig, root: Path, **kwargs):
    from labelaudit.train.prepare import dataset_entry

    return dataset_entry(config, discover_dataset(config.dataset), root, **kwargs)


def _old_fit_preprocessing(cases, channel_names, seed=0):
    """fit_preprocessing as it was before streaming: every case in a list, sampled in order."""
    rng = np.random.default_rng(seed)
    samples = [[] for _ in channel_names]
    for case in cases:
        if case.label is None or not (case.label.array != 0).any():
            continue
        foreground = case.label.array != 0
        for c, name in enumerate(channel_names):
            if is_ct(name):
                voxels = case.channels[c].array[foreground]
                samples[c].append(rng.choice(voxels, size=min(voxels.size, 20_000), replace=False).astype(np.float64))
    norms = []
    for c, name in enumerate(channel_names):
        pooled = np.concatenate(samples[c])
        low, high = np.percentile(pooled, CT_PERCENTILES)
        clipped = np.clip(pooled, low, high)
        norms.append(ChannelNorm("ct", float(low), float(high), float(clipped.mean()), float(max(clipped.std(), 1e-6))))
    return tuple(norms)


def test_streaming_statistics_are_bit_identical_to_the_list_based_ones(dataset):
    cases = [case for case, _ in iter_cases(discover_dataset(dataset))]
    streamed = fit_preprocessing((case for case, _ in iter_cases(discover_dataset(dataset))), ["CT", "CT"],
                                 LabelMap((0, 1, 2), ("bg", "a", "b")), seed=3)
    assert streamed.channels == _old_fit_preprocessing(cases, ["CT", "CT"], seed=3)  # == on floats: exact


def test_encode_in_a_small_dtype_gives_the_same_indices():
    labels = LabelMap((0, 2, 7), ("bg", "a", "b"))
    label = np.array([[0, 7, 2], [2, 0, 7]], dtype=np.int16)
    assert labels.class_dtype == np.uint8
    small = labels.encode(label, labels.class_dtype)
    assert small.dtype == np.uint8 and small.tolist() == labels.encode(label).tolist() == [[0, 2, 1], [1, 0, 2]]
    assert LabelMap(tuple(range(300)), tuple(map(str, range(300)))).class_dtype == np.uint16


def test_entry_holds_every_case_as_prepare_case_makes_it(dataset, tmp_path):
    config = FitConfig(dataset=dataset, target_spacing=1.1, seed=0)
    with _entry(config, tmp_path / "pre") as entry:
        assert (entry.folder / MANIFEST).is_file() and entry.folder.parent == tmp_path / "pre"
        assert [c.case_id for c in entry.cases] == ["case_000", "case_001", "case_002"]
        assert entry.label_map.values == (0, 1, 2) and entry.channel_names == ("CT", "CT")
        cases = {case.case_id: case for case, _ in iter_cases(discover_dataset(dataset))}
        assert entry.preprocessing == fit_preprocessing(cases.values(), ["CT", "CT"], entry.label_map,
                                                        (1.1, 1.1), seed=0)
        for prepared in entry.cases:
            image, classes = prepare_case(cases[prepared.case_id], entry.preprocessing, entry.label_map)
            stored_image = np.load(prepared.image_path, mmap_mode="r")
            stored_classes = np.load(prepared.classes_path, mmap_mode="r")
            assert stored_image.dtype == np.float32 and stored_classes.dtype == np.uint8
            np.testing.assert_array_equal(stored_image, image)
            np.testing.assert_array_equal(stored_classes, classes)
            assert prepared.foreground == tuple(np.flatnonzero(classes.reshape(len(classes), -1).any(1)))
            left = image.shape[-1] - 6
            window = prepared.image_window(2, 5, left, 16, 16)  # cut at the right edge
            assert window.shape == (2, 16, 6)
            np.testing.assert_array_equal(window, image[2, :, 5:21, left:])


def test_entry_is_reused_until_a_case_file_changes(dataset, tmp_path, monkeypatch):
    import labelaudit.train.prepare as prepare

    config = FitConfig(dataset=dataset, seed=0)
    reads = []
    real = prepare.iter_cases
    monkeypatch.setattr(prepare, "iter_cases", lambda *a, **k: (reads.append(1), real(*a, **k))[1])
    with _entry(config, tmp_path) as first:
        pass
    with _entry(config, tmp_path) as again:
        assert again == first
    assert len(reads) == 1  # the second fit read no case
    with _entry(replace(config, seed=1), tmp_path) as other:  # other settings: another entry beside it
        assert other.folder != first.folder
    assert len(reads) == 2
    label = dataset / "labelsTr" / "case_001.nii.gz"
    data = label.read_bytes()
    label.write_bytes(data)  # same bytes, new modification time: the stamp sees it
    try:
        with _entry(config, tmp_path) as rebuilt:
            assert rebuilt.folder == first.folder and rebuilt.stamp != first.stamp
        assert len(reads) == 3
    finally:
        label.write_bytes(data)


def test_damaged_entry_is_rebuilt(dataset, tmp_path, caplog):
    config = FitConfig(dataset=dataset, seed=0)
    with _entry(config, tmp_path) as entry:
        path = entry.cases[1].image_path
    path.write_bytes(path.read_bytes()[:200])
    with caplog.at_level(logging.WARNING):
        with _entry(config, tmp_path) as again:
            again.cases[1].check()
    assert "incomplete or damaged" in caplog.text


def test_float16_images_are_read_as_float32(dataset, tmp_path):
    config = FitConfig(dataset=dataset, seed=0, image_dtype="float16")
    with _entry(config, tmp_path) as entry:
        case = entry.cases[0]
        assert entry.image_dtype == "float16" and np.load(case.image_path, mmap_mode="r").dtype == np.float16
        window = case.image_window(0, 0, 0, 16, 16)
        assert window.dtype == np.float32


def test_writer_rejects_mismatched_arrays_and_open_refuses_another_key(tmp_path):
    writer = PreprocessedWriter(tmp_path / "e", "k", "s")
    with pytest.raises(ValueError, match="do not match"):
        writer.add("a", np.zeros((2, 1, 4, 4), np.float32), np.zeros((3, 4, 4), np.uint8))
    case = writer.add("a", np.zeros((2, 1, 4, 4), np.float32), np.ones((2, 4, 4), np.uint8))
    assert isinstance(case, PreparedCase) and case.foreground == (0, 1)
    writer.finish(fit_preprocessing([], [], LabelMap((0, 1), ("bg", "x"))), LabelMap((0, 1), ("bg", "x")), ["MR"])
    assert open_preprocessed(tmp_path / "e", "k", "s") is not None
    assert open_preprocessed(tmp_path / "e", "other", "s") is None and open_preprocessed(tmp_path / "e", "k", "t") is None
    manifest = json.loads((tmp_path / "e" / MANIFEST).read_text())
    manifest["cases"][0]["image"] = "../escape.npy"
    (tmp_path / "e" / MANIFEST).write_text(json.dumps(manifest))
    assert open_preprocessed(tmp_path / "e", "k", "s") is None


# ----------------------------------------------------------------------------- training from the memory maps

def test_memory_mapped_training_gives_the_weights_of_in_memory_training(dataset, tmp_path):
    torch = pytest.importorskip("torch")
    from labelaudit.train.loop import SliceSampler, train
    from labelaudit.train.plain import PlainMethod

    config = FitConfig(dataset=dataset, target_spacing=1.1, seed=0)
    with _entry(config, tmp_path / "pre") as entry:
        arrays = [c.arrays() for c in entry.cases]
        mapped = SliceSampler(list(entry.cases), patch_size=32)  # 32 < the slices: random patches
        in_memory = SliceSampler(arrays, patch_size=32)
        assert mapped.patch == in_memory.patch == (32, 32)
        a_rng, b_rng = np.random.default_rng(5), np.random.default_rng(5)
        for _ in range(20):
            (a_img, a_cls), (b_img, b_cls) = mapped.sample(5, a_rng), in_memory.sample(5, b_rng)
            np.testing.assert_array_equal(a_img, b_img)
            np.testing.assert_array_equal(a_cls, b_cls)
        loop = LoopParams(epochs=2, iterations_per_epoch=3, batch_size=3, patch_size=32)
        net = NetParams(features=(4, 8, 8, 8, 8, 4))
        results = [train(PlainMethod(), sampler, entry.label_map.num_classes, loop, net, 7, torch.device("cpu"),
                         tmp_path / f"{name}.pt")
                   for name, sampler in (("mapped", SliceSampler(list(entry.cases), 32)),
                                         ("memory", SliceSampler(arrays, 32)))]
    a, b = (r.net.state_dict() for r in results)
    assert all(torch.equal(a[k], b[k]) for k in a)
