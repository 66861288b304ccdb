"""Benchmark of decomposition and SQL on stored runs, each against its goal.

Prints, with the baselines measured in the same run:
  (a) wall time of ``decompose_site_layer`` over every (site, layer) of a stored run / the
      floor of an exact method: two bare dask read passes over the same store (every chunk of
      every site read, nothing computed; the method reads twice) plus the pass-2 projection
      matmul (N·T x d by d x 2d per ``attn_in`` layer, float32 on the same device), each
      measured in the same run (goal <= 2); beside it, the projection's GFLOP/s against a bare
      square float32 matmul of the same device (its best shape), also measured in the run;
      and the same ratio in process CPU time (every thread), which other jobs on a shared
      machine stretch less than wall time;
  (b) peak RSS of that decomposition at N and at 8N images (a fresh process each, best of
      --reps, on a store with fewer layers: the decomposition runs one (site, layer) at a
      time), in GB and per GB of activations that one (site, layer) task reads, beside the
      peak RSS of a process that only imports what it needs (goal: 8N / N < 1.1 and <= 1.5 GB
      at ViT-S/16 shapes);
  (c) the ``compare_models`` named query over a store holding 100 runs' tables
      (``bfd.queries.connect``, which caches its snapshot in ``<store>/catalog/``): connect +
      query on a warm snapshot (every dashboard refresh; the goal is < 100 ms), connect +
      query right after a new run's tables were written (the snapshot is rebuilt), connect
      + query on a store that cannot be written (a private snapshot on every call), connect
      alone (warm), and the query alone on an open connection.

Stores are built like ``tests/storebuilder.py`` (synthetic activations with a positional
signal, written through ``create_activation_template``/``write_shard``; synthetic Parquet
tables published with ``publishing``), with ViT-S/16 shapes by default: T = 197 tokens
(1 cls + 14x14 patches), d = 384, H = 6, float16, 32 images per chunk.

Absolute figures leave out: Python, torch and DuckDB imports; Prefect (flow and task start-up,
its server); the publication of results (Zarr results group, Parquet tables); for the
projection, the host-to-device copy. The JSON's ``leaves_out`` says so beside them.

Usage: python bench/decompose.py [--layers 12] [--n 256] [--rss-layers 2] [--runs 100]
       [--device auto|cpu|cuda] [--skip a,b,c] [--matmul-size 2048] [--reps 3]
       [--quick]   (tiny sizes, one rep: checks that the bench runs, its figures mean nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as the bfd command runs (bfd/cli.py)
from bfd.cli import limit_malloc_arenas  # noqa: E402

limit_malloc_arenas()  # as the bfd command runs, before any thread

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402

from bfd.core.summary import BLOCKS, HEAD_TYPES  # noqa: E402
from bfd.flows.runners import local_cores, one_thread_per_task  # noqa: E402
from bfd.models import resolve_device  # noqa: E402
from bfd.storage import Store, open_activations, publishing  # noqa: E402
from bfd.storage.tables import TABLE_SCHEMAS  # noqa: E402
from bfd.tasks.decompose import DecomposeOptions, decompose_site_layer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from storebuilder import build_run  # noqa: E402

GRID, PREFIX, D, H = (14, 14), 1, 384, 6
T = PREFIX + GRID[0] * GRID[1]
SITES = ("attn_in", "resid")
MODELS = ("vit_small_patch16_224", "deit_small_patch16_224")


def synthetic_acts(layers: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """float16 (layer, image, token, dim) per site: a positional signal that fades with depth,
    an image-level offset and token noise, so every ANOVA term is non-zero."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, site in enumerate(SITES):
        a = np.empty((layers, n, T, D), dtype=np.float16)
        for l in range(layers):
            pos = rng.standard_normal((T, D), dtype=np.float32) * (1.5 - l / max(layers, 2))
            img = 0.5 * rng.standard_normal((n, 1, D), dtype=np.float32)
            a[l] = pos + img + rng.standard_normal((n, T, D), dtype=np.float32) + 0.1 * k
        out[site] = a
    return out


