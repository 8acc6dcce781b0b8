"""The HTML report: content and order from a real (tiny) audit, escaping, thumbnails, orientation, PNG encoding."""

from __future__ import annotations

from dataclasses import replace

import csv
import json
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from labelaudit import io
from labelaudit.diagnosis import ErrorKind
from labelaudit.report import ReportConfig, ViewCollector, render_report
from labelaudit.report.page import contour_path, histogram_svg
from labelaudit.report.png import encode_png
from labelaudit.report.views import Orientation, crop_box, make_slice_view, orientation_of
from labelaudit.config import ScoreConfig
from labelaudit.score.decide import NO_CASE_THRESHOLD
from labelaudit.score.pipeline import score_dataset
from labelaudit.synth import SynthConfig, write_synth_dataset
from labelaudit.types import Case, CaseRef, Geometry, Volume


# ----------------------------------------------------------------------------- a real audit, end to end

@pytest.fixture(scope="module")
def planted(tmp_path_factory, make_run):
    """3 cases, case_001 with the structure erased from slice 3: scored, written, report rendered."""
    base = tmp_path_factory.mktemp("report")
    root = write_synth_dataset(base / "Dataset007_Report", SynthConfig(cases=3, size=(40, 36, 6), seed=3))
    path = root / "labelsTr" / "case_001.nii.gz"
    label = io.read_volume(path)
    label.array[3] = 0  # numpy axis 0 is the slicing axis here
    io.write_volume(label, path)
    run_dir = make_run(base / "run", root)
    report = base / "elsewhere" / "audit.html"
    audit = score_dataset(ScoreConfig(run_dir=run_dir, out_dir=base / "audit", report=report, device="cpu"))
    return audit, base / "audit", report.read_text(encoding="utf-8")


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_lists_cases_worst_first_with_the_planted_slice_on_top(planted):
    audit, _, page = planted
    order = re.findall(r'<section class="case[^"]*"[^>]*data-case="([^"]+)"', page)
    assert order == [c.case_id for c in audit.cases] and order[0] == "case_001"
    first = page[page.index('data-case="case_001"'):]
    first = first[:first.index("</section>")]
    slices = [int(v) for v in re.findall(r'class="tile[^"]*"[^>]*data-slice="(\d+)"', first)]
    assert slices[0] == 3 and len(slices) == ReportConfig().top_slices
    assert 'data-kind="missing_structure"' in first.split('data-slice="3"')[1][:200]
    # a flagged slice whose label misses the structure reads "flagged", not "0% in doubt"
    planted_tile = first.split('data-slice="3"')[1]
    planted_tile = planted_tile[:planted_tile.index("</figure>")]
    assert '<span class="state">flagged</span>' in planted_tile and "in doubt" not in page
    # tile scores within a case descend
    scores = [float(v) for v in re.findall(r'class="tile[^"]*"[^>]*data-score="([0-9.]+)"', first)]
    assert scores == sorted(scores, reverse=True)
    # thumbnails: image + heat overlay per shown slice, and the two contours
    assert first.count('src="data:image/png;base64,') == 2 * len(slices)
    assert re.search(r'<path class="lab" d="M[0-9]', first) and re.search(r'<path class="pred" d="M[0-9]', first)


def test_report_header_facts_counts_and_histogram(planted):
    audit, out, page = planted
    assert "<title>labelaudit: Dataset007_Report</title>" in page
    assert "<b>pint</b>" in page and "trained" in page
    assert f"slice <b>{audit.threshold.slice:.3f}</b> (flags a slice for review)" in page
    assert audit.threshold.case == NO_CASE_THRESHOLD  # the default threshold: the worst slice decides
    assert f"case: flagged when its worst slice reaches <b>{audit.threshold.worst_slice:.3f}</b>" in page
    assert "flagged at score" not in page
    for number, name in ((3, "cases"), (18, "slices"), (len(audit.flagged_cases), "flagged cases"),
                         (len(audit.flagged_slices), "flagged slices")):
        assert f"<b>{number}</b><span>{name}</span>" in page
    assert '<svg class="histogram"' in page and 'class="threshold"' in page
    assert "worst slices of all 3 cases" in page  # N stated, and M not reached: every case has thumbnails


