"""The self-contained HTML audit report (`labelaudit score --report FILE.html`).

    views.py    what to show of each case, gathered while scoring streams cases (ViewCollector)
    page.py     the page: facts, counts, the class legend, the ranked list with thumbnails, what to fix
    where.py    where to look at a case: its files, the slices to visit, the ITK-SNAP and 3D Slicer commands
    picture.py  one slice's picture: image, noise overlay, outlines in a colour per class (Okabe-Ito)
    histogram.py  the histogram of slice noise scores (log count axis)
    png.py      a tiny PNG encoder for the inline thumbnails
    report.html, report.css, report.js   the template, inlined into every page

Thumbnails: the `TOP_SLICES` (N = 3) worst slices of each of the `TOP_CASES` (M = 50) worst cases; every case
is listed with its N worst slices.
"""

from __future__ import annotations

from .page import render_report, write_report
from .views import TOP_CASES, TOP_SLICES, CaseView, ReportConfig, SliceView, ViewCollector

__all__ = ["TOP_CASES", "TOP_SLICES", "CaseView", "ReportConfig", "SliceView", "ViewCollector", "render_report",
           "write_report"]
