"""Figures of the named queries, on the synthetic store of test_queries."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from test_queries import build_store

from bfd.queries import run_query
from bfd.report import (
    compare_figure,
    depth_overview_figure,
    head_map_figure,
    layer_profile_figure,
)
from bfd.report.figures import CLASS_COLORS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(data: bytes) -> Image.Image:
    """A decodable PNG with something drawn in it, not an empty canvas."""
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.width > 300 and image.height > 200
    assert len(set(image.convert("RGB").getdata())) > 20
    return image


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    build_store(root)
    return root


def test_layer_profile_and_head_map_figures(store, tmp_path):
    profile = run_query(store, "layer_profile", {"model": "vit_a"})
    heads = run_query(store, "head_map", {"model": "vit_a"})
    layer_profile_figure(profile, tmp_path / "profile.png")
    head_map_figure(heads, tmp_path / "heads.png")
    assert_png((tmp_path / "profile.png").read_bytes())
    assert_png((tmp_path / "heads.png").read_bytes())
    # pandas tables with the same columns draw the same way.
    buffer = io.BytesIO()
    layer_profile_figure(profile.to_pandas(), buffer)
    assert_png(buffer.getvalue())


def test_compare_and_overview_figures(store, tmp_path):
    table = run_query(store, "compare_models", {"model_a": "vit_a", "model_b": "vit_b"})
    compare_figure(table, tmp_path / "compare.png")
    assert_png((tmp_path / "compare.png").read_bytes())
    profiles = {
        model: run_query(store, "layer_profile", {"model": model}) for model in ("vit_a", "vit_b")
    }
    depth_overview_figure(profiles, tmp_path / "overview.png")
    assert_png((tmp_path / "overview.png").read_bytes())


def test_head_map_colours_heads_by_class(tmp_path):
    """Pure position-position, content-position and content-content heads get their colours."""
    pure = {"pp": (1.0, 0.0, 0.0, 0.0), "cp": (0.0, 0.5, 0.5, 0.0), "cc": (0.0, 0.0, 0.0, 1.0)}
    names = ("f_pp", "f_pc", "f_cp", "f_cc")
    rows = [
        {"layer": layer, "head": head, **dict(zip(names, f, strict=True))}
        for layer in range(4)
        for head, f in enumerate(pure.values())
    ]
    head_map_figure(pa.Table.from_pylist(rows), tmp_path / "pure.png", title="pure")
    pixels = np.asarray(Image.open(tmp_path / "pure.png").convert("RGB")).reshape(-1, 3) / 255
    for cls, rgb in CLASS_COLORS.items():
        distance = np.abs(pixels - np.array(rgb)).max(axis=1)
        # Whole cells, not just the legend swatch, carry the colour.
        assert (distance < 0.02).sum() > 2_000, cls


def test_figures_reject_empty_or_wrong_tables(tmp_path):
    empty = pa.table({name: pa.array([], pa.float64()) for name in ("layer", "head", "f_pp")})
    with pytest.raises(ValueError, match="needs column\\(s\\) f_pc, f_cp, f_cc; given columns"):
        head_map_figure(empty, tmp_path / "x.png")
    columns = ("layer", "frac_pos", "f_pp", "f_pc", "f_cp", "f_cc")
    empty = pa.table({name: pa.array([], pa.float64()) for name in columns})
    with pytest.raises(ValueError, match="at least one row; the given table is empty"):
        layer_profile_figure(empty, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
