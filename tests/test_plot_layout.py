"""Presentation of ``bfd plot``'s figures and bfd.report's: a log axis' floor for residuals
below float64 resolution, tick labels that do not collide, titles inside the figure. Checked on
the laid-out figures (text bounding boxes after a draw) of planted runs of a ViT-B-like shape
(12 layers, 12 heads), a ViT-L-like one (24 layers, 16 heads) and a 2-layer one."""

from __future__ import annotations

import numpy as np
import pytest
from dashstore import write_synthetic_run
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.text import Text

from bfd.report.layout import LOG_FLOOR, fit_titles, integer_ticks
from bfd.report.plots import VIEWS, run_figures

MODEL = "vit_base_patch16_224.augreg2_in21k_ft_in1k"


def run_id(depth: int) -> str:
    # as long as a real run id: the title runs off a one-column figure unless wrapped
    return f"{MODEL}-20250101T000000Z-{depth:02d}3f2a9c1d"


def drawn_texts(fig: Figure) -> list[Text]:
    """The texts a draw of ``fig`` puts on the canvas: visible, not empty, and of the tick
    labels only those of ticks inside their axis' view."""
    fig.canvas.draw()
    labels, shown = set(), []
    for axis in fig.findobj(Axis):
        lo, hi = sorted(axis.get_view_interval())
        tol = 1e-9 * max(hi - lo, 1.0)
        for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()):
            labels.update((tick.label1, tick.label2))
            if lo - tol <= tick.get_loc() <= hi + tol:
                shown += [t for t in (tick.label1, tick.label2) if t.get_visible()]
    texts = [t for t in fig.findobj(Text) if t not in labels and t.get_visible()]
    return [t for t in texts + shown if t.get_text().strip()]


def misfits(fig: Figure, what: str) -> list[str]:
    """What breaks the rule: every drawn text inside the figure, no two overlapping (by more
    than 0.5 px)."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = np.array([t.get_window_extent(renderer).extents for t in texts])
    x0, y0, x1, y1 = fig.bbox.extents
    outside = [texts[i].get_text() for i in np.flatnonzero(
        (boxes[:, 0] < x0 - 0.5) | (boxes[:, 1] < y0 - 0.5) | (boxes[:, 2] > x1 + 0.5)
        | (boxes[:, 3] > y1 + 0.5))]
    w = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0],
                                                                       boxes[None, :, 0])
    h = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1],
                                                                       boxes[None, :, 1])
    i, j = np.nonzero(np.triu((w > 0.5) & (h > 0.5), k=1))
    pairs = [(texts[a].get_text(), texts[b].get_text()) for a, b in zip(i, j, strict=True)]
    return ([f"{what}: outside the figure: {outside}"] if outside else []) + (
        [f"{what}: {len(pairs)} overlapping, e.g. {pairs[:4]}"] if pairs else [])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, object]:
    """One store per shape; layer 0's SS identity residual is 0 and layer 1's orthogonality
    residual and shuffled share are denormal (1e-314), as a user's run had them."""
    out = {"root": {}}
    for depth, n_heads in ((2, 2), (12, 12), (24, 16)):
        root = tmp_path_factory.mktemp(f"store{depth}")
        values = {
            "ss_identity_residual": [0.0] + [1e-14] * (depth - 1),
            "ortho_residual": [1e-15, 1e-314] + [1e-15] * (depth - 2),
            "shuffle_frac_pos": [4e-3, 1e-314] + [4e-3] * (depth - 2),
        }
        write_synthetic_run(root, run_id(depth), model=MODEL, depth=depth, n_heads=n_heads,
                            with_pos=True, layer_values=values)
        out[depth] = run_figures(root, run_id(depth))[0], values
        out["root"][depth] = root
    return out


def titled(fig: Figure, title: str):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def legend_text(ax) -> str:
    return " ".join(t.get_text() for t in ax.get_legend().get_texts())


