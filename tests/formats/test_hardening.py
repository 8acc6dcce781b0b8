"""No path a user types, no file on disk and no full disk can overwrite data, pass a NaN or end in exit 70.

Every output flag goes through formats/outputs.guard_output (refused: exit 2, naming the flag and the input);
an audit folder is written beside its place and swapped in whole, under a lock; CSV text cells cannot be
formulas; the gate never passes a non-finite score; score and check refuse the same mismatched runs; a
run.json of the wrong shape is exit 4 naming the field. Run folders are conftest's torch-free `make_run`.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from labelaudit import io
from labelaudit.formats.run import load_run
from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Volume

THRESHOLD = {"slice": 0.3, "case": 0.3, "rule": "median+k*mad", "k": 3.0, "floor": 0.05}
SMALL = SynthConfig(cases=3, size=(20, 16, 3), seed=5)


@pytest.fixture
def ds(tmp_path) -> Path:
    return write_synth_dataset(tmp_path / "Dataset020_Hard", SMALL)


@pytest.fixture
def run(tmp_path, ds, make_run) -> Path:
    return make_run(tmp_path / "run", ds, threshold=THRESHOLD)


def digest(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (what must not change)."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for root in roots
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def text(result) -> str:
    """stdout and stderr in one line, however Rich wrapped them."""
    return " ".join((result.output + (result.stderr if result.stderr_bytes is not None else "")).split())


def score(cli, ds: Path, run: Path, *args):
    return cli("score", ds, "--model", run, "--device", "cpu", *args)


def check(cli, ds: Path, run: Path, *args):
    return cli("check", ds, "--model", run, "--device", "cpu", *args)


def siblings(folder: Path) -> list[str]:
    """Hidden entries beside `folder` (partial folders, locks) — none may be left behind."""
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- 1. outputs never replace inputs

def test_report_over_a_label_is_refused_and_the_label_kept(cli, ds, run, tmp_path):
    before = digest(ds, run)
    result = score(cli, ds, run, "--out", tmp_path / "a", "--report", ds / "labelsTr" / "case_000.nii.gz")
    assert result.exit_code == 2, result.output
    assert re.search(r"--report \S*case_000\.nii\.gz: lies inside the input folder \S*labelsTr \(DATASET\)",
                     text(result))
    assert digest(ds, run) == before and not (tmp_path / "a").exists()


def test_report_over_dataset_json_is_refused_and_later_commands_still_work(cli, ds, run, tmp_path):
    before = digest(ds)
    result = score(cli, ds, run, "--out", tmp_path / "a", "--report", ds / "dataset.json")
    assert result.exit_code == 2 and "--report" in text(result) and "DATASET" in text(result), result.output
    assert digest(ds) == before
    assert cli("inspect", ds).exit_code == 0


def test_junit_over_a_label_is_refused(cli, ds, run):
    before = digest(ds)
    result = check(cli, ds, run, "--junit", ds / "labelsTr" / "case_001.nii.gz")
    assert result.exit_code == 2, result.output
    assert "--junit" in text(result) and "input folder" in text(result) and "INCOMING" in text(result)
    assert digest(ds) == before


def test_cache_inside_the_dataset_is_refused(cli, ds, run):
    folders = sorted(p for p in ds.rglob("*") if p.is_dir())
    result = check(cli, ds, run, "--cache", ds / "labelsTr")
    assert result.exit_code == 2 and "--cache" in text(result) and "input folder" in text(result), result.output
    assert sorted(p for p in ds.rglob("*") if p.is_dir()) == folders


@pytest.mark.parametrize("command, where, message", [
    (["score", "DS", "--model", "RUN", "--out", "DS"], "DS", "is the input folder"),
    (["score", "DS", "--model", "RUN", "--out", "RUN/audit"], "RUN", "lies inside the input folder"),
    (["score", "DS", "--model", "RUN", "--out", "BASE"], "BASE", "holds the input"),
    (["score", "DS", "--model", "RUN", "--out", "NEW", "--report", "RUN/run.json"], "RUN", "lies inside"),
    (["check", "DS", "--model", "RUN", "--junit", "RUN/run.json"], "RUN", "lies inside the input folder"),
    (["check", "DS", "--model", "RUN", "--cache", "RUN"], "RUN", "is the input folder"),
    (["fit", "DS", "--out", "DS/labelsTr/run"], "DS", "lies inside the input folder"),
    (["corrupt", "DS", "DS/noisy"], "DS", "lies inside the input folder"),
    (["evaluate", "A", "--truth", "T/corruption.json", "--json", "A/cases.csv"], "A", "is the input file"),
    (["evaluate", "A", "--truth", "T/corruption.json", "--json", "T/corruption.json"], "T", "is the input file"),
])
def test_every_output_flag_refuses_an_input(cli, ds, run, tmp_path, command, where, message):
    audit, truth = tmp_path / "audit", tmp_path / "truth"
    for folder in (audit, truth):
        folder.mkdir()
    (audit / "cases.csv").write_text("case_id,noise_score\n")
    (truth / "corruption.json").write_text("{}")
    names = {"DS": ds, "RUN": run, "BASE": tmp_path, "A": audit, "T": truth, "NEW": tmp_path / "new"}
    args = [str(names[a.split("/")[0]]) + a[len(a.split("/")[0]):] if a.split("/")[0] in names else a
            for a in command]
    if command[0] in ("score", "check"):
        args += ["--device", "cpu"]
    before = digest(ds, run, audit, truth)
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert message in text(result) and str(names[where]) in text(result), text(result)
    assert digest(ds, run, audit, truth) == before


def test_demo_refuses_a_file_and_the_embedded_dataset(cli, tmp_path):
    from labelaudit.demo import demo_dataset_path

    (tmp_path / "file").write_text("mine")
    result = cli("demo", "--out", tmp_path / "file")
    assert result.exit_code == 2 and "--out" in text(result) and "is a file" in text(result), result.output
    result = cli("demo", "--out", demo_dataset_path() / "imagesTr")
    assert result.exit_code == 2 and "embedded demo dataset" in text(result), result.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = cli("demo", "--out", tmp_path / "mine")
    assert result.exit_code == 2 and "notes.txt" in text(result)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("flag, name, content, message", [
    ("--out", "folder", None, "not an audit (no summary.json)"),
    ("--report", "page.html", "<html>my page</html>", "is not a report written by labelaudit"),
    ("--junit", "results.xml", "<testsuites name='pytest'/>", "not JUnit XML written by `labelaudit check`"),
    ("--cache", "folder", None, "not a cache entry folder"),
])
def test_existing_files_of_others_are_not_replaced(cli, ds, run, tmp_path, flag, name, content, message):
    target = tmp_path / name
    if content is None:
        target.mkdir()
        (target / "notes.txt").write_text("keep")
    else:
        target.write_text(content)
    before = digest(tmp_path / name) if content is None else target.read_text()
    if flag in ("--out", "--report"):
        result = score(cli, ds, run, *(["--out", target] if flag == "--out" else ["--out", tmp_path / "a",
                                                                                  "--report", target]))
    else:
        result = check(cli, ds, run, flag, target)
    assert result.exit_code == 2, result.output
    assert flag in text(result) and message in text(result) and "refusing to replace it" in text(result)
    assert (digest(target) if content is None else target.read_text()) == before


def test_previous_outputs_of_the_same_kind_are_replaced(cli, ds, run, tmp_path):
    out, report, junit, cache = tmp_path / "a", tmp_path / "r.html", tmp_path / "j.xml", tmp_path / "c"
    for _ in range(2):
        assert score(cli, ds, run, "--out", out, "--report", report).exit_code == 0
        assert check(cli, ds, run, "--junit", junit, "--cache", cache).exit_code in (0, 1)
    assert "labelaudit" in report.read_text() and "labelaudit check" in junit.read_text()
    assert not (out / "report.html").exists()  # the report went where --report said
    empty = tmp_path / "empty.html"
    empty.write_text("")  # an empty file holds nothing to lose
    assert score(cli, ds, run, "--out", out, "--report", empty).exit_code == 0


# ----------------------------------------------------------------------------- 2. ordinary conditions: exit 2 or 3

@pytest.mark.parametrize("case", ["report_folder", "report_below_file", "out_file", "cache_file",
                                  "fit_out_file", "corrupt_out_file", "report_own_file"])
def test_paths_of_the_wrong_kind_exit_2(cli, ds, run, tmp_path, case):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    (tmp_path / "adir").mkdir()
    args, message = {
        "report_folder": (["score", ds, "--model", run, "--out", tmp_path / "a", "--report", tmp_path / "adir"],
                          "--report .*: is a folder, expected a file"),
        "report_below_file": (["score", ds, "--model", run, "--out", tmp_path / "a", "--report", afile / "r.html"],
                              "--report .*: lies below .*afile, which is a file"),
        "out_file": (["score", ds, "--model", run, "--out", afile], "--out .*afile: is a file, expected a folder"),
        "cache_file": (["check", ds, "--model", run, "--cache", afile], "--cache .*: is a file, expected a folder"),
        "fit_out_file": (["fit", ds, "--out", afile], "--out .*: is a file, expected a folder"),
        "corrupt_out_file": (["corrupt", ds, afile], "OUT .*: is a file, expected a folder"),
        "report_own_file": (["score", ds, "--model", run, "--out", tmp_path / "a", "--report",
                             tmp_path / "a" / "cases.csv"], "--report .*: is a file the audit itself writes"),
    }[case]
    if args[0] in ("score", "check"):
        args += ["--device", "cpu"]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert re.search(message, text(result)), text(result)
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("command", ["score", "check", "fit", "corrupt"])
def test_read_only_output_folder_exits_2(cli, ds, run, tmp_path, monkeypatch, command):
    from labelaudit.formats import outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    real = outputs._writable
    monkeypatch.setattr(outputs, "_writable", lambda folder: folder != locked.resolve() and real(folder))
    args = {"score": ["score", ds, "--model", run, "--out", locked / "a", "--device", "cpu"],
            "check": ["check", ds, "--model", run, "--cache", locked / "c", "--device", "cpu"],
            "fit": ["fit", ds, "--out", locked / "run"],
            "corrupt": ["corrupt", ds, locked / "noisy"]}[command]
    result = cli(*args)
    assert result.exit_code == 2, result.output
    assert "cannot write in" in text(result) and "read-only or no permission" in text(result)
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_really_read_only_folder_exits_2(cli, ds, run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = score(cli, ds, run, "--out", locked / "a")
        assert result.exit_code == 2 and "read-only" in text(result), result.output
    finally:
        locked.chmod(0o755)


def _full_disk(monkeypatch):
    """Every atomic write (tables, JSON, cache entries, JUnit) fails as on a full disk."""
    from labelaudit.io import atomic

    def no_space(path, mode="r", *args, **kwargs):
        if "w" in mode or "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(atomic, "open", no_space, raising=False)


def test_full_disk_while_writing_the_audit_exits_3_and_keeps_the_previous_one(cli, ds, run, tmp_path, monkeypatch):
    out = tmp_path / "a"
    assert score(cli, ds, run, "--out", out).exit_code == 0
    before = digest(out)
    with monkeypatch.context() as patch:
        _full_disk(patch)
        result = score(cli, ds, run, "--out", out)
    assert result.exit_code == 3, result.output
    assert re.search(r"\S+: cannot write \(No space left on device\)", text(result)), text(result)
    assert digest(out) == before and siblings(out) == []


def test_full_disk_while_writing_maps_exits_3(cli, ds, run, tmp_path, monkeypatch):
    import labelaudit.formats.audit

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(labelaudit.formats.audit, "write_case_maps", no_space)
    result = score(cli, ds, run, "--out", tmp_path / "a")
    assert result.exit_code == 3 and "maps: cannot write (No space left on device)" in text(result), result.output
    assert not (tmp_path / "a").exists() and siblings(tmp_path / "a") == []


def test_full_disk_while_writing_the_cache_or_junit_exits_3(cli, ds, run, tmp_path, monkeypatch):
    _full_disk(monkeypatch)
    result = check(cli, ds, run, "--cache", tmp_path / "c")
    assert result.exit_code == 3, result.output
    assert re.search(r"\S*c/[0-9a-f]{2}/[0-9a-f]{64}\.json: cannot write \(No space left on device\)", text(result))
    result = check(cli, ds, run, "--junit", tmp_path / "j.xml")
    assert result.exit_code == 3 and "j.xml: cannot write (No space left on device)" in text(result), result.output


# ----------------------------------------------------------------------------- 3. the audit is swapped in whole

def test_rescoring_fewer_cases_leaves_no_stale_maps(cli, ds, run, tmp_path):
    out = tmp_path / "a"
    assert score(cli, ds, run, "--out", out).exit_code == 0
    assert {p.name.rsplit("_", 1)[0] for p in (out / "maps").iterdir()} == {"case_000", "case_001", "case_002"}
    one = write_synth_dataset(tmp_path / "Dataset021_One", SynthConfig(cases=1, size=(20, 16, 3), seed=8))
    result = score(cli, one, run, "--out", out)
    assert result.exit_code == 0, result.output
    assert {p.name.rsplit("_", 1)[0] for p in (out / "maps").iterdir()} == {"case_000"}  # none of the 3 before
    assert (out / "maps" / "case_000_noise.nii.gz").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["cases"] == 1 and summary["dataset"]["name"] == "Dataset021_One"
    assert len((out / "cases.csv").read_text().splitlines()) == 2 and siblings(out) == []


@pytest.mark.parametrize("failure", ["interrupt", "strict"])
def test_a_failed_run_leaves_the_previous_audit_intact(cli, ds, run, tmp_path, monkeypatch, failure):
    import labelaudit.score.pipeline

    out = tmp_path / "a"
    assert score(cli, ds, run, "--out", out).exit_code == 0
    before = digest(out)
    if failure == "interrupt":
        real, calls = labelaudit.score.pipeline.CaseScorer.score_case, []

        def interrupted(self, case, chosen):
            calls.append(case.case_id)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(self, case, chosen)

        monkeypatch.setattr(labelaudit.score.pipeline.CaseScorer, "score_case", interrupted)
        result = score(cli, ds, run, "--out", out)
        assert result.exit_code == 130, result.output
    else:
        (ds / "labelsTr" / "case_002.nii.gz").write_bytes(b"not an image")
        result = score(cli, ds, run, "--out", out, "--strict")
        assert result.exit_code == 3, result.output
    assert digest(out) == before and siblings(out) == []
    monkeypatch.undo()
    assert score(cli, ds, run, "--out", out).exit_code == 0  # and the lock was given back


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_runs_partial_folder_and_lock_are_taken_over(cli, ds, run, tmp_path):
    out = tmp_path / "a"
    assert score(cli, ds, run, "--out", out).exit_code == 0
    pid = _dead_pid()
    partial = tmp_path / f".a.partial-{pid}"
    (partial / "maps").mkdir(parents=True)
    (partial / "maps" / "case_999_noise.nii.gz").write_bytes(b"half")
    (tmp_path / ".a.lock").write_text(f"{pid}\n")
    result = score(cli, ds, run, "--out", out)
    assert result.exit_code == 0, result.output
    assert siblings(out) == [] and not (out / "maps" / "case_999_noise.nii.gz").exists()


def test_a_second_writer_is_refused_while_the_first_runs(cli, ds, run, tmp_path):
    out = tmp_path / "a"
    assert score(cli, ds, run, "--out", out).exit_code == 0
    before = digest(out)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / ".a.lock").write_text(f"{other.pid}\n")
        result = score(cli, ds, run, "--out", out)
        assert result.exit_code == 2, result.output
        assert f"another labelaudit process (PID {other.pid}) is writing it now" in text(result)
        assert digest(out) == before
    finally:
        other.kill()
        other.wait()
    assert score(cli, ds, run, "--out", out).exit_code == 0


def test_a_swap_cut_short_brings_the_previous_output_back(tmp_path):
    from labelaudit.formats.outputs import StagedFolder

    final = tmp_path / "out"
    old = tmp_path / f".out.old-{_dead_pid()}"
    old.mkdir()
    (old / "summary.json").write_text("previous")
    staged = StagedFolder(final, "--out")  # killed between the two renames: `final` is missing
    assert (final / "summary.json").read_text() == "previous"
    (staged.path / "summary.json").write_text("new")
    staged.abort()
    assert (final / "summary.json").read_text() == "previous" and siblings(final) == []
    staged = StagedFolder(final, "--out")
    (staged.path / "summary.json").write_text("new")
    staged.commit()
    staged.release()
    assert (final / "summary.json").read_text() == "new" and siblings(final) == []


def test_a_report_outside_the_audit_is_written_after_the_swap(cli, ds, run, tmp_path, monkeypatch):
    from labelaudit.formats.outputs import StagedFolder

    report, seen = tmp_path / "reports" / "r.html", []
    real = StagedFolder.commit

    def commit(self):
        seen.append((report.exists(), (self.path / "cases.csv").is_file()))
        return real(self)

    monkeypatch.setattr(StagedFolder, "commit", commit)
    assert score(cli, ds, run, "--out", tmp_path / "a", "--report", report).exit_code == 0
    assert seen == [(False, True)] and report.is_file()


# ----------------------------------------------------------------------------- 4. CSV cells are never formulas

@pytest.mark.parametrize("cell", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "'", "''", "plain", "'a", ""])
def test_escape_cell_round_trips(cell):
    from labelaudit.formats.audit import escape_cell, unescape_cell

    escaped = escape_cell(cell)
    assert unescape_cell(escaped) == cell
    assert not escaped.startswith(("=", "+", "-", "@", "\t", "\r"))


def test_case_ids_that_are_formulas_are_quoted_and_numbers_stay_numbers(cli, ds, run, tmp_path):
    from labelaudit.formats.audit import read_case_scores, read_slice_scores

    evil = "=HYPERLINK(1)"
    (ds / "imagesTr" / "case_001_0000.nii.gz").rename(ds / "imagesTr" / f"{evil}_0000.nii.gz")
    (ds / "labelsTr" / "case_001.nii.gz").rename(ds / "labelsTr" / f"{evil}.nii.gz")
    out = tmp_path / "a"
    result = score(cli, ds, run, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("cases.csv", "slices.csv"):
        with open(out / name, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        assert "'" + evil in {row["case_id"] for row in rows} and evil not in {row["case_id"] for row in rows}
        assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row.values())
        assert all(0.0 <= float(row["noise_score"]) <= 1.0 for row in rows)  # a plain number
    assert evil in read_case_scores(out / "cases.csv")
    assert {c for c, _ in read_slice_scores(out / "slices.csv")} == {"case_000", evil, "case_002"}


# ----------------------------------------------------------------------------- 5. the gate never passes a NaN

def _strict_json(text_: str):
    def refuse(name):
        raise AssertionError(f"JSON holds {name}")

    return json.loads(text_, parse_constant=refuse)


@pytest.fixture
def huge(tmp_path, make_run):
    """An MR dataset and a z-score run; case_001's image is multiplied by 1e36 (finite, but overflows float32)."""
    from labelaudit.preprocess import ChannelNorm

    root = write_synth_dataset(tmp_path / "Dataset022_Huge", SynthConfig(cases=3, size=(20, 16, 3), seed=6,
                                                                         modality="MR"))
    run_dir = make_run(tmp_path / "run", root, norm=ChannelNorm("zscore", 0.0, 0.0, 0.0, 1.0), threshold=THRESHOLD)
    path = root / "imagesTr" / "case_001_0000.nii.gz"
    image = io.read_volume(path)
    array = image.array.astype(np.float32) * np.float32(1e36)
    assert np.isfinite(array).all()
    io.write_volume(Volume(array, image.geometry), path)
    return root, run_dir