def test_report_names_the_files_and_slices_to_open(planted):
    audit, out, page = planted
    section = page[page.index('data-case="case_001"'):]
    section = section[:section.index("</section>")]
    assert "imagesTr/case_001_0000.nii.gz" in section and "labelsTr/case_001.nii.gz" in section
    assert "maps/case_001_noise.nii.gz" in section and "maps/case_001_pred.nii.gz" in section
    assert re.search(r"axial slices, voxel index k \(0-based, of 6\): 3, ", section)
    commands = section.replace("<wbr>", "")  # break opportunities after folder names, no text of their own
    assert f"itksnap -g {audit.dataset.path}/imagesTr/case_001_0000.nii.gz" in commands
    assert (f"-o {out.resolve()}/maps/case_001_noise.nii.gz" in commands
            or f"-o {out}/maps/case_001_noise.nii.gz" in commands)


def test_report_is_self_contained(planted):
    _, _, page = planted
    # every src is inline, nothing is linked or imported, and the policy forbids fetching
    assert re.findall(r'\ssrc="([^"]*)"', page) and all(s.startswith("data:image/png;base64,")
                                                        for s in re.findall(r'\ssrc="([^"]*)"', page))
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "http://" not in page and "https://" not in page
    assert "default-src 'none'" in page
    assert page.count("<script>") == 1 and "fetch(" not in page and "XMLHttpRequest" not in page


def test_csv_columns_carry_the_error_kind(planted):
    audit, out, _ = planted
    kinds = {k.value for k in ErrorKind}
    slices = _read_csv(out / "slices.csv")
    assert slices[0]["error_kind"] == "missing_structure" and (slices[0]["case_id"], slices[0]["slice_index"]) == (
        "case_001", "3")
    assert {row["error_kind"] for row in slices} <= kinds
    cases = _read_csv(out / "cases.csv")
    assert cases[0]["case_id"] == "case_001" and cases[0]["error_kind"] == "missing_structure"


# ----------------------------------------------------------------------------- hand-made audits

def test_every_string_from_the_data_is_escaped(make_audit, tiny_view, evil):
    audit = make_audit([evil, 'a"b', "ok"], name='"><img src=x onerror=alert(2)>')
    audit.dataset = replace(audit.dataset, path="/data/<b>bold</b>")
    audit.run = replace(audit.run, method="<i>pint</i>")
    audit.views[evil] = tiny_view(evil, 1, images=("/data/<script>x</script>_0000.nii.gz",), label="/l/'<u>.nii.gz")
    audit.skipped = {"<em>bad</em>": ["case <em>bad</em>: unreadable <file>"]}
    page = render_report(audit)
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script") == 1  # only the report's own script
    assert "<img src=x" not in page and "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    for raw in ("<b>bold</b>", "<i>pint</i>", "<u>", "<em>bad</em>", "<file>"):
        assert raw not in page
    assert 'data-case="a&quot;b"' in page


def test_report_without_thumbnails_still_lists_every_case(make_audit):
    audit = make_audit(["c1", "c2"], with_views=False)
    page = render_report(audit)
    assert re.findall(r'data-case="([^"]+)"', page) == ["c1", "c2"]
    assert "data:image/png" not in page and "no thumbnail" in page


def test_kind_filter_offers_the_kinds_present(make_audit):
    page = render_report(make_audit(["c1", "c2"]))
    select = page[page.index('id="f-kind"'):]
    select = select[:select.index("</select>")]
    assert re.findall(r'<option value="(\w*)">', select) == ["", "none", "over_segmentation", "missing_structure"]


def test_page_size_stays_small_per_thumbnail(make_audit):
    audit = make_audit([f"case_{i:03d}" for i in range(20)])
    page = render_report(audit)
    assert len(page) < 20 * 12_000 + 60_000  # a 24 px thumbnail costs a few kB


# ----------------------------------------------------------------------------- pieces

