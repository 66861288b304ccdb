"""The read-only catalog and the named queries, on synthetic stores written as docs/layout.md says.

Every expected figure is computed here in numpy from the planted numbers, not by SQL.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bfd.queries import (
    ReadOnlyError,
    connect,
    list_queries,
    query_spec,
    query_sql,
    run_query,
    run_sql,
)
from bfd.queries.catalog import CATALOG_DIR, check_read_only, refresh_catalog
from bfd.storage import SEEN_FIGURES, NotAStoreError, Store, write_audit

BLOCKS = ("pp", "pc", "cp", "cc")
TYPE_NAMES = {"pp": "position-position", "cp": "content-position", "cc": "content-content"}


@dataclass
class PlantedRun:
    """One synthetic run: what was written for it, as arrays indexed [layer, head(, block)]."""

    run_id: str
    model: str
    created_at: dt.datetime
    status: str
    n_images: int
    energy: np.ndarray  # (layers, heads, 4), blocks in BLOCKS order
    frac_pos: np.ndarray  # (layers,), attn_in
    frac_pos_resid: np.ndarray | None  # (layers,), or None where resid was not recorded

    @property
    def depth(self) -> int:
        return self.energy.shape[0]

    @property
    def fractions(self) -> np.ndarray:
        return self.energy / self.energy.sum(axis=-1, keepdims=True)

    @property
    def head_class(self) -> np.ndarray:
        """docs/method.md head type: argmax of f_pp, f_cp + f_pc, f_cc, as 'pp' / 'cp' / 'cc'."""
        f = self.fractions
        scores = np.stack([f[..., 0], f[..., 1] + f[..., 2], f[..., 3]], axis=-1)
        return np.array(["pp", "cp", "cc"])[scores.argmax(axis=-1)]


def _utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def plant_runs() -> list[PlantedRun]:
    """Two models of different depth and width; vit_a audited twice, plus an unfinished run."""
    rng = np.random.default_rng(7)
    shapes = {"vit_a": (12, 6), "vit_b": (6, 3)}
    rows = [
        ("a-old", "vit_a", _utc(2025, 1, 1), "complete", 100, True),
        ("a-new", "vit_a", _utc(2025, 2, 1), "complete", 200, True),
        ("a-unfinished", "vit_a", _utc(2025, 3, 1), "running", 300, True),
        ("b-1", "vit_b", _utc(2025, 1, 15), "complete", 50, False),
    ]
    runs = []
    for run_id, model, created_at, status, n_images, with_resid in rows:
        depth, width = shapes[model]
        # Energies spread over orders of magnitude so that energy weighting and plain means
        # of fractions differ clearly.
        energy = rng.lognormal(mean=0.0, sigma=1.5, size=(depth, width, 4))
        frac_pos = rng.uniform(0.05, 0.6, size=depth)
        resid = rng.uniform(0.05, 0.6, size=depth) if with_resid else None
        runs.append(
            PlantedRun(run_id, model, created_at, status, n_images, energy, frac_pos, resid)
        )
    return runs


def write_part(store: Path, table: str, model: str, run_id: str, n_rows: int, **columns) -> Path:
    """Writes one table file where docs/layout.md puts it; scalar values fill every row."""
    folder = store / "tables" / table / f"model={model}" / f"run_id={run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    data = {"run_id": run_id, "model": model, **columns}
    data = {
        name: value if isinstance(value, list | np.ndarray | pa.Array) else [value] * n_rows
        for name, value in data.items()
    }
    path = folder / "part-0.parquet"
    pq.write_table(pa.table(data), path)
    return path


def write_run(store: Path, run: PlantedRun) -> None:
    """Writes the runs, layers, heads, modes and images files of one planted run."""
    depth, width = run.energy.shape[:2]
    part = {"store": store, "model": run.model, "run_id": run.run_id}
    sites = {"attn_in": run.frac_pos}
    if run.frac_pos_resid is not None:
        sites["resid"] = run.frac_pos_resid
    write_part(
        **part, table="runs", n_rows=1,
        weights="synthetic", weights_sha256="0" * 64, images="imagenet-val",
        images_sha256="1" * 64, n_images=run.n_images, n_skipped=0, img_size=224, grid_h=14,
        grid_w=14, prefix_tokens=1, sites=",".join(sites), dtype="float16",
        layers=",".join(str(layer) for layer in range(depth)),
        created_at=pa.array([run.created_at], pa.timestamp("us", tz="UTC")),
        bfd_version="0.1.0", timm_version="1.0.9", torch_version="2.4.0", config_json="{}",
        status=run.status,
    )  # fmt: skip
    frac_pos = np.concatenate(list(sites.values()))
    write_part(
        **part, table="layers", n_rows=len(frac_pos),
        layer=np.tile(np.arange(depth, dtype=np.int32), len(sites)),
        site=np.repeat(list(sites), depth),
        ss_total=1.0, frac_pos=frac_pos, frac_img=(1 - frac_pos) / 2, frac_int=(1 - frac_pos) / 2,
        pos_split_half_r=0.99, pos_embed_cos=0.5, shuffle_frac_pos=0.001,
        ss_identity_residual=1e-15, ortho_residual=1e-15,
    )  # fmt: skip
    layer, head = np.meshgrid(np.arange(depth), np.arange(width), indexing="ij")
    layer, head = layer.astype(np.int32), head.astype(np.int32)
    energy = run.energy.reshape(-1, 4)
    fractions = run.fractions.reshape(-1, 4)
    write_part(
        **part, table="heads", n_rows=depth * width, layer=layer.ravel(), head=head.ravel(),
        **{f"e_{b}": energy[:, i] for i, b in enumerate(BLOCKS)},
        **{f"f_{b}": fractions[:, i] for i, b in enumerate(BLOCKS)},
        head_type=[TYPE_NAMES[c] for c in run.head_class.ravel()],
        eff_rank=3.0, eff_rank_sigma=4.0, k90=5, mode_coupling=0.1,
    )  # fmt: skip
    write_part(
        **part, table="modes", n_rows=1, layer=0, head=0, mode=0, sigma=1.0, alpha=0.5,
        beta=0.5, e_pp=1.0, e_pc=1.0, e_cp=1.0, e_cc=1.0, mode_type="pp",
    )  # fmt: skip
    write_part(
        **part, table="images", n_rows=2, image_index=[0, 1], image_id=["x0", "x1"],
        sha256=["a" * 64, "b" * 64], status="ok", error=pa.nulls(2, pa.string()),
    )  # fmt: skip


def build_store(root: Path) -> dict[str, PlantedRun]:
    """A store holding every planted run; returns them by run_id."""
    runs = plant_runs()
    for run in runs:
        write_run(root, run)
    return {run.run_id: run for run in runs}


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, dict[str, PlantedRun]]:
    root = tmp_path / "store"
    return root, build_store(root)


def rows(table: pa.Table) -> list[dict]:
    return table.to_pylist()


def energy_fractions(energy: np.ndarray) -> np.ndarray:
    """Energies summed over every axis but the block axis, then divided by their total."""
    total = energy.reshape(-1, 4).sum(axis=0)
    return total / total.sum()


def assert_close(actual: float | None, expected: float) -> None:
    assert actual is not None and math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-14)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- named queries ----------------------------------------------------------------------------


def test_model_summary_uses_latest_complete_run_per_model(store):
    root, runs = store
    _set_run(root, "a-new", n_skipped=7)  # 7 of its 200 images did not decode
    _set_run(root, "a-new", weights="/ckpts/step_9.pth")  # a checkpoint's run is the latest
    # ... on other images, at another img_size: the row says which it is
    _set_run(root, "a-new", images="/data/noise/", images_sha256="2" * 64, img_size=160)
    # ... decomposed with the prefix tokens included: its shares are over other positions
    _set_run(root, "a-new", config_json='{"decompose": {"prefix": "include"}}')
    skipped = {"a-new": 7, "b-1": 0}
    result = rows(run_query(root, "model_summary"))
    assert [r["model"] for r in result] == ["vit_a", "vit_b"]
    for row, run in zip(result, [runs["a-new"], runs["b-1"]], strict=True):
        assert row["run_id"] == run.run_id
        # which weights "the model" is here
        assert row["weights"] == ("/ckpts/step_9.pth" if run.run_id == "a-new" else "synthetic")
        assert (row["prefix"], row["images"], row["img_size"]) == (
            ("include", "noise@222222222222", 160) if run.run_id == "a-new"
            else ("exclude", "imagenet-val@111111111111", 224))
        # requested, and decoded: the N its shares are over (runs.n_images less n_skipped)
        assert row["n_images"] == run.n_images
        assert row["n_decoded"] == run.n_images - skipped[run.run_id]
        assert row["n_layers"] == run.depth
        assert row["n_heads"] == run.energy.shape[0] * run.energy.shape[1]
        for i, block in enumerate(BLOCKS):
            assert_close(row[f"f_{block}"], energy_fractions(run.energy)[i])
            assert_close(row[f"mean_f_{block}"], run.fractions[..., i].mean())
        assert_close(row["frac_pos_mean"], run.frac_pos.mean())
        for cls in ("pp", "cp", "cc"):
            assert row[f"n_heads_{cls}"] == int((run.head_class == cls).sum())
        assert row["n_heads_undefined"] == 0
        assert row["n_heads_pp"] + row["n_heads_cp"] + row["n_heads_cc"] == row["n_heads"]
    # Energy weighting must differ from the plain mean here, or the test could not tell them apart.
    assert abs(result[0]["f_pp"] - result[0]["mean_f_pp"]) > 1e-3


def test_layer_profile_latest_and_chosen_run(store):
    root, runs = store
    for params, run in [
        ({"model": "vit_a"}, runs["a-new"]),
        ({"model": "vit_a", "run_id": "a-old"}, runs["a-old"]),
        ({"model": "vit_b"}, runs["b-1"]),
    ]:
        result = rows(run_query(root, "layer_profile", params))
        assert [r["layer"] for r in result] == list(range(run.depth))
        assert {r["run_id"] for r in result} == {run.run_id}
        for layer, row in enumerate(result):
            assert_close(row["rel_depth"], layer / (run.depth - 1))
            assert_close(row["frac_pos"], run.frac_pos[layer])
            assert_close(row["frac_content"], 1 - run.frac_pos[layer])
            if run.frac_pos_resid is None:
                assert row["frac_pos_resid"] is None
            else:
                assert_close(row["frac_pos_resid"], run.frac_pos_resid[layer])
            for i, block in enumerate(BLOCKS):
                assert_close(row[f"f_{block}"], energy_fractions(run.energy[layer])[i])
            assert row["n_heads"] == run.energy.shape[1]
            for cls in ("pp", "cp", "cc"):
                assert row[f"n_heads_{cls}"] == int((run.head_class[layer] == cls).sum())


def test_layer_profile_gives_no_rows_for_unfinished_or_foreign_run(store):
    root, _ = store
    for params in [
        {"model": "vit_a", "run_id": "a-unfinished"},
        {"model": "vit_b", "run_id": "a-new"},
        {"model": "no_such_model"},
    ]:
        # the SQL's own answer (run_query refuses all three but the unfinished run: hints)
        assert run_query(root, "layer_profile", params, check=False).num_rows == 0, params


def test_head_map_lists_every_head_of_the_latest_run(store):
    root, runs = store
    run = runs["a-new"]
    result = rows(run_query(root, "head_map", {"model": "vit_a"}))
    assert [(r["layer"], r["head"]) for r in result] == [
        (layer, head) for layer in range(run.depth) for head in range(run.energy.shape[1])
    ]
    for row in result:
        assert row["run_id"] == "a-new"
        assert_close(row["f_cp"], run.fractions[row["layer"], row["head"], 2])
        assert row["head_type"] == TYPE_NAMES[run.head_class[row["layer"], row["head"]]]


def test_head_types_counts_stored_types_per_model_and_layer(store):
    root, runs = store
    expected = []
    for run in (runs["a-new"], runs["b-1"]):
        for layer in range(run.depth):
            names, counts = np.unique(
                [TYPE_NAMES[c] for c in run.head_class[layer]], return_counts=True
            )
            expected += [
                (run.model, run.run_id, layer, str(name), int(count))
                for name, count in zip(names, counts, strict=True)
            ]
    result = [tuple(r.values()) for r in rows(run_query(root, "head_types"))]
    assert result == expected
    only_b = rows(run_query(root, "head_types", {"model": "vit_b"}))
    assert {r["model"] for r in only_b} == {"vit_b"}
    assert sum(r["n_heads"] for r in only_b) == 6 * 3


@pytest.mark.parametrize("bins", [None, 4, 1])
def test_compare_models_bins_relative_depth(store, bins):
    root, runs = store
    params = {"model_a": "vit_a", "model_b": "vit_b"}
    if bins is not None:
        params["bins"] = str(bins)
    n_bins = bins or 10
    # vit_a's latest run saw other images at another img_size: images_a/_b, img_size_a/_b say so
    _set_run(root, "a-new", images="/data/noise", images_sha256="2" * 64, img_size=160)
    result = rows(run_query(root, "compare_models", params))

    def per_bin(run: PlantedRun) -> dict[int, tuple[int, float, np.ndarray]]:
        layer_bins = np.minimum(np.arange(run.depth) * n_bins // (run.depth - 1), n_bins - 1)
        return {
            int(b): (
                int((layer_bins == b).sum()),
                run.frac_pos[layer_bins == b].mean(),
                energy_fractions(run.energy[layer_bins == b]),
            )
            for b in np.unique(layer_bins)
        }

    a, b = per_bin(runs["a-new"]), per_bin(runs["b-1"])
    assert [r["bin"] for r in result] == sorted(set(a) | set(b))
    for row in result:
        k = row["bin"]
        assert_close(row["depth_lo"], k / n_bins)
        assert_close(row["depth_hi"], (k + 1) / n_bins)
        for side, expected in (("a", a), ("b", b)):
            if k not in expected:
                assert row[f"n_layers_{side}"] == 0 and row[f"frac_pos_{side}"] is None
                continue
            n_layers, frac_pos, fractions = expected[k]
            assert row[f"n_layers_{side}"] == n_layers
            assert_close(row[f"frac_pos_{side}"], frac_pos)
            for i, block in enumerate(BLOCKS):
                assert_close(row[f"f_{block}_{side}"], fractions[i])
        assert (row["weights_a"], row["weights_b"]) == ("synthetic", "synthetic")
        assert (row["images_a"], row["images_b"], row["img_size_a"], row["img_size_b"]) == (
            "noise@222222222222", "imagenet-val@111111111111", 160, 224)
        assert (row["prefix_a"], row["prefix_b"]) == ("exclude", "exclude")
        assert row["note"] == (
            "run_a saw images noise@222222222222, run_b imagenet-val@111111111111: other "
            "images, whose shares change with the images, not only with the model; run_a was "
            "at img_size 160, run_b at 224: another patch grid, shares over other positions")
        if k in a and k in b:
            assert_close(row["delta_frac_pos"], b[k][1] - a[k][1])
            assert_close(row["delta_f_cc"], b[k][2][3] - a[k][2][3])
        else:
            assert row["delta_frac_pos"] is None
    # 12 layers fill all 10 bins; 6 layers fill 0, 2, 4, 6, 8, 9.
    if bins is None:
        assert sorted(b) == [0, 2, 4, 6, 8, 9] and len(result) == 10


def test_compare_models_says_when_the_runs_were_decomposed_with_other_prefix_options(store):
    """A model decomposed with the prefix tokens included has shares over other positions
    than one decomposed without: every row says each run's prefix option and why its deltas
    are not the models' alone (run_pairs' rule, as compare_runs); runs of the same inputs
    have no note."""
    root, runs = store
    same = rows(run_query(root, "compare_models", {"model_a": "vit_a", "model_b": "vit_b"}))
    assert {(r["prefix_a"], r["prefix_b"], r["note"]) for r in same} == {
        ("exclude", "exclude", None)}
    _set_run(root, "a-new", config_json='{"decompose": {"prefix": "include"}}')
    result = rows(run_query(root, "compare_models", {"model_a": "vit_a", "model_b": "vit_b"}))
    assert len(result) == 10
    assert {(r["run_id_a"], r["prefix_a"], r["prefix_b"], r["note"]) for r in result} == {
        ("a-new", "include", "exclude", "run_a was decomposed with prefix include, run_b with "
         "prefix exclude: shares over other positions")}
    # run_pairs' note (compare_runs') says the same after its two-models reason
    pair = run_query(root, "compare_runs", {"run_a": "a-new", "run_b": "b-1"}).to_pylist()
    assert pair[0]["note"].endswith("; " + result[0]["note"])


@pytest.mark.parametrize("bins", ["0", "-1", "2.5", "abc", "1e1", "99999999999"])
def test_compare_models_rejects_bad_bins(store, bins):
    """Anything but a positive integer is refused in the query's own words (alone: no
    DuckDB 'Invalid Input Error:' before them), never rounded."""
    root, _ = store
    with pytest.raises(ValueError, match=rf"^compare_models: bins must be a positive integer; "
                       f"given {bins}$") as refused:
        run_query(root, "compare_models", {"model_a": "vit_a", "model_b": "vit_b", "bins": bins})
    assert isinstance(refused.value.__cause__, duckdb.InvalidInputException)


def _plant_audit(root: Path, series: str, run_id: str, step: int, prev: str | None,
                 **seen) -> str:
    """A complete audit; ``seen``: what it kept of its run (none: an audit written before
    audits kept them)."""
    audit_id = f"{series}-{step}"
    write_audit(Store(root), {
        "audit_id": audit_id, "series": series, "run_id": run_id, "step": step,
        "started_at": _utc(2025, 4, step), "finished_at": _utc(2025, 4, step),
        "trigger": "test", "flow_run_id": None, "status": "complete", "prev_audit_id": prev,
        "n_flagged": 0, **seen,
    })
    return audit_id


def _set_run(root: Path, run_id: str, model: str = "vit_a", **values) -> None:
    """Rewrites (or adds) columns of a planted run's ``runs`` row (the file replaced whole)."""
    path = root / "tables" / "runs" / f"model={model}" / f"run_id={run_id}" / "part-0.parquet"
    table = pq.read_table(path)
    for name, value in values.items():
        i = table.schema.get_field_index(name)
        if i < 0:
            table = table.append_column(name, pa.array([value]))
            continue
        table = table.set_column(i, name, pa.array([value], table.schema.field(name).type))
    pq.write_table(table, path)


