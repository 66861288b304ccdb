"""Presentation helpers shared by the matplotlib figures (``bfd plot`` and bfd.report's figures).

They change how values are shown, never the values: a log axis' floor for quantities below
float64 resolution, integer ticks thinned to the room the axis has, and titles wrapped to the
width of the figure.
"""

from __future__ import annotations

import re
from typing import Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.backend_bases import RendererBase
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

__all__ = ["LOG_FLOOR", "fit_titles", "floored", "integer_ticks", "mark_floor"]

# Relative quantities (residuals, shares) below this are rounding noise of float64 (eps is
# 2.2e-16): a log axis draws them at this floor instead of letting a 0 or a denormal stretch
# the axis to 1e-300.
LOG_FLOOR: Final[float] = 1e-17
# Break a long title after a space or a separator of names (run ids, model names).
_BREAK = re.compile(r"[^\s\-_/.·]+[\s\-_/.·]*|[\s\-_/.·]+")


def floored(values: np.ndarray, floor: float = LOG_FLOOR) -> tuple[np.ndarray, np.ndarray]:
    """Values for a log axis: finite ones below ``floor`` (0 included) raised to it.

    Args:
        values: Non-negative values; NaN (missing) stays NaN.
        floor: The lowest value drawn.

    Returns:
        The values to draw, and the mask of those raised to the floor.
    """
    values = np.asarray(values, dtype=float)
    low = np.isfinite(values) & (values < floor)
    return np.where(low, floor, values), low


def mark_floor(ax: Axes, floor: float = LOG_FLOOR) -> None:
    """A thin line at ``floor`` on a log axis, its legend entry saying that values below
    it are drawn on it."""
    ax.axhline(floor, color="grey", lw=0.6, ls=":", label=f"< {floor:.0e}: drawn at {floor:.0e}")


class _IntegerLocator(MaxNLocator):
    """Integer ticks in steps of 1, 2, 5 or 10: as many as the axis, at its laid-out length,
    has room for labels of the view's widest integer (with a gap of 0.8 em between)."""

    def __init__(self) -> None:
        super().__init__(nbins=1, integer=True, steps=[1, 2, 5, 10])

    def __call__(self):
        """The tick positions for the axis' view and laid-out length."""
        axis = self.axis
        vmin, vmax = axis.get_view_interval()
        size = axis._get_tick_label_size(axis.axis_name)  # private, as Axis.get_tick_space
        box = axis.axes.bbox
        figure = axis.get_figure(root=True)
        if axis.axis_name == "x":
            length = box.width * 72 / figure.dpi
            digits = len(str(int(max(abs(vmin), abs(vmax)))))
            per_label = size * (0.65 * digits + 0.8)
        else:
            length = box.height * 72 / figure.dpi
            per_label = size * 1.8
        self.set_params(nbins=max(1, int(length // per_label)))
        return super().__call__()


def integer_ticks(axis: Axis) -> None:
    """Ticks at integers (layers, heads), thinned to steps of 1, 2, 5 or 10 so that their
    labels have room on the axis as it is finally laid out."""
    axis.set_major_locator(_IntegerLocator())


def _wrap(text: str, width: float, text_artist: Text, renderer: RendererBase) -> str:
    """``text`` broken into lines no wider than ``width`` pixels: after spaces or name
    separators where it can, inside a word only when the word alone is too wide."""
    prop = text_artist.get_fontproperties()

    def fits(line: str) -> bool:
        return renderer.get_text_width_height_descent(line.rstrip(), prop, ismath=False)[0] <= width

    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for piece in _BREAK.findall(paragraph):
            if fits(line + piece):
                line += piece
                continue
            if line.strip():
                lines.append(line.rstrip())
            line = piece.lstrip()
            while not fits(line) and len(line) > 1:  # a word wider than the figure
                cut = next(i for i in range(len(line), 0, -1) if fits(line[:i]) or i == 1)
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line.rstrip())
    return "\n".join(lines)


def fit_titles(fig: Figure) -> None:
    """Wraps the figure's suptitle to the figure's width and every (centre) axes title that
    reaches out of the figure, or into another title, to the width of its axes.

    The figure is drawn once to know the sizes (constrained layout included); its layout
    runs again when it is saved, so the room taken by the wrapped lines is accounted for.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    suptitle = fig._suptitle  # private: no getter of the Text; None without a suptitle
    if suptitle is not None and suptitle.get_text():
        suptitle.set_text(_wrap(suptitle.get_text(), 0.96 * box.width, suptitle, renderer))
    titles = [(ax, ax.title) for ax in fig.axes if ax.title.get_visible() and ax.get_title()]
    extents = [t.get_window_extent(renderer) for _, t in titles]
    for i, (ax, title) in enumerate(titles):
        e = extents[i]
        outside = e.x0 < box.x0 or e.x1 > box.x1
        crowded = any(e.overlaps(other) for j, other in enumerate(extents) if j != i)
        if outside or crowded:
            width = max(ax.get_window_extent(renderer).width, 0.2 * box.width)
            title.set_text(_wrap(title.get_text(), width, title, renderer))
