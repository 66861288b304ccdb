"""Storage: run identity, shard plan and markers, Zarr template-then-fill, results, Parquet.

Real zarr, xarray and pyarrow on temporary directories; concurrent writers are real threads
and real (spawned) processes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import multiprocessing
import os
import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import dask.array as da
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xarray as xr
import zarr

from bfd import storage as st
from bfd.storage import activations
from bfd.storage.activations import TEMPLATE_ATTR
from bfd.storage.paths import temp_name
from bfd.storage.runs import model_slug

RUN = "toy_vit-0123456789abcdef"
N_IMAGES, IPC, IPS, DIM = 10, 2, 4, 6
LAYERS = (0, 3, 5)
SITES = ("attn_in", "resid")
TOKEN_TYPES = ("cls", "patch", "patch", "patch", "patch")
ROWS = (-1, 0, 0, 1, 1)
COLS = (-1, 0, 1, 0, 1)
IMAGE_IDS = tuple(f"img/{i:03d}.jpg" for i in range(N_IMAGES))
ATTRS = {"model": "toy_vit", "dtype": "float32", "preprocessing": json.dumps({"size": 32})}


def _request(**changes: object) -> st.RunRequest:
    base = dict(
        model="vit_small_patch16_224.augreg_in21k",
        weights="timm",
        weights_sha256="ab" * 32,
        images="/data/imagenet-val",
        images_sha256="cd" * 32,
        n_images=512,
        preprocessing={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 0.9},
        img_size=224,
        sites=("attn_in", "resid"),
        layers=(0, 1, 2),
        dtype="float16",
        code_version="0.1.0",
        extra={"prefix": "exclude"},
    )
    base.update(changes)
    return st.RunRequest(**base)  # type: ignore[arg-type]


def _source(dtype: str = "float32") -> dict[str, np.ndarray]:
    """Deterministic activations (layer, image, token, dim) per site."""
    rng = np.random.default_rng(7)
    shape = (len(LAYERS), N_IMAGES, len(TOKEN_TYPES), DIM)
    return {s: rng.standard_normal(shape).astype(dtype) for s in SITES}


def _create(store: st.Store, dtype: str = "float32", **changes: object) -> None:
    kwargs: dict[str, object] = dict(
        sites=SITES,
        layers=LAYERS,
        n_images=N_IMAGES,
        image_ids=IMAGE_IDS,
        token_types=TOKEN_TYPES,
        rows=ROWS,
        cols=COLS,
        dim=DIM,
        dtype=dtype,
        images_per_chunk=IPC,
        attrs={**ATTRS, "dtype": dtype},
    )
    kwargs.update(changes)
    st.create_activation_template(store, RUN, **kwargs)  # type: ignore[arg-type]


def _fill_shard(root: str, shard: st.Shard, dtype: str) -> int:
    """One worker: write every site of a shard, then mark it done (module-level: picklable)."""
    store = st.Store(root)
    source = _source(dtype)
    for site in SITES:
        st.write_shard(
            store, RUN, site, shard.start, shard.stop, source[site][:, shard.start : shard.stop]
        )
    st.mark_shard_done(
        store,
        RUN,
        shard,
        [
            st.ImageRecord(i, IMAGE_IDS[i], sha256=f"{i:064x}", status="ok")
            for i in range(shard.start, shard.stop)
        ],
    )
    return shard.index


def _run_id_in_child(request_json: dict) -> str:
    return st.run_id(st.RunRequest.from_json_dict(request_json))


@pytest.fixture(scope="module")
def process_pool() -> Iterator[Executor]:
    # spawn: a fresh interpreter with its own hash seed, like a real remote worker.
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool


@pytest.fixture
def store(tmp_path: Path) -> st.Store:
    return st.Store(tmp_path / "store")


# --- store paths ---------------------------------------------------------------------------


def test_store_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BFD_STORE", str(tmp_path / "s"))
    monkeypatch.delenv("BFD_ZARR_URL", raising=False)
    s = st.default_store()
    assert s == st.Store(f"file://{tmp_path}/s")
    assert s.zarr_path == str(tmp_path / "s" / "bfd.zarr")
    assert s.run_dir(RUN) == tmp_path / "s" / "runs" / RUN
    assert s.results_group(RUN) == f"{RUN}/results"
    assert s.tables_dir == tmp_path / "s" / "tables"
    monkeypatch.setenv("BFD_ZARR_URL", "memory://x/bfd.zarr/")
    assert st.default_store().zarr_path == "memory://x/bfd.zarr"
    with pytest.raises(ValueError, match="zarr_url"):
        st.Store("s3://bucket/store")
    for bad in ("", "../x", ".hidden", "a/b", "a" * 201):
        with pytest.raises(ValueError, match="invalid run_id"):
            s.run_dir(bad)


# --- run identity ---------------------------------------------------------------------------


def test_run_id_stable_across_processes_and_dict_order(process_pool: Executor) -> None:
    a = _request()
    b = _request(
        preprocessing={"crop_pct": 0.9, "std": [0.5] * 3, "mean": (0.5, 0.5, 0.5)},
        layers=[0, 1, 2],
        sites=["attn_in", "resid"],
        n_images=np.int64(512),
    )
    assert a == b
    rid = st.run_id(a)
    assert rid == st.run_id(b)
    assert rid.startswith("vit_small_patch16_224.augreg_in21k-")
    assert len(rid.rsplit("-", 1)[1]) == 16
    children = list(process_pool.map(_run_id_in_child, [a.to_json_dict()] * 2))
    assert children == [rid, rid]


def test_run_id_changes_with_every_field() -> None:
    changes = dict(
        model="vit_base_patch16_224",
        weights="file.safetensors",
        weights_sha256="ef" * 32,
        images="/other",
        images_sha256="00" * 32,
        n_images=513,
        preprocessing={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "crop_pct": 1.0},
        img_size=(224, 256),
        sites=("resid", "attn_in"),
        layers=(0, 1),
        dtype="float32",
        code_version="0.1.1",
        extra={"prefix": "include"},
    )
    assert set(changes) == {f.name for f in dataclasses.fields(st.RunRequest)}
    base = st.run_id(_request())
    ids = {name: st.run_id(_request(**{name: value})) for name, value in changes.items()}
    assert base not in ids.values()
    assert len(set(ids.values())) == len(ids)


def test_run_request_validation_and_round_trip(store: st.Store) -> None:
    with pytest.raises(ValueError, match="dtype"):
        _request(dtype="bfloat16")
    with pytest.raises(ValueError, match="layers"):
        _request(layers=(1, 1))
    with pytest.raises(ValueError, match="JSON"):
        _request(extra={"x": object()})
    assert model_slug("hf-hub:timm/vit-b") == "hf_hub_timm_vit_b"
    req = _request(img_size=(224, 224))
    rid = st.write_request(store, req)
    assert st.write_request(store, req) == rid
    assert st.read_request(store, rid) == req
    assert st.list_requests(store) == [rid]
    path = store.run_dir(rid) / "request.json"
    doc = json.loads(path.read_text())
    doc["request"]["n_images"] = 1
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="edited"):
        st.read_request(store, rid)


# --- shard plan, markers, image manifest ------------------------------------------------------


def test_plan_shards() -> None:
    plan = st.plan_shards(10, 2, 4)
    assert plan == [st.Shard(0, 0, 4), st.Shard(1, 4, 8), st.Shard(2, 8, 10)]
    assert st.plan_shards(8, 4, 8) == [st.Shard(0, 0, 8)]
    with pytest.raises(ValueError, match="multiple of images_per_chunk=4"):
        st.plan_shards(10, 4, 6)
    with pytest.raises(ValueError, match="n_images"):
        st.plan_shards(0, 2, 4)


def test_shard_markers_and_image_manifest(store: st.Store) -> None:
    plan = st.plan_shards(N_IMAGES, IPC, IPS)
    st.write_image_manifest(store, RUN, [st.ImageRecord(i, IMAGE_IDS[i]) for i in range(N_IMAGES)])
    assert st.completed_shards(store, RUN) == set()
    shard = plan[1]
    records = [
        st.ImageRecord(i, IMAGE_IDS[i], sha256="0" * 64, status="ok")
        for i in range(shard.start, shard.stop)
    ]
    records[1] = dataclasses.replace(records[1], status="skipped", error="truncated JPEG")
    with pytest.raises(ValueError, match="pending"):
        st.mark_shard_done(
            store, RUN, shard, [dataclasses.replace(r, status="pending") for r in records]
        )
    with pytest.raises(ValueError, match="expected image indices 4..7"):
        st.mark_shard_done(store, RUN, shard, records[:2])
    # A crashed writer's temporary file is not a marker.
    store.shards_dir(RUN).mkdir(parents=True)
    temp_name(store.shards_dir(RUN) / "0.json").write_text("{")
    st.mark_shard_done(store, RUN, shard, records)
    st.mark_shard_done(store, RUN, shard, records)  # a retry replaces it
    assert st.completed_shards(store, RUN) == {1}
    assert st.completed_shards(store, RUN, plan) == {1}
    with pytest.raises(ValueError, match="marker of shard 1 covers images 4:8"):
        st.completed_shards(store, RUN, st.plan_shards(N_IMAGES, IPC, 2 * IPS))
    manifest = st.read_image_manifest(store, RUN)
    assert [r.status for r in manifest] == ["pending"] * 4 + ["ok", "skipped", "ok", "ok"] + [
        "pending"
    ] * 2
    assert manifest[5].error == "truncated JPEG"
    with pytest.raises(ValueError, match="different image manifest"):
        st.write_image_manifest(store, RUN, [st.ImageRecord(i, f"x{i}") for i in range(3)])
    assert st.image_list_sha256(manifest) != st.image_list_sha256(manifest[:-1])


def test_one_marker_reader_strict_or_tolerant(store: st.Store) -> None:
    """Extraction and decomposition refuse an unreadable shard marker; ``bfd runs`` counts its
    shard as not done: both through one reader."""
    from bfd.storage.manifest import read_markers
    from bfd.storage.unpublished import _extracted

    plan = st.plan_shards(N_IMAGES, IPC, IPS)
    for shard in plan:
        records = [st.ImageRecord(i, IMAGE_IDS[i], sha256="0" * 64, status="ok")
                   for i in range(shard.start, shard.stop)]
        records[0] = dataclasses.replace(records[0], status="skipped", error="x")
        st.mark_shard_done(store, RUN, shard, records)
    assert set(read_markers(store, RUN)) == {0, 1, 2}
    assert _extracted(store, RUN, N_IMAGES) == (N_IMAGES, 3)
    marker = json.loads((store.shards_dir(RUN) / "2.json").read_text())
    damage = {1: "{",  # truncated
              2: json.dumps({**marker, "start": "8"})}  # not a marker
    for k, text in damage.items():
        good = (store.shards_dir(RUN) / f"{k}.json").read_text()
        (store.shards_dir(RUN) / f"{k}.json").write_text(text)
        with pytest.raises(st.DamagedStoreError, match=f"{k}.json is damaged"):
            read_markers(store, RUN)
        (store.shards_dir(RUN) / f"{k}.json").write_text(good)
    for k, text in damage.items():
        (store.shards_dir(RUN) / f"{k}.json").write_text(text)
    assert set(read_markers(store, RUN, tolerant=True)) == {0}
    assert _extracted(store, RUN, N_IMAGES) == (IPS, 1)


# --- activations: template then fill --------------------------------------------------------


def _expected(source: dict[str, np.ndarray], written: list[st.Shard]) -> dict[str, np.ndarray]:
    out = {}
    for site, x in source.items():
        y = np.full_like(x, np.nan)
        for s in written:
            y[:, s.start : s.stop] = x[:, s.start : s.stop]
        out[site] = y
    return out


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_writers_fill_whole_chunks(
    store: st.Store, kind: str, dtype: str, process_pool: Executor
) -> None:
    _create(store, dtype=dtype)
    plan = st.plan_shards(N_IMAGES, IPC, IPS)
    todo = [plan[0], plan[2]]  # shard 1 stays unwritten: it must read as NaN
    if kind == "threads":
        with ThreadPoolExecutor(2) as pool:
            done = list(pool.map(_fill_shard, [str(store.root)] * 2, todo, [dtype] * 2))
    else:
        done = list(process_pool.map(_fill_shard, [str(store.root)] * 2, todo, [dtype] * 2))
    assert sorted(done) == [0, 2]
    assert st.completed_shards(store, RUN, plan) == {0, 2}

    ds = st.open_activations(store, RUN)
    expected = _expected(_source(dtype), todo)
    for site in SITES:
        assert ds[site].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(ds[site].values, expected[site])
    assert np.isnan(ds.attn_in.isel(image=slice(4, 8)).values).all()
    assert ds.attn_in.sel(image=IMAGE_IDS[9], layer=5).shape == (len(TOKEN_TYPES), DIM)


def test_last_shard_may_end_inside_a_chunk(store: st.Store) -> None:
    _create(store, images_per_chunk=3)
    plan = st.plan_shards(N_IMAGES, 3, 3)
    assert plan[-1] == st.Shard(3, 9, 10)
    todo = [plan[0], plan[2], plan[3]]
    source = _source()
    with ThreadPoolExecutor(2) as pool:
        list(
            pool.map(
                lambda s: st.write_shard(
                    store, RUN, "resid", s.start, s.stop, source["resid"][:, s.start : s.stop]
                ),
                todo,
            )
        )
    got = st.open_activations(store, RUN).resid
    assert got.data.chunks[1] == (3, 3, 3, 1)
    np.testing.assert_array_equal(got.values, _expected(source, todo)["resid"])


def _chunk_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("stored", "given", "compression"), [
    ("float16", "float32", "none"), ("float32", "float32", "none"), ("float16", "float16", "lz4")])
def test_write_shard_writes_the_files_zarr_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stored: str, given: str, compression: str
) -> None:
    """write_shard writes a local uncompressed array's chunk files itself (the GIL is held
    far less than through Zarr's event loop): the files are those Zarr writes, byte for byte,
    the last chunk's images past the run's last included (NaN); a compressed array goes
    through Zarr."""
    source = _source(given)
    trees = {}
    for direct in (False, True):
        monkeypatch.setattr(activations, "DIRECT_WRITES", direct)
        store = st.Store(tmp_path / str(direct))
        _create(store, dtype=stored, images_per_chunk=3, compression=compression)
        array = zarr.open_group(store.zarr_path, mode="r")[f"{RUN}/resid"]
        assert (activations._chunk_folder(array) is None) == (compression != "none")
        for shard in st.plan_shards(N_IMAGES, 3, 6):  # 0:6 and 6:10, its last chunk 9:12
            for site in SITES:
                st.write_shard(store, RUN, site, shard.start, shard.stop,
                               source[site][:, shard.start:shard.stop])
        trees[direct] = _chunk_files(Path(store.zarr_path))
        got = st.open_activations(store, RUN)
        for site in SITES:
            np.testing.assert_array_equal(got[site].values, source[site].astype(stored))
    assert not [name for name in trees[True] if name.endswith(".partial")]
    assert f"{RUN}/resid/c/2/3/0/0" in trees[True]  # the last chunk of the last layer
    assert trees[True] == trees[False]


def test_open_activations_is_lazy_with_stored_chunks(store: st.Store) -> None:
    _create(store)
    ds = st.open_activations(store, RUN)
    for site in SITES:
        assert ds[site].dims == ("layer", "image", "token", "dim")
        assert isinstance(ds[site].data, da.Array)
        assert ds[site].data.chunks == ((1,) * 3, (2,) * 5, (5,), (DIM,))
    template = xr.Dataset(
        coords={
            "layer": ("layer", np.array(LAYERS, dtype=np.int32)),
            "image": ("image", np.array(IMAGE_IDS, dtype=object)),
            "token": ("token", np.arange(5, dtype=np.int32)),
            "token_type": ("token", np.array(TOKEN_TYPES, dtype=object)),
            "row": ("token", np.array(ROWS, dtype=np.int32)),
            "col": ("token", np.array(COLS, dtype=np.int32)),
        }
    )
    xr.testing.assert_equal(ds.drop_vars(list(SITES)).reset_coords(), template.reset_coords())
    assert ds.attrs["model"] == "toy_vit" and ds.attrs["run_id"] == RUN
    assert st.list_runs(store) == [RUN]
    with pytest.raises(FileNotFoundError, match="runs there"):
        st.open_activations(store, "other-0000000000000000")


def test_template_is_idempotent_and_refuses_changes(store: st.Store) -> None:
    _create(store)
    shard = st.plan_shards(N_IMAGES, IPC, IPS)[0]
    _fill_shard(str(store.root), shard, "float32")
    before = st.open_activations(store, RUN).load()
    _create(store)  # same template: a resumed run must keep its data
    xr.testing.assert_identical(st.open_activations(store, RUN).load(), before)
    for changes, field in [
        ({"dim": DIM + 1}, "dim"),
        ({"images_per_chunk": 5}, "images_per_chunk"),
        ({"attrs": {**ATTRS, "model": "other"}}, "attrs_sha256"),
        ({"image_ids": IMAGE_IDS[::-1]}, "image_ids_sha256"),
    ]:
        with pytest.raises(ValueError, match=field):
            _create(store, **changes)
    xr.testing.assert_identical(st.open_activations(store, RUN).load(), before)


def test_interrupted_template_is_replaced(store: st.Store) -> None:
    _create(store)
    group = zarr.open_group(store.zarr_path, path=RUN, mode="r+")
    attrs = dict(group.attrs)
    del attrs[TEMPLATE_ATTR]
    group.attrs.clear()
    group.attrs.update(attrs)  # as if the process died before the marker
    assert st.list_runs(store) == []
    with pytest.raises(FileNotFoundError, match="create_activation_template"):
        st.write_shard(store, RUN, "attn_in", 0, 2, _source()["attn_in"][:, :2])
    _create(store)
    assert st.list_runs(store) == [RUN]


def test_write_shard_rejects_misaligned_or_malformed(store: st.Store) -> None:
    _create(store)
    x = _source()["attn_in"]
    with pytest.raises(ValueError, match="not chunk-aligned"):
        st.write_shard(store, RUN, "attn_in", 1, 4, x[:, 1:4])
    with pytest.raises(ValueError, match="not chunk-aligned"):
        st.write_shard(store, RUN, "attn_in", 0, 3, x[:, 0:3])
    with pytest.raises(ValueError, match="expected \\(3, 2, 5, 6\\)"):
        st.write_shard(store, RUN, "attn_in", 0, 2, x[:2, 0:2])
    with pytest.raises(ValueError, match="not in run"):
        st.write_shard(store, RUN, "mlp_out", 0, 2, x[:, 0:2])
    st.write_shard(store, RUN, "attn_in", 8, 10, x[:, 8:10])
    with pytest.raises(ValueError, match="row, col >= 0"):
        _create(st.Store(store.root / "other"), rows=(0, 0, 0, 1, 1))


def test_zarr_part_on_fsspec_url(tmp_path: Path) -> None:
    store = st.Store(tmp_path / "s", zarr_url=f"memory://bfd-test-{os.getpid()}/bfd.zarr")
    _create(store)
    x = _source()["resid"]
    st.write_shard(store, RUN, "resid", 0, 4, x[:, :4])
    got = st.open_activations(store, RUN).resid.isel(image=slice(0, 4)).values
    np.testing.assert_array_equal(got, x[:, :4])


# --- results -----------------------------------------------------------------------------


def test_model_tensors_one_layer_reads_its_own_chunk(store: st.Store) -> None:
    rng = np.random.default_rng(5)
    qkv = rng.standard_normal((3, 12, 4)).astype(np.float32)
    scale = np.array([0.5, 0.25, 0.125])
    pos = rng.standard_normal((9, 4)).astype(np.float32)
    st.write_model_tensors(store, "m-1", layers=[0, 5, 7], qkv_weight=qkv, attn_scale=scale,
                           num_heads=2, pos_embed=pos)
    whole = st.read_model_tensors(store, "m-1")
    assert zarr.open_array(store.zarr_path, path="m-1/model/qkv_weight").chunks == (1, 12, 4)
    one = st.read_model_tensors(store, "m-1", layer=5)
    assert list(one.layer.values) == [5] and one.attrs["num_heads"] == 2
    assert np.array_equal(one.qkv_weight.sel(layer=5).values, qkv[1])
    assert float(one.attn_scale.sel(layer=5)) == 0.25
    assert np.array_equal(one.pos_embed.values, pos)
    xr.testing.assert_identical(one, whole.sel(layer=[5]))
    with pytest.raises(ValueError, match=r"layer 3 is not among run m-1's layers \[0, 5, 7\]"):
        st.read_model_tensors(store, "m-1", layer=3)


def test_results_round_trip_keeps_activations(store: st.Store) -> None:
    _create(store)
    _fill_shard(str(store.root), st.plan_shards(N_IMAGES, IPC, IPS)[0], "float32")
    acts = st.open_activations(store, RUN).load()
    rng = np.random.default_rng(1)
    results = xr.Dataset(
        {
            "energy": (("layer", "head", "block"), rng.random((3, 2, 4))),
            "head_type": (("layer", "head"), np.array([["cc", "cp"], ["pp", "cc"], ["cp", "cp"]])),
        },
        coords={"layer": list(LAYERS), "head": [0, 1], "block": ["pp", "pc", "cp", "cc"]},
        attrs={"prefix": "exclude"},
    )
    with warnings.catch_warnings():
        # e.g. zarr's "unstable specification" warning for fixed-width strings
        warnings.simplefilter("error")
        st.write_results(store, RUN, results)
    xr.testing.assert_equal(st.open_results(store, RUN).load(), results)
    st.write_results(store, RUN, results.isel(head=[0]))  # recomputed results replace old ones
    xr.testing.assert_equal(st.open_results(store, RUN).load(), results.isel(head=[0]))
    xr.testing.assert_identical(st.open_activations(store, RUN).load(), acts)
    with pytest.raises(FileNotFoundError, match="no results"):
        st.open_results(store, "other-0000000000000000")


# --- Parquet tables --------------------------------------------------------------------------


def _head_rows(n: int) -> list[dict]:
    return [
        dict(
            layer=i // 2,
            head=i % 2,
            e_pp=1.0,
            e_pc=2.0,
            e_cp=3.0,
            e_cc=4.0,
            f_pp=0.1,
            f_pc=0.2,
            f_cp=0.3,
            f_cc=0.4,
            head_type="content-content",
            eff_rank=2.5,
            eff_rank_sigma=3.0,
            k90=3,
            mode_coupling=0.01,
            bias_key_share=0.02,
            bias_key_pos_share=0.015,
            bias_key_con_share=0.005,
            note=f"extra {i}",
            # the chance-corrected shares and intervals (docs/method.md), one value for all
            **{c: 0.5 for c in st.TABLE_SCHEMAS["heads"].names if c.endswith(_STATISTICS)},
        )
        for i in range(n)
    ]


_STATISTICS = ("_adj", "_se", "_lo", "_hi", "_stability")


def test_table_schemas_hold_the_contract() -> None:
    assert set(st.TABLE_SCHEMAS) == {"runs", "layers", "heads", "modes", "images"}
    for name, schema in st.TABLE_SCHEMAS.items():
        assert schema.names[:2] == ["run_id", "model"] or name == "runs"
        assert "model" in schema.names
    assert st.TABLE_SCHEMAS["runs"].field("created_at").type == pa.timestamp("us", tz="UTC")
    assert st.TABLE_SCHEMAS["heads"].field("k90").type == pa.int32()


def test_parquet_round_trip_layout_and_atomic_publish(store: st.Store) -> None:
    model = "hf-hub:timm/vit_small_patch16_224"
    path = st.write_table(store, "heads", model, RUN, _head_rows(4))
    pointer = st.read_pointer(store, RUN)
    assert path == store.tables_dir / "heads" / RUN / f"part-{pointer['version']}.parquet"
    assert pointer["tables"] == {"heads": f"tables/heads/{RUN}/{path.name}"}
    got = pq.read_table(path)
    schema = st.TABLE_SCHEMAS["heads"]
    assert got.schema.names == schema.names + ["note"]
    assert got.select(schema.names).schema.equals(schema)
    assert got.column("model").to_pylist() == [model] * 4
    assert got.column("note").to_pylist()[-1] == "extra 3"

    pattern = st.table_glob(store, "heads")
    assert fnmatch.fnmatch(str(path), pattern)
    assert not fnmatch.fnmatch(str(temp_name(path)), pattern)
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temp file left behind

    # A failing write publishes nothing and leaves nothing behind.
    bad = _head_rows(2)
    bad[0]["k90"] = "many"
    with pytest.raises(ValueError, match="'k90'"):
        st.write_table(store, "heads", model, RUN, bad)
    assert st.read_pointer(store, RUN) == pointer and os.listdir(path.parent) == [path.name]
    # A replacement is a new version; the old file goes after the switch; other tables stay.
    st.write_table(store, "images", model, RUN, [])
    new = st.write_table(store, "heads", model, RUN, _head_rows(2))
    assert new != path and not path.exists()
    assert set(st.read_pointer(store, RUN)["tables"]) == {"heads", "images"}
    assert st.read_table(store, "heads").num_rows == 2
    assert st.published_files(store, "heads") == [new]

    # A store written before versioned publishing is read as it is, until republished.
    old = "old-0000000000000000"
    legacy = store.tables_dir / "heads" / "model=m" / f"run_id={old}" / "part-0.parquet"
    legacy.parent.mkdir(parents=True)
    pq.write_table(st.conform("heads", "m", old, _head_rows(3)), legacy)
    assert st.read_table(store, "heads").num_rows == 5
    with st.publishing(store, old) as pub:
        pub.write_table("heads", "m", _head_rows(1))
    assert not legacy.exists() and st.read_table(store, "heads").num_rows == 3

    # The pointers' files are exactly those the SQL catalog reads.
    from bfd.queries.catalog import table_files
    from bfd.queries.listing import RUN_TABLES

    assert RUN_TABLES == st.RUN_TABLES
    for table in st.RUN_TABLES:
        assert table_files(store.root, table) == st.published_files(store, table)


def test_failed_publish_keeps_the_previous_version(store: st.Store) -> None:
    """A publish that fails after some tables (here: a full disk on the third write) leaves
    the previous version published and readable, and removes its own files."""
    with st.publishing(store, RUN) as pub:
        for table in ("layers", "heads", "modes"):
            pub.write_table(table, "m", [] if table != "heads" else _head_rows(4))
    before = {t: st.read_table(store, t) for t in ("layers", "heads", "modes")}
    pointer = st.read_pointer(store, RUN)
    writes = 0
    real = pq.write_table

    def fill_up(*args, **kwargs):
        nonlocal writes
        writes += 1
        if writes == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pq, "write_table", fill_up)
        with pytest.raises(OSError, match="No space"), st.publishing(store, RUN) as pub:
            for table in ("layers", "heads", "modes"):
                pub.write_table(table, "m", _head_rows(1) if table == "heads" else [])
    assert st.read_pointer(store, RUN) == pointer
    for table, data in before.items():
        assert st.read_table(store, table).equals(data)
        assert os.listdir(store.tables_dir / table / RUN) == [f"part-{pointer['version']}.parquet"]


def test_the_method_of_a_publish_is_recorded_and_kept(store: st.Store) -> None:
    """A publish records the method it is given (bfd.tasks.publish gives RESULTS_METHOD); a
    table published again alone keeps it; a pointer without one (written before methods were
    recorded) and the layout before versioned publishing read as method 1; a run not
    published has none."""
    from bfd.core.method import UNRECORDED_METHOD

    assert st.published_method(store, RUN) is None
    st.write_table(store, "heads", "m", RUN, _head_rows(1))  # no method given: none recorded
    assert "method" not in st.read_pointer(store, RUN)
    assert st.published_method(store, RUN) == UNRECORDED_METHOD
    with st.publishing(store, RUN) as pub:
        pub.method = 7
        pub.write_table("heads", "m", _head_rows(1))
    assert st.read_pointer(store, RUN)["method"] == 7
    st.write_table(store, "layers", "m", RUN, [])
    assert st.published_method(store, RUN) == 7
    legacy = store.table_dir("heads") / "model=m" / "run_id=old-run" / "part-0.parquet"
    legacy.parent.mkdir(parents=True)
    pq.write_table(st.conform("heads", "m", "old-run", _head_rows(1)), legacy)
    assert st.published_method(store, "old-run") == UNRECORDED_METHOD


def test_a_pointer_naming_a_file_outside_the_stores_tables_is_read_by_no_one(
        store: st.Store, tmp_path: Path) -> None:
    """A pointer edited to name a Parquet file outside the store's tables/ (../elsewhere, an
    absolute path): the SQL catalog leaves the run out instead of reading that file, and the
    pointer is refused as none bfd wrote (trial 25: the catalog read the other file's rows,
    and verify called the run intact)."""
    from bfd.queries import run_sql

    st.write_table(store, "heads", "m", RUN, _head_rows(1))
    pointer = st.read_pointer(store, RUN)
    secret = tmp_path / "elsewhere" / "secret.parquet"
    secret.parent.mkdir()
    shutil.copyfile(store.root / pointer["tables"]["heads"], secret)
    for rel in (os.path.relpath(secret, store.root), str(secret)):
        edited = {**pointer, "tables": {**pointer["tables"], "heads": rel}}
        edited.pop("sha256", None)
        store.published_pointer(RUN).write_text(json.dumps(edited))
        with pytest.raises(ValueError, match="outside the store's tables/heads/"):
            st.read_pointer(store, RUN)
        assert run_sql(store.root, "SELECT count(*) AS n FROM heads").column("n")[0].as_py() == 0


def test_the_older_layouts_files_are_found_by_one_rule(store: st.Store) -> None:
    """The layout before versioned publishing (tables/<t>/model=<m>/run_id=<run>/part-*):
    one function finds a run's files (the last part by name where a table holds several)
    for published_method, verify's table checks and publishing."""
    from bfd.storage.integrity import _table_files, unchecked_tables
    from bfd.storage.paths import legacy_table_files
    from bfd.storage.published import _legacy_files

    assert legacy_table_files(store, "old-run") == {}
    assert st.published_method(store, "old-run") is None
    found = {}
    for table, part in (("heads", "part-0"), ("heads", "part-1"), ("runs", "part-0")):
        path = store.table_dir(table) / "model=m" / "run_id=old-run" / f"{part}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        found[table] = path
    other = store.table_dir("heads") / "model=m" / "run_id=old-run-2" / "part-0.parquet"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"")
    assert legacy_table_files(store, "old-run") == found
    assert legacy_table_files(store, "old-run", ["heads"]) == {"heads": found["heads"]}
    assert _legacy_files(store, "old-run") == _table_files(store, "old-run", None) == found
    assert unchecked_tables(store, "old-run") == ["heads", "runs"]
    assert st.published_method(store, "old-run") == 1
    with pytest.raises(ValueError):
        legacy_table_files(store, "../old-run")