DELTAS = ("delta_f_pp", "delta_f_pc", "delta_f_cp", "delta_f_cc", "delta_frac_pos_mean",
          "delta_frac_pos_resid_mean", "delta_n_heads_pp", "delta_n_heads_cp", "delta_n_heads_cc")


def test_audit_history_orders_audits_and_lags(store):
    """Each series is chained on its own: vit_a's two series never lag into each other."""
    root, runs = store
    _set_run(root, "a-old", n_images=runs["a-new"].n_images)  # the same images as a-new
    first = _plant_audit(root, "vit_a@ckpts", "a-old", 1, None)
    _plant_audit(root, "vit_a@ckpts", "a-new", 2, first)
    _plant_audit(root, "vit_a@seed-1", "a-new", 1, None)  # first of its series, though later
    _plant_audit(root, "vit_a@ckpts", "a-unfinished", 3, None)  # its run is not complete
    result = rows(run_query(root, "audit_history", {"series": "vit_a@ckpts"}))
    old, new = runs["a-old"], runs["a-new"]
    assert [r["run_id"] for r in result] == ["a-old", "a-new"]
    assert [r["prev_run_id"] for r in result] == [None, "a-old"]
    assert [r["prev_audit_id"] for r in result] == [None, first]
    assert [r["comparable"] for r in result] == [None, True]
    assert result[0]["created_at"] < result[1]["created_at"]
    assert all(result[0][d] is None for d in DELTAS)
    for i, block in enumerate(BLOCKS):
        assert_close(result[1][f"f_{block}"], energy_fractions(new.energy)[i])
        assert_close(
            result[1][f"delta_f_{block}"],
            energy_fractions(new.energy)[i] - energy_fractions(old.energy)[i],
        )
    assert_close(result[1]["delta_frac_pos_mean"], new.frac_pos.mean() - old.frac_pos.mean())
    assert_close(result[1]["delta_frac_pos_resid_mean"],
                 new.frac_pos_resid.mean() - old.frac_pos_resid.mean())
    for cls in ("pp", "cp", "cc"):
        change = int((new.head_class == cls).sum()) - int((old.head_class == cls).sum())
        assert result[1][f"delta_n_heads_{cls}"] == change
    by_model = rows(run_query(root, "audit_history", {"model": "vit_a"}))
    assert [(r["series"], r["run_id"], r["prev_run_id"]) for r in by_model] == [
        ("vit_a@ckpts", "a-old", None), ("vit_a@ckpts", "a-new", "a-old"),
        ("vit_a@seed-1", "a-new", None)]


