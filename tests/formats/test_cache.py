"""labelaudit.formats.cache: a case's key follows every input that changes its scores; a bad entry is a miss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from labelaudit.formats.cache import CacheEntry, ScoreCache, case_key, hash_files, model_hash

SETTINGS = {"pixel_score": "confident_disagreement", "k": 8, "version": "0.1.0"}


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """An image, a label and a run folder (run.json + one graph), as bytes on disk."""
    image, label = tmp_path / "case_000_0000.nii.gz", tmp_path / "case_000.nii.gz"
    image.write_bytes(b"image bytes")
    label.write_bytes(b"label bytes")
    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    (run / "run.json").write_text('{"format": 1}')
    (run / "fold_0" / "segmenter.onnx").write_bytes(b"graph")
    return {"image": image, "label": label, "run": run}


def _key(files: dict[str, Path], settings: dict = SETTINGS) -> str:
    return case_key([files["image"]], files["label"], model_hash(files["run"], ["fold_0/segmenter.onnx"]), settings)


def test_the_key_is_stable_and_a_sha256(files):
    key = _key(files)
    assert key == _key(files) and len(key) == 64 and int(key, 16) >= 0
    assert _key(files, dict(reversed(list(SETTINGS.items())))) == key  # the order of the settings does not count


@pytest.mark.parametrize("change", ["image", "label"])
def test_the_key_changes_with_the_image_or_label_bytes(files, change):
    before = _key(files)
    files[change].write_bytes(files[change].read_bytes() + b"!")
    assert _key(files) != before


def test_the_key_changes_when_image_and_label_are_swapped(files):
    model = model_hash(files["run"], ["fold_0/segmenter.onnx"])
    assert case_key([files["label"]], files["image"], model, SETTINGS) != \
        case_key([files["image"]], files["label"], model, SETTINGS)


def test_the_key_changes_when_a_file_is_renamed(files):
    before = _key(files)
    renamed = files["label"].with_name("case_001.nii.gz")  # same bytes, another case's file name
    files["label"].rename(renamed)
    files["label"] = renamed
    assert _key(files) != before


def test_the_key_changes_with_the_model(files):
    before = _key(files)
    (files["run"] / "fold_0" / "segmenter.onnx").write_bytes(b"graph, retrained")
    assert _key(files) != before
    (files["run"] / "fold_0" / "segmenter.onnx").write_bytes(b"graph")
    assert _key(files) == before
    (files["run"] / "run.json").write_text('{"format": 1, "threshold": {}}')
    assert _key(files) != before


@pytest.mark.parametrize("setting, value", [("pixel_score", "disagreement"), ("k", 4), ("version", "0.2.0")])
def test_the_key_changes_with_each_scoring_setting(files, setting, value):
    assert _key(files, {**SETTINGS, setting: value}) != _key(files)


def test_model_hash_ignores_the_order_graphs_are_listed_in(files):
    (files["run"] / "fold_1").mkdir()
    (files["run"] / "fold_1" / "segmenter.onnx").write_bytes(b"graph 1")
    graphs = ["fold_0/segmenter.onnx", "fold_1/segmenter.onnx"]
    assert model_hash(files["run"], graphs) == model_hash(files["run"], graphs[::-1])
    assert model_hash(files["run"], graphs) != model_hash(files["run"], graphs[:1])


def test_a_series_folder_hashes_every_file_in_it(tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    (series / "slice_000.dcm").write_bytes(b"a")
    before = hash_files([series]).hexdigest()
    (series / "slice_001.dcm").write_bytes(b"b")
    assert hash_files([series]).hexdigest() != before


# ----------------------------------------------------------------------------- entries

ENTRY = CacheEntry("case_000", 0.25, (0.1, 0.25), ("none", "missing_structure"), "missing_structure", 0.3, "fold_0")


def test_an_entry_round_trips(tmp_path, files):
    cache, key = ScoreCache(tmp_path / "cache"), _key(files)
    assert cache.get(key) is None  # nothing cached yet: a miss
    cache.put(key, ENTRY)
    assert (tmp_path / "cache" / key[:2] / f"{key}.json").is_file()
    assert cache.get(key) == ENTRY


def _stored(cache_dir: Path, key: str) -> Path:
    return cache_dir / key[:2] / f"{key}.json"


@pytest.mark.parametrize("damage", ["not json", "not an object", "truncated", "edited score", "wrong field type"])
def test_a_corrupt_entry_is_a_miss(tmp_path, files, damage):
    cache, key = ScoreCache(tmp_path / "cache"), _key(files)
    cache.put(key, ENTRY)
    path = _stored(tmp_path / "cache", key)
    text = path.read_text()
    if damage == "not json":
        path.write_text("{not json")
    elif damage == "not an object":
        path.write_text("[1, 2, 3]")
    elif damage == "truncated":
        path.write_text(text[: len(text) // 2])
    else:
        data = json.loads(text)
        data["entry"]["noise_score"] = 0.0 if damage == "edited score" else "high"
        path.write_text(json.dumps(data))
    assert cache.get(key) is None


def test_an_entry_under_another_key_is_a_miss(tmp_path, files):
    cache, key = ScoreCache(tmp_path / "cache"), _key(files)
    cache.put(key, ENTRY)
    other = _key(files, {**SETTINGS, "k": 4})
    _stored(tmp_path / "cache", other).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_stored(tmp_path / "cache", key), _stored(tmp_path / "cache", other))  # copied, not scored
    assert cache.get(other) is None and cache.get(key) == ENTRY