@pytest.mark.parametrize("depth", [2, 12, 24])
def test_log_axes_of_a_zero_or_denormal_value_stop_at_the_floor(runs, depth):
    figures, planted = runs[depth]
    fig = figures["validation"]
    fig.canvas.draw()
    res = titled(fig, "residual checks")
    bottom, top = res.get_ylim()
    # the axis spans the values' meaningful range: down to the floor, not to 1e-314
    assert LOG_FLOOR / 10 <= bottom <= LOG_FLOOR and top < 1
    assert f"{LOG_FLOOR:.0e}" in legend_text(res)
    # the values drawn are the stored ones, those below the floor raised to it
    lines = {line.get_label(): line.get_ydata() for line in res.get_lines()}
    for key in ("ss_identity_residual", "ortho_residual"):
        np.testing.assert_array_equal(lines[key], np.maximum(planted[key], LOG_FLOOR))
    np.testing.assert_array_equal(lines["logit_residual"], np.full(depth, 1e-7))
    shuffle = titled(fig, "shuffle control")
    assert LOG_FLOOR / 10 <= shuffle.get_ylim()[0] <= LOG_FLOOR
    assert f"{LOG_FLOOR:.0e}" in legend_text(shuffle)
    shuffled = [line for line in shuffle.get_lines() if line.get_label() == "after shuffling"]
    np.testing.assert_array_equal(shuffled[0].get_ydata(),
                                  np.maximum(planted["shuffle_frac_pos"], LOG_FLOOR))


@pytest.mark.parametrize("depth", [2, 12, 24])
def test_every_view_keeps_its_text_inside_and_apart(runs, depth):
    figures, _ = runs[depth]
    assert list(figures) == list(VIEWS)
    bad = [m for name, fig in figures.items() for m in misfits(fig, name)]
    assert not bad, "\n".join(bad)
    # every layer axis still labels layers at integers, and the first one
    for name in ("shares", "preservation", "validation"):
        for ax in figures[name].axes:
            if ax.get_xlabel() == "layer":
                ticks = [t for t in ax.get_xticks() if 0 <= t <= depth - 1]
                assert ticks[0] == 0 and all(float(t).is_integer() for t in ticks)


