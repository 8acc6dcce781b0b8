"""The gate's decisions, renderers, model/data matching and the content-hash cache (no scoring here)."""

from __future__ import annotations

import json
from xml.etree import ElementTree as ET

import pytest

from labelaudit.formats.cache import ScoreCache, case_key, model_hash
from labelaudit.data import discover_dataset
from labelaudit.errors import ModelError
from labelaudit.cli.render import summary_table
from labelaudit.formats.cache import CacheEntry
from labelaudit.gate.check import CheckedModel, CheckResult, _verdict
from labelaudit.gate.ci import check_json, describe_threshold, failure_message, github_annotations, junit_xml
from labelaudit.score.decide import decide
from labelaudit.score.routing import check_run_matches
from labelaudit.training_scores import ScoreSpread
from labelaudit.types import AuditDataset, Calibration, Threshold, ThresholdSource
from labelaudit.preprocess import LabelMap
from labelaudit.formats.run import load_run
from labelaudit.synth import SynthConfig, write_synth_dataset

THRESHOLD = Threshold(0.4, 0.3, ThresholdSource.RUN, Calibration(
    slice=0.4, case=0.3, rule="median+k*mad", k=3.0, floor=0.05, n_slices=40, scored="out-of-fold",
    slice_stats=ScoreSpread(0.1, 0.02)))


def entry(case_id: str, slices: list[float], kinds: list | None = None, case_kind: str | None = None,
          noise_score: float | None = None) -> CacheEntry:
    top = sorted(slices)[-3:]
    return CacheEntry(case_id, sum(top) / len(top) if noise_score is None else noise_score, tuple(slices),
                      tuple(kinds or [None] * len(slices)), case_kind, 0.1, "fold_0")


def flags(entry: CacheEntry, threshold: Threshold) -> tuple[bool, list[bool]]:
    decision = decide(entry.noise_score, entry.slices, threshold)
    return decision.flagged, decision.slice_flags.tolist()


def result_of(entries: list[CacheEntry], max_flagged: int = 0, threshold: Threshold = THRESHOLD) -> CheckResult:
    cases = [_verdict(e, threshold, f"incoming/labelsTr/{e.case_id}.nii.gz", False) for e in entries]
    cases.sort(key=lambda c: -c.noise_score)
    return CheckResult(dataset=AuditDataset("Dataset009_New batch", "incoming", "nnunet", False),
                       model=CheckedModel("models/demo-pint", "pint", "", "demo", 1),
                       provider="CPUExecutionProvider", threshold=threshold, max_flagged=max_flagged, cases=cases,
                       scored=len(cases), seconds=1.5, started="2025-01-01T00:00:00+00:00")


CLEAN = entry("case_clean", [0.05, 0.1, 0.12, 0.02])
BAD = entry("case_bad", [0.05, 0.9, 0.45, 0.02], kinds=[None, "missing_structure", "over_segmentation", None],
            case_kind="missing_structure")


# ----------------------------------------------------------------------------- decisions

def test_decide_by_hand():
    # case score (0.12+0.1+0.05)/3 = 0.09 < 0.3 and no slice >= 0.4: passes
    assert flags(CLEAN, THRESHOLD) == (False, [False, False, False, False])
    assert flags(BAD, THRESHOLD) == (True, [False, True, True, False])
    # the case score alone flags a case whose slices all stay under the slice threshold
    assert flags(entry("c", [0.35, 0.35], noise_score=0.35), THRESHOLD)[0] is True
    # the threshold is inclusive: a score that reaches it is flagged
    assert flags(entry("c", [0.4], noise_score=0.0), THRESHOLD) == (True, [True])


def test_a_gate_above_the_slice_threshold_decides_the_case_and_leaves_the_slice_flags():
    gated = Threshold(0.4, 0.3, ThresholdSource.RUN, THRESHOLD.calibration, gate=0.6)
    assert gated.worst_slice == 0.6 and THRESHOLD.worst_slice == 0.4  # no gate: the slice threshold
    # a slice at 0.45 is flagged for review, but the case fails only from a slice at the gate or its score
    assert flags(entry("c", [0.45, 0.1]), gated) == (False, [True, False])
    assert flags(entry("c", [0.6, 0.1]), gated) == (True, [True, False])
    assert flags(entry("c", [0.35, 0.35], noise_score=0.35), gated)[0] is True
    assert flags(BAD, gated) == (True, [False, True, True, False])
    assert "threshold.worst_slice" in junit_xml(result_of([BAD], threshold=gated))
    assert "(a case fails from one slice at 0.600)" in failure_message(_verdict(BAD, gated, "l", False), gated)


