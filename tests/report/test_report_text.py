"""What a reviewer reads on the report: the header's words, the captions, the histogram's axis, the commands."""

from __future__ import annotations

import html
import re
import shlex
from dataclasses import replace

import numpy as np

from labelaudit.report import ReportConfig, render_report
from labelaudit.report.histogram import count_ticks, histogram_svg
from labelaudit.types import Threshold, ThresholdSource


def _row(page: str, name: str) -> str:
    """The text of one row of the header's facts table."""
    cell = re.search(rf'<th scope="row">{name}</th><td>(.*?)</td></tr>', page).group(1)
    return html.unescape(re.sub(r"<[^>]+>", "", cell))


def _section(page: str, case_id: str) -> str:
    section = page[page.index(f'data-case="{case_id}"'):]
    return section[:section.index("</section>")]


# ----------------------------------------------------------------------------- the header

def test_the_header_says_in_words_which_models_scored_the_cases(make_audit):
    audit = make_audit(["c1", "c2", "c3"])  # out-of-fold, 2 fold models
    page = render_report(audit)
    assert _row(page, "scored") == ("all 3 cases by the fold model that held the case out of its training "
                                    "(out-of-fold)")
    for case in audit.cases:
        case.routing = "new-data"
    page = render_report(audit)
    assert _row(page, "scored") == "all 3 cases by the ensemble of the fold models (cases not in the training set)"
    assert "new-data" not in page
    audit.cases[0].routing = "in-sample"
    assert _row(render_report(audit), "scored") == (
        "1 case by the ensemble of the fold models (cases it was trained on: in-sample); "
        "2 cases by the ensemble of the fold models (cases not in the training set)")


def test_the_model_row_and_the_run_folder_row_are_apart(make_audit):
    page = render_report(make_audit(["c1"]))
    assert _row(page, "model") == "pint, trained 2025-01-02 03:04 UTC on Dataset009_Hand (1 case) — this dataset; 2 fold models"
    assert _row(page, "run folder") == "/runs/r"


def test_given_probabilities_are_named_and_escaped(make_audit):
    audit = make_audit(["c1"])
    audit.run = replace(audit.run, source="npz /p/<b>probs</b> (1 cases)")
    page = render_report(audit)
    assert "<b>probs</b>" not in page and _row(page, "probabilities") == "npz /p/<b>probs</b> (1 cases)"
    assert "run folder" not in page


def test_the_thresholds_row_names_the_slice_and_both_case_rules(make_audit):
    audit = make_audit(["c1"])
    audit.threshold = Threshold(0.226, 0.79, ThresholdSource.RUN, gate=0.754)
    assert _row(render_report(audit), "thresholds") == (
        "slice 0.226 (flags a slice for review); case: flagged at score 0.790 or worst slice 0.754 (run.json)")
    audit.threshold = Threshold(0.3, 0.4, ThresholdSource.OVERRIDE)  # no gate: a case's worst slice at `slice`
    assert "or worst slice 0.300 (override)" in _row(render_report(audit), "thresholds")


def test_the_intro_says_all_cases_until_the_thumbnail_cap_is_reached(make_audit):
    assert "3 worst slices of all 4 cases," in render_report(make_audit(["a", "b", "c", "d"]))
    assert "3 worst slices of the one case," in render_report(make_audit(["a"]))
    assert "3 worst slices of the 2 worst cases," in render_report(make_audit(["a", "b", "c"]),
                                                                   ReportConfig(top_cases=2))


def test_the_overlay_key_stays_with_its_words(make_audit):
    page = render_report(make_audit(["a"]))
    legend = page[page.index('<p class="keys-line">'):]
    legend = legend[:legend.index("</p>")]
    # the key `o` is never alone on a line: it sits in one unbreakable span with what it does
    assert '<span class="key">the <i>noise map</i> menu or the key <kbd>o</kbd></span> shows it' in legend
    assert "below one half" in legend


# ----------------------------------------------------------------------------- the thumbnails' captions

