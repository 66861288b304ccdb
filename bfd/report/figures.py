"""Figures of the named queries' results (bfd/queries/*.sql), drawn with matplotlib's Agg canvas.

Every function takes the table a named query returns (pyarrow, or pandas with the same columns)
and writes one PNG. They build a ``Figure`` on an Agg canvas instead of going through pyplot, so
they need no display, touch no global backend state and leak no open figures.

One colour per interaction class is used throughout (docs/method.md, "Head type"): position-position
red, content-position (f_cp + f_pc) green, content-content blue. A head's colour in the head map
is the mix of the three in proportion to its fractions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, BinaryIO, Final, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.text import Text

from bfd.report.layout import fit_titles, integer_ticks

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CLASS_COLORS",
    "compare_figure",
    "depth_overview_figure",
    "head_map_figure",
    "layer_profile_figure",
]

TableLike: TypeAlias = "pa.Table | pd.DataFrame"
Target: TypeAlias = "str | os.PathLike[str] | BinaryIO"

CLASS_COLORS: Final[Mapping[str, tuple[float, float, float]]] = {
    "pp": (0.84, 0.15, 0.16),
    "cp": (0.17, 0.63, 0.17),
    "cc": (0.12, 0.47, 0.71),
}
_CLASS_LABELS: Final[Mapping[str, str]] = {
    "pp": "position-position (f_pp)",
    "cp": "content-position (f_cp + f_pc)",
    "cc": "content-content (f_cc)",
}
# The four blocks of a stacked profile; f_pc and f_cp share the content-position hue.
_BLOCK_STYLE: Final[tuple[tuple[str, str, tuple[float, float, float], float], ...]] = (
    ("f_pp", "f_pp  query pos · key pos", CLASS_COLORS["pp"], 0.85),
    ("f_pc", "f_pc  query pos · key content", CLASS_COLORS["cp"], 0.55),
    ("f_cp", "f_cp  query content · key pos", CLASS_COLORS["cp"], 0.85),
    ("f_cc", "f_cc  query content · key content", CLASS_COLORS["cc"], 0.85),
)
_MISSING_RGB: Final[tuple[float, float, float]] = (0.85, 0.85, 0.85)


def _arrow(table: TableLike) -> pa.Table:
    if isinstance(table, pa.Table):
        return table
    return pa.Table.from_pandas(table, preserve_index=False)


def _columns(table: TableLike, names: Sequence[str], what: str) -> dict[str, np.ndarray]:
    """Numeric columns as float64 arrays, NULL as NaN; a clear error naming what is missing."""
    arrow = _arrow(table)
    missing = [name for name in names if name not in arrow.column_names]
    if missing:
        raise ValueError(
            f"{what} needs column(s) {', '.join(missing)}; given columns: "
            f"{', '.join(arrow.column_names) or 'none'}"
        )
    if arrow.num_rows == 0:
        raise ValueError(f"{what} needs at least one row; the given table is empty")
    return {
        name: pc.fill_null(arrow.column(name).cast(pa.float64()), np.nan).to_numpy()
        for name in names
    }


def _first(table: TableLike, name: str) -> str | None:
    arrow = _arrow(table)
    if name not in arrow.column_names or arrow.num_rows == 0:
        return None
    value = arrow.column(name)[0].as_py()
    return None if value is None else str(value)


def _new_figure(width: float, height: float, rows: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, list(np.atleast_1d(fig.subplots(rows, 1, sharex=True)))


def _save(fig: Figure, path: Target) -> None:
    # names come from users (a model called "a$b"): no text is a mathtext formula
    for text in fig.findobj(Text):
        text.set_parse_math(False)
    fit_titles(fig)  # a long model name or run id wraps instead of running off the figure
    fig.savefig(path, format="png", dpi=110)


def layer_profile_figure(table: TableLike, path: Target, title: str | None = None) -> None:
    """Positional share of the heads' input and the heads' use of it, layer by layer.

    Top: ``frac_pos`` at attn_in (and at resid where recorded), and where the run has them
    the chance-corrected ``frac_pos_adj`` with its 95 % interval and the raw share's chance
    level (docs/method.md). Bottom: the energy-weighted
    ``f_pp, f_pc, f_cp, f_cc`` of each layer, stacked (they sum to one).

    Args:
        table: Rows of the ``layer_profile`` query (one model, one run).
        path: Where to write the PNG (a path or a binary file object).
        title: Figure title; defaults to the table's model and run_id.

    Raises:
        ValueError: The table is empty or lacks a needed column.
    """
    blocks = [name for name, *_ in _BLOCK_STYLE]
    cols = _columns(table, ["layer", "frac_pos", *blocks], "layer_profile_figure")
    order = np.argsort(cols["layer"])
    layer = cols["layer"][order]
    fig, (top, bottom) = _new_figure(7.0, 5.5, rows=2)
    top.plot(layer, cols["frac_pos"][order], "o-", color="black", label="attn_in")
    if "frac_pos_resid" in _arrow(table).column_names:
        resid = _columns(table, ["frac_pos_resid"], "layer_profile_figure")["frac_pos_resid"]
        if np.isfinite(resid).any():
            top.plot(layer, resid[order], "s--", color="gray", label="resid")
    names = _arrow(table).column_names
    band = ("frac_pos_adj", "frac_pos_adj_lo", "frac_pos_adj_hi", "frac_pos_chance")
    if all(name in names for name in band):
        adj = _columns(table, list(band), "layer_profile_figure")
        if np.isfinite(adj["frac_pos_adj"]).any():
            top.plot(layer, adj["frac_pos_adj"][order], "o-", color="tab:blue",
                     label="attn_in, chance-corrected")
            top.fill_between(layer, adj["frac_pos_adj_lo"][order],
                             adj["frac_pos_adj_hi"][order], color="tab:blue", alpha=0.2,
                             label="95 % interval over images")
            top.plot(layer, adj["frac_pos_chance"][order], ":", color="black",
                     label="chance level of frac_pos")
    top.set_ylabel("frac_pos\n(positional share)")
    top.set_ylim(bottom=0)
    top.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    top.grid(alpha=0.3)
    stack = np.nan_to_num(np.vstack([cols[name][order] for name in blocks]))
    bottom.stackplot(
        layer,
        stack,
        labels=[label for _, label, _, _ in _BLOCK_STYLE],
        colors=[(*rgb, alpha) for _, _, rgb, alpha in _BLOCK_STYLE],
    )
    bottom.set_ylim(0, 1)
    bottom.set_xlim(layer.min(), max(layer.max(), layer.min() + 1))
    bottom.set_xlabel("layer")
    bottom.set_ylabel("share of logit energy")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    fig.suptitle(title or f"{_first(table, 'model')} — {_first(table, 'run_id')}")
    _save(fig, path)


def head_map_figure(heads_table: TableLike, path: Target, title: str | None = None) -> None:
    """Layer x head map; each cell mixes the three class colours by the head's fractions.

    Args:
        heads_table: Rows of the ``head_map`` query (``layer, head, f_pp, f_pc, f_cp, f_cc``).
        path: Where to write the PNG (a path or a binary file object).
        title: Figure title; defaults to the table's model and run_id.

    Raises:
        ValueError: The table is empty or lacks a needed column.
    """
    cols = _columns(
        heads_table, ["layer", "head", "f_pp", "f_pc", "f_cp", "f_cc"], "head_map_figure"
    )
    layers = cols["layer"].astype(int)
    heads = cols["head"].astype(int)
    shares = np.stack([cols["f_pp"], cols["f_cp"] + cols["f_pc"], cols["f_cc"]], axis=-1)
    image = np.empty((layers.max() + 1, heads.max() + 1, 3))
    image[:] = _MISSING_RGB
    # Fractions sum to one, so the mix stays inside the colour triangle of the three classes.
    rgb = np.clip(shares @ np.array(list(CLASS_COLORS.values())), 0, 1)
    # an undefined head (NULL fractions: zero or non-finite energies) is drawn as missing
    rgb[np.isnan(rgb).any(-1)] = _MISSING_RGB
    image[layers, heads] = rgb
    n_layers, n_heads = image.shape[:2]
    # the legend sits right of the map, so a few heads still need room for it and the title
    fig, (ax,) = _new_figure(min(5.5 + 0.45 * n_heads, 14.0), min(1.8 + 0.3 * n_layers, 14.0))
    ax.imshow(image, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    integer_ticks(ax.xaxis)
    integer_ticks(ax.yaxis)
    ax.tick_params(labelsize="small")
    ax.legend(
        handles=[Patch(color=CLASS_COLORS[c], label=_CLASS_LABELS[c]) for c in CLASS_COLORS],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize="small",
    )
    fig.suptitle(title or f"{_first(heads_table, 'model')} — {_first(heads_table, 'run_id')}",
                 fontsize="medium")
    _save(fig, path)


def compare_figure(table: TableLike, path: Target, title: str | None = None) -> None:
    """Two models along relative depth: frac_pos and the class shares of logit energy.

    Args:
        table: Rows of the ``compare_models`` query.
        path: Where to write the PNG (a path or a binary file object).
        title: Figure title; defaults to "model_a vs model_b".

    Raises:
        ValueError: The table is empty or lacks a needed column.
    """
    names = ["depth_lo", "depth_hi"] + [
        f"{value}_{side}"
        for side in ("a", "b")
        for value in ("n_layers", "frac_pos", "f_pp", "f_pc", "f_cp", "f_cc")
    ]
    cols = _columns(table, names, "compare_figure")
    depth = (cols["depth_lo"] + cols["depth_hi"]) / 2
    label = {"a": _first(table, "model_a") or "a", "b": _first(table, "model_b") or "b"}
    style = {"a": "o-", "b": "s--"}
    fig, (top, bottom) = _new_figure(7.0, 5.5, rows=2)
    for side in ("a", "b"):
        # A shallower model leaves bins empty (NaN); drop them so its line stays connected.
        has = np.isfinite(cols[f"n_layers_{side}"]) & (cols[f"n_layers_{side}"] > 0)
        top.plot(
            depth[has], cols[f"frac_pos_{side}"][has], style[side], color="black", label=label[side]
        )
        shares = {
            "pp": cols[f"f_pp_{side}"],
            "cp": cols[f"f_cp_{side}"] + cols[f"f_pc_{side}"],
            "cc": cols[f"f_cc_{side}"],
        }
        for cls, values in shares.items():
            bottom.plot(
                depth[has],
                values[has],
                style[side],
                color=CLASS_COLORS[cls],
                label=f"{label[side]}: {cls}",
            )
    top.set_ylabel("frac_pos (attn_in)")
    top.legend(loc="best", fontsize="small")
    top.grid(alpha=0.3)
    bottom.set_ylim(0, 1)
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("relative depth (bin centre)")
    bottom.set_ylabel("share of logit energy")
    bottom.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    bottom.grid(alpha=0.3)
    fig.suptitle(title or f"{label['a']} vs {label['b']}")
    _save(fig, path)


def depth_overview_figure(profiles: Mapping[str, TableLike], path: Target) -> None:
    """All models on one axis of relative depth: frac_pos, and the position-position share.

    Args:
        profiles: ``layer_profile`` rows per model name.
        path: Where to write the PNG (a path or a binary file object).

    Raises:
        ValueError: ``profiles`` is empty, or a table is empty or lacks a needed column.
    """
    if not profiles:
        raise ValueError("depth_overview_figure needs at least one model's layer_profile")
    fig, (top, bottom) = _new_figure(7.0, 5.5, rows=2)
    for model, table in profiles.items():
        cols = _columns(table, ["rel_depth", "frac_pos", "f_pp"], "depth_overview_figure")
        order = np.argsort(cols["rel_depth"])
        (line,) = top.plot(cols["rel_depth"][order], cols["frac_pos"][order], "o-", label=model)
        bottom.plot(cols["rel_depth"][order], cols["f_pp"][order], "o-", color=line.get_color())
    top.set_ylabel("frac_pos (attn_in)")
    top.set_ylim(bottom=0)
    top.legend(loc="best", fontsize="small")
    top.grid(alpha=0.3)
    bottom.set_ylabel("f_pp of the layer")
    bottom.set_xlabel("relative depth  layer / (depth − 1)")
    bottom.set_xlim(0, 1)
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    fig.suptitle("Positional information and its use across depth")
    _save(fig, path)
