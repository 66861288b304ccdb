"""Benchmark of ``bfd verify``: its time on a store of activations against one bare read of
the same chunk files (every byte read once, nothing checked), measured in the same run.

Usage: python bench/verify.py [--gib 1.0] [--dtype float16] [--root DIR] [--quick]
(the goal: verify <= 1.2 x the bare read, on a 10 GB store: --gib 10)

Both are timed with the store in the page cache (the bare read runs once before, to warm it):
the figure leaves out the disk, where both wait on the same reads and the ratio falls towards
1; from memory, verify's finiteness pass over every byte costs about what the copy does.
"""

from __future__ import annotations

import argparse
import json
import shutil
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    ap.add_argument("--root", help="where to build the store (default: a temporary folder)")
    ap.add_argument("--quick", action="store_true", help="a tiny store; the figures mean nothing")
    args = ap.parse_args()
    if args.quick:
        args.gib = 0.01
    root = Path(args.root or tempfile.mkdtemp(prefix="bfd-bench-verify-")) / "store"
    shutil.rmtree(root, ignore_errors=True)
    store, rid = build(root, args.gib, args.dtype)
    bare_read(store, rid)  # warm the page cache for both, so both read from memory
    t0 = time.perf_counter()
    nbytes = bare_read(store, rid)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    faults = verify_run(store, rid)
    t_verify = time.perf_counter() - t0
    assert not faults, faults
    print(json.dumps({"gib": round(nbytes / 2**30, 2), "dtype": args.dtype,
                      "bare_read_s": round(t_read, 2), "verify_s": round(t_verify, 2),
                      "verify_over_read": round(t_verify / t_read, 2),
                      "leaves_out": "the disk: both read a page-cached store"}))
    shutil.rmtree(root.parent if not args.root else root, ignore_errors=True)


if __name__ == "__main__":
    main()