@pytest.mark.parametrize("other", [
    {"n_images": 100}, {"n_skipped": 3}, {"images_sha256": "2" * 64}, {"img_size": 112},
    {"layers": "0,1,2"}])
def test_audit_history_has_no_delta_between_runs_of_other_inputs(store, other):
    """Figures over other images, another N or img_size, or another set of layers differ
    with the model unchanged: not comparable, every delta NULL (the figures stay)."""
    root, runs = store
    _set_run(root, "a-old", **{"n_images": runs["a-new"].n_images, **other})
    first = _plant_audit(root, "vit_a@ckpts", "a-old", 1, None)
    _plant_audit(root, "vit_a@ckpts", "a-new", 2, first)
    result = rows(run_query(root, "audit_history", {"series": "vit_a@ckpts"}))
    assert [r["comparable"] for r in result] == [None, False]
    assert all(r[d] is None for r in result for d in DELTAS)
    n_old = other.get("n_images", runs["a-new"].n_images)
    assert [(r["n_images"], r["n_decoded"]) for r in result] == [
        (n_old, n_old - other.get("n_skipped", 0)), (runs["a-new"].n_images,) * 2]
    assert_close(result[1]["f_cc"], energy_fractions(runs["a-new"].energy)[3])


def test_audit_history_has_no_delta_between_runs_of_two_models(store):
    """One series given audits of two models (vit_b, then vit_a: one --series for both), or
    of one name with another depth, seeing the same images, N, img_size and layers: not
    comparable, every delta NULL; the same shapes under one name (other weights) are."""
    root, runs = store
    same = {"n_images": runs["a-new"].n_images, "layers": ",".join(map(str, range(12)))}
    _set_run(root, "b-1", model="vit_b", **same)
    first = _plant_audit(root, "mixed", "b-1", 1, None)
    _plant_audit(root, "mixed", "a-new", 2, first)
    _set_run(root, "a-old", **same, depth=24, num_heads=6, width=384)
    _set_run(root, "a-new", depth=12, num_heads=6, width=384)
    first = _plant_audit(root, "vit_a@ckpts", "a-old", 1, None)
    _plant_audit(root, "vit_a@ckpts", "a-new", 2, first)
    for series in ("mixed", "vit_a@ckpts"):
        result = rows(run_query(root, "audit_history", {"series": series}))
        assert [r["comparable"] for r in result] == [None, False], series
        assert all(r[d] is None for r in result for d in DELTAS), series
    _set_run(root, "a-old", depth=12)
    result = rows(run_query(root, "audit_history", {"series": "vit_a@ckpts"}))
    assert [r["comparable"] for r in result] == [None, True]


