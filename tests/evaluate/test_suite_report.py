"""bench/suite_report.py: rewriting the suite's section keeps the tables of halves whose rows are gone."""

from __future__ import annotations

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture()
def report(bench_script, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script imports its sibling scripts by name
    return bench_script("suite_report")


def _results(report, tmp_path: Path) -> Path:
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n" + "\n".join([
        report.TITLE, "", "an earlier run.", "", report.FRESH_HEADING, "", "| fresh table |", "",
        report.HELD_OUT_HEADING, "", "| held-out table |", "", "#### a part of it", "", "| more |", "",
        report.DEV_HEADING, "", "| dev table |", "",
        "## The next section", "", "untouched", ""]))
    return path


def test_halves_without_complete_rows_keep_their_saved_tables(report, tmp_path, capsys):
    path = _results(report, tmp_path)
    dev_row = {"dataset": "brain_wm", "regime": "slice", "half": "dev",
               "methods": {"stronger": {"fit_s": 60.0, "score_s": 6.0, "levels": {}}}}  # no fast-preset row
    report.write_results(path, [dev_row], {"date": "2026-12-06", "machine": "test", "quick": False})
    text = path.read_text()
    for kept in ("| fresh table |", "| held-out table |", "#### a part of it", "| more |", "| dev table |",
                 "## The next section", "untouched"):
        assert text.count(kept) == 1, kept
    assert "an earlier run." in text  # no half rewritten: the section as it was
    assert text.index("| fresh table |") < text.index("| held-out table |") < text.index("| dev table |")
    assert "nothing rewritten" in capsys.readouterr().out


def test_a_half_rewritten_beside_kept_ones_is_said_in_the_header(report, tmp_path, monkeypatch):
    path = _results(report, tmp_path)
    monkeypatch.setattr(report, "half_tables", lambda half, heading, part, key: [heading, "", "| new dev |", ""])
    dev_row = {"dataset": "brain_wm", "regime": "slice", "half": "dev",
               "methods": {report.default_key(): {"fit_s": 60.0, "score_s": 6.0, "levels": {}}}}
    report.write_results(path, [dev_row], {"date": "2026-12-06", "machine": "test", "quick": False})
    text = path.read_text()
    assert "| new dev |" in text and "| dev table |" not in text and "an earlier run." not in text
    assert "| fresh table |" in text and "| held-out table |" in text and "#### a part of it" in text
    assert "The tables of the Fresh held-out half, Held-out half are kept" in text
    assert text.count("## The next section") == 1


def test_a_section_without_a_saved_half_writes_none_for_it(report, tmp_path):
    path = tmp_path / "RESULTS.md"
    report.write_results(path, [], {"date": "2026-12-06", "machine": "test", "quick": False})
    text = path.read_text()
    assert report.TITLE in text and "### " not in text
