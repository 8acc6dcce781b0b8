"""The gate's renderings for CI (pure: they return text, the CLI prints): JUnit XML, GitHub Actions workflow
commands, JSON, and the one-line descriptions they share."""

from __future__ import annotations

import socket
from xml.etree import ElementTree as ET

from ..diagnosis import ErrorKind
from ..score.calibrate import MAD_SCALE, THRESHOLD_RULE
from ..score.decide import case_threshold_text, has_case_threshold
from ..types import Threshold, ThresholdSource
from .check import CaseVerdict, CheckResult


def describe_threshold(threshold: Threshold) -> str:
    """One line that says what the threshold is and where it comes from."""
    slice_t, case_t = threshold.slice, threshold.case
    if threshold.source is ThresholdSource.OVERRIDE:
        return f"slice {slice_t:.3f} (--threshold), {case_threshold_text(case_t)}"
    calibration = threshold.calibration
    if threshold.source is ThresholdSource.RUN and calibration is not None and calibration.rule == THRESHOLD_RULE:
        stats = calibration.slice_stats
        spread = ""
        if stats.known:
            spread = f" = min(1, max(floor {calibration.floor:g}, median {stats.median:.3f} + " \
                     f"{calibration.k:g}·{MAD_SCALE:g}·MAD {stats.mad:.3f}))"
        gate = ""
        gate_k = calibration.gate_k
        if threshold.gate is not None and gate_k is not None and stats.known:
            gate = f", worst slice {threshold.gate:.3f} = max(slice, min(1, median + {gate_k:g}·{MAD_SCALE:g}·MAD))"
        elif threshold.gate is not None:
            gate = f", worst slice {threshold.gate:.3f} ({calibration.gate_rule or 'calibrated'})"
        return (f"slice {slice_t:.3f}{spread}{gate}, {case_threshold_text(case_t)}; calibrated at fit time on "
                f"{calibration.n_slices} {calibration.scored} training slices")
    return f"slice {slice_t:.3f}, {case_threshold_text(case_t)} ({threshold.source.value})"


def kind_label(kind: str | None) -> str:
    """Human words for an error-kind token ('' when unknown or none)."""
    if not kind or kind == "none":
        return ""
    try:
        return ErrorKind(kind).label
    except ValueError:
        return str(kind).replace("_", " ")


def slices_text(case: CaseVerdict) -> str:
    parts = []
    for s in case.worst_slices:
        kind = kind_label(s.error_kind)
        parts.append(f"slice {s.slice_index} ({s.noise_score:.3f}{', ' + kind if kind else ''})")
    return ", ".join(parts)


def failure_message(case: CaseVerdict, threshold: Threshold) -> str:
    """One line: why the case is flagged, its worst slice(s) and the likely kind of error."""
    against = f" (case threshold {threshold.case:.3f})" if has_case_threshold(threshold.case) else ""
    why = (f"noise score {case.noise_score:.3f}{against}; "
           f"{case.n_flagged_slices} of {case.n_slices} slices at or above {threshold.slice:.3f}")
    if threshold.worst_slice != threshold.slice:
        why += f" (a case fails from one slice at {threshold.worst_slice:.3f})"
    kind = kind_label(case.error_kind)
    return f"{why}; worst: {slices_text(case)}" + (f"; likely {kind}" if kind else "")


def check_json(result: CheckResult) -> dict:
    """The machine-readable result (`--format json`)."""
    return {
        "passed": result.passed, "exit_code": result.exit_code,
        "dataset": result.dataset.to_json(), "model": result.model.to_json(), "provider": result.provider,
        "threshold": result.threshold.to_json(), "max_flagged": result.max_flagged,
        "counts": {"cases": len(result.cases), "flagged": len(result.flagged), "scored": result.scored,
                   "cached": result.cached},
        "flagged": [c.case_id for c in result.flagged],
        "cases": [{
            "case_id": c.case_id, "label": c.label_path, "noise_score": c.noise_score, "flagged": c.flagged,
            "n_slices": c.n_slices, "n_flagged_slices": c.n_flagged_slices, "disagreement": c.disagreement,
            "error_kind": c.error_kind, "cached": c.cached,
            "worst_slices": [{"slice_index": s.slice_index, "noise_score": s.noise_score, "flagged": s.flagged,
                              "error_kind": s.error_kind} for s in c.worst_slices],
        } for c in result.cases],
        "seconds": result.seconds,
    }