def test_verdict_names_the_worst_flagged_slices_worst_first():
    verdict = _verdict(BAD, THRESHOLD, "l.nii.gz", cached=True)
    assert verdict.flagged and verdict.n_flagged_slices == 2 and verdict.cached
    assert [(s.slice_index, s.error_kind) for s in verdict.worst_slices] == [(1, "missing_structure"),
                                                                           (2, "over_segmentation")]
    clean = _verdict(CLEAN, THRESHOLD, "l.nii.gz", cached=False)
    assert [s.slice_index for s in clean.worst_slices] == [2] and not clean.worst_slices[0].flagged


def test_tolerance_and_exit_codes():
    assert result_of([CLEAN]).exit_code == 0
    assert result_of([CLEAN, BAD]).exit_code == 1
    assert result_of([CLEAN, BAD], max_flagged=1).exit_code == 0
    assert result_of([BAD, entry("b2", [0.8])], max_flagged=1).exit_code == 1


def test_threshold_is_described_with_its_origin():
    text = describe_threshold(THRESHOLD)
    assert "slice 0.400" in text and "median 0.100" in text and "MAD 0.020" in text and "40 out-of-fold" in text
    assert "= min(1, max(floor" in text  # the rule's ceiling, which a model that cannot segment reaches
    from labelaudit.score.decide import resolve_threshold

    # --threshold sets the slice threshold; a case score (a mean of masses) is not compared with it
    assert describe_threshold(resolve_threshold(None, 0.2)) == \
        "slice 0.200 (--threshold), no case threshold"
    assert "case 0.700" in describe_threshold(Threshold(0.2, 0.7, ThresholdSource.DEFAULT))


def test_the_gate_is_described_with_its_stored_mads():
    from dataclasses import replace

    calibration = replace(THRESHOLD.calibration, gate=0.5, gate_rule="median+6*mad", gate_k=6.0)
    text = describe_threshold(Threshold(0.4, 0.3, ThresholdSource.RUN, calibration, gate=0.5))
    assert "worst slice 0.500 = max(slice, min(1, median + 6·1.4826·MAD))" in text
    # a run calibrated before gate_k was stored: its rule, as stored, and no formula guessed from it
    earlier = replace(calibration, gate_k=None, gate_rule="median+8*mad")
    text = describe_threshold(Threshold(0.4, 0.3, ThresholdSource.RUN, earlier, gate=0.5))
    assert "worst slice 0.500 (median+8*mad)" in text


# ----------------------------------------------------------------------------- renderers

def test_junit_structure_and_counts():
    root = ET.fromstring(junit_xml(result_of([CLEAN, BAD, entry("case_ok2", [0.0, 0.01])])))
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "1"
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "labelaudit.Dataset009_New_batch"
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("3", "1", "0",
                                                                                                       "0")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["threshold.slice"] == "0.400000" and props["model"] == "models/demo-pint"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["case_bad", "case_clean", "case_ok2"]
    assert {c.get("classname") for c in cases} == {"labelaudit.Dataset009_New_batch"}
    failures = [c.find("failure") for c in cases]
    assert failures[1] is None and failures[2] is None
    message = failures[0].get("message")
    assert "noise score 0.467" in message  # mean of the top 3 slices: (0.9 + 0.45 + 0.05) / 3
    assert "slice 1 (0.900, missing structure)" in message and "likely missing structure" in message
    assert "incoming/labelsTr/case_bad.nii.gz" in failures[0].text
    # only attributes of the common JUnit schema
    allowed = {"testsuites": {"name", "tests", "failures", "errors", "time"},
               "testsuite": {"name", "tests", "failures", "errors", "skipped", "time", "timestamp", "hostname"},
               "testcase": {"name", "classname", "time"}, "failure": {"message", "type"},
               "property": {"name", "value"}, "properties": set(), "system-out": set()}
    for element in root.iter():
        assert set(element.attrib) <= allowed[element.tag], element.tag