def build_activation_store(root: Path, layers: int, n: int, ipc: int) -> str:
    rng = np.random.default_rng(1)
    qkv = (rng.standard_normal((layers, 3 * D, D)) / np.sqrt(D)).astype(np.float32)
    pos_embed = rng.standard_normal((GRID[0] * GRID[1], D)).astype(np.float32)
    return build_run(Store(root), synthetic_acts(layers, n), qkv, H, model=MODELS[0],
                     prefix_tokens=PREFIX, grid=GRID, images_per_chunk=ipc,
                     pos_embed=pos_embed, dtype="float16")


def decompose_all(root: str, run_id: str, device: str = "auto") -> None:
    """Every (site, layer) of the run, as the flow's tasks run (``bfd.flows.runners
    .decompose_flow``): one per core at once, each on its own thread
    (``one_thread_per_task``)."""
    acts = open_activations(Store(root), run_id)
    options = DecomposeOptions(device=device)
    pairs = [(site, int(layer)) for site in SITES if site in acts for layer in acts.layer.values]
    threads = one_thread_per_task(len(pairs))
    with ThreadPoolExecutor(max_workers=local_cores()) as pool:
        futures = [pool.submit(decompose_site_layer, root, run_id, site, layer, options,
                               None, threads) for site, layer in pairs]
        for f in futures:
            f.result()


def projection_flop(layers: int, n: int) -> float:
    """Floating-point operations of the pass-2 projection of ``layers`` layers of n images."""
    return 2.0 * n * (T - PREFIX) * D * 2 * D * layers


def projection(layers: int, n: int, device: str):
    """The one product that an exact pass 2 cannot avoid, for every ``attn_in`` layer: the
    content of all images (N·T_patches, d) onto all heads' query and key modes (d, 2·H·dh),
    float32 on ``device`` (the default compute dtype); host-to-device copies not counted.
    Returns the function that runs it (after one warm-up product)."""
    x = torch.randn(n * (T - PREFIX), D, device=device)
    w = torch.randn(D, 2 * D, device=device)
    matmul_seconds(x, w, 1)

    def run() -> None:
        for _ in range(layers):
            torch.matmul(x, w)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    return run


def matmul_seconds(x: torch.Tensor, w: torch.Tensor, reps: int) -> float:
    """Best wall time of ``x @ w`` over ``reps`` (after one warm-up), synchronised on CUDA."""

    def once() -> None:
        torch.matmul(x, w)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    once()
    return best_seconds(once, reps)


def matmul_gflops(size: int, device: str, reps: int) -> float:
    """GFLOP/s of a bare square float32 matmul of ``size`` on ``device``: what this machine's
    BLAS reaches on its best shape."""
    x = torch.randn(size, size, device=device)
    w = torch.randn(size, size, device=device)
    return 2.0 * size**3 / matmul_seconds(x, w, reps) / 1e9


def _touch(block: np.ndarray) -> np.ndarray:
    return np.zeros((1,) * block.ndim, dtype=block.dtype)


def read_pass(root: str, run_id: str) -> None:
    """One dask pass that reads every stored chunk of every site and computes nothing."""
    acts = open_activations(Store(root), run_id)
    parts = [da.map_blocks(_touch, acts[s].data, chunks=(1,) * acts[s].ndim)
             for s in acts.data_vars]
    dask.compute(*parts, scheduler="threads")


def timed(fn) -> np.ndarray:
    """Wall and process CPU seconds (every thread, user + system) of one call of ``fn``."""
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    return np.array([time.perf_counter() - t0, time.process_time() - c0])


