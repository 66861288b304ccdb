"""``bfd plot``: the dashboard's run views as static figures for papers (matplotlib, Agg).

One file per view, sized for a journal column (3.5 in single, 7 in double), 8 pt text, the
Okabe-Ito palette and viridis / RdBu maps (readable with the common colour-vision
deficiencies). Text from the store (title, legend labels) is drawn with mathtext off, so a
``$`` in a model name is printed, not parsed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.patches import Patch

from bfd.core.model_check_limit import MODEL_CHECK_LIMIT
from bfd.queries import connect
from bfd.report import data as D
from bfd.report.layout import fit_titles, floored, integer_ticks, mark_floor
from bfd.storage import Store, unpublished_run

__all__ = ["FORMATS", "VIEWS", "plot_run", "run_figures"]

FORMATS: Final[tuple[str, ...]] = ("png", "svg", "pdf")
BLOCKS: Final[tuple[str, ...]] = ("f_pp", "f_pc", "f_cp", "f_cc")
# Okabe-Ito, as on the dashboard.
BLOCK_COLORS: Final[dict[str, str]] = {
    "f_pp": "#D55E00", "f_pc": "#E69F00", "f_cp": "#009E73", "f_cc": "#0072B2",
}
# A colour a head type (docs/method.md), as on the dashboard's head map (dashboard.js TYPES):
# (type, short name in a cell, colour); a type of another name (a head without energy) the
# last. "pc", not the dashboard's "pc+cp": a cell of 8 heads is narrower than "pc+cp".
HEAD_TYPE_STYLE: Final[tuple[tuple[str, str, str], ...]] = (
    ("position-position", "pp", BLOCK_COLORS["f_pp"]), ("content-position", "pc", "#CC79A7"),
    ("content-content", "cc", BLOCK_COLORS["f_cc"]))
OTHER_TYPE_STYLE: Final[tuple[str, str, str]] = ("undefined", "–", "#BBBBBB")
PALETTE: Final[tuple[str, ...]] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#000000")
# One marker per mode type, the same in every figure and on the dashboard's run page
# (dashboard.js MODE_SYMBOLS); a type of another name (none today) takes the last.
MODE_MARKERS: Final[dict[str, str]] = {"pp": "o", "pc": "D", "cp": "^", "cc": "s",
                                        "undefined": "X"}
_SINGLE, _DOUBLE = 3.5, 7.0
_RC: Final[dict[str, Any]] = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "text.usetex": False, "svg.fonttype": "none",
    "pdf.fonttype": 42,
}
# A head map's cells carry their value (5 pt "0.42", about 11 pt wide) only while a cell of
# the four maps side by side on a 7 in figure is wide enough for it.
_ANNOTATED_HEADS: Final[int] = 8


def _figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1, **kw
) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _col(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)


def _layer_axis(ax) -> None:
    ax.set_xlabel("layer")
    integer_ticks(ax.xaxis)


def _shares(run: dict, layers: list[dict], heads: list[dict], modes: list[dict], pos) -> Figure:
    fig, axes = _figure(_SINGLE, 2.6)
    ax = axes[0, 0]
    x = _col(layers, "layer")
    bottom = np.zeros(len(x))
    for block in BLOCKS:
        values = np.nan_to_num(_col(layers, block))
        ax.bar(x, values, bottom=bottom, color=BLOCK_COLORS[block], label=block, width=0.8)
        bottom += values
    ax.set_ylim(0, 1)
    # the stored shares as they are: raw (chance level not removed), each layer's heads
    # weighted by their energy, at the attention input
    ax.set_ylabel("share of logit energy (raw)")
    _layer_axis(ax)
    ax.legend(ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


def ink_on(rgb) -> str:
    """Black or white text, whichever contrasts more with a fill of ``rgb`` (0-1): at least
    4.58:1 by WCAG's relative luminance either way (as the dashboard's ``inkOn``)."""
    c = np.asarray(rgb, float)[:3]
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    lum = float(lin @ [0.2126, 0.7152, 0.0722])
    return "black" if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else "white"


def _annotated(shape: tuple[int, int]) -> bool:
    """Whether the cells of a (layers, heads) map carry their text: while a cell of the maps
    side by side on a 7 in figure is wide enough for it."""
    return shape[1] <= _ANNOTATED_HEADS and shape[0] * shape[1] <= 200


def _head_types(ax, lay: np.ndarray, hd: np.ndarray, heads: list[dict], shape) -> None:
    """The head type of each head (docs/method.md: the argmax of f_pp, f_pc + f_cp, f_cc), a
    colour a type as on the dashboard's head map, the type's short name in each cell while
    they fit; a legend of the types below."""
    known = [t for t, _, _ in HEAD_TYPE_STYLE]
    index = [known.index(r["head_type"]) if r.get("head_type") in known else len(known)
             for r in heads]
    every = HEAD_TYPE_STYLE + (OTHER_TYPE_STYLE,)
    grid = np.full(shape, np.nan)
    grid[lay, hd] = index
    ax.imshow(grid, cmap=ListedColormap([c for _, _, c in every]), vmin=-0.5,
              vmax=len(every) - 0.5, aspect="auto", interpolation="nearest")
    if _annotated(shape):
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, every[int(value)][1], ha="center", va="center", fontsize=5,
                        color=ink_on(mpl.colors.to_rgb(every[int(value)][2])))
    ax.set_title("head type")
    ax.set_xlabel("head")
    integer_ticks(ax.xaxis)
    # the legend: the three types, and undefined where a head is
    styles = every if len(known) in index else HEAD_TYPE_STYLE
    handles = [Patch(color=c, label=f"{short}: {name}"
                     + (" (f_pc + f_cp)" if short == "pc" else "")) for name, short, c in styles]
    ax.figure.legend(handles=handles, loc="outside lower left", ncols=len(handles),
                     frameon=False, title="head type:", alignment="left")


def _head_map(run: dict, layers: list[dict], heads: list[dict], modes: list[dict], pos) -> Figure:
    lay, hd = _col(heads, "layer").astype(int), _col(heads, "head").astype(int)
    n_l, n_h = lay.max() + 1, hd.max() + 1
    fig, axes = _figure(_DOUBLE, min(1.6 + 0.22 * n_l, 8.4), 1, 5, sharey=True)
    _head_types(axes[0, 0], lay, hd, heads, (n_l, n_h))
    image = None
    for ax, block in zip(axes[0, 1:], BLOCKS, strict=True):
        grid = np.full((n_l, n_h), np.nan)
        grid[lay, hd] = _col(heads, block)
        image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto",
                          interpolation="nearest")
        if _annotated(grid.shape):
            for (i, j), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=5,
                            color=ink_on(image.cmap(image.norm(value))))
        # in black: the block colours as text on white are 2.3-3.9:1 (the bars' legend has them)
        ax.set_title(block)
        ax.set_xlabel("head")
        integer_ticks(ax.xaxis)
    axes[0, 0].set_ylabel("layer")
    integer_ticks(axes[0, 0].yaxis)
    fig.colorbar(image, ax=axes[0].tolist(), label="share", shrink=0.9)
    return fig


def _spectra(run: dict, layers: list[dict], heads: list[dict], modes: list[dict], pos) -> Figure:
    fig, axes = _figure(_DOUBLE, 2.6, 1, 2)
    left, right = axes[0]
    lay = _col(modes, "layer")
    cmap = mpl.colormaps["viridis"]
    top = max(lay.max(), 1) if len(lay) else 1
    for key in sorted({(r["layer"], r["head"]) for r in modes}):
        rows = [r for r in modes if (r["layer"], r["head"]) == key]
        left.plot(_col(rows, "mode"), _col(rows, "sigma"), color=cmap(key[0] / top), lw=0.8)
    left.set_yscale("log")
    left.set_xlabel("mode")
    left.set_ylabel("sigma")
    left.set_title("singular values of every head (colour: layer)")
    fig.colorbar(mpl.cm.ScalarMappable(mpl.colors.Normalize(0, top), cmap), ax=left, label="layer")
    hl, er = _col(heads, "layer"), _col(heads, "eff_rank")
    right.scatter(hl, er, s=8, color=PALETTE[0], alpha=0.6, label="heads")
    x = np.unique(hl)
    right.plot(x, [np.nanmean(er[hl == v]) for v in x], color="black", label="layer mean")
    right.set_ylabel("eff_rank")
    right.set_title("effective rank")
    _layer_axis(right)
    right.legend(frameon=False)
    return fig


def _alpha_beta(run: dict, layers: list[dict], heads: list[dict], modes: list[dict], pos) -> Figure:
    fig, axes = _figure(_SINGLE, 3.2)
    ax = axes[0, 0]
    energy = sum(np.nan_to_num(_col(modes, f"e_{b[2:]}")) for b in BLOCKS)
    alpha, beta = _col(modes, "alpha"), _col(modes, "beta")
    # a mode without alpha and beta (sigma 0: a pruned head's) or without energy is not
    # drawn: its position would mean nothing, and log10 of 0 squashed the colour scale
    # to -300..0, every real mode the same colour
    drawn = np.isfinite(alpha) & np.isfinite(beta) & (energy > 0)
    log_e = np.log10(np.where(drawn, energy, 1.0))
    norm = (mpl.colors.Normalize(np.min(log_e[drawn]), np.max(log_e[drawn])) if drawn.any()
            else None)
    types = sorted({str(r["mode_type"]) for r, d in zip(modes, drawn, strict=True) if d},
                   key=lambda t: (list(MODE_MARKERS).index(t) if t in MODE_MARKERS else 9, t))
    for kind in types:
        mask = drawn & np.array([str(r["mode_type"]) == kind for r in modes])
        ax.scatter(alpha[mask], beta[mask], c=log_e[mask], cmap="viridis", norm=norm,
                   marker=MODE_MARKERS.get(kind, "X"), s=10, edgecolors="none",
                   label=f"mode type {kind}")
    ax.axvline(0.5, color="grey", ls=":", lw=0.8)
    ax.axhline(0.5, color="grey", ls=":", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="alpha (query side positional)",
           ylabel="beta (key side positional)", aspect="equal")
    fig.colorbar(mpl.cm.ScalarMappable(norm, "viridis"), ax=ax, label="log10 energy")
    if types:
        legend = ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2,
                           frameon=False, markerscale=1.5)
        for handle in legend.legend_handles:  # the marker shape is the key, not its colour
            handle.set_color("dimgrey")
    return fig


def _pos_factor(run: dict, layers: list[dict], heads: list[dict], modes: list[dict], pos) -> Figure:
    chosen = sorted({0, len(pos["layers"]) // 2, len(pos["layers"]) - 1})
    n_pc = max(len(pos["pcs"][i]) for i in chosen)
    fig, axes = _figure(_DOUBLE, 1.1 + 1.6 * len(chosen), len(chosen), n_pc)
    for row, i in enumerate(chosen):
        for j in range(n_pc):
            ax = axes[row, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(pos["pcs"][i]):
                ax.set_axis_off()
                continue
            image = np.array(pos["pcs"][i][j])
            lim = np.abs(image).max() or 1.0
            ax.imshow(image, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(f"layer {pos['layers'][i]}, PC{j + 1} "
                         f"({100 * pos['explained'][i][j]:.1f}%)")
    return fig


def _preservation(run: dict, layers: list[dict], heads: list[dict], modes: list[dict], pos
                  ) -> Figure:
    fig, axes = _figure(_SINGLE, 2.6)
    ax = axes[0, 0]
    x = _col(layers, "layer")
    for key, label, color, style in (
        ("frac_pos_resid", "preservation: frac_pos at resid", PALETTE[1], "-"),
        ("pos_embed_cos_resid", "pos_embed cosine at resid", PALETTE[3], ":"),
        ("frac_content", "enrichment: frac_content at attn_in", PALETTE[0], "-"),
    ):
        y = _col(layers, key)
        if np.isfinite(y).any():
            ax.plot(x, y, style, marker="o", ms=3, color=color, label=label)
    # a cosine may be negative: the axis reaches down to it (it was cut at 0)
    cosine = _col(layers, "pos_embed_cos_resid")
    low = float(np.nanmin(cosine)) if np.isfinite(cosine).any() else 0.0
    ax.set_ylim(min(0.0, low - 0.02), 1.02)
    ax.set_ylabel("share, or cosine")
    _layer_axis(ax)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return fig


def _validation(run: dict, layers: list[dict], heads: list[dict], modes: list[dict], pos
                ) -> Figure:
    fig, axes = _figure(_DOUBLE, 2.4, 1, 3)
    res, split, shuffle = axes[0]
    x = _col(layers, "layer")
    # relative residuals: a 0 or a denormal is drawn at the floor (layout.LOG_FLOOR), not
    # at 1e-300 where it would stretch the axis over 300 empty decades
    low = False
    for i, key in enumerate(("ss_identity_residual", "ortho_residual", "logit_residual",
                             "model_logit_residual", "model_attn_residual")):
        y, raised = floored(np.abs(_col(layers, key)))
        low |= raised.any()
        if np.isfinite(y).any():
            res.semilogy(x, y, marker="o", ms=3, color=PALETTE[i], label=key)
    # the check against the model fails above its limit (docs/checks.md)
    if np.isfinite(_col(layers, "model_logit_residual")).any():
        res.axhline(MODEL_CHECK_LIMIT, color="black", ls="--", lw=0.8,
                    label=f"check limit {MODEL_CHECK_LIMIT:g}")
    if low:
        mark_floor(res)
    res.set_ylabel("|relative residual|")
    res.set_title("residual checks")
    res.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    split.plot(x, _col(layers, "pos_split_half_r"), marker="o", ms=3, color=PALETTE[2])
    split.set_ylim(0, 1.02)
    split.set_title("split-half r of pos")
    # its expectation per layer: (1 − frac_img) / N, the images kept (docs/method.md)
    kept = run["n_images"] - (run.get("n_skipped") or 0)
    low = False
    for y, style, color, label in (
        (_col(layers, "shuffle_frac_pos"), "-", PALETTE[0], "after shuffling"),
        (_col(layers, "frac_pos"), "--", PALETTE[4], "frac_pos"),
        ((1 - _col(layers, "frac_img")) / kept, ":", "black", "chance (1 − frac_img)/N"),
    ):
        y, raised = floored(y)
        low |= raised.any()
        shuffle.semilogy(x, y, style, marker="o" if style != ":" else None, ms=3, color=color,
                         label=label)
    if low:
        mark_floor(shuffle)
    shuffle.set_ylabel("share")
    shuffle.set_title("shuffle control")
    shuffle.legend(frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in axes[0]:
        _layer_axis(ax)
    return fig


View = Callable[..., Figure]
VIEWS: Final[dict[str, View]] = {
    "shares": _shares,
    "head_map": _head_map,
    "spectra": _spectra,
    "alpha_beta": _alpha_beta,
    "pos_factor": _pos_factor,
    "preservation": _preservation,
    "validation": _validation,
}
# What a view needs to have anything to draw.
_NEEDS: Final[dict[str, str]] = {
    "shares": "layers", "head_map": "heads", "spectra": "modes", "alpha_beta": "modes",
    "pos_factor": "pos", "preservation": "layers", "validation": "layers",
}


def run_figures(
    store_root: str | os.PathLike[str], run_id: str
) -> tuple[dict[str, Figure], list[str]]:
    """Every view of one run as a laid-out figure, titled with the run's series and id.

    Args:
        store_root: The store directory.
        run_id: A run of the store.

    Returns:
        The figures by view name (in the order of ``VIEWS``), and the views skipped for lack
        of data (e.g. ``pos_factor`` when the run's results are not found).

    Raises:
        ValueError: No such run in the store, or a run not published (extracted, or its
            extraction incomplete: the line says what to run).
    """
    con = connect(store_root)
    try:
        runs = {row["run_id"]: row for row in D.run_list(con).to_pylist()}
        if run_id not in runs:
            pending = unpublished_run(Store(store_root), run_id)
            if pending is not None:  # extracted, or interrupted: said so, with what is next
                raise ValueError(f"run {run_id!r} has no published results to draw "
                                 f"({pending.status}): {pending.next}")
            ids = list(runs)
            known = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
            raise ValueError(f"no run {run_id!r} in store {str(store_root)!r}; "
                             f"runs: {known or 'none'}")
        run = runs[run_id]
        detail = {name: t.to_pylist() for name, t in D.run_detail(con, run_id).items()}
    finally:
        con.close()
    grid = (run["grid_h"], run["grid_w"])
    detail["pos"] = D.positional_components(store_root, run_id, grid)
    figures, skipped = {}, []
    with mpl.rc_context(_RC):
        for name, view in VIEWS.items():
            if not detail[_NEEDS[name]]:
                skipped.append(name)
                continue
            fig = view(run, detail["layers"], detail["heads"], detail["modes"], detail["pos"])
            # N: raw shares and their chance level move with it (docs/method.md)
            n = run.get("n_decoded")
            fig.suptitle(f"{run['series']} · {run_id}" + (f" · N {n}" if n is not None else ""),
                         fontsize=8, parse_math=False)
            # legend labels may hold names from the store (mode types)
            for legend in fig.findobj(Legend):
                for text in legend.get_texts():
                    text.set_parse_math(False)
            fit_titles(fig)
            figures[name] = fig
    return figures, skipped


def plot_run(
    store_root: str | os.PathLike[str], run_id: str, out_dir: str | os.PathLike[str],
    fmt: str = "png",
) -> tuple[list[Path], list[str]]:
    """Writes every view of one run as ``<out_dir>/<run_id>-<view>.<fmt>``.

    Args:
        store_root: The store directory.
        run_id: A run of the store.
        out_dir: Where to write; created if missing.
        fmt: ``png`` (300 dpi), ``svg`` or ``pdf``.

    Returns:
        The files written, and the views skipped for lack of data (e.g. ``pos_factor`` when
        the run's results are not found).

    Raises:
        ValueError: Unknown format, ``out_dir`` a file, or no such run in the store.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown figure format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out {str(out_dir)!r} is a file; expected a folder for the figures")
    figures, skipped = run_figures(store_root, run_id)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with mpl.rc_context(_RC):
        for name, fig in figures.items():
            path = out / f"{D.safe_file_stem(run_id)}-{name}.{fmt}"
            fig.savefig(path, format=fmt, dpi=300 if fmt == "png" else None)
            written.append(path)
    return written, skipped
