"""Each case's outputs are written in the background while the next case is scored (score/writer.py).

The overlapped audit is the serial one byte for byte (tables, maps, summary, report); a write that fails
surfaces from score_dataset with the serial path's error and leaves no audit behind; and the writes really
overlap the scoring, one case behind and never more: shown by the order of recorded events (which thread wrote,
what had started when), never by timing. Run folders are conftest's torch-free `make_run`.
"""

from __future__ import annotations

import errno
import json
import re
import threading
from pathlib import Path

import pytest

from labelaudit import io
from labelaudit.config import ScoreConfig
from labelaudit.errors import OutputError
from labelaudit.formats import audit as audit_format
from labelaudit.formats.audit import AuditFolder
from labelaudit.score.pipeline import score_dataset
from labelaudit.score.scorer import CaseScorer
from labelaudit.synth import SynthConfig, write_synth_dataset

THRESHOLD = {"slice": 0.3, "case": 0.3, "rule": "median+k*mad", "k": 3.0, "floor": 0.05}
CASES = [f"case_{i:03d}" for i in range(4)]
#: Bounds a wait in a broken (not overlapped) writer so that the test fails instead of hanging; never reached.
HANG_GUARD_S = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory, make_run):
    """4 cases, case_002 with slice 1 erased (flagged, so it has regions fixed and thumbnails), and a run."""
    base = tmp_path_factory.mktemp("overlap")
    root = write_synth_dataset(base / "Dataset012_Overlap", SynthConfig(cases=len(CASES), size=(24, 20, 4), seed=12))
    label = io.read_volume(root / "labelsTr" / "case_002.nii.gz")
    label.array[1] = 0  # numpy axis 0 is the slicing axis here
    io.write_volume(label, root / "labelsTr" / "case_002.nii.gz")
    return {"root": root, "run": make_run(base / "run", root, threshold=THRESHOLD)}


def _score(data, out: Path, overlap: bool = True):
    return score_dataset(ScoreConfig(run_dir=data["run"], dataset=data["root"], out_dir=out, device="cpu",
                                     batch_size=2), overlap_writes=overlap)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_overlapped_audit_is_the_serial_one_byte_for_byte(data, tmp_path):
    overlapped, serial = _score(data, tmp_path / "a"), _score(data, tmp_path / "b", overlap=False)
    assert overlapped.flagged_slices and [c.case_id for c in overlapped.cases] == [c.case_id for c in serial.cases]
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert sorted(a) == sorted(b) and {f"maps/{c}_{kind}.nii.gz" for c in CASES for kind in ("noise", "pred", "fixed")
                                       } <= set(a)
    for name in sorted(a):
        if name == "summary.json":
            continue
        text_a, text_b = a[name], b[name]
        if name == "report.html":  # it names its own folder (with line-break hints in its commands) and the
            # minute it was generated, which two runs can straddle
            text_a, text_b = (re.sub(rb"\d{4}-\d\d-\d\d \d\d:\d\d UTC", b"WHEN",
                                     t.replace(b"<wbr>", b"").replace(str(tmp_path / f).encode(), b"AUDIT"))
                              for t, f in ((text_a, "a"), (text_b, "b")))
        assert text_a == text_b, name
    summaries = [json.loads(files["summary.json"]) for files in (a, b)]
    for summary in summaries:
        timings = summary.pop("timings")
        assert {"write_s", "write_wait_s"} <= set(timings) and timings["write_s"] > 0
        del summary["files"]  # the folder's own paths
    assert json.dumps(summaries[0]) == json.dumps(summaries[1])
    assert [v.case_id for v in overlapped.views.values()] == [v.case_id for v in serial.views.values()]


@pytest.mark.parametrize("overlap", [True, False])
def test_a_failing_write_surfaces_and_leaves_the_earlier_audit(data, tmp_path, monkeypatch, overlap):
    out = tmp_path / "audit"
    _score(data, out)
    before = _files(out)
    real = audit_format.write_case_maps

    def full_disk(out_dir, ref, *args):
        if ref.case_id == "case_001":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(out_dir, ref, *args)

    monkeypatch.setattr(audit_format, "write_case_maps", full_disk)
    with pytest.raises(OutputError, match=r"maps: cannot write \(No space left on device\)") as raised:
        _score(data, out, overlap)
    assert raised.value.message == f"{out / 'maps'}: cannot write (No space left on device)"
    assert raised.value.exit_code == 3 and "free space" in raised.value.hint
    assert _files(out) == before  # the earlier audit, as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]  # no partial folder, no lock left


def test_a_failing_last_write_surfaces_too(data, tmp_path, monkeypatch):
    real = AuditFolder.add_case

    def failing(self, ref, *args, **kwargs):
        if ref.case_id == CASES[-1]:
            raise RuntimeError(f"case {ref.case_id}: planted")
        return real(self, ref, *args, **kwargs)

    monkeypatch.setattr(AuditFolder, "add_case", failing)
    with pytest.raises(RuntimeError, match="case case_003: planted"):
        _score(data, tmp_path / "audit")
    assert not (tmp_path / "audit").exists()


def test_writes_overlap_the_next_case_and_lag_one_case_at_most(data, tmp_path, monkeypatch):
    events: list[tuple[str, str, str]] = []  # (what, case id, thread name), in the order they happened
    scoring = {c: threading.Event() for c in CASES}
    real_score, real_add = CaseScorer.score_case, AuditFolder.add_case

    def record(what: str, case_id: str) -> None:
        events.append((what, case_id, threading.current_thread().name))

    def score_case(self, case, route):
        record("score", case.case_id)
        scoring[case.case_id].set()
        return real_score(self, case, route)

    def add_case(self, ref, *args, **kwargs):
        record("write", ref.case_id)
        later = CASES.index(ref.case_id) + 1
        # the write holds on until the next case is being scored: only an overlapped writer lets that happen
        if later < len(CASES) and not scoring[CASES[later]].wait(HANG_GUARD_S):
            record("not overlapped", ref.case_id)
        real_add(self, ref, *args, **kwargs)
        record("written", ref.case_id)

    monkeypatch.setattr(CaseScorer, "score_case", score_case)
    monkeypatch.setattr(AuditFolder, "add_case", add_case)
    _score(data, tmp_path / "audit")
    assert not [e for e in events if e[0] == "not overlapped"]
    assert {name for what, _, name in events if what == "write"} == {"labelaudit-write_0"}
    assert {name for what, _, name in events if what == "score"} == {"MainThread"}
    order = [(what, case_id) for what, case_id, _ in events]
    for i, case_id in enumerate(CASES):
        assert order.index(("score", case_id)) < order.index(("write", case_id))
        if i + 1 < len(CASES):  # case i is written while case i+1 is scored ...
            assert order.index(("score", CASES[i + 1])) < order.index(("written", case_id))
        if i + 2 < len(CASES):  # ... and is written before case i+2 is scored: one case in the writer at most
            assert order.index(("written", case_id)) < order.index(("score", CASES[i + 2]))
    assert [case_id for what, case_id in order if what == "written"] == CASES  # in the order they were scored


def test_the_serial_path_writes_on_the_scoring_thread(data, tmp_path, monkeypatch):
    threads = []
    real = AuditFolder.add_case

    def add_case(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AuditFolder, "add_case", add_case)
    audit = _score(data, tmp_path / "audit", overlap=False)
    assert threads == ["MainThread"] * len(CASES) and audit.timings["write_wait_s"] == 0.0