def test_audit_history_compares_each_audit_with_the_one_its_drift_was_compared_with(store):
    """An audit backfilled later at a step in between (step 2, prev step 1) does not become
    step 3's previous audit: step 3's drift was compared with step 1 when it ran, and its
    deltas, prev_run_id and comparable are against step 1 too."""
    root, runs = store
    _set_run(root, "a-old", n_images=runs["a-new"].n_images)
    first = _plant_audit(root, "vit_a@ckpts", "a-old", 1, None)
    _plant_audit(root, "vit_a@ckpts", "a-new", 3, first)
    _plant_audit(root, "vit_a@ckpts", "a-new", 2, first)  # backfilled after step 3
    result = rows(run_query(root, "audit_history", {"series": "vit_a@ckpts"}))
    assert [(r["step"], r["prev_audit_id"], r["prev_run_id"]) for r in result] == [
        (1, None, None), (2, first, "a-old"), (3, first, "a-old")]
    change = energy_fractions(runs["a-new"].energy) - energy_fractions(runs["a-old"].energy)
    for r in result[1:]:
        assert r["comparable"] is True
        for i, block in enumerate(BLOCKS):
            assert_close(r[f"delta_f_{block}"], change[i])


def test_audit_history_shows_the_figures_each_audit_kept(store):
    """An audit that kept its run's figures shows those, not the run's current ones (the run
    decomposed again since); deltas are between what the audits saw; another prefix option
    is not comparable."""
    root, runs = store
    _set_run(root, "a-old", n_images=runs["a-new"].n_images)
    kept = {name: 0.125 * (i + 1) if kind == pa.float64() else i + 2
            for i, (name, kind) in enumerate(SEEN_FIGURES)}
    first = _plant_audit(root, "vit_a@ckpts", "a-old", 1, None, **kept,
                         results_version="v1", decompose_json='{"prefix": "exclude"}')
    second = _plant_audit(root, "vit_a@ckpts", "a-new", 2, first)  # kept nothing: the run's
    _plant_audit(root, "vit_a@ckpts", "a-new", 3, second, **kept,
                 decompose_json='{"prefix": "include"}')
    result = rows(run_query(root, "audit_history", {"series": "vit_a@ckpts"}))
    assert [r["results_version"] for r in result] == ["v1", None, None]
    assert all(result[0][name] == value for name, value in kept.items())
    new = energy_fractions(runs["a-new"].energy)
    for i, block in enumerate(BLOCKS):
        assert_close(result[1][f"f_{block}"], new[i])
        assert_close(result[1][f"delta_f_{block}"], new[i] - kept[f"f_{block}"])
    assert_close(result[1]["frac_pos_mean"], runs["a-new"].frac_pos.mean())
    assert [r["comparable"] for r in result] == [None, True, False]  # 3: other positions
    assert all(result[2][d] is None for d in DELTAS)


def test_audit_history_lists_the_audits_of_a_run_left_out_as_damaged(store, capsys):
    """a-old's heads file truncated: the catalog leaves the run out, but its audits are still
    listed (with model, in their series), its run's columns NULL, the figures the audit kept
    shown; its comparisons, and the next audit's against it, NULL (not false: unknown);
    `bfd query` names the run and `bfd verify` on stderr and exits 1. Its audits were hidden
    (and the next audit had no previous run)."""
    from conftest import run_cli

    root, runs = store
    _set_run(root, "a-old", n_images=runs["a-new"].n_images)
    kept = {name: 0.125 * (i + 1) if kind == pa.float64() else i + 2
            for i, (name, kind) in enumerate(SEEN_FIGURES)}
    first = _plant_audit(root, "vit_a@ckpts", "a-old", 1, None, **kept)
    second = _plant_audit(root, "vit_a@ckpts", "a-new", 2, first)
    _plant_audit(root, "vit_a@ckpts", "a-new", 3, second)
    heads = root / "tables" / "heads" / "model=vit_a" / "run_id=a-old" / "part-0.parquet"
    heads.write_bytes(heads.read_bytes()[:100])
    for params in ({"series": "vit_a@ckpts"}, {"model": "vit_a"}):
        result = rows(run_query(root, "audit_history", params))
        assert [(r["run_id"], r["prev_run_id"]) for r in result] == [
            ("a-old", None), ("a-new", "a-old"), ("a-new", "a-new")], params
        damaged, after, last = result
        assert [damaged[c] for c in ("model", "created_at", "n_images")] == [None] * 3
        assert all(damaged[name] == value for name, value in kept.items())
        assert [r["comparable"] for r in result] == [None, None, True]
        assert all(r[d] is None for r in (damaged, after) for d in DELTAS)
        assert after["model"] == "vit_a" and last["delta_f_pp"] == 0
    assert rows(run_query(root, "audit_history", {"model": "vit_b"})) == []
    code, out, err = run_cli(["query", "audit_history", "--param", "series=vit_a@ckpts",
                              "--format", "csv", "--store", str(root)], capsys)
    assert code == 1 and out.count("a-old") == 2, (out, err)
    assert err.splitlines()[-1] == (
        "bfd: error: the output leaves out what 1 damaged or missing store file(s) held (named "
        f"above): bfd verify a-old --store {root} says how to repair run a-old")


