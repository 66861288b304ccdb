"""Benchmark of an audit whose run is already computed (a nightly audit of unchanged weights).

Prints, measured in the same process:
  (a) Prefect start-up: the first flow run of the process (a no-op flow; it starts the
      temporary local server);
  (b) the first audit (computes the run), for scale;
  (c) the same request again: a new audit, its run reused (nothing recomputed), drift against
      the first audit, artifacts and events; the goal is < 5 s beyond (a);
  (d) a no-op flow run on the warm server, and (c) - (d): what the reused audit itself costs.

Usage: python bench/audit_rerun.py [--model vit_small_patch16_224] [--n-images 64]
       [--layers all] [--reps 3]
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as the bfd command runs (bfd/cli.py)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "PREFECT_HOME" not in os.environ:
    # a private Prefect home, removed at exit: registered before Prefect is imported, so that
    # it runs after Prefect's own exit handlers (the temporary server's stop)
    _PREFECT_HOME = tempfile.mkdtemp(prefix="bfd-bench-prefect-")
    atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
    os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--layers", default="all")
    p.add_argument("--reps", type=int, default=3, help="reused audits timed (median)")
    p.add_argument("--quick", action="store_true",
                   help="timm's test_vit at 32 px on 8 images, one rep (and one warm no-op "
                   "flow), so that CI runs the bench; its figures mean nothing")
    args = p.parse_args()
    if args.quick:
        args.model, args.n_images, args.reps = "test_vit", 8, 1

    from prefect import flow

    from bfd.flows.audit import audit

    @flow(name="noop")
    def noop() -> None:
        return None

    store = tempfile.mkdtemp(prefix="bfd-bench-store-")
    atexit.register(shutil.rmtree, store, ignore_errors=True)
    config = {"model": args.model, "weights": "random", "images": "samples",
              "n_images": args.n_images, "layers": args.layers,
              **({"img_size": 32} if args.quick else {})}

    def timed(fn, *a, **kw) -> tuple[float, object]:
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        return time.perf_counter() - t0, out

    startup, _ = timed(noop)
    first, out = timed(audit, config, store, dashboard=False)
    assert not out["reused"]
    reused = []
    for _ in range(args.reps):
        seconds, again = timed(audit, config, store, dashboard=False)
        assert again["reused"] and again["run_id"] == out["run_id"]
        reused.append(seconds)
    warm = statistics.median(timed(noop)[0] for _ in range(1 if args.quick else 3))
    median = statistics.median(reused)
    print(f"{args.model} (random init), {args.n_images} sample images, layers {args.layers}")
    print(f"(a) Prefect start-up (first flow run of the process): {startup:7.2f} s")
    print(f"(b) first audit (computes the run):                    {first:7.2f} s")
    print(f"(c) the same audit again, run reused (median of {args.reps}):  {median:7.2f} s"
          f"   goal < 5 s: {'met' if median < 5 else 'NOT met'}")
    print(f"(d) no-op flow run on the warm server:                 {warm:7.2f} s;"
          f"  (c) - (d) = {median - warm:.2f} s;  (c) / (b) = {median / first:.2f}")
    print(json.dumps({"prefect_startup_s": round(startup, 2), "first_audit_s": round(first, 2),
                      "reused_audit_s": round(median, 2), "noop_flow_s": round(warm, 2)},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