def test_fit_titles_wraps_a_title_wider_than_its_figure():
    fig = Figure(figsize=(3.5, 2.5), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    long_id = "x" * 40 + "-" + "0123456789" * 6  # one word wider than the figure
    fig.suptitle(f"{MODEL} · {long_id}")
    left.set_title("singular values of every head (colour: layer)")
    right.set_title("effective rank of the heads")
    for ax in (left, right):
        ax.plot(np.arange(40), np.arange(40))
        integer_ticks(ax.xaxis)
    fit_titles(fig)
    assert not misfits(fig, "fit_titles")
    # wrapped, not cut: the lines hold every character of the title, in order
    text = fig._suptitle.get_text()
    assert text.count("\n") >= 2 and text.split() != [MODEL, "·", long_id]
    assert "".join(text.split()) == "".join(f"{MODEL} · {long_id}".split())



def test_the_alpha_beta_figure_draws_real_modes_on_their_energy_scale_each_type_its_marker():
    """A pruned head's modes (sigma 0: no alpha, beta, energy) were drawn at meaningless
    places and stretched the colour scale to log10 energy -300..0, every real mode one
    colour; and a type's marker went by the types present, so one figure's pp was another's
    cc. Now they are not drawn, the scale spans the real modes, and each type has one marker
    (the dashboard's too)."""
    from bfd.report.plots import MODE_MARKERS, _alpha_beta

    real = [{"mode_type": kind, "alpha": a, "beta": b, "e_pp": e, "e_pc": 0.0, "e_cp": 0.0,
             "e_cc": 0.0} for kind, a, b, e in [("cc", 0.1, 0.2, 0.01), ("pp", 0.8, 0.9, 3.0),
                                                 ("cp", 0.7, 0.2, 0.5)]]
    pruned = [{"mode_type": "undefined", "alpha": float("nan"), "beta": float("nan"),
               "e_pp": 0.0, "e_pc": 0.0, "e_cp": 0.0, "e_cc": 0.0}] * 4
    fig = _alpha_beta({}, [], [], real + pruned, None)
    ax = fig.axes[0]
    drawn = {c.get_label(): c for c in ax.collections}
    assert sorted(drawn) == ["mode type cc", "mode type cp", "mode type pp"]
    assert sum(len(c.get_offsets()) for c in drawn.values()) == 3
    norm = drawn["mode type pp"].norm
    assert (norm.vmin, norm.vmax) == pytest.approx((np.log10(0.01), np.log10(3.0)))
    for kind in ("cc", "cp", "pp"):  # the marker of the type, whatever else is drawn
        alone = _alpha_beta({}, [], [], [r for r in real if r["mode_type"] == kind], None)
        path = alone.axes[0].collections[0].get_paths()[0]
        ref = Figure().add_subplot().scatter([0], [0], marker=MODE_MARKERS[kind])
        np.testing.assert_allclose(path.vertices, ref.get_paths()[0].vertices)


def test_figures_say_n_and_raw_and_keep_a_negative_cosine_on_the_axis(tmp_path):
    """`bfd plot` titles named the series and run only, though raw shares move with N; the
    shares figure did not say raw; the preservation axis stopped at 0 below a cosine."""
    root = tmp_path / "store"
    write_synthetic_run(root, run_id(2), model=MODEL, depth=2, n_heads=2, with_pos=True,
                        layer_values={"pos_embed_cos": [-0.4, 0.3]})
    figures, _ = run_figures(root, run_id(2))
    from bfd.queries import connect
    from bfd.report.data import run_list

    with connect(root) as con:
        (run,) = run_list(con).to_pylist()
    for fig in figures.values():
        assert fig._suptitle.get_text().replace("\n", " ").endswith(f" · N {run['n_decoded']}")
    assert figures["shares"].axes[0].get_ylabel() == "share of logit energy (raw)"
    assert figures["preservation"].axes[0].get_ylim()[0] <= -0.4


def test_the_head_map_shows_each_heads_stored_type_in_its_colour(runs):
    """`bfd plot`'s head map had the four shares only, where the dashboard's opens with the
    head type (the figure a reader looks for first)."""
    from bfd.report.plots import HEAD_TYPE_STYLE, OTHER_TYPE_STYLE

    fig = runs[12][0]["head_map"]
    ax = titled(fig, "head type")
    grid = ax.get_images()[0].get_array()
    rgb = ax.get_images()[0].to_rgba(grid)[..., :3]
    styles = {t: to_rgb(c) for t, _, c in HEAD_TYPE_STYLE + (OTHER_TYPE_STYLE,)}
    from bfd.queries import connect
    from bfd.report.data import run_detail

    with connect(runs["root"][12]) as con:
        heads = run_detail(con, run_id(12))["heads"].to_pylist()
    assert len(heads) == 12 * 12
    for r in heads:
        np.testing.assert_allclose(rgb[r["layer"], r["head"]], styles[r["head_type"]])
    # every type present named in the legend below, with its short name
    (legend,) = fig.legends
    names = {t.get_text() for t in legend.get_texts()}
    assert names == {"pp: position-position", "pc: content-position (f_pc + f_cp)",
                     "cc: content-content"} | (
        {"–: undefined"} if any(r["head_type"] == "undefined" for r in heads) else set())


def test_head_map_cell_labels_contrast_with_their_cells(runs):
    """Trial 28 (as on the dashboard): white type names on the pp colour (3.9:1), white
    shares on viridis' teal (3.7:1) and block titles in the block colours (2.3:1)."""
    def luminance(rgb) -> float:
        c = np.asarray(rgb, float)[:3]
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return float(lin @ [0.2126, 0.7152, 0.0722])

    def contrast(a, b) -> float:
        hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
        return (hi + 0.05) / (lo + 0.05)

    checked = 0
    for depth in (2, 12):  # (2 heads carry their values; beyond 8 heads none)
        fig = runs[depth][0]["head_map"]
        fig.canvas.draw()
        for ax in fig.axes:
            images = ax.get_images()
            if not images or not ax.texts:
                continue
            rgba = images[0].to_rgba(images[0].get_array())
            for t in ax.texts:
                j, i = (round(v) for v in t.get_position())
                assert contrast(to_rgb(t.get_color()), rgba[i, j]) >= 4.5, (ax.get_title(), t)
                checked += 1
            assert to_rgb(ax.title.get_color()) == (0.0, 0.0, 0.0)
    assert checked > 0
