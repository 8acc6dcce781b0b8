"""bench/RESULTS.md's section for the audit-quality suite, from the rows bench/suite.py saves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pint_audit import write_section
from suite_data import Half
from suite_signals import miss_ratio

from labelaudit.config import DEFAULT_METHOD, DEFAULT_VARIANT, Method

TITLE = "## Audit-quality suite: development and held-out halves (`python bench/suite.py`)"
LEVELS = ("slice", "pixel", "case")
FRESH_HEADING = ("### Fresh held-out half (generated and fit on 2026-12-02, never used to choose anything; only "
                 "fit's default was run there)")
HELD_OUT_HEADING = "### Held-out half (never used to choose anything)"
DEV_HEADING = "### Development half (where defaults were chosen)"


def default_key() -> str:
    return DEFAULT_VARIANT.value if DEFAULT_METHOD is Method.PINT else DEFAULT_METHOD.value


def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return "∞" if math.isinf(value) else f"{value:.{digits}f}"


def _ap(levels: dict, level: str) -> float | None:
    return levels.get(level, {}).get("ap")


def audit_table(rows: list[dict], key: str) -> list[str]:
    lines = ["| dataset | regime | level | labelaudit AP (AUROC) | cleanlab AP (AUROC) | 1 − Dice AP | miss ratio | "
             "labelaudit on cleanlab's softmax: AP, miss ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ours = row["methods"].get(key, {}).get("levels", {})
        theirs = row.get("baselines", {}).get("cleanlab softmin", {})
        dice = row.get("baselines", {}).get("plain 1−Dice", {})
        given = row.get("baselines", {}).get("labelaudit on the same probabilities", {})
        for level in LEVELS:
            if level not in ours or math.isnan(ours[level]["ap"]):  # undefined: every case corrupted
                continue
            o, t = ours[level], theirs.get(level, {})
            ratio = miss_ratio(o["ap"], t.get("ap", float("nan")))
            lines.append(f"| {row['dataset']} | {row['regime']} | {level} | {_f(o['ap'])} ({_f(o['auroc'])}) | "
                         f"{_f(t.get('ap'))} ({_f(t.get('auroc'))}) | {_f(dice.get(level, {}).get('ap'))} | "
                         f"{'**' if ratio < 1 else ''}{_f(ratio, 2)}{'**' if ratio < 1 else ''} | "
                         f"{_f(given.get(level, {}).get('ap'))}, "
                         f"{_f(miss_ratio(given.get(level, {}).get('ap', float('nan')), t.get('ap', float('nan'))), 2)} |")
    return lines


def methods_table(rows: list[dict]) -> list[str]:
    lines = ["| dataset | regime | method | slice AP | pixel AP | case AP | Dice, new cases | clean new cases "
             "flagged | fit s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for method, entry in row["methods"].items():
            flagged, total = entry["false_alarms"]
            lines.append(f"| {row['dataset']} | {row['regime']} | {method} | "
                         + " | ".join(_f(_ap(entry["levels"], lv)) for lv in LEVELS)
                         + f" | {_f(entry['dice_new'])} | {flagged}/{total} | {entry['fit_s']:.0f} |")
    return lines


def gate_line(rows: list[dict], key: str) -> str:
    alarms = [row["methods"][key]["false_alarms"] for row in rows if key in row["methods"]]
    found = [row["methods"][key]["detections"] for row in rows if "detections" in row["methods"].get(key, {})]
    fa, fa_n = sum(a for a, _ in alarms), sum(n for _, n in alarms)
    de, de_n = sum(a for a, _ in found), sum(n for _, n in found)
    return (f"Gate (`{key}`, as scored: the thresholds and flag rule of the day each cell ran; bench/suite_gate.py "
            f"recomputes them with today's): **{fa} of {fa_n} clean new cases "
            f"flagged** ({fa / max(fa_n, 1):.1%}; target at most 5 %), **{de} of {de_n} corrupted new cases "
            f"flagged** ({de / max(de_n, 1):.1%}; target at least 50 %).")


def stronger_table(rows: list[dict], key: str) -> list[str]:
    """fit's default (the standard preset, `stronger`) against the fast preset's `key` run and cleanlab on the
    standard preset's own out-of-fold softmax."""
    part = [r for r in rows if "stronger" in r["methods"] and "cleanlab softmin on stronger probabilities"
            in r.get("baselines", {})]
    if not part:
        return []
    with_fast = any(key in r["methods"] for r in part)  # the fresh half ran fit's default alone
    lines = ["| dataset | regime | level | " + ("labelaudit, fast preset | " if with_fast else "")
             + "**labelaudit, standard preset (default)** | cleanlab on the standard preset's softmax | miss ratio | "
             + ("Dice new cases: fast / standard |" if with_fast else "Dice new cases |"),
             "| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if with_fast else "")]
    for row in part:
        fast, standard = row["methods"].get(key, {}), row["methods"]["stronger"]
        theirs = row["baselines"]["cleanlab softmin on stronger probabilities"]
        for level in LEVELS:
            ours = _ap(standard["levels"], level)
            if ours is None or math.isnan(ours):
                continue
            cl = _ap(theirs, level)
            ratio = miss_ratio(ours, cl if cl is not None else float("nan"))
            shown = f"**{ratio:.2f}**" if ratio < 1 else _f(ratio, 2)
            fast_ap = f"{_f(_ap(fast.get('levels', {}), level))} | " if with_fast else ""
            fast_dice = f"{_f(fast.get('dice_new'))} / " if with_fast else ""
            lines.append(f"| {row['dataset']} | {row['regime']} | {level} | {fast_ap}{_f(ours)} | {_f(cl)} | {shown} | "
                         f"{fast_dice}{_f(standard.get('dice_new'))} |")
    return lines


def variants_table(rows: list[dict]) -> list[str]:
    dev = [r for r in rows if "variants" in r]
    if not dev:
        return []
    names = list(dev[0]["variants"])
    lines = ["| variant (pixel / A₀ factor / case rule) | " + " | ".join(f"{r['dataset']}/{r['regime']} slice·pixel·case"
                                                                        for r in dev) + " | mean slice | mean pixel | mean case |",
             "| --- | " + " | ".join("---" for _ in dev) + " | --- | --- | --- |"]
    for source, name in [("variants", n) for n in names] + [("baselines", "cleanlab softmin")]:
        cells, means = [], {lv: [] for lv in LEVELS}
        for r in dev:
            levels = r[source][name]
            cells.append(" · ".join(_f(_ap(levels, lv)) for lv in LEVELS))
            for lv in LEVELS:
                if _ap(levels, lv) is not None and not math.isnan(_ap(levels, lv)):
                    means[lv].append(_ap(levels, lv))
        lines.append(f"| {name} | " + " | ".join(cells) + " | "
                     + " | ".join(_f(float(np.mean(means[lv])) if means[lv] else None) for lv in LEVELS) + " |")
    return lines


def saved_subsection(section: str, heading: str) -> list[str]:
    """The lines of `heading`'s subsection of `section` (the suite's section as RESULTS.md holds it now, from its
    title on), up to the next heading of its level or above; [] where it has none."""
    if heading not in section:
        return []
    body = section.partition(heading)[2].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return [heading, *body.rstrip("\n").split("\n")[1:], ""]


def complete(rows: list[dict], method: str) -> bool:
    """Whether every row of a half has `method`'s figures: a half refit for one method only (fit's default)
    lacks the others' rows, and its table is then kept as RESULTS.md has it rather than rewritten without them."""
    return bool(rows) and all(method in r["methods"] for r in rows)


def write_results(path: Path, rows: list[dict], meta: dict) -> None:
    """Rewrite the suite's section from `rows`; a half whose rows are gone or incomplete (`complete`) keeps
    its subsection as RESULTS.md has it, and the header says so; with no half to rewrite nothing is written."""
    key = default_key()
    rows = [r for r in rows if Half(r["half"]).reported]
    text = path.read_text() if path.exists() else ""
    saved_section = text.partition(TITLE)[2] if TITLE in text else ""
    halves: list[list[str]] = []
    kept: list[str] = []
    rewritten: list[dict] = []
    for half, heading, method in ((Half.FRESH, FRESH_HEADING, "stronger"), (Half.HELD_OUT, HELD_OUT_HEADING, key),
                                  (Half.DEV, DEV_HEADING, key)):
        part = [r for r in rows if r["half"] == half.value]
        if complete(part, method):
            halves.append(half_tables(half, heading, part, key))
            rewritten += part
        elif saved := saved_subsection(saved_section, heading):
            name = heading.removeprefix("### ")
            print(f"kept RESULTS.md's {name!r}: its rows are gone or incomplete")
            halves.append(saved)
            kept.append(name.split(" (")[0])
    if not rewritten and saved_section:
        print("nothing rewritten: every half's rows are gone or incomplete")
        return
    total = sum(e["fit_s"] + e["score_s"] for r in rewritten for e in r["methods"].values())
    header = (f"{meta['date']}, {meta['machine']}{' — QUICK MODE (3 epochs, 2 folds, plain only)' if meta['quick'] else ''}. "
              f"labelaudit's rows here are `{key}` at the fast preset (10 epochs, U-Net 8-16-32-64-128-8, the CPU "
              "budget every method of this table shares); fit's default, the standard preset, has its own table "
              "(the cells it was run on: `python bench/suite.py --methods stronger`). cleanlab and 1 − Dice rank "
              "the out-of-fold probabilities of the same plain run (same network, same compute). AP over every slice / every pixel (noisy ≠ clean) / every "
              "case of the training set, out-of-fold; miss ratio = (1 − AP labelaudit) / (1 − AP cleanlab), bold "
              "where labelaudit misses less. The last column scores exactly cleanlab's input (the fold models' "
              "out-of-fold softmax, written as CASE.npz) with `labelaudit score --probabilities`: one softmax per "
              f"case, no perturbations. Fit and score wall time of the runs rewritten here: {total / 60:.0f} min.")
    if kept:
        header += (f" The tables of the {', '.join(kept)} are kept from this section's earlier run (their rows are "
                   "gone or hold fit's default only).")
    out = [TITLE, "", header, ""] + [line for lines in halves for line in lines]
    write_section(path, TITLE, "\n".join(out) + "\n")


def half_tables(half: Half, heading: str, part: list[dict], key: str) -> list[str]:
    """One half's subsection: the fresh half has fit's default only (the standard preset against cleanlab on its
    own out-of-fold softmax); the others the fast preset's audit table, then the standard preset's."""
    if half is Half.FRESH:
        return [heading, "", *stronger_table(part, key), "", gate_line(part, "stronger"), "", *methods_table(part), ""]
    out = [heading, "", *audit_table(part, key), "", gate_line(part, key), "", *methods_table(part), ""]
    if stronger_table(part, key):
        out += ["fit's default, the standard preset (`stronger` in the suite: plain, 30 epochs, U-Net "
                "16-16-32-64-128-16, three folds), against the fast preset and against cleanlab's softmin on the "
                "standard preset's own out-of-fold softmax (miss ratio against it), AP:", "",
                *stronger_table(part, key), ""]
    if half is Half.DEV and variants_table(part):
        out += ["Candidate scoring variants on the plain run's out-of-fold probabilities (AP slice · pixel · "
                "case):", "", *variants_table(part), ""]
    return out