def test_parquet_errors_and_inputs(store: st.Store) -> None:
    rows = _head_rows(1)
    del rows[0]["k90"]
    with pytest.raises(ValueError, match=r"missing column\(s\) \['k90'\]"):
        st.write_table(store, "heads", "m", RUN, rows)
    with pytest.raises(ValueError, match="unknown table"):
        st.write_table(store, "head", "m", RUN, _head_rows(1))
    with pytest.raises(ValueError, match="'model' must be 'm'"):
        st.write_table(store, "heads", "m", RUN, [{**_head_rows(1)[0], "model": "n"}])

    import pandas as pd

    created = pd.Timestamp("2026-01-02 03:04:05.123456789", tz="Europe/Paris")
    run_row = dict(
        run_id=RUN,
        model="m",
        weights="timm",
        weights_sha256="ab",
        images="/x",
        images_sha256="cd",
        n_images=10,
        n_skipped=1,
        img_size=224,
        grid_h=14,
        grid_w=14,
        prefix_tokens=1,
        sites="attn_in,resid",
        layers="0,1,2",
        dtype="float16",
        created_at=created,
        bfd_version="0.1.0",
        timm_version="1.0",
        torch_version="2.5",
        config_json="{}",
        status="complete",
        depth=12,
        num_heads=6,
        width=384,
    )
    st.write_table(store, "runs", "m", RUN, pd.DataFrame([run_row]))
    got = st.read_table(store, "runs")
    assert got.schema.equals(st.TABLE_SCHEMAS["runs"])
    assert got.column("created_at")[0].as_py() == datetime(2026, 1, 2, 2, 4, 5, 123456, tzinfo=UTC)
    st.write_table(
        store,
        "images",
        "m",
        RUN,
        pa.table(
            {
                "image_index": pa.array([0, 1], pa.int64()),
                "image_id": ["a", "b"],
                "sha256": ["0", "1"],
                "status": ["ok", "skipped"],
                "error": [None, "bad"],
            }
        ),
    )
    assert st.read_table(store, "images").column("image_index").type == pa.int32()
    st.write_table(store, "modes", "m", RUN, [])  # an empty partition is still a valid file
    assert st.read_table(store, "modes").num_rows == 0
