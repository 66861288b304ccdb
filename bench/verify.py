"""Benchmark of ``bfd verify``: its time on a store of activations against one bare read of
the same chunk files (every byte read once, nothing checked), measured in the same run.

Usage: python bench/verify.py [--gib 1.0] [--dtype float16] [--root DIR] [--keep]
                               [--repeats 3] [--quick]
(the goal: verify <= 1.2 x the bare read, on a 10 GB store: --gib 10)

Two pairs of figures, each the median of ``--repeats`` passes:
- warm: both timed with the store in the page cache (a pass of each runs first);
- cold: before each timed pass, every file of the store is evicted from the page cache
  (``os.sync``, then ``posix_fadvise(POSIX_FADV_DONTNEED)`` on each: no root needed), so both
  read from the disk. ``cold_read_over_warm_read`` tells whether the eviction worked (far
  above 1 when it did; a store on tmpfs cannot be evicted).
``--keep`` leaves the store in ``--root`` and reuses one found there, so that two trees'
``bfd verify`` can be timed on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from storebuilder import build_run  # noqa: E402

from bfd.storage import Store, verify_run  # noqa: E402

T, D, H, L, IPC = 197, 384, 6, 12, 32


def build(root: Path, gib: float, dtype: str) -> tuple[Store, str]:
    """A run of L layers at ViT-S/16 shape, sized to ``gib`` over both sites."""
    per_image = 2 * L * T * D * np.dtype(dtype).itemsize
    n = max(2 * IPC, int(gib * 2**30 / per_image) // IPC * IPC)
    rng = np.random.default_rng(0)
    block = rng.normal(size=(L, IPC, T, D)).astype(dtype)
    acts = {s: np.broadcast_to(block[:, :1], (L, n, T, D)) for s in ("attn_in", "resid")}
    qkv = (rng.normal(size=(L, 3 * D, D)) / np.sqrt(D)).astype(np.float32)
    store = Store(root)
    rid = build_run(store, {s: np.ascontiguousarray(a) for s, a in acts.items()}, qkv, H,
                    images_per_chunk=IPC, dtype=dtype)
    return store, rid


def bare_read(store: Store, rid: str) -> int:
    total = 0
    for path in sorted((Path(store.zarr_path) / rid).glob("*/c/**/*")):
        if path.is_file():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    total += len(chunk)
    return total


def evict(root: Path) -> None:
    """Drop every file under ``root`` from the page cache (written back first: dirty pages
    stay)."""
    os.sync()
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed(fn, before=None) -> float:
    if before is not None:
        before()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--root", help="where to build the store (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a tiny store; the figures mean nothing")
    ap.add_argument("--keep", action="store_true",
                    help="keep the store in --root, and reuse the one found there")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.quick:
        args.gib, args.repeats = 0.01, 1
    root = Path(args.root or tempfile.mkdtemp(prefix="bfd-bench-verify-")) / "store"
    reuse = args.keep and args.root and (root / "runs").is_dir()
    if reuse:
        store = Store(root)
        (rid,) = [p.name for p in store.runs_dir.iterdir()]
    else:
        shutil.rmtree(root, ignore_errors=True)
        store, rid = build(root, args.gib, args.dtype)
    nbytes = bare_read(store, rid)

    def verify() -> None:
        faults = verify_run(store, rid)
        assert not faults, faults

    def read() -> None:
        bare_read(store, rid)

    verify()  # warm: both from the page cache
    figures = {"gib": round(nbytes / 2**30, 2), "dtype": args.dtype,
               "repeats": args.repeats}
    for mode, before in (("warm", None), ("cold", lambda: evict(root))):
        # interleaved, so that both see the same load of a shared machine
        pairs = [(timed(read, before), timed(verify, before)) for _ in range(args.repeats)]
        t_read = statistics.median(r for r, _ in pairs)
        t_verify = statistics.median(v for _, v in pairs)
        figures |= {f"{mode}_read_s": round(t_read, 3), f"{mode}_verify_s": round(t_verify, 3),
                    f"{mode}_verify_over_read": round(t_verify / t_read, 2)}
    figures["cold_read_over_warm_read"] = round(figures["cold_read_s"] / figures["warm_read_s"],
                                                1)
    print(json.dumps(figures))
    if not args.keep:
        shutil.rmtree(root.parent if not args.root else root, ignore_errors=True)


if __name__ == "__main__":
    main()
