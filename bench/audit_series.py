"""Benchmark of a reused audit (its run already computed) at the end of a long series.

A nightly audit of unchanged weights records an audit and its drift, then rebuilds the SQL
catalog and the dashboard; each reads the series' history. Prints, each ``bfd audit`` a fresh
process of the command (no Prefect API: the audit is recorded without a flow run,
bfd/cli_reuse.py), the reused audits of one series alternating between two stores:
  (a) the baseline: the series' third audit (two audits before it);
  (b) the same request in a copy of that store whose series was extended to ``--audits``
      audits (the last audit's row and drift copied, one a day), its events' cache written as
      the audits that extended it wrote it (bfd.storage.audits);
  (b) / (a): what a long history costs an audit (goal: near 1).

Usage: python bench/audit_series.py [--model vit_tiny_patch16_224] [--n-images 16]
       [--img-size 64] [--audits 365] [--reps 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as the bfd command runs (bfd/cli.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def audit_seconds(argv: list[str], store: Path, home: Path) -> float:
    """Wall seconds of one ``bfd audit`` process into ``store``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bfd", "audit", *argv, "--store", str(store)],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"bfd audit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def extend(store: Path, audits: int) -> None:
    """Extends the store's one series to ``audits`` audits: copies of its last audit's row and
    drift rows, one a day after it, each chained to the one before, written as an audit
    writes them (drift, then the audit's row)."""
    from bfd.storage import Store, new_audit_id, read_audits, read_drift, write_audit, write_drift

    s = Store(store)
    rows = read_audits(s)
    last = rows[-1]
    drift = read_drift(s, last["series"], last["audit_id"])
    prev = last["audit_id"]
    for k in range(1, audits - len(rows) + 1):
        began = last["started_at"] + timedelta(days=k)
        audit_id = new_audit_id(began)
        write_drift(s, last["series"], audit_id,
                    [{**r, "audit_id": audit_id, "prev_audit_id": prev} for r in drift])
        write_audit(s, {**last, "audit_id": audit_id, "step": last["step"] + k,
                        "started_at": began, "finished_at": began + timedelta(seconds=3),
                        "prev_audit_id": prev})
        prev = audit_id


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_tiny_patch16_224")
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--audits", type=int, default=365)
    p.add_argument("--reps", type=int, default=3, help="reused audits timed in each store")
    p.add_argument("--quick", action="store_true",
                   help="timm's test_vit at 32 px on 8 images, 40 audits, one rep, so that CI "
                   "runs the bench; its figures mean nothing")
    args = p.parse_args()
    if args.quick:
        args.model, args.n_images, args.img_size, args.audits, args.reps = (
            "test_vit", 8, 32, 40, 1)
    argv = ["--model", args.model, "--weights", "random", "--images", "samples",
            "--n-images", str(args.n_images), "--img-size", str(args.img_size),
            "--device", "cpu", "--series", "bench"]
    work = Path(tempfile.mkdtemp(prefix="bfd-bench-series-"))
    try:
        short, home = work / "short", work / "prefect"
        home.mkdir()
        for _ in range(2):  # the run computed, then reused once: two audits
            audit_seconds(argv, short, home)
        long = work / "long"
        shutil.copytree(short, long)
        t0 = time.perf_counter()
        extend(long, args.audits - 1)  # the timed audit is the last
        extended = time.perf_counter() - t0
        times: dict[str, list[float]] = {"short": [], "long": []}
        for k in range(args.reps):
            for name, store in (("short", short), ("long", long)):
                copy = work / f"{name}-{k}"  # each audit at the same length of history
                shutil.copytree(store, copy)
                times[name].append(audit_seconds(argv, copy, home))
                shutil.rmtree(copy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    a, b = (statistics.median(times[name]) for name in ("short", "long"))
    print(f"{args.model} (random init), {args.n_images} sample images at {args.img_size} px; "
          f"history written in {extended:.1f} s")
    print(f"(a) reused audit, third of its series:   {a:7.2f} s  ({times['short']})")
    print(f"(b) reused audit, {args.audits}th of its series: {b:7.2f} s  ({times['long']})")
    print(f"(b) / (a) = {b / a:.2f}")
    print(json.dumps({"audits": args.audits, "short_s": round(a, 3), "long_s": round(b, 3),
                      "long_over_short": round(b / a, 3)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