def _case(array: np.ndarray, geometry: Geometry) -> Case:
    return Case("c", (Volume(array.astype(np.float32), geometry),), Volume((array > 0).astype(np.uint8), geometry))


def test_collector_keeps_thumbnails_for_the_worst_cases_only():
    geometry = Geometry((8, 8, 3), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    collector = ViewCollector(ReportConfig(top_cases=2, top_slices=2))
    array = np.zeros((3, 8, 8))
    array[:, 2:6, 2:6] = 1
    scores = {"a": 0.2, "b": 0.9, "c": 0.5, "d": 0.1, "e": 0.5}
    for case_id, score in scores.items():
        ref = CaseRef(case_id, (Path(f"{case_id}_0000.nii.gz"),), Path(f"{case_id}.nii.gz"))
        noise = np.zeros((3, 8, 8), dtype=np.float32)
        pred = (array > 0).astype(np.uint8)
        collector.add(ref, _case(array, geometry), noise, pred, np.array([score, score / 2, 0.0]),
                      np.array([True, True, False]), score)
    with_thumbs = {c for c, v in collector.views.items() if v.slices}
    assert with_thumbs == {"b", "c"}  # c before e on a tie: the audit's order is score, then case id
    assert set(collector.views) == set(scores)  # where-to-look for every case
    assert sorted(collector.views["b"].slices) == [0, 1]


def test_the_overlay_shows_where_the_model_disagrees_whatever_the_slice_score():
    # the noise map is (1 - p̄_y) x the slice's score: on a slice scored 0.1 a certain disagreement is 0.1 there,
    # which the overlay would draw as clear; the thumbnail shows 1 - p̄_y itself
    geometry = Geometry((8, 8, 2), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    collector = ViewCollector(ReportConfig(top_cases=1, top_slices=2))
    array = np.zeros((2, 8, 8))
    array[:, 2:6, 2:6] = 1
    disagreement = np.zeros((2, 8, 8), dtype=np.float32)
    disagreement[:, 3, 3] = 0.9
    scores = np.array([0.1, 0.6])
    noise = disagreement * scores[:, None, None].astype(np.float32)
    ref = CaseRef("c", (Path("c_0000.nii.gz"),), Path("c.nii.gz"))
    view = collector.add(ref, _case(array, geometry), noise, (array > 0).astype(np.uint8), scores,
                         np.array([True, True]), 0.35)
    assert [int(view.slices[i].noise.max()) for i in (0, 1)] == [round(0.9 * 255)] * 2


def test_orientation_follows_the_direction_cosines():
    identity = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    axial = orientation_of(Geometry((10, 12, 5), (0.8, 0.9, 3.0), (0, 0, 0), identity))
    assert (axial.plane, axial.axis_name, axial.num_slices) == ("axial", "k", 5)
    assert not (axial.transpose or axial.flip_rows or axial.flip_cols) and axial.spacing == (0.9, 0.8)
    # NIfTI's usual RAS storage: x and y point to patient right and anterior -> both flipped for display
    ras = orientation_of(Geometry((10, 12, 5), (0.8, 0.9, 3.0), (0, 0, 0), (-1, 0, 0, 0, -1, 0, 0, 0, 1)))
    assert ras.flip_rows and ras.flip_cols and not ras.transpose
    # slices along y (coronal): rows are z and must run downward toward inferior, so superior is up
    coronal = orientation_of(Geometry((10, 6, 12), (0.8, 3.0, 0.9), (0, 0, 0), identity))
    assert coronal.plane == "coronal" and coronal.axis_name == "j" and coronal.flip_rows and not coronal.transpose
    two_d = orientation_of(Geometry((10, 12), (0.5, 0.6), (0, 0), (1, 0, 0, 1)))
    assert two_d.plane == "2D" and two_d.itk_axis == -1
    picture = np.arange(6).reshape(2, 3)
    assert np.array_equal(Orientation("axial", 2, 1, True, True, False).apply(picture), picture.T[::-1])


def test_crop_box_centres_on_the_structure_with_a_margin():
    mask = np.zeros((200, 300), dtype=bool)
    mask[100:110, 200:220] = True
    r0, r1, c0, c1 = crop_box(mask)
    assert r1 - r0 == c1 - c0 == 48  # the minimum crop
    assert r0 <= 100 and r1 >= 110 and c0 <= 200 and c1 >= 220
    assert crop_box(np.zeros((30, 40), dtype=bool)) == (0, 30, 0, 40)


def test_large_slices_are_downsampled_to_the_thumbnail_size():
    image = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
    label = np.zeros((512, 512), dtype=np.uint8)
    label[50:450, 60:470] = 1
    view = make_slice_view(7, image, label, label, np.zeros_like(image), Orientation("axial", 2, 9))
    assert max(view.image.shape) <= 160 and view.image.dtype == np.uint8 and view.label.shape == view.image.shape


def _decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, _, colour, *_ = header
    return width, height, colour, zlib.decompress(idat)


@pytest.mark.parametrize("channels", [1, 4])
def test_png_round_trip(channels):
    rng = np.random.default_rng(1)
    shape = (5, 7) if channels == 1 else (5, 7, 4)
    pixels = np.cumsum(rng.integers(0, 9, size=shape), axis=0).astype(np.uint8)
    width, height, colour, raw = _decode_png(encode_png(pixels))
    assert (width, height, colour) == (7, 5, 0 if channels == 1 else 6)
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(5, 1 + 7 * channels)
    decoded = rows[:, 1:].copy()
    for r in range(5):  # undo the filter: 0 none, 2 up
        assert rows[r, 0] in (0, 2)
        if rows[r, 0] == 2 and r > 0:
            decoded[r] = decoded[r] + decoded[r - 1]
    assert np.array_equal(decoded, pixels.reshape(5, -1))
    with pytest.raises(ValueError, match="uint8"):
        encode_png(pixels.astype(np.float32))


def test_contour_follows_the_pixel_edges():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[2:6, 3:8] = 1  # rows 2..5, columns 3..7: the box [3, 8] x [2, 6]
    assert sorted(re.findall(r"M\d+ \d+[HV]\d+", contour_path(labels))) == [
        "M3 2H8", "M3 2V6", "M3 6H8", "M8 2V6"]
    labels[7, 0] = 2  # a second class: its own one-pixel square
    assert {"M0 7H1", "M0 8H1", "M0 7V8", "M1 7V8"} <= set(re.findall(r"M\d+ \d+[HV]\d+", contour_path(labels)))
    assert contour_path(np.zeros((4, 4), dtype=np.uint8)) == ""


def test_histogram_marks_the_threshold_and_colours_flagged_bars():
    svg = histogram_svg(np.array([0.01, 0.02, 0.02, 0.5]), threshold=0.3, bins=10)
    assert "threshold 0.300" in svg and svg.count("<rect") == 2
    assert svg.count("#D55E00") == 1  # the one bar at or past the threshold


# ----------------------------------------------------------------------------- per class, and what to fix

def _two_class_audit(make_audit, tmp_path):
    """A hand-made audit whose dataset.json names two classes with markup in the names, and one case with a
    region judged wrong (a wrong class) and its fixed map."""
    from labelaudit.report.views import CaseView, Orientation, RegionNote

    root = tmp_path / "Dataset012_Names"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({
        "labels": {"background": 0, "<b>liver</b>": 1, "tumour & cyst": 2}, "channel_names": {"0": "CT"},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    audit = make_audit(["c1", "c2"])
    audit.dataset = replace(audit.dataset, path=str(root))
    audit.class_names = {v: k for k, v in json.loads((root / "dataset.json").read_text())["labels"].items()}
    y, x = np.mgrid[:24, :24]
    label = np.where((y - 12) ** 2 + (x - 12) ** 2 <= 64, 1, 0).astype(np.uint8)
    label[10:14, 10:14] = 2
    pred = label.copy()
    pred[pred == 2] = 1
    view = CaseView("c1", (str(root / "imagesTr" / "c1_0000.nii.gz"),), str(root / "labelsTr" / "c1.nii.gz"),
                    Orientation("axial", 2, 4, spacing=(0.9, 0.8)), fixed_map="maps/c1_fixed.nii.gz",
                    regions=(RegionNote(1, "wrong_class", 2, 2, 1, 16, 0.8),
                             RegionNote(2, "wrong_class", 2, 2, 1, 12, 0.7),
                             RegionNote(1, "over_segmentation", 1, 1, 0, 5, 0.4)))
    view.slices[1] = make_slice_view(1, (100 + 50 * label).astype(np.float32), label, pred,
                                     (label != pred).astype(np.float32), view.orientation)
    audit.views["c1"] = view
    return audit


def test_outlines_take_a_colour_per_class_with_a_legend_of_the_names(make_audit, tmp_path):
    page = render_report(_two_class_audit(make_audit, tmp_path))
    legend = page[page.index('<p class="classes">'):]
    legend = legend[:legend.index("</p>")]
    # Okabe-Ito, in label-value order; the names from dataset.json, escaped
    assert re.findall(r'class="class-key" style="--c:(#[0-9A-F]{6})"', legend) == ["#E69F00", "#56B4E9"]
    assert "&lt;b&gt;liver&lt;/b&gt; <small>(1)</small>" in legend and "tumour &amp; cyst <small>(2)</small>" in legend
    assert "<b>liver</b>" not in page
    section = page[page.index('data-case="c1"'):]
    section = section[:section.index("</section>")]
    assert re.search(r'<path class="lab" d="M[^"]+" data-class="1" style="--c:#E69F00"/>', section)
    assert re.search(r'<path class="lab" d="M[^"]+" data-class="2" style="--c:#56B4E9"/>', section)
    assert re.search(r'<path class="pred" d="M[^"]+" data-class="1" style="--c:#E69F00"/>', section)
    assert 'class="pred" d="M' in section and 'data-class="2" style="--c:#56B4E9"' in section


def test_each_case_says_what_to_fix_and_how_to_open_the_fixed_label(make_audit, tmp_path):
    page = render_report(_two_class_audit(make_audit, tmp_path))
    section = page[page.index('data-case="c1"'):]
    section = section[:section.index("</section>")]
    line = re.search(r'<p class="fix">(.*?)</p>', section).group(1)
    text = re.sub(r"<[^>]+>", "", line)
    assert text.startswith("What to fix: wrong class tumour &amp; cyst where the model sees &lt;b&gt;liver&lt;/b&gt;, "
                           "slices 1–2 (2 regions, 28 px); also over-segmentation of &lt;b&gt;liver&lt;/b&gt; "
                           "(slice 1)")
    assert "fixed label: maps/c1_fixed.nii.gz" in text
    assert "<dt>fixed label</dt><dd><code" in section and "/a/maps/c1_fixed.nii.gz" in section
    commands = section.replace("<wbr>", "")
    assert "-o /a/maps/c1_noise.nii.gz /a/maps/c1_fixed.nii.gz" in commands  # ITK-SNAP: image, label, fix
    assert ("Slicer --python-code &#x27;slicer.util.loadVolume(&quot;" in commands
            and "slicer.util.loadLabelVolume(&quot;/a/maps/c1_fixed.nii.gz&quot;)" in commands)
    # the noise overlay is on by default on a flagged case's worst slice
    assert '<div class="view heat-default"' in section
    other = page[page.index('data-case="c2"'):]  # flagged, but no region the model is sure enough of
    assert '<p class="fix none">What to fix: no region' in other[:other.index("</section>")]


def test_the_noise_overlay_is_clear_below_even_odds_and_never_opaque():
    # drawn only where the model's probability of the label's class is below one half (1 - p̄_y > 0.5), at
    # 25-50 % opacity, so the image and the outlines stay visible beneath it
    from labelaudit.report.picture import heat_rgba

    rgba = heat_rgba(np.array([[0, 60, 127, 128, 200, 255]], dtype=np.uint8))
    alpha = rgba[0, :, 3].astype(int)
    assert list(alpha[:3]) == [0, 0, 0]
    assert round(0.25 * 255) - 1 <= alpha[3] < alpha[4] < alpha[5] == round(0.5 * 255)
    assert (rgba[0, :, :3] == (204, 121, 167)).all()