def test_head_type_changes_lists_exactly_the_changed_heads(store):
    root, runs = store
    result = rows(run_query(root, "head_type_changes", {"run_a": "a-old", "run_b": "a-new"}))
    old, new = runs["a-old"].head_class, runs["a-new"].head_class
    changed = [(layer, head) for layer in range(12) for head in range(6)
               if old[layer, head] != new[layer, head]]
    assert changed and [(r["layer"], r["head"]) for r in result] == changed
    for r in result:
        assert r["head_type_a"] == TYPE_NAMES[old[r["layer"], r["head"]]]
        assert r["head_type_b"] == TYPE_NAMES[new[r["layer"], r["head"]]]
    assert run_query(root, "head_type_changes", {"run_a": "a-old", "run_b": "a-old"}).num_rows == 0
    assert {(r["same_model"], r["note"]) for r in result} == {(True, None)}


def test_head_energy_changes_compare_each_heads_energy_per_image_and_its_largest_sigma(store):
    """Trial 20 (F1): shares are blind to scale, so a head whose logit energy grew 88-fold
    showed no change anywhere. head_energy_changes gives, per head, each run's total energy,
    per image (a-old decomposed 100 images, a-new 200, one skipped: the stored energies are
    sums over images), their ratio and log ratio, largest |log ratio| first, and each run's
    largest sigma of the head's modes."""
    root, runs = store
    _set_run(root, "a-new", n_skipped=1)
    write_part(root, "modes", "vit_a", "a-new", 3, layer=[0, 0, 1], head=[0, 0, 2],
               mode=[0, 1, 0], sigma=[2.5, 0.5, 4.0], alpha=0.5, beta=0.5, e_pp=1.0,
               e_pc=1.0, e_cp=1.0, e_cc=1.0, mode_type="pp")
    result = rows(run_query(root, "head_energy_changes", {"run_a": "a-old", "run_b": "a-new"}))
    old, new = runs["a-old"].energy.sum(-1), runs["a-new"].energy.sum(-1)
    assert len(result) == 12 * 6
    assert {(r["n_images_a"], r["n_images_b"], r["same_model"], r["note"]) for r in result} == {
        (100, 199, True, None)}
    for r in result:
        at = (r["layer"], r["head"])
        assert_close(r["e_total_a"], old[at])
        assert_close(r["e_total_b"], new[at])
        assert_close(r["e_per_image_a"], old[at] / 100)
        assert_close(r["ratio"], (new[at] / 199) / (old[at] / 100))
        assert_close(r["log_ratio"], math.log((new[at] / 199) / (old[at] / 100)))
        assert r["sigma_max_a"] == (1.0 if at == (0, 0) else None)
        assert r["sigma_max_b"] == {(0, 0): 2.5, (1, 2): 4.0}.get(at)
    logs = [abs(r["log_ratio"]) for r in result]
    assert logs == sorted(logs, reverse=True)
    assert run_query(root, "head_energy_changes", {"run_a": "a-old", "run_b": "x"},
                     check=False).num_rows == 0


def test_head_type_changes_over_other_images_or_img_size_say_so(store):
    """One model's heads on other images (images_sha256) or at another img_size (another
    patch grid) differ with no head changing: every row says why, as compare_runs does."""
    root, runs = store
    _set_run(root, "a-new", images="/data/noise", images_sha256="2" * 64, img_size=160)
    result = rows(run_query(root, "head_type_changes", {"run_a": "a-old", "run_b": "a-new"}))
    assert len(result) == sum(1 for layer in range(12) for head in range(6)
                              if runs["a-old"].head_class[layer, head]
                              != runs["a-new"].head_class[layer, head]) > 0
    assert {(r["same_model"], r["note"]) for r in result} == {(True, (
        "run_a saw images imagenet-val@111111111111, run_b noise@222222222222: other images, "
        "whose shares change with the images, not only with the model; run_a was at img_size "
        "224, run_b at 160: another patch grid, shares over other positions"))}


def test_head_type_changes_of_two_models_say_so(store):
    """Heads l, h of two models are no head changing: every row says so."""
    root, runs = store
    result = rows(run_query(root, "head_type_changes", {"run_a": "b-1", "run_b": "a-new"}))
    old, new = runs["b-1"].head_class, runs["a-new"].head_class
    assert [(r["layer"], r["head"]) for r in result] == [
        (layer, head) for layer in range(6) for head in range(3)
        if old[layer, head] != new[layer, head]] != []
    assert {(r["same_model"], r["note"]) for r in result} == {(False, (
        "run_a is of vit_b, run_b of vit_a: two models, so layer l of one is not layer l of "
        "the other (compare_models aligns relative depth)"))}


def test_two_runs_of_one_name_built_with_other_model_args_are_two_models(store):
    """``--model-arg`` builds another model of one timm name (registers, no class token):
    its runs are no change of the default model's, and the note names the arguments."""
    import json

    root, _ = store
    path = root / "tables" / "runs" / "model=vit_a" / "run_id=a-new" / "part-0.parquet"
    config = json.loads(pq.read_table(path).column("config_json")[0].as_py() or "{}")
    request = {**config.get("request", {}), "extra": {"model_args": {"reg_tokens": 4}}}
    _set_run(root, "a-new", config_json=json.dumps({**config, "request": request},
                                                   sort_keys=True))
    result = rows(run_query(root, "head_type_changes", {"run_a": "a-old", "run_b": "a-new"}))
    assert result and {(r["same_model"], r["note"].split(": two models")[0]) for r in result} == {
        (False, 'run_a is of vit_a, run_b of vit_a {"reg_tokens":4}')}