def test_captions_say_flagged_and_no_share_in_doubt(make_audit):
    page = render_report(make_audit(["c1", "c2"]))
    assert "in doubt" not in page and "data-doubt" not in page
    tiles = re.findall(r'<figure class="tile( flagged)?"[^>]*>.*?</figure>', page, flags=re.S)
    figures = re.findall(r'<figure class="tile[^"]*".*?</figure>', page, flags=re.S)
    assert len(figures) == len(tiles) == 6
    for figure in figures:
        flagged = figure.startswith('<figure class="tile flagged"')
        assert ('<span class="state">flagged</span>' in figure) == flagged


# ----------------------------------------------------------------------------- the histogram

def test_count_ticks_on_the_log_axis():
    assert count_ticks(134, 116) == [134, 50, 20, 10, 5, 2]
    assert count_ticks(3, 116) == [3, 2, 1]
    assert count_ticks(0, 116) == []


def test_one_flagged_slice_beside_a_tall_bar_is_still_a_bar_one_sees():
    scores = np.concatenate([np.full(134, 0.05), [0.35]])
    svg = histogram_svg(scores, threshold=0.2, bins=20)
    heights = {colour: float(h) for h, colour in re.findall(r'height="([0-9.]+)" fill="(#[0-9A-F]+)"', svg)}
    assert heights["#D55E00"] >= 0.1 * heights["#7A8FA6"] >= 10  # linear: 1/134 of it, under a pixel
    labels = re.findall(r'<text class="count-tick"[^>]*>(\d+)</text>', svg)
    assert labels == ["134", "50", "20", "10", "5", "2"] and ">0</text>" in svg
    assert "slices (log scale)" in svg and "1 slice flagged" in svg and "threshold 0.200" in svg


def test_a_bar_never_mixes_flagged_and_unflagged_slices():
    # 0.21 bins of width 0.025: the threshold 0.2 splits the bin [0.175, 0.2) | [0.2, 0.225)
    svg = histogram_svg(np.array([0.19, 0.205, 0.5]), threshold=0.2, bins=21)
    bars = re.findall(r'fill="(#[0-9A-F]+)"><title>([0-9.]+)–([0-9.]+): (\d+)', svg)
    assert all((colour == "#D55E00") == (float(lo) >= 0.2) for colour, lo, _, _ in bars)
    assert sum(int(n) for *_, n in bars) == 3 and svg.count("#D55E00") == 2


# ----------------------------------------------------------------------------- the viewer commands

def test_commands_wrap_only_at_spaces_and_after_folder_names(make_audit):
    audit = make_audit(["c1"])
    audit.dataset = replace(audit.dataset, path="/data/Dataset009_Hand")
    section = _section(render_report(audit), "c1")
    boxes = re.findall(r'<div class="cmd-box">.*?<button type="button" class="copy"[^>]*>copy</button>'
                       r'<pre class="cmd">(.*?)</pre></div>', section)
    assert len(boxes) == 2
    for box in boxes:
        # a break opportunity only after a slash that ends a name, never inside one (the CSS breaks nothing else)
        assert all(re.search(r"[\w.~-]/$", piece) for piece in box.split("<wbr>")[:-1])
        assert "<wbr>" in box and "/<wbr>" in box
    itksnap = html.unescape(boxes[0].replace("<wbr>", ""))
    assert shlex.split(itksnap)[:5] == ["itksnap", "-g", "/data/Dataset009_Hand/imagesTr/c1_0000.nii.gz", "-s",
                                        "/data/Dataset009_Hand/labelsTr/c1.nii.gz"]
    assert html.unescape(boxes[1].replace("<wbr>", "")).startswith(
        "Slicer --python-code 'slicer.util.loadVolume(\"/data/Dataset009_Hand/imagesTr/c1_0000.nii.gz\")")


def test_command_paths_with_markup_stay_escaped(make_audit, evil):
    section = _section(render_report(make_audit([evil])), html.escape(evil, quote=True))
    boxes = re.findall(r'<pre class="cmd">(.*?)</pre>', section)
    assert evil not in section and len(boxes) == 2
    # no break is put inside an entity or after one: the command reads back exactly
    assert all(evil in html.unescape(box.replace("<wbr>", "")) for box in boxes)
