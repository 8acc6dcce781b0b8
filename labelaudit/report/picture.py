"""One slice's picture in the report: the image, the noise overlay and the outlines, a colour per class.

Colours are Okabe-Ito's colour-blind-safe palette: the classes take orange, sky blue, bluish green, yellow,
blue and vermillion in turn (by label value); reddish purple is kept for the noise map. The given label is
drawn solid, the robust prediction dashed, both in their class's colour.
"""

from __future__ import annotations

import html

import numpy as np

from .png import png_data_uri
from .views import SliceView

HEAT_RGB = (204, 121, 167)  # Okabe-Ito reddish purple: the noise map (alpha follows the score)
#: Okabe-Ito colours for the classes, in turn (reddish purple is the noise map's, black the image's).
CLASS_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00")


def escape(value) -> str:
    """`value` as HTML text or attribute content (None as empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def class_palette(values) -> dict[int, str]:
    """A colour for each foreground label value, in value order (more classes than colours: they repeat)."""
    ordered = sorted({int(v) for v in values if int(v) != 0})
    return {value: CLASS_COLOURS[i % len(CLASS_COLOURS)] for i, value in enumerate(ordered)}


#: The overlay is drawn only where the model gives the label's class less than even odds (1 - p̄_y > HEAT_LEVEL),
#: at an opacity rising from HEAT_ALPHA[0] there to HEAT_ALPHA[1] at certainty: the region the model is sure of
#: stands out while the image and the outlines stay readable beneath it, and boundary doubt is not drawn at all.
HEAT_LEVEL = 0.5
HEAT_ALPHA = (0.25, 0.5)


def heat_rgba(noise: np.ndarray) -> np.ndarray:
    """uint8 noise (h, w) -> RGBA (h, w, 4): reddish purple above HEAT_LEVEL, opacity rising with the value."""
    score = noise.astype(np.float32) / 255.0
    ramp = np.clip((score - HEAT_LEVEL) / (1.0 - HEAT_LEVEL), 0.0, 1.0)
    alpha = np.where(score > HEAT_LEVEL, HEAT_ALPHA[0] + (HEAT_ALPHA[1] - HEAT_ALPHA[0]) * ramp, 0.0)
    rgba = np.empty((*noise.shape, 4), dtype=np.uint8)
    rgba[..., :3] = HEAT_RGB
    rgba[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return rgba


def _runs(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of True along the last axis of bool (n, m): (line index, start, stop) arrays, row-major order."""
    step = np.diff(np.pad(edges.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    line, start = np.nonzero(step == 1)
    _, stop = np.nonzero(step == -1)
    return line, start, stop


def outline(mask: np.ndarray) -> str:
    """SVG path data of the pixel-exact outline of bool mask (h, w).

    Pixel (r, c) covers [c, c+1] x [r, r+1]: the outline follows pixel edges, as the label is drawn in a
    viewer; runs of edges along a row or column are merged into one segment. Pure numpy.
    """
    padded = np.pad(mask, 1)
    rows, x0, x1 = _runs((padded[1:] != padded[:-1])[:, 1:-1])  # horizontal edges at y = row
    parts = [f"M{a} {y}H{b}" for y, a, b in zip(rows, x0, x1)]
    cols, y0, y1 = _runs(((padded[:, 1:] != padded[:, :-1])[1:-1]).T)  # vertical edges at x = col
    parts.extend(f"M{x} {a}V{b}" for x, a, b in zip(cols, y0, y1))
    return "".join(parts)


def class_outlines(labels: np.ndarray) -> dict[int, str]:
    """{label value: outline path} of every foreground class of labels (h, w)."""
    return {int(v): outline(labels == v) for v in np.unique(labels) if v != 0}


def contour_path(labels: np.ndarray) -> str:
    """SVG path data of the outlines of every foreground class of labels (h, w), one path for all."""
    return "".join(class_outlines(labels).values())


def _paths(kind: str, labels: np.ndarray, palette: dict[int, str]) -> str:
    return "".join(f'<path class="{kind}" d="{d}" data-class="{v}" style="--c:{palette.get(v, "#000000")}"/>'
                   for v, d in class_outlines(labels).items())


def thumbnail_html(view: SliceView, alt: str, palette: dict[int, str] | None = None, heat: bool = False) -> str:
    """The layered picture of one slice: image, noise overlay (shown by default when `heat`), the label's and
    the prediction's outlines."""
    palette = palette if palette is not None else class_palette(np.union1d(np.unique(view.label),
                                                                           np.unique(view.pred)))
    h, w = view.image.shape
    ratio = w / (h * view.pixel_aspect)
    return (f'<div class="view{" heat-default" if heat else ""}" style="aspect-ratio:{ratio:.4f}">'
            f'<img class="base" src="{png_data_uri(view.image)}" alt="{escape(alt)}">'
            f'<img class="heat" src="{png_data_uri(heat_rgba(view.noise))}" alt="">'
            f'<svg viewBox="0 0 {w} {h}" preserveAspectRatio="none" aria-hidden="true">'
            f'{_paths("lab", view.label, palette)}{_paths("pred", view.pred, palette)}</svg></div>')