def test_github_annotations_escape_and_name_the_label_file():
    bad = entry("case,bad:1", [0.9])
    text = github_annotations(result_of([CLEAN, bad]))
    lines = text.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("::error file=incoming/labelsTr/case%2Cbad%3A1.nii.gz,title=labelaudit%3A case "
                               "case%2Cbad%3A1 slice 0 noise score 0.900::noise score 0.900")
    assert lines[1].startswith("::notice title=labelaudit check failed::2 annotation(s) checked, 1 flagged")
    # within the tolerance a flagged case is a warning, not an error
    assert github_annotations(result_of([bad], max_flagged=1)).startswith("::warning ")


def test_json_is_complete():
    data = json.loads(json.dumps(check_json(result_of([CLEAN, BAD]))))
    assert data["passed"] is False and data["exit_code"] == 1 and data["flagged"] == ["case_bad"]
    assert data["counts"] == {"cases": 2, "flagged": 1, "scored": 2, "cached": 0}
    assert data["provider"] == "CPUExecutionProvider" and data["threshold"]["slice"] == 0.4
    assert data["cases"][0]["worst_slices"][0] == {"slice_index": 1, "noise_score": 0.9, "flagged": True,
                                                   "error_kind": "missing_structure"}


def test_summary_table_says_pass_or_fail():
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(summary_table(result_of([CLEAN, BAD])))
    text = console.export_text()
    assert "FAIL: 1 annotation(s) flagged" in text and "case_bad" in text and "missing structure" in text
    console = Console(width=200, record=True)
    console.print(summary_table(result_of([CLEAN])))
    assert "PASS: 0 annotation(s) flagged" in console.export_text()


# ----------------------------------------------------------------------------- model against data

@pytest.fixture
def matching(tmp_path, make_run):
    root = write_synth_dataset(tmp_path / "Dataset010_Gate", SynthConfig(cases=1, size=(16, 16, 2), seed=2))
    run_dir = make_run(tmp_path / "run", root)
    data = json.loads((run_dir / "run.json").read_text())
    data["classes"]["names"] = list(LabelMap.from_declared(discover_dataset(root).labels).names)
    (run_dir / "run.json").write_text(json.dumps(data))
    return root, run_dir


def test_matching_model_passes(matching):
    root, run_dir = matching
    check_run_matches(load_run(run_dir), discover_dataset(root), run_dir)


def test_other_modality_is_a_model_error(matching):
    root, run_dir = matching
    meta = json.loads((root / "dataset.json").read_text())
    meta["channel_names"] = {"0": "T2"}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"channel 0 of the model is 'CT'.*declares 'T2'"):
        check_run_matches(load_run(run_dir), discover_dataset(root), run_dir)


def test_renamed_labels_are_a_model_error(matching):
    root, run_dir = matching
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "tumour": 1}
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"label set \(0=background, 1=.*\).*\(0=background, 1=tumour\)"):
        check_run_matches(load_run(run_dir), discover_dataset(root), run_dir)


# ----------------------------------------------------------------------------- cache

def test_cache_keys_follow_content(tmp_path):
    image, label = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    image.write_bytes(b"image")
    label.write_bytes(b"label")
    run = tmp_path / "run"
    (run / "fold_0").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    (run / "fold_0" / "segmenter.onnx").write_bytes(b"graph")
    model = model_hash(run, ["fold_0/segmenter.onnx"])
    key = case_key([image], label, model, {"k": 8})
    assert key == case_key([image], label, model, {"k": 8})
    assert key != case_key([image], label, model, {"k": 4})
    label.write_bytes(b"label!")
    assert key != case_key([image], label, model, {"k": 8})
    label.write_bytes(b"label")
    (run / "fold_0" / "segmenter.onnx").write_bytes(b"graph2")
    assert key != case_key([image], label, model_hash(run, ["fold_0/segmenter.onnx"]), {"k": 8})
    # swapping image and label contents changes the key
    assert case_key([label], image, model, {}) != case_key([image], label, model, {})

    cache = ScoreCache(tmp_path / "cache")
    assert cache.get(key) is None
    cache.put(key, entry("c", [0.5]))
    assert cache.get(key) == entry("c", [0.5])
    path = tmp_path / "cache" / key[:2] / f"{key}.json"
    edited = json.loads(path.read_text())
    edited["entry"]["noise_score"] = 0.0  # a hand-edited entry no longer matches its digest: ignored
    path.write_text(json.dumps(edited))
    assert cache.get(key) is None
    path.write_text("{not json")
    assert cache.get(key) is None  # a damaged entry is a miss, not a crash
    assert CacheEntry.from_json({"case_id": "c", "noise_score": "high", "slices": [], "slice_kinds": []}) is None
