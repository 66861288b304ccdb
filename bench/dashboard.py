"""Benchmark of the dashboard refresh after one new run, against its catalog queries alone.

Generates a store of --runs runs (tables written with ``bfd.storage.write_table`` as
``tests/dashstore.py`` does: ViT-S/16 shapes by default, 12 layers x 6 heads x 64 modes, a
14 x 14 patch grid; the new run also gets a results Dataset with its positional factor), builds
the dashboard once, then per repetition adds one run and prints, best of --reps:

  (a) catalog snapshot rebuild for the new tables (``refresh_catalog``; what the first query
      after a publish pays, dashboard or not);
  (b) ``build_dashboard`` on that warm snapshot: the new run's page and the three store-wide
      pages written, every other run page left alone;
  (c) the catalog queries that build alone (connect + the same SQL, nothing rendered or
      written); the goal is (b) < 10 s for 200 runs, and (b) / (c) says what the pages cost
      beyond their queries;
  (d) ``build_dashboard`` with nothing changed.

Before them: the first build (every page written) and the size of the three store-wide pages,
whose embedded data must grow linearly with the number of runs (the runs are of 5 models, so
most pairs of runs are of two models).

Usage: python bench/dashboard.py [--runs 200] [--layers 12] [--heads 6] [--modes 64]
       [--reps 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from dashstore import write_synthetic_run  # noqa: E402

from bfd.queries import connect, refresh_catalog  # noqa: E402
from bfd.report import data as D  # noqa: E402
from bfd.report.dashboard import build_dashboard  # noqa: E402

SITE_PAGES = ("index.html", "series.html", "compare.html")


def queries_alone(root: Path, run_id: str) -> None:
    """What build_dashboard asks the catalog after one new run, and nothing else."""
    con = connect(root)
    try:
        D.run_list(con)
        D.layer_rows(con)
        D.audits_present(con)
        D.series_data(con)
        D.run_shapes(con)
        D.compare_choices(con)
        D.latest_series(con)
        D.run_keys(con)
        D.run_detail(con, run_id)
    finally:
        con.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--modes", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--keep", help="build the store here and keep it")
    p.add_argument("--quick", action="store_true",
                   help="a tiny store (3 runs of 2 layers x 2 heads x 4 modes), one rep, so that "
                   "CI runs the bench; its figures mean nothing")
    args = p.parse_args()
    if args.quick:
        args.runs, args.layers, args.heads, args.modes, args.reps = 3, 2, 2, 4, 1
    work = Path(args.keep or tempfile.mkdtemp(prefix="bfd-bench-dashboard-"))
    root, out = work / "store", work / "site"
    shape = {"depth": args.layers, "n_heads": args.heads, "n_modes": args.modes, "grid": (14, 14)}
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    t0 = time.perf_counter()
    for i in range(args.runs):
        write_synthetic_run(root, f"run-{i:04d}", model=f"vit_{i % 5}", weights=f"ckpt-{i % 3}",
                            created_at=start + dt.timedelta(hours=i), seed=i, **shape)
    refresh_catalog(root)
    print(f"store: {args.runs} runs of {args.layers} layers x {args.heads} heads x "
          f"{args.modes} modes, written in {time.perf_counter() - t0:.1f} s ({root})")
    t0 = time.perf_counter()
    first = build_dashboard(root, out)
    first_s = time.perf_counter() - t0
    print(f"first build: {first_s:.2f} s, {len(first.written)} files")
    sizes = {name: (out / name).stat().st_size for name in SITE_PAGES}
    print("store-wide pages: " + ", ".join(f"{name} {size / 1e3:.1f} kB"
                                           for name, size in sizes.items()))
    best: dict[str, float] = {}
    for rep in range(args.reps):
        run_id = f"new-{rep}"
        write_synthetic_run(root, run_id, model="vit_new", weights="ckpt-new", seed=10_000 + rep,
                            created_at=start + dt.timedelta(days=365 + rep), with_pos=True,
                            **shape)
        timings = {}
        t0 = time.perf_counter()
        refresh_catalog(root)
        timings["a"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        build = build_dashboard(root, out)
        timings["b"] = time.perf_counter() - t0
        assert set(build.written) == {"index.html", "series.html", "compare.html",
                                      f"runs/{run_id}.html"}, build.written
        t0 = time.perf_counter()
        queries_alone(root, run_id)
        timings["c"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        build_dashboard(root, out)
        timings["d"] = time.perf_counter() - t0
        for key, value in timings.items():
            best[key] = min(best.get(key, value), value)
    print(f"(a) snapshot rebuild after the new run's tables:  {best['a']:.3f} s")
    print(f"(b) dashboard rebuild after one new run:          {best['b']:.3f} s "
          f"(goal < 10 s: {'met' if best['b'] < 10 else 'NOT met'})")
    print(f"(c) its catalog queries alone:                    {best['c']:.3f} s  "
          f"(b)/(c) = {best['b'] / best['c']:.2f}")
    print(f"(d) dashboard rebuild, nothing changed:           {best['d']:.3f} s")
    print(json.dumps({"runs": args.runs, "first_build_s": round(first_s, 3),
                      **{f"{name.removesuffix('.html')}_html_bytes": size
                         for name, size in sizes.items()},
                      "snapshot_rebuild_s": round(best["a"], 3),
                      "dashboard_rebuild_s": round(best["b"], 3),
                      "catalog_queries_s": round(best["c"], 3),
                      "rebuild_over_queries": round(best["b"] / best["c"], 2),
                      "rebuild_unchanged_s": round(best["d"], 3)}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