def _classname(dataset_name: str) -> str:
    return "labelaudit." + "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in dataset_name)


def junit_xml(result: CheckResult) -> str:
    """JUnit XML: one <testcase> per annotation (case), a <failure> for each flagged one.

    Only the attributes of the common JUnit schema (Jenkins junit-10.xsd, read by GitHub, GitLab, Jenkins,
    Azure): the label file goes in <system-out>, not a `file` attribute.
    """
    classname = _classname(result.dataset.name)
    n, failures = len(result.cases), len(result.flagged)
    per_case = result.seconds / n if n else 0.0
    suites = ET.Element("testsuites", name="labelaudit check", tests=str(n), failures=str(failures), errors="0",
                        time=f"{result.seconds:.3f}")
    suite = ET.SubElement(suites, "testsuite", name=classname, tests=str(n), failures=str(failures), errors="0",
                          skipped="0", time=f"{result.seconds:.3f}", timestamp=result.started[:19],
                          hostname=socket.gethostname() or "localhost")
    props = ET.SubElement(suite, "properties")
    for name, value in (("model", result.model.path), ("method", result.model.method),
                        ("trained_on", result.model.trained_on), ("provider", result.provider),
                        ("threshold.slice", f"{result.threshold.slice:.6f}"),
                        ("threshold.case", f"{result.threshold.case:.6f}"),
                        ("threshold.worst_slice", f"{result.threshold.worst_slice:.6f}"),
                        ("threshold.source", result.threshold.source.value),
                        ("max_flagged", str(result.max_flagged))):
        ET.SubElement(props, "property", name=name, value=str(value))
    for case in result.cases:
        element = ET.SubElement(suite, "testcase", classname=classname, name=case.case_id, time=f"{per_case:.3f}")
        if case.flagged:
            failure = ET.SubElement(element, "failure", message=failure_message(case, result.threshold),
                                    type="labelaudit.flagged")
            failure.text = "\n".join(
                [f"label: {case.label_path}", f"noise score: {case.noise_score:.4f}",
                 f"likely kind of error: {kind_label(case.error_kind) or 'not determined'}"]
                + [f"slice {s.slice_index}: noise score {s.noise_score:.4f}"
                   + (f", {kind_label(s.error_kind)}" if kind_label(s.error_kind) else "") for s in case.worst_slices])
        out = ET.SubElement(element, "system-out")
        out.text = (f"label {case.label_path}; noise score {case.noise_score:.4f}; {case.n_flagged_slices}/"
                    f"{case.n_slices} slices flagged" + ("; cached" if case.cached else ""))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _gh_escape(text: str, property_value: bool = False) -> str:
    # GitHub's workflow-command escaping (actions/toolkit: escapeData / escapeProperty)
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return text.replace(":", "%3A").replace(",", "%2C") if property_value else text


def github_annotations(result: CheckResult) -> str:
    """GitHub Actions workflow commands: one ::error per flagged case on its label file, then a ::notice."""
    lines = []
    for case in result.flagged:
        worst = case.worst_slices[0] if case.worst_slices else None
        title = f"labelaudit: case {case.case_id}" + (
            f" slice {worst.slice_index} noise score {worst.noise_score:.3f}" if worst else "")
        level = "error" if not result.passed else "warning"
        lines.append(f"::{level} file={_gh_escape(case.label_path, True)},title={_gh_escape(title, True)}::"
                     f"{_gh_escape(failure_message(case, result.threshold))}")
    verdict = "passed" if result.passed else "failed"
    lines.append(f"::notice title=labelaudit check {verdict}::"
                 + _gh_escape(f"{len(result.cases)} annotation(s) checked, {len(result.flagged)} flagged "
                              f"(tolerance {result.max_flagged}); threshold {describe_threshold(result.threshold)}"))
    return "\n".join(lines) + "\n"