def test_one_runs_listing_and_seen_figures_equal_the_whole_stores(store):
    """``run_seen`` lists only its run's files: the same files as the whole listing filtered
    to the run, for runs of both layouts (a pointer and the folders before it, another run's
    folder in the same model folder), and the figures of the catalog's run_summary view."""
    import json
    import shutil

    from bfd.queries.listing import RUN_TABLES, list_files
    from bfd.queries.seen import run_seen

    root, runs = store
    # a-old published again in the versioned layout: its pointer names files elsewhere
    for table in RUN_TABLES:
        src = root / "tables" / table / "model=vit_a" / "run_id=a-old"
        if src.exists():
            shutil.move(src / "part-0.parquet", root / "tables" / table / "a-old-v2.parquet")
            shutil.rmtree(src)
    tables = {t: f"tables/{t}/a-old-v2.parquet" for t in RUN_TABLES
              if (root / "tables" / t / "a-old-v2.parquet").exists()}
    (root / "runs" / "a-old").mkdir(parents=True)
    (root / "runs" / "a-old" / "published.json").write_text(json.dumps(
        {"run_id": "a-old", "version": "v2", "tables": tables}))
    all_tables = (*RUN_TABLES, "audits")

    def listed(run_ids=None):  # stats aside: reading a file changes its atime
        listing, _ = list_files(str(root), all_tables, run_ids)
        return {t: [(f.rel, f.run_id) for f in files] for t, files in listing.items()}

    whole = listed()
    summary = {r["run_id"]: r for r in rows(run_sql(
        root, "SELECT * FROM run_summary JOIN runs USING (run_id)"))}
    assert set(summary) == {r for r, run in runs.items() if run.status == "complete"}
    for run_id in runs:
        one = listed((run_id,))
        assert one == {t: [f for f in files if f[1] in (run_id, None)]
                       for t, files in whole.items()}
        assert sum(map(len, one.values())) >= 4  # runs, layers, heads, modes at least
        if run_id not in summary:
            with pytest.raises(LookupError, match="not a complete, published run"):
                run_seen(root, run_id)
            continue
        seen = run_seen(root, run_id)
        assert seen["results_version"] == ("v2" if run_id == "a-old" else None)
        assert seen["config_json"] == summary[run_id]["config_json"]
        for name, _ in SEEN_FIGURES:  # sums over other rows' order: the last bits differ
            want = summary[run_id][name]  # frac_pos_resid_mean: NULL without resid
            assert seen[name] == (want if want is None else pytest.approx(want, rel=1e-12)), name


def test_every_query_runs_on_an_empty_store(tmp_path):
    (tmp_path / "store").mkdir()
    for name in list_queries():
        params = {p.name: "vit_a" for p in query_spec(name).params if p.required}
        assert run_query(tmp_path / "store", name, params, check=False).num_rows == 0, name


def test_partial_store_keeps_contract_columns(tmp_path):
    """A table with no files, and a file from before a column existed, still bind."""
    root = tmp_path / "store"
    write_part(root, "runs", "m", "r", 1, status="complete")
    # A writer's temporary file (docs/layout.md: written to a temp name, then renamed).
    hidden = root / "tables" / "heads" / "model=m" / "run_id=r" / ".part-0.parquet"
    hidden.parent.mkdir(parents=True)
    hidden.write_bytes(b"half-written")
    con = connect(root)
    described = {row[0] for row in con.sql("DESCRIBE runs").fetchall()}
    assert {"created_at", "n_images", "layers", "status"} <= described
    assert con.execute("SELECT count(*) FROM heads").fetchall() == [(0,)]
    summary = rows(run_query(con, "model_summary"))
    assert [(r["model"], r["n_layers"], r["f_pp"]) for r in summary] == [("m", 0, None)]


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        connect(tmp_path / "nowhere")


def test_a_folder_of_other_files_is_no_store_and_gets_no_catalog(tmp_path):
    (tmp_path / "paper.tex").write_text("x")
    with pytest.raises(NotAStoreError, match="is not a BFD store"):
        connect(tmp_path)
    assert os.listdir(tmp_path) == ["paper.tex"]


# --- cached snapshots (<store>/catalog/) ------------------------------------------------------


def catalog_entries(root: Path) -> list[str]:
    """Names in the store's catalog folder, hidden build folders included, but not the stable
    copy ``current.duckdb``."""
    return sorted(set(os.listdir(root / CATALOG_DIR)) - {"current.duckdb"})


def the_snapshot(root: Path) -> Path:
    (name,) = catalog_entries(root)
    assert name.endswith(".duckdb")
    return root / CATALOG_DIR / name


def identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def latest(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.sql("SELECT model, run_id, n_images FROM latest_runs ORDER BY model").fetchall()


def test_second_connect_reuses_the_snapshot(store):
    root, _ = store
    first = connect(root)
    snap = the_snapshot(root)
    before = identity(snap)
    heads = first.sql("SELECT * FROM heads ORDER BY ALL").fetchall()
    second = connect(root)
    assert the_snapshot(root) == snap and identity(snap) == before  # not rebuilt
    assert second.sql("SELECT * FROM heads ORDER BY ALL").fetchall() == heads
    # Float sums may differ in the last bits between runs (DuckDB adds in parallel).
    summaries = [rows(run_query(con, "model_summary")) for con in (first, second)]
    for a, b in zip(*summaries, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, float):
                assert_close(b[key], value)
            else:
                assert b[key] == value, key
    assert refresh_catalog(root) == snap and identity(snap) == before


def test_new_replaced_or_removed_table_file_gives_a_new_snapshot(store):
    root, runs = store
    con = connect(root)
    assert latest(con) == [("vit_a", "a-new", 200), ("vit_b", "b-1", 50)]
    old = the_snapshot(root)

    # A new run: its files are new in the listing.
    newer = PlantedRun(
        "b-2", "vit_b", _utc(2025, 4, 1), "complete", 70,
        runs["b-1"].energy * 2, runs["b-1"].frac_pos, None,
    )  # fmt: skip
    write_run(root, newer)
    added = connect(root)
    assert latest(added) == [("vit_a", "a-new", 200), ("vit_b", "b-2", 70)]
    assert added.sql("SELECT count(*) FROM heads WHERE run_id = 'b-2'").fetchall() == [(18,)]
    assert not old.exists()
    old = the_snapshot(root)
    # The connection opened before keeps its own snapshot, though its file is gone.
    assert latest(con) == [("vit_a", "a-new", 200), ("vit_b", "b-1", 50)]

    # A file replaced atomically (docs/layout.md), here by one of the same size.
    path = root / "tables" / "runs" / "model=vit_b" / "run_id=b-2" / "part-0.parquet"
    table = pq.read_table(path)
    table = table.set_column(
        table.schema.get_field_index("n_images"), "n_images", pa.array([71], pa.int64())
    )
    temporary = path.with_name(".part-0.parquet.tmp")
    pq.write_table(table, temporary)
    assert temporary.stat().st_size == path.stat().st_size
    os.replace(temporary, path)
    assert latest(connect(root)) == [("vit_a", "a-new", 200), ("vit_b", "b-2", 71)]
    assert not old.exists()
    old = the_snapshot(root)

    # A file removed.
    path.unlink()
    assert latest(connect(root)) == [("vit_a", "a-new", 200), ("vit_b", "b-1", 50)]
    assert not old.exists()
    the_snapshot(root)

    # refresh_catalog builds ahead of the next connect, which then reuses its file.
    write_run(root, newer)
    snap = refresh_catalog(root)
    assert snap == the_snapshot(root) and snap.parent == root / CATALOG_DIR
    before = identity(snap)
    assert latest(connect(root)) == [("vit_a", "a-new", 200), ("vit_b", "b-2", 70)]
    assert identity(snap) == before


def test_unreadable_snapshot_is_rebuilt(store):
    root, _ = store
    connect(root).close()
    snap = the_snapshot(root)
    snap.write_bytes(b"not a duckdb file" * 100)
    assert latest(connect(root)) == [("vit_a", "a-new", 200), ("vit_b", "b-1", 50)]
    assert the_snapshot(root) == snap and snap.read_bytes()[8:12] == b"DUCK"


def test_stale_build_folders_are_removed(store):
    root, _ = store
    stale = root / CATALOG_DIR / ".build-dead"
    fresh = root / CATALOG_DIR / ".build-concurrent"
    for folder in (stale, fresh):
        folder.mkdir(parents=True)
        (folder / "x.duckdb").write_bytes(b"half-written")
    hours_ago = time.time() - 2 * 3600
    os.utime(stale, (hours_ago, hours_ago))
    connect(root).close()
    names = catalog_entries(root)
    assert ".build-dead" not in names and ".build-concurrent" in names and len(names) == 2


def test_concurrent_connects_share_one_snapshot(store):
    root, _ = store
    start = threading.Barrier(4)

    def one(_: int) -> list[tuple]:
        start.wait()
        con = connect(root)
        try:
            return latest(con)
        finally:
            con.close()

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, range(4)))
    assert results == [[("vit_a", "a-new", 200), ("vit_b", "b-1", 50)]] * 4
    the_snapshot(root)  # exactly one file, no build folder left


