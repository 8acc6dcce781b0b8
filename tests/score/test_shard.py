"""`score --shard i/N` + `labelaudit merge`: the merged audit is exactly the unsharded one; parts that do not
belong together are refused (exit 2), a damaged part is exit 3.

The dataset has a planted error (a slice's structure erased, so it is flagged), a case skipped while scoring
(its label on another grid) and one skipped by discovery (an image without a label), so the merged skipped
list, problems and flags are checked too. Run folders are conftest's torch-free `make_run`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from labelaudit import io
from labelaudit.cli import app
from labelaudit.config import ScoreConfig
from labelaudit.errors import InputError, UsageError
from labelaudit.score.merge import merge_parts
from labelaudit.score.pipeline import score_dataset
from labelaudit.score.shard import Shard
from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Geometry, Volume

THRESHOLD = {"slice": 0.3, "case": 0.3, "rule": "median+k*mad", "k": 3.0, "floor": 0.05}
RUNNER = CliRunner()


def invoke(*args):
    return RUNNER.invoke(app, [str(a) for a in args])


def _score(run: Path, root: Path, out: Path, shard: Shard | None = None, **options):
    return score_dataset(ScoreConfig(run_dir=run, dataset=root, out_dir=out, device="cpu", **options), shard=shard)


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_run):
    """6 cases (case_002 with slice 1 erased, case_004's label on another grid) + an image without a label."""
    base = tmp_path_factory.mktemp("shard")
    root = write_synth_dataset(base / "Dataset011_Shard", SynthConfig(cases=6, size=(24, 20, 4), seed=11))
    label = io.read_volume(root / "labelsTr" / "case_002.nii.gz")
    label.array[1] = 0  # numpy axis 0 is the slicing axis here
    io.write_volume(label, root / "labelsTr" / "case_002.nii.gz")
    run = make_run(base / "run", root, threshold=THRESHOLD)
    wrong = io.read_volume(root / "labelsTr" / "case_004.nii.gz")
    g = wrong.geometry
    io.write_volume(Volume(wrong.array, Geometry(g.size, (1.0, *g.spacing[1:]), g.origin, g.direction)),
                    root / "labelsTr" / "case_004.nii.gz")
    shutil.copy(root / "imagesTr" / "case_000_0000.nii.gz", root / "imagesTr" / "case_009_0000.nii.gz")
    full = _score(run, root, base / "full")
    assert full.flagged_slices and set(full.skipped) == {"case_004", "case_009"}
    # N = 2 through the command line, N = 3 through the library
    parts = {2: [base / "n2" / f"part{i}" for i in (1, 2)], 3: [base / "n3" / f"part{i}" for i in (1, 2, 3)]}
    for i, part in enumerate(parts[2], start=1):
        result = invoke("score", root, "--model", run, "--device", "cpu", "--shard", f"{i}/2", "--out", part)
        assert result.exit_code == 0, result.output
    result = invoke("merge", *reversed(parts[2]), "--out", base / "merged2")
    assert result.exit_code == 0, result.output
    for i, part in enumerate(parts[3], start=1):
        _score(run, root, part, Shard(i, 3))
    merge_parts(parts[3], base / "merged3")
    return {"base": base, "root": root, "run": run, "full": base / "full", "parts": parts,
            "merged": {2: base / "merged2", 3: base / "merged3"}}


# ----------------------------------------------------------------------------- which cases a shard scores

@pytest.mark.parametrize("count", [1, 2, 3, 5, 8])
def test_every_case_is_in_exactly_one_shard(count):
    ids = [f"case_{i:03d}" for i in (7, 3, 0, 5, 1, 6, 2, 4)]
    shards = [Shard(i, count).select(ids) for i in range(1, count + 1)]
    assert sorted(c for s in shards for c in s) == sorted(ids)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards[0][:2] == tuple(sorted(ids)[0:2 * count:count])[:2]  # round-robin over the sorted ids


@pytest.mark.parametrize("text", ["0/4", "5/4", "x", "1/0", "2/", "/4", "-1/4", "1.5/4", "1/2/3"])
def test_bad_shard_specs_are_usage_errors(text):
    with pytest.raises(UsageError, match="--shard"):
        Shard.parse(text)


@pytest.mark.parametrize("text", ["0/4", "5/4", "x", "1/0"])
def test_score_refuses_a_bad_shard_with_exit_2(data, text, tmp_path):
    result = invoke("score", data["root"], "--model", data["run"], "--shard", text, "--out", tmp_path / "p")
    assert result.exit_code == 2, result.output
    assert "--shard" in result.output and not (tmp_path / "p").exists()


def test_shard_needs_out_and_no_report(data, tmp_path):
    result = invoke("score", data["root"], "--model", data["run"], "--shard", "1/2")
    assert result.exit_code == 2 and "needs --out PART_DIR" in result.output
    result = invoke("score", data["root"], "--model", data["run"], "--shard", "1/2", "--out", tmp_path / "p",
                    "--report", tmp_path / "r.html")
    assert result.exit_code == 2 and "a part has no report" in result.output


# ----------------------------------------------------------------------------- the merged audit

def test_a_part_is_marked_and_holds_only_its_cases(data):
    part = data["parts"][3][1]
    summary = json.loads((part / "summary.json").read_text())
    shard = summary["shard"]
    assert (shard["index"], shard["count"]) == (2, 3)
    assert shard["cases"] == ["case_001", "case_004"]  # every 3rd sorted id from the 2nd on
    assert shard["dataset_cases"] == [f"case_{i:03d}" for i in range(6)]
    assert len(shard["dataset_fingerprint"]) == 16 and len(shard["run_identity"]) == 16
    assert [c["case_id"] for c in summary["cases"]] == ["case_001"] and "case_004" in summary["skipped"]
    assert not (part / "report.html").exists() and (part / "part" / "arrays.npz").is_file()


@pytest.mark.parametrize("n", [2, 3])
def test_merged_tables_and_summary_equal_the_unsharded_ones(data, n):
    full, merged = data["full"], data["merged"][n]
    for name in ("cases.csv", "slices.csv"):
        assert (merged / name).read_text() == (full / name).read_text(), name
    a, b = (json.loads((d / "summary.json").read_text()) for d in (full, merged))
    for summary in (a, b):
        del summary["timings"], summary["files"]  # seconds, and the folder's own paths
    assert json.dumps(b) == json.dumps(a)  # the same content in the same order
    assert b["counts"]["flagged_slices"] >= 1 and list(b["skipped"]) == ["case_004", "case_009"]


@pytest.mark.parametrize("n", [2, 3])
def test_merged_maps_have_the_same_files_and_voxels(data, n):
    full, merged = data["full"] / "maps", data["merged"][n] / "maps"
    names = sorted(p.name for p in full.iterdir())
    assert names == sorted(p.name for p in merged.iterdir()) and len(names) == 3 * 5
    for name in names:
        a, b = io.read_volume(full / name), io.read_volume(merged / name)
        assert np.array_equal(a.array, b.array) and a.array.dtype == b.array.dtype, name
        assert not a.geometry.differences(b.geometry), name


@pytest.mark.parametrize("n", [2, 3])
def test_merged_report_equals_the_unsharded_one(data, n):
    def page(folder: Path) -> str:
        text = (folder / "report.html").read_text(encoding="utf-8").replace("<wbr>", "").replace(str(folder), "AUDIT_DIR")
        return re.sub(r"generated \d{4}-\d\d-\d\d \d\d:\d\d UTC", "generated", text)

    assert page(data["merged"][n]) == page(data["full"])


def test_merge_can_write_the_same_folder_again_and_the_report_elsewhere(data, tmp_path):
    out = data["base"] / "again"
    for _ in range(2):
        result = invoke("merge", *data["parts"][2], "--out", out, "--report", tmp_path / "r.html")
        assert result.exit_code == 0, result.output
    assert (tmp_path / "r.html").is_file() and not (out / "report.html").exists()
    assert (out / "slices.csv").read_text() == (data["full"] / "slices.csv").read_text()


def test_an_empty_shard_writes_an_empty_part(data, tmp_path):
    audit = _score(data["run"], data["root"], tmp_path / "p7", Shard(7, 7))
    assert not audit.cases
    assert json.loads((tmp_path / "p7" / "summary.json").read_text())["shard"]["cases"] == []


# ----------------------------------------------------------------------------- parts that do not belong together

def _merge_fails(parts, out, code: int, *messages: str):
    result = invoke("merge", *parts, "--out", out)
    assert result.exit_code == code, result.output
    text = " ".join(result.output.split())  # Rich wraps long lines
    for message in messages:
        assert message in text, text
    assert not Path(out).exists()


def test_merge_refuses_a_missing_part(data, tmp_path):
    _merge_fails(data["parts"][3][:1] + data["parts"][3][2:], tmp_path / "m", 2, "missing part 2/3", "--shard 2/3")


def test_merge_refuses_a_part_given_twice(data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data["parts"][2][0], copy)
    _merge_fails([*data["parts"][2], copy], tmp_path / "m", 2, "part 1/2 given twice", str(copy))


def test_merge_refuses_parts_of_different_splits(data, tmp_path):
    _merge_fails([data["parts"][2][0], *data["parts"][3][1:]], tmp_path / "m", 2, "different splits")


def test_merge_refuses_a_complete_audit(data, tmp_path):
    _merge_fails([data["full"], *data["parts"][2]], tmp_path / "m", 2, "a complete audit, not a part",
                 str(data["full"]))


def test_merge_refuses_a_part_of_another_dataset(data, tmp_path):
    other = tmp_path / "Dataset011_Shard"
    shutil.copytree(data["root"], other)
    (other / "imagesTr" / "case_005_0000.nii.gz").unlink()
    (other / "labelsTr" / "case_005.nii.gz").unlink()
    _score(data["run"], other, tmp_path / "other2", Shard(2, 2))
    _merge_fails([data["parts"][2][0], tmp_path / "other2"], tmp_path / "m", 2, "scored another dataset",
                 str(tmp_path / "other2"))


def test_merge_refuses_a_part_with_other_thresholds(data, tmp_path):
    _score(data["run"], data["root"], tmp_path / "t2", Shard(2, 2), threshold=0.9)
    _merge_fails([data["parts"][2][0], tmp_path / "t2"], tmp_path / "m", 2, "scored with different thresholds",
                 "threshold.slice: 0.9 vs 0.3")


def test_merge_refuses_a_part_of_another_run(data, tmp_path, make_run):
    run = make_run(tmp_path / "run2", data["root"], folds=[["case_000", "case_002"], ["case_001", "case_003"]],
                   threshold=THRESHOLD)
    _score(run, data["root"], tmp_path / "r2", Shard(2, 2))
    _merge_fails([data["parts"][2][0], tmp_path / "r2"], tmp_path / "m", 2, "scored with a different run",
                 "run.models")


@pytest.mark.parametrize("where", ["a part", "inside a part"])
def test_merge_out_may_not_be_or_lie_inside_a_part(data, where):
    part = data["parts"][2][0]
    out = part if where == "a part" else part / "merged"
    result = invoke("merge", *data["parts"][2], "--out", out)
    assert result.exit_code == 2, result.output
    assert "PART_DIR" in result.output and not (part / "merged").exists()
    assert (part / "part" / "views.json").is_file()  # the part is as it was


def test_merge_refuses_a_damaged_part_with_exit_3(data, tmp_path):
    copy = tmp_path / "part2"
    shutil.copytree(data["parts"][2][1], copy)
    (copy / "part" / "arrays.npz").unlink()
    _merge_fails([data["parts"][2][0], copy], tmp_path / "m", 3, str(copy / "part" / "arrays.npz"), "not found")


def test_merge_refuses_an_edited_part(data, tmp_path):
    copy = tmp_path / "part2"
    shutil.copytree(data["parts"][2][1], copy)
    summary = json.loads((copy / "summary.json").read_text())
    summary["threshold"]["slice"] = 0.01
    (copy / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(InputError, match="edited after the part was scored"):
        merge_parts([data["parts"][2][0], copy], tmp_path / "m")