def test_huge_finite_intensities_fail_the_gate_naming_the_case(cli, huge):
    root, run_dir = huge
    result = check(cli, root, run_dir, "--format", "json")
    assert result.exit_code == 3, result.output
    assert "case_001" in text(result) and "not finite" in text(result) and result.stdout.strip() == ""


def test_huge_finite_intensities_skip_the_case_in_score(cli, huge, tmp_path):
    root, run_dir = huge
    out = tmp_path / "a"
    result = score(cli, root, run_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "skipped 1 case(s): case_001" in text(result)
    summary = _strict_json((out / "summary.json").read_text())
    assert list(summary["skipped"]) == ["case_001"] and "not finite" in summary["skipped"]["case_001"][0]
    assert {c["case_id"] for c in summary["cases"]} == {"case_000", "case_002"}
    strict = score(cli, root, run_dir, "--out", tmp_path / "b", "--strict")
    assert strict.exit_code == 3 and "case_001" in text(strict), strict.output


def test_check_json_has_no_nan(cli, ds, run):
    result = check(cli, ds, run, "--format", "json")
    assert result.exit_code in (0, 1), result.output
    verdict = _strict_json(result.stdout)
    assert all(np.isfinite(c["noise_score"]) for c in verdict["cases"])


# ----------------------------------------------------------------------------- 6. score refuses what check refuses

@pytest.mark.parametrize("change, expected", [
    ({"labels": {"background": 0, "tumour": 1}}, "differs from the one"),
    ({"channel_names": {"0": "MR"}}, "declares 'MR'"),
    ({"labels": {"background": 0, "class_1": 1, "class_2": 2}}, "label values [2]"),
])
def test_score_and_check_refuse_the_same_mismatched_run(cli, ds, run, tmp_path, change, expected):
    meta = json.loads((ds / "dataset.json").read_text())
    meta.update(change)
    (ds / "dataset.json").write_text(json.dumps(meta))
    for result in (score(cli, ds, run, "--out", tmp_path / "a"), check(cli, ds, run)):
        assert result.exit_code == 4, result.output
        assert expected in text(result)
    assert not (tmp_path / "a").exists()


def test_paired_layout_without_dataset_json_scores_and_checks(cli, tmp_path, make_run):
    root = write_synth_dataset(tmp_path / "paired", SynthConfig(cases=2, size=(20, 16, 3), seed=7), layout="paired")
    run_dir = make_run(tmp_path / "run", root, threshold=THRESHOLD)
    assert score(cli, root, run_dir, "--out", tmp_path / "a").exit_code == 0
    assert check(cli, root, run_dir).exit_code in (0, 1)


# ----------------------------------------------------------------------------- 7. run.json of the wrong shape: exit 4

def _edit_run(run_dir: Path, how: str) -> str:
    data = json.loads((run_dir / "run.json").read_text())
    field = how
    if how == "list":
        data, field = [data], "the file"
    elif how == "divisor":
        data["preprocessing"]["divisor"], field = 0, "preprocessing.divisor"
    elif how == "threshold":
        data["threshold"], field = {"slice": "high"}, "threshold.slice"
    elif how == "perturbations":
        data["perturbations"]["k"], field = 0, "perturbations.k"
    elif how == "dotdot":
        data["models"][0]["segmenter"], field = "../elsewhere/segmenter.onnx", "models[0].segmenter"
    elif how == "missing":
        del data["classes"]
        field = "classes"
    elif how == "std":
        data["preprocessing"]["channels"][0]["std"], field = 0.0, "preprocessing.channels[0].std"
    elif how == "agreement":
        data["threshold"]["class_agreement"], field = {"liver": 0.5}, "threshold.class_agreement"
    elif how == "spread":
        data["threshold"]["slice_stats"], field = {"median": 0.1, "mean": 0.2}, "threshold.slice_stats.mean"
    elif how == "gate_k":
        data["threshold"]["gate_k"], field = -6, "threshold.gate_k"
    elif how == "net":
        data.setdefault("config", {})["net"], field = {"features": ["wide"]}, "config.net"
    elif how == "exporter":
        data.setdefault("config", {})["exporter"], field = "onnxscript", "config.exporter"
    (run_dir / "run.json").write_text(json.dumps(data))
    return field


@pytest.mark.parametrize("how", ["list", "divisor", "threshold", "perturbations", "dotdot", "missing", "std", "net",
                                 "exporter", "agreement", "spread", "gate_k"])
def test_run_json_of_the_wrong_shape_exits_4_naming_the_field(cli, ds, run, tmp_path, how):
    field = _edit_run(run, how)
    for result in (score(cli, ds, run, "--out", tmp_path / "a"), check(cli, ds, run)):
        assert result.exit_code == 4, result.output
        assert "run.json" in text(result) and f"'{field}'" in text(result), text(result)
        assert "internal error" not in text(result)


def test_the_score_spread_of_a_calibration_reads_typed_and_accepts_earlier_runs_log_fields(run):
    data = json.loads((run / "run.json").read_text())
    data["threshold"]["slice_stats"] = {"median": 0.1, "mad": 0.02, "q90": 0.3, "log_median": -2.3, "log_mad": 0.4}
    (run / "run.json").write_text(json.dumps(data))
    spread = load_run(run).threshold.slice_stats
    assert (spread.median, spread.mad, spread.quantiles) == (0.1, 0.02, {"q90": 0.3})
    assert spread.to_json() == {"median": 0.1, "mad": 0.02, "q90": 0.3}  # written back without the log fields


def test_the_gates_mads_are_read_back_and_absent_in_earlier_runs(run):
    assert load_run(run).threshold.gate_k is None  # a run calibrated before gate_k was stored
    data = json.loads((run / "run.json").read_text())
    data["threshold"].update(gate=0.5, gate_rule="median+6*mad", gate_k=6)
    (run / "run.json").write_text(json.dumps(data))
    calibration = load_run(run).threshold
    assert calibration.gate_k == 6.0 and calibration.to_json()["gate_k"] == 6.0