@pytest.mark.parametrize("how", ["catalog-is-a-file", "read-only-store"])
def test_unwritable_store_gets_a_private_snapshot(store, tmp_path, monkeypatch, how):
    root, _ = store
    private = tmp_path / "private-tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    if how == "read-only-store":
        if os.geteuid() == 0:
            pytest.skip("root writes to a read-only folder; see catalog-is-a-file")
        root.chmod(0o555)
    else:
        (root / CATALOG_DIR).write_text("not a folder")
    try:
        before = snapshot(root)
        con = connect(root)
        assert latest(con) == [("vit_a", "a-new", 200), ("vit_b", "b-1", 50)]
        with pytest.raises(duckdb.Error, match="read-only mode"):
            con.execute("UPDATE heads SET f_pp = 0")
        assert refresh_catalog(root) is None
        assert snapshot(root) == before
        assert list(private.iterdir()) == []
    finally:
        root.chmod(0o755)


def test_read_only_store_uses_an_up_to_date_snapshot(store):
    root, _ = store
    if os.geteuid() == 0:
        pytest.skip("root writes to a read-only folder")
    snap = refresh_catalog(root)
    before = identity(snap)
    root.chmod(0o555)
    (root / CATALOG_DIR).chmod(0o555)
    try:
        assert latest(connect(root)) == [("vit_a", "a-new", 200), ("vit_b", "b-1", 50)]
        assert identity(snap) == before
    finally:
        (root / CATALOG_DIR).chmod(0o755)
        root.chmod(0o755)


# --- parameters -------------------------------------------------------------------------------


def test_queries_declare_exactly_the_parameters_they_use():
    assert {
        "model_summary",
        "layer_profile",
        "head_types",
        "compare_models",
        "audit_history",
        "head_map",
    } <= set(list_queries())
    for name in list_queries():
        spec = query_spec(name)
        used = duckdb.extract_statements(query_sql(name))[0].named_parameters
        assert {p.name for p in spec.params} == set(used), name
        assert spec.description, name


def test_missing_required_parameter_is_a_clear_error(store):
    root, _ = store
    needs_model = r"'layer_profile' needs parameter\(s\) model; given: none"
    with pytest.raises(ValueError, match=needs_model):
        run_query(root, "layer_profile")
    # model (required unless run_id): a run id alone names the run
    assert run_query(root, "layer_profile", {"run_id": "no-such-run"}, check=False).num_rows == 0
    with pytest.raises(ValueError, match=r"needs parameter\(s\) model_b; given: model_a"):
        run_query(root, "compare_models", {"model_a": "vit_a"})


def test_unknown_parameter_and_query_are_clear_errors(store):
    root, _ = store
    with pytest.raises(ValueError, match=r"has no parameter\(s\) depth; its parameters: series"):
        run_query(root, "audit_history", {"model": "vit_a", "depth": "3"})
    with pytest.raises(ValueError, match="unknown query 'nope'; known queries: audit_history"):
        run_query(root, "nope")


# --- read-only --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("UPDATE heads SET f_pp = 0", "UPDATE"),
        ("INSERT INTO runs (run_id) VALUES ('x')", "INSERT"),
        ("DELETE FROM layers", "DELETE"),
        ("CREATE TABLE t AS SELECT 1", "CREATE"),
        ("CREATE TEMP VIEW heads AS SELECT 1", "CREATE"),
        ("DROP TABLE heads", "DROP"),
        ("COPY heads TO 'x.parquet'", "COPY"),
        ("ATTACH ':memory:' AS scratch", "ATTACH"),
        ("SET threads = 1", "SET"),
        ("SELECT 1; DELETE FROM heads", "DELETE"),
        ("EXPLAIN ANALYZE DELETE FROM heads", "DELETE"),
        ("PRAGMA enable_profiling", "PRAGMA enable_profiling"),
    ],
)
def test_run_sql_refuses_statements_that_change_anything(store, sql, kind):
    root, _ = store
    before = snapshot(root)
    with pytest.raises(
        ReadOnlyError, match=rf"read-only; refused a statement of kind {kind} \(allowed: SELECT"
    ) as info:
        run_sql(root, sql)
    assert "\n" not in str(info.value)
    assert snapshot(root) == before


@pytest.mark.parametrize(("sql", "refused"), [
    ("INSTALL httpfs", "INSTALL, a statement of kind LOAD"),
    ("-- a comment\nforce install httpfs", "FORCE INSTALL, a statement of kind LOAD"),
    ("LOAD httpfs", "a statement of kind LOAD"),
    ("USE memory", "USE, a statement of kind SET"),
    ("CHECKPOINT", "CHECKPOINT, a statement of kind CALL"),
    ("TRUNCATE heads", "TRUNCATE, a statement of kind DELETE"),
    ("IMPORT DATABASE 'x'", "IMPORT DATABASE, a statement of kind PRAGMA"),
    ("EXPLAIN ANALYZE INSTALL httpfs", "INSTALL, a statement of kind LOAD"),
    ("SELECT 1; UPDATE EXTENSIONS", "UPDATE EXTENSIONS, a statement of a kind this duckdb "
     "cannot name"),
])
def test_a_refusal_names_the_statement_as_typed(sql, refused):
    """DuckDB's kind of a statement is not always its keyword: the refusal names what was
    typed first (it called INSTALL "a statement of kind LOAD", IMPORT DATABASE "PRAGMA ?",
    and let UPDATE EXTENSIONS out as "29 is not a valid StatementType.")."""
    with pytest.raises(ReadOnlyError) as info:
        check_read_only(sql)
    assert str(info.value).startswith(f"the BFD catalog is read-only; refused {refused} ")