def best_seconds(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _in_subprocess(code: str, *args: str) -> list[str]:
    """Runs ``code`` (with this module imported as ``b``) in a fresh Python; its stdout words."""
    prelude = "import sys; sys.path.insert(0, sys.argv[1]); import decompose as b; "
    out = subprocess.run([sys.executable, "-c", prelude + code, str(Path(__file__).parent),
                          *args], capture_output=True, text=True, check=True)
    return out.stdout.split()


def imports_rss_mb() -> float:
    """``VmHWM`` (MiB) of a fresh process that imports what the decomposition imports and
    does nothing: the part of (b)'s peak RSS that no decomposition can avoid."""
    words = _in_subprocess(
        "import bfd.tasks.decompose; "
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
        "print(int(hwm[0]) / 1024 if hwm else 'nan')")
    return float(words[-1])


def task_read_gb(n: int) -> float:
    """GB of activations that one (site, layer) task reads (each pass reads them once)."""
    return 2 * n * T * D * 2 / 1e9


def peak_rss_mb(root: str, run_id: str) -> tuple[float, float]:
    """Peak RSS of a fresh process that decomposes every (site, layer) of the run: its
    ``ru_maxrss`` and its ``VmHWM`` (Linux), in MiB.

    Linux carries a process's peak RSS across fork and exec into ``ru_maxrss``, so a child of
    a process that once held a whole store would report that process's peak; this benchmark
    therefore builds the (b) stores in subprocesses too and spawns from a small parent.
    ``VmHWM`` counts the child's own address space only and checks that.
    """
    words = _in_subprocess(
        "import resource; b.decompose_all(sys.argv[2], sys.argv[3]); "
        "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
        "int(hwm[0]) / 1024 if hwm else 'nan')",
        root, run_id)
    return float(words[-2]), float(words[-1])


def write_run_tables(store: Store, model: str, run_id: str, created: datetime, layers: int,
                     n_images: int, rng: np.random.Generator) -> None:
    """One complete run's rows in every table, with the contract's columns and types."""
    dh = D // H
    lh = np.array([(l, h) for l in range(layers) for h in range(H)])
    e = rng.random((len(lh), 4))
    f = e / e.sum(1, keepdims=True)
    heads = {"layer": lh[:, 0], "head": lh[:, 1]}
    heads |= {f"e_{b}": e[:, i] for i, b in enumerate(BLOCKS)}
    heads |= {f"f_{b}": f[:, i] for i, b in enumerate(BLOCKS)}
    heads |= {"head_type": np.array(HEAD_TYPES)[rng.integers(0, 3, len(lh))],
              "eff_rank": rng.random(len(lh)) * dh, "eff_rank_sigma": rng.random(len(lh)) * dh,
              "k90": rng.integers(1, dh, len(lh)), "mode_coupling": rng.random(len(lh))}
    heads |= {c: rng.random(len(lh)) / 10 for c in (
        "bias_key_share", "bias_key_pos_share", "bias_key_con_share")}
    lhm = np.array([(l, h, m) for l in range(layers) for h in range(H) for m in range(dh)])
    em = rng.random((len(lhm), 4))
    modes = {"layer": lhm[:, 0], "head": lhm[:, 1], "mode": lhm[:, 2],
             "sigma": rng.random(len(lhm)), "alpha": rng.random(len(lhm)),
             "beta": rng.random(len(lhm))}
    modes |= {f"e_{b}": em[:, i] for i, b in enumerate(BLOCKS)}
    modes["mode_type"] = np.array(BLOCKS)[em.argmax(1)]
    ls = np.array([(l, s) for s in SITES for l in range(layers)], dtype=object)
    fr = rng.random((len(ls), 3))
    fr /= fr.sum(1, keepdims=True)
    layer_rows = {"layer": ls[:, 0].astype(np.int32), "site": ls[:, 1].astype(str),
                  "ss_total": rng.random(len(ls)) * 1e6, "frac_pos": fr[:, 0],
                  "frac_img": fr[:, 1], "frac_int": fr[:, 2]}
    layer_rows |= {c: rng.random(len(ls)) for c in (
        "pos_split_half_r", "pos_embed_cos", "shuffle_frac_pos", "ss_identity_residual",
        "ortho_residual", "frac_content", "logit_residual", "model_logit_residual",
        "model_attn_residual")}
    layer_rows["n_images"] = np.full(len(ls), n_images)
    images = {"image_index": np.arange(n_images), "image_id": [f"img-{i}" for i in
                                                               range(n_images)],
              "sha256": ["0" * 64] * n_images, "status": ["ok"] * n_images,
              "error": pa.nulls(n_images, pa.string())}
    with publishing(store, run_id) as pub:  # one version per run, as decompose publishes
        for table, cols in (("layers", layer_rows), ("heads", heads), ("modes", modes),
                            ("images", images)):
            rows = len(next(iter(cols.values())))
            # the contract's float columns not planted above (corrected shares, intervals, ...)
            cols |= {f.name: rng.random(rows) for f in TABLE_SCHEMAS[table]
                     if f.name not in cols and f.name not in ("run_id", "model")
                     and f.type == pa.float64()}
            pub.write_table(table, model, pa.table(cols))
        pub.write_table("runs", model, [{
            "run_id": run_id, "model": model, "weights": "pretrained", "weights_sha256": "0" * 64,
            "images": "samples", "images_sha256": "0" * 64, "n_images": n_images, "n_skipped": 0,
            "img_size": 224, "grid_h": GRID[0], "grid_w": GRID[1], "prefix_tokens": PREFIX,
            "sites": ",".join(SITES), "layers": ",".join(map(str, range(layers))),
            "dtype": "float16", "created_at": created, "bfd_version": "bench",
            "timm_version": "bench", "torch_version": "bench", "config_json": "{}",
            "status": "complete", "depth": layers, "num_heads": H, "width": D,
        }])


def build_table_store(root: Path, runs: int, layers: int, n_images: int) -> None:
    store, rng = Store(root), np.random.default_rng(2)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for k in range(runs):
        model = MODELS[k % len(MODELS)]
        write_run_tables(store, model, f"{model}-{k:016x}", t0 + timedelta(hours=k), layers,
                         n_images, rng)


def time_query(root: Path, runs: int, layers: int, n_images: int,
               reps: int) -> dict[str, float]:
    """``root`` holds ``runs - 1`` runs; each cold rep adds a new one as the last (removing
    the previous rep's), so every figure is taken over ``runs`` runs."""
    from bfd.queries import connect, run_query  # here: (a) and (b) need no duckdb

    params = {"model_a": MODELS[0], "model_b": MODELS[1]}
    store, rng = Store(root), np.random.default_rng(3)
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    cold = float("inf")
    for k in range(reps):
        if k:
            shutil.rmtree(store.run_dir(f"new-{k - 1}"))  # its pointer: unpublished
            for table in ("runs", "layers", "heads", "modes", "images"):
                shutil.rmtree(store.table_dir(table) / f"new-{k - 1}")
        write_run_tables(store, MODELS[k % 2], f"new-{k}", t0 + timedelta(hours=k), layers,
                         n_images, rng)
        cold = min(cold, best_seconds(lambda: run_query(str(root), "compare_models", params), 1))
    rows = run_query(str(root), "compare_models", params).num_rows
    warm = []
    for _ in range(reps):
        t = time.perf_counter()
        run_query(str(root), "compare_models", params)
        warm.append(time.perf_counter() - t)
    t_connect = best_seconds(lambda: connect(root).close(), reps)
    con = connect(root)
    try:
        on_open = best_seconds(lambda: run_query(con, "compare_models", params), 4 * reps)
    finally:
        con.close()
    # A store that cannot hold the snapshot (as a read-only mount): `catalog` is not a folder.
    catalog = root / "catalog"
    # 2 (the snapshot and current.duckdb): older snapshots and build folders are gone
    kept = len(os.listdir(catalog))
    shutil.rmtree(catalog)
    catalog.write_text("not a folder")
    try:
        private = best_seconds(lambda: run_query(str(root), "compare_models", params),
                               max(2, reps // 5))
    finally:
        catalog.unlink()
    return {"rows": rows, "connect_and_query_warm_ms": 1e3 * min(warm),
            "connect_and_query_warm_median_ms": 1e3 * float(np.median(warm)),
            "connect_and_query_after_new_run_ms": 1e3 * cold,
            "connect_and_query_unwritable_store_ms": 1e3 * private,
            "connect_warm_ms": 1e3 * t_connect, "query_on_open_connection_ms": 1e3 * on_open,
            "catalog_entries_kept": kept}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=12, help="layers of the (a) store")
    p.add_argument("--n", type=int, default=256, help="images of the (a) store, N of (b)")
    p.add_argument("--images-per-chunk", type=int, default=32)
    p.add_argument("--rss-layers", type=int, default=2, help="layers of the (b) stores")
    p.add_argument("--runs", type=int, default=100, help="runs in the (c) store")
    p.add_argument("--reps", type=int, default=3, help="best of this many for (a); 5x for (c)")
    p.add_argument("--matmul-size", type=int, default=2048,
                   help="side of the bare square float32 matmul of (a)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: a, b, c")
    p.add_argument("--device", default="auto", help="where (a) decomposes: auto, cpu, cuda")
    p.add_argument("--workdir", default=None, help="where the temporary stores go")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one rep: the bench runs, the figures mean nothing")
    args = p.parse_args()
    if args.quick:
        args.layers, args.n, args.images_per_chunk = 1, 8, 4
        args.rss_layers, args.runs, args.reps, args.matmul_size = 1, 3, 1, 128
    skip = set(args.skip.split(","))
    device = resolve_device(args.device)

    figures: dict = {"torch_threads": torch.get_num_threads(),
                     "shape": {"tokens": T, "dim": D, "heads": H, "dtype": "float16",
                               "images_per_chunk": args.images_per_chunk}}
    workdir = Path(tempfile.mkdtemp(prefix="bfd-bench-decompose-", dir=args.workdir))
    try:
        if "b" not in skip:  # first, while this process is still small (see peak_rss_mb)
            figures["b"] = {"layers": args.rss_layers, "sites": len(SITES)}
            peak = {}
            for n in (args.n, 8 * args.n):
                root = workdir / f"b{n}"
                (rid,) = _in_subprocess(
                    "print(b.build_activation_store(b.Path(sys.argv[2]), *map(int, sys.argv[3:])))",
                    str(root), str(args.rss_layers), str(n), str(args.images_per_chunk))
                runs = [peak_rss_mb(str(root), rid) for _ in range(args.reps)]
                shutil.rmtree(root)
                peak[n] = (min(r[0] for r in runs), min(r[1] for r in runs))
                figures["b"][f"peak_rss_mb_n{n}"] = [round(r[0], 1) for r in runs]
                figures["b"][f"vm_hwm_mb_n{n}"] = [round(r[1], 1) for r in runs]
            lo, hi = peak[args.n], peak[8 * args.n]
            figures["b"]["ratio_8n_vs_n"] = round(hi[0] / lo[0], 3)
            figures["b"]["ratio_8n_vs_n_vm_hwm"] = round(hi[1] / lo[1], 3)
            figures["b"]["imports_vm_hwm_mb"] = round(imports_rss_mb(), 1)
            for n in (args.n, 8 * args.n):
                # the peak in GB (1e9 bytes), and per GB that one (site, layer) task reads
                figures["b"][f"peak_rss_gb_n{n}"] = round(peak[n][1] * 2**20 / 1e9, 3)
                figures["b"][f"task_read_gb_n{n}"] = round(task_read_gb(n), 4)
                figures["b"][f"peak_rss_per_gb_read_n{n}"] = round(
                    peak[n][1] * 2**20 / 1e9 / task_read_gb(n), 2)
        if "a" not in skip:
            root = workdir / "a"
            t0 = time.perf_counter()
            rid = build_activation_store(root, args.layers, args.n, args.images_per_chunk)
            build = time.perf_counter() - t0
            # warm-up: the first call's costs (thread pools, caches), on one (site, layer)
            decompose_site_layer(str(root), rid, SITES[0], 0, DecomposeOptions(device=device))
            project = projection(args.layers, args.n, device)
            # (wall, CPU) seconds, each the best of --reps
            read = dec = proj = np.full(2, np.inf)
            t_mm = float("inf")
            for _ in range(args.reps):  # interleaved, so that load from other jobs hits all
                read = np.minimum(read, timed(lambda: read_pass(str(root), rid)))
                dec = np.minimum(dec, timed(lambda: decompose_all(str(root), rid, device)))
                proj = np.minimum(proj, timed(project))
                t_mm = min(t_mm, 1 / matmul_gflops(args.matmul_size, device, 1))
            (t_read, t_dec, t_proj), floor = (read[0], dec[0], proj[0]), 2 * read + proj
            proj_gflops = projection_flop(args.layers, args.n) / t_proj / 1e9
            stored = sum(f.stat().st_size for f in (root / "bfd.zarr").rglob("*") if f.is_file())
            figures["a"] = {
                "layers": args.layers, "sites": len(SITES), "n_images": args.n,
                "stored_mib": round(stored / 2**20, 1), "build_seconds": round(build, 2),
                "read_pass_seconds": round(t_read, 3),
                "read_mib_per_s": round(stored / 2**20 / t_read, 1),
                "decompose_seconds": round(t_dec, 3),
                "decompose_seconds_per_site_layer": round(t_dec / (len(SITES) * args.layers), 3),
                "ratio_decompose_vs_read": round(t_dec / t_read, 2),
                "device": device,
                "projection_seconds": round(t_proj, 3),
                "ratio_projection_vs_read": round(t_proj / t_read, 2),
                "floor_seconds": round(floor[0], 3),
                "ratio_decompose_vs_floor": round(t_dec / floor[0], 2),
                # the same in process CPU time (all threads): less sensitive to other jobs on
                # a shared machine than wall time, which waits for a core
                "decompose_cpu_seconds": round(dec[1], 3),
                "floor_cpu_seconds": round(floor[1], 3),
                "ratio_decompose_vs_floor_cpu": round(dec[1] / floor[1], 2),
                "projection_gflops": round(proj_gflops, 1),
                "matmul_size": args.matmul_size,
                "matmul_gflops": round(1 / t_mm, 1),
                "ratio_projection_vs_matmul_gflops": round(proj_gflops * t_mm, 3),
                "leaves_out": "decompose_seconds: Prefect, publishing results and tables; "
                              "projection_seconds: host-to-device copies, everything but the "
                              "one matmul",
            }
            shutil.rmtree(root)
        if "c" not in skip:
            root = workdir / "c"
            t0 = time.perf_counter()
            build_table_store(root, args.runs - 1, args.layers, args.n)
            build = time.perf_counter() - t0
            q = time_query(root, args.runs, args.layers, args.n, 5 * args.reps)
            files = sum(1 for _ in (root / "tables").rglob("*.parquet"))
            figures["c"] = {"runs": args.runs, "models": list(MODELS), "layers": args.layers,
                            "heads": H, "modes_per_head": D // H, "parquet_files": files,
                            "build_seconds": round(build, 2),
                            **{k: round(v, 2) for k, v in q.items()},
                            "leaves_out": "the Python and DuckDB imports of a fresh process"}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(json.dumps(figures, indent=2))
    if "a" in figures:
        a = figures["a"]
        print(f"(a) decomposition time / floor (two bare dask reads + the pass-2 projection): "
              f"{a['ratio_decompose_vs_floor']} (goal <= 2) on {device}, in CPU time "
              f"{a['ratio_decompose_vs_floor_cpu']}; / one read: "
              f"{a['ratio_decompose_vs_read']}; projection {a['projection_gflops']} GFLOP/s = "
              f"{a['ratio_projection_vs_matmul_gflops']} x a bare {args.matmul_size}^2 float32 "
              f"matmul ({a['matmul_gflops']} GFLOP/s)")
    if "b" in figures:
        b = figures["b"]
        print(f"(b) peak RSS N={8 * args.n} / N={args.n}: {b['ratio_8n_vs_n']} (goal < 1.1); "
              f"at N={8 * args.n}: {b[f'peak_rss_gb_n{8 * args.n}']} GB (goal <= 1.5), "
              f"{b[f'peak_rss_per_gb_read_n{8 * args.n}']} per GB read per (site, layer) task; "
              f"imports alone {b['imports_vm_hwm_mb']} MiB")
    if "c" in figures:
        c = figures["c"]
        print(f"(c) compare_models over {args.runs} runs: connect + query on a warm snapshot "
              f"{c['connect_and_query_warm_ms']} ms (goal < 100 ms); right after a new run "
              f"{c['connect_and_query_after_new_run_ms']} ms (snapshot rebuilt); on an "
              f"unwritable store {c['connect_and_query_unwritable_store_ms']} ms; query on an "
              f"open connection {c['query_on_open_connection_ms']} ms")


if __name__ == "__main__":
    main()
