"""A static, self-contained HTML dashboard of a store: one file, images embedded, no server.

The page shows, from each model's latest complete run: an overview of positional information
across relative depth for all models, the ``model_summary`` table, and per model its layer
profile and layer x head map.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pyarrow as pa

from bfd.queries import connect, run_query
from bfd.report.figures import (
    depth_overview_figure,
    head_map_figure,
    layer_profile_figure,
)

__all__ = ["build_dashboard"]

# Columns of model_summary shown in the table, with their headers; the query has more.
_SUMMARY_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("model", "model"),
    ("run_id", "run"),
    ("created_at", "created"),
    ("n_images", "images"),
    ("n_layers", "layers"),
    ("n_heads", "heads"),
    ("frac_pos_mean", "frac_pos (mean)"),
    ("f_pp", "f_pp"),
    ("f_pc", "f_pc"),
    ("f_cp", "f_cp"),
    ("f_cc", "f_cc"),
    ("n_heads_pp", "pp heads"),
    ("n_heads_cp", "cp heads"),
    ("n_heads_cc", "cc heads"),
)

_STYLE: Final[str] = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, td:nth-child(2) { text-align: left; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
img { max-width: 100%; }
.note { color: #666; }
"""


def _png(draw: Callable[[io.BytesIO], None]) -> str:
    """Draws into memory and returns an <img> whose source is the PNG itself."""
    buffer = io.BytesIO()
    draw(buffer)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="">'


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return html.escape(str(value))


def _summary_table(summary: pa.Table) -> str:
    header = "".join(f"<th>{html.escape(title)}</th>" for _, title in _SUMMARY_COLUMNS)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row[name])}</td>" for name, _ in _SUMMARY_COLUMNS) + "</tr>"
        for row in summary.to_pylist()
    )
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def _model_section(model: str, run_id: str, profile: pa.Table, heads: pa.Table) -> str:
    figures = []
    if profile.num_rows:
        figures.append(_png(lambda out: layer_profile_figure(profile, out)))
    if heads.num_rows:
        figures.append(_png(lambda out: head_map_figure(heads, out)))
    body = (
        f'<div class="figures">{"".join(figures)}</div>'
        if figures
        else '<p class="note">This run stored no layer or head rows.</p>'
    )
    return (
        f"<section><h2>{html.escape(model)}</h2>"
        f"<p class='note'>run {html.escape(run_id)}</p>{body}</section>"
    )


def build_dashboard(store_root: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Writes ``index.html``: a one-file dashboard of the latest complete run of every model.

    Args:
        store_root: The store directory.
        out_dir: Where to write the page; created if missing.

    Returns:
        The path of the written ``index.html``.

    Raises:
        FileNotFoundError: ``store_root`` is not a directory.
    """
    con = connect(store_root)
    try:
        summary = run_query(con, "model_summary")
        sections, profiles = [], {}
        for row in summary.to_pylist():
            params = {"model": row["model"], "run_id": row["run_id"]}
            profile = run_query(con, "layer_profile", params)
            heads = run_query(con, "head_map", params)
            if profile.num_rows:
                profiles[row["model"]] = profile
            sections.append(_model_section(row["model"], row["run_id"], profile, heads))
    finally:
        con.close()
    if summary.num_rows == 0:
        content = (
            f"<p>No runs yet: the store <code>{html.escape(str(store_root))}</code> holds no "
            "complete run.</p>"
        )
    else:
        overview = _png(lambda out: depth_overview_figure(profiles, out)) if profiles else ""
        content = (
            f"{overview}<h2>Models</h2>{_summary_table(summary)}"
            "<p class='note'>f_*: shares of query-key logit energy (energy-weighted over all "
            "heads); frac_pos: positional share of the heads' input (attn_in), mean over "
            "layers; pp / cp / cc heads: heads whose head_type is position-position, "
            "content-position or content-content.</p>" + "".join(sections)
        )
    generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>BFD dashboard</title><style>{_STYLE}</style></head><body>"
        f"<h1>BFD dashboard</h1><p class='note'>store {html.escape(str(store_root))}, "
        f"generated {generated}</p>{content}</body></html>"
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