def test_the_refusal_names_what_run_sql_lets_through(store):
    """Every form the refusal says is allowed runs; each PRAGMA it names too (it named only
    table_info, of the eight that were let through)."""
    root, _ = store
    with pytest.raises(ReadOnlyError) as info:
        run_sql(root, "PRAGMA enable_profiling")
    allowed = str(info.value).split("(allowed: ", 1)[1].removesuffix(")")
    kinds, pragmas = allowed.split(", and PRAGMA ")
    assert kinds == ("SELECT/WITH/FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN [ANALYZE] of one "
                     "of them")
    con = connect(root)
    for sql in ["SELECT 1", "WITH a AS (SELECT 1) SELECT * FROM a", "FROM runs",
                "DESCRIBE runs", "SHOW TABLES", "SUMMARIZE runs", "EXPLAIN SELECT 1",
                "EXPLAIN ANALYZE SELECT 1"]:
        run_sql(con, sql)
    names = pragmas.split(", ")
    assert set(names) >= {"table_info", "show_tables", "database_list", "version"}
    for name in names:
        assert run_sql(con, f"PRAGMA {name}('runs')" if name == "table_info"
                       else f"PRAGMA {name}").num_rows >= 1, name


@pytest.mark.parametrize("catalog", ["built", "cached", "private"])
def test_raw_connection_cannot_change_results_or_write_files(store, tmp_path, catalog):
    root, _ = store
    if catalog == "cached":
        connect(root).close()
    elif catalog == "private":  # the store cannot hold a snapshot
        (root / CATALOG_DIR).write_text("not a folder")
    con = connect(root)
    if catalog != "private":
        assert the_snapshot(root).is_file()
    # After connect, which may add the snapshot itself: nothing changes from here on.
    before = snapshot(root)
    target = root / "tables" / "heads" / "model=vit_a" / "run_id=a-new" / "part-0.parquet"
    for sql in [
        "UPDATE heads SET f_pp = 0",
        "INSERT INTO runs (run_id) VALUES ('x')",
        "DELETE FROM layers",
        "CREATE TABLE t AS SELECT 1",
        "DROP VIEW latest_runs",
    ]:
        with pytest.raises(duckdb.Error, match="read-only mode"):
            con.execute(sql)
    for sql in [
        f"COPY (SELECT 1 AS x) TO '{target}'",
        f"COPY heads TO '{tmp_path / 'out.csv'}'",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS other",
        f"SELECT * FROM read_parquet('{target}')",
    ]:
        with pytest.raises(duckdb.Error, match="file system operations are disabled"):
            con.execute(sql)
    with pytest.raises(duckdb.Error, match="configuration has been locked"):
        con.execute("SET enable_external_access = true")
    # nor read: DuckDB's temporary folder, ./.tmp of the working directory by default, stayed
    # readable once file access was off (trial 25, F3)
    secret = Path(".tmp").absolute() / f"bfd-test-{os.getpid()}.txt"
    made = not secret.parent.exists()
    secret.parent.mkdir(exist_ok=True)
    secret.write_text("outside the store")
    try:
        for sql in (f"SELECT content FROM read_text('{secret}')",
                    f"SELECT * FROM glob('{secret.parent}/*')"):
            with pytest.raises(duckdb.Error, match="file system operations are disabled"):
                con.execute(sql)
    finally:
        secret.unlink()
        if made:
            with contextlib.suppress(OSError):
                secret.parent.rmdir()
    assert con.execute("SELECT count(*) FROM heads WHERE f_pp = 0").fetchall() == [(0,)]
    assert snapshot(root) == before
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()


def test_run_sql_reads(store):
    root, runs = store
    con = connect(root)
    count = run_sql(con, "SELECT count(*) AS n FROM heads WHERE run_id = $run", {"run": "b-1"})
    assert count.column("n").to_pylist() == [6 * 3]
    assert "f_pp" in run_sql(con, "DESCRIBE heads").column("column_name").to_pylist()
    assert "heads" in run_sql(con, "SHOW TABLES").column("name").to_pylist()
    assert run_sql(con, "PRAGMA table_info('runs')").num_rows >= 21
    assert run_sql(con, "-- why\nEXPLAIN SELECT * FROM heads").num_rows >= 1
    assert run_sql(con, "FROM latest_runs SELECT model ORDER BY model").column(0).to_pylist() == [
        "vit_a",
        "vit_b",
    ]
    # The caller's own temporary objects and unfinished results do not reach run_sql.
    con.execute("CREATE TEMP VIEW heads AS SELECT 42 AS n")
    con.execute("SELECT * FROM runs")
    assert run_sql(con, "SELECT count(*) AS n FROM heads").column("n").to_pylist() == [3 * 72 + 18]
    with pytest.raises(ValueError, match=r"missing \['run'\]"):
        run_sql(con, "SELECT * FROM heads WHERE run_id = $run")
    with pytest.raises(ValueError, match="exactly one statement; given 2"):
        run_sql(con, "SELECT 1; SELECT 2")
    with pytest.raises(ReadOnlyError, match="file access from SQL is off"):
        run_sql(con, f"SELECT * FROM read_csv('{root / 'x.csv'}')")


def test_a_tables_columns_come_in_one_order_whatever_the_files_order(tmp_path):
    """union_by_name orders a table's columns by the first file it reads, and table files
    have random names: two builds of one store could order `runs`' columns differently, so
    `SELECT *` changed and every row's hash with it (the dashboard's run-page keys: a build
    rewrote every run page, 1 build in ~40). Columns now come in the contract's order, then
    any other column by name, the contract columns no file holds as NULLs."""
    from types import SimpleNamespace

    from bfd.queries.snapshot import Schema, load

    a = pa.table({"run_id": ["r1"], "model": ["m"], "layers": ["0,1"], "dtype": ["float16"],
                  "zeta": [1]})
    b = pa.table({"run_id": ["r2"], "model": ["m"], "dtype": ["float32"], "layers": ["2"],
                  "alpha": [2.0]})
    pq.write_table(a, tmp_path / "a.parquet")
    pq.write_table(b, tmp_path / "b.parquet")
    contract = {"runs": "run_id VARCHAR, model VARCHAR, layers VARCHAR, width INTEGER, "
                        "dtype VARCHAR"}
    seen = []
    for order in (("a", "b"), ("b", "a")):
        con = duckdb.connect()
        files = [SimpleNamespace(path=str(tmp_path / f"{name}.parquet")) for name in order]
        load(con, Schema(contract, []), {"runs": files})
        columns = [row[0] for row in con.execute("DESCRIBE runs").fetchall()]
        rows = con.execute("SELECT * FROM runs ORDER BY run_id").fetchall()
        hashed = con.execute("SELECT sum(hash(t)) FROM runs AS t").fetchone()[0]
        con.close()
        seen.append((columns, rows, hashed))
    assert seen[0] == seen[1]
    assert seen[0][0] == ["run_id", "model", "layers", "width", "dtype", "alpha", "zeta"]
    assert seen[0][1] == [("r1", "m", "0,1", None, "float16", None, 1),
                          ("r2", "m", "2", None, "float32", 2.0, None)]
