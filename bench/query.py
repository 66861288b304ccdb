"""Benchmark of the commands that only read: wall time and peak RSS of a whole ``bfd`` process.

Against a bare ``python -c 'import duckdb'`` measured in the same run (the floor of any
command that answers from DuckDB), on a store holding ``--runs`` runs' tables (ViT-S/16 shapes,
built as bench/decompose.py builds them):
  - ``bfd query model_summary`` with a warm catalog snapshot (goal < 0.5 s and < 200 MB), and
    the first one after the tables were written (the snapshot is built);
  - ``bfd runs``, ``bfd query --list``, ``bfd --help``;
  - ``bfd sql`` of 2 M rows as --format json / csv, and of 10 M rows piped into ``head -1``.

Each figure is the median wall time and the largest peak RSS of ``--reps`` fresh processes.

Usage: python bench/query.py [--runs 100] [--layers 12] [--n-images 512] [--reps 5] [--quick]
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
from pathlib import Path

BENCH = Path(__file__).resolve().parent
BFD = [sys.executable, "-m", "bfd.cli"]


def measure(argv: list[str], reps: int, shell: bool = False) -> tuple[float, float]:
    """Median wall seconds and largest peak RSS (MB) of ``reps`` runs of one command."""
    walls, rss = [], []
    for _ in range(reps):
        t = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                shell=shell)
        _, status, usage = os.wait4(proc.pid, 0)
        walls.append(time.perf_counter() - t)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{argv} failed ({proc.returncode}): {proc.stderr.read().decode()}")
        rss.append(usage.ru_maxrss / 1024)
    return statistics.median(walls), max(rss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--n-images", type=int, default=512)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true",
                   help="3 runs of 2 layers, one process each, small results (CI)")
    args = p.parse_args()
    rows = 2_000_000
    if args.quick:
        args.runs, args.layers, args.n_images, args.reps, rows = 3, 2, 8, 1, 20_000

    tmp = Path(tempfile.mkdtemp(prefix="bfd-bench-query-"))
    try:
        root = tmp / "store"
        # In a process of its own: a child's peak RSS counts from its parent's at fork, and
        # bench/decompose.py (the store builder) imports torch.
        subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
                        "from pathlib import Path; from decompose import build_table_store; "
                        "build_table_store(Path(sys.argv[2]), *map(int, sys.argv[3:]))",
                        str(BENCH), str(root), str(args.runs), str(args.layers),
                        str(args.n_images)], check=True)
        store = ["--store", str(root)]
        figures: dict[str, tuple[float, float]] = {}
        figures["bare: python -c 'import duckdb'"] = measure(
            [sys.executable, "-c", "import duckdb"], args.reps)
        figures["bfd query model_summary (snapshot built)"] = measure(
            [*BFD, "query", "model_summary", *store], 1)
        figures["bfd query model_summary"] = measure([*BFD, "query", "model_summary", *store],
                                                     args.reps)
        figures["bfd runs"] = measure([*BFD, "runs", *store], args.reps)
        figures["bfd query --list"] = measure([*BFD, "query", "--list"], args.reps)
        figures["bfd --help"] = measure([*BFD, "--help"], args.reps)
        big = f"SELECT range AS i, range * 0.5 AS x, 'run-' || range AS s FROM range({rows})"
        for fmt in ("json", "csv"):
            figures[f"bfd sql ({rows} rows) --format {fmt}"] = measure(
                [*BFD, "sql", big, "--format", fmt, *store], 1)
        pipe = (f"{' '.join(BFD)} sql 'SELECT * FROM range({5 * rows})' --store {root} "
                "--format json | head -1")
        figures[f"bfd sql ({5 * rows} rows) --format json | head -1"] = measure(pipe, args.reps,
                                                                              True)

        bare_wall, bare_rss = figures["bare: python -c 'import duckdb'"]
        print(json.dumps({name: {"wall_s": round(wall, 3), "peak_rss_mb": round(rss, 1)}
                          for name, (wall, rss) in figures.items()}, indent=2))
        print(f"store: {args.runs} runs of {args.layers} layers; {args.reps} reps each")
        print(f"{'command':48s} {'wall s':>8s} {'/bare':>6s} {'RSS MB':>8s} {'/bare':>6s}")
        for name, (wall, rss) in figures.items():
            print(f"{name:48s} {wall:8.3f} {wall / bare_wall:6.2f} {rss:8.0f} "
                  f"{rss / bare_rss:6.2f}")
        wall, rss = figures["bfd query model_summary"]
        print(f"goal: bfd query model_summary < 0.5 s and < 200 MB: {wall:.3f} s, {rss:.0f} MB")
        print(f"query_over_import_duckdb={wall / bare_wall:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
