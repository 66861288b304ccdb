"""Benchmark of Ctrl-C: how long a pipeline command takes to end once SIGINT reaches it, against
a bare Python process holding the same libraries.

Measured in the same run, each SIGINT sent to the whole process group as a terminal sends it
(the command's temporary Prefect server and workers included):
  bare       ``python -c 'import torch, timm, prefect, distributed; ...'`` waiting in a sleep:
             SIGINT to its exit (Python's KeyboardInterrupt and the interpreter's teardown of
             those libraries), the floor of a plain Python process;
  extract    ``bfd extract`` of a random test model, signalled once 2 shards are written;
  decompose  ``bfd decompose`` of an extracted run, signalled as soon as it holds the run's
             lock (``runs/<id>/.compute.lock`` held: it is working).
Each figure is the median of ``--repeats`` processes, with a private, empty Prefect home (the
command starts its own temporary server, as a new user's does). Each command must end with
exit 130 and ``bfd: interrupted...`` as the last line of its stderr.

Prints one JSON object: seconds from SIGINT to exit of each, and each command's over the bare
process's (goal: the command ends within 1 s).

Usage: python bench/interrupt.py [--n-images 400] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bfd.storage.paths import COMPUTE_LOCK, lock_busy

REPO = Path(__file__).resolve().parents[1]
BARE = ("import time, torch, timm, prefect, distributed; print('ready', flush=True); "
        "time.sleep(600)")


def extract_argv(n_images: int, store: Path) -> list[str]:
    return ["extract", "--model", "test_vit", "--weights", "random", "--n-images", str(n_images),
            "--img-size", "32", "--layers", "0,2", "--dtype", "float32",
            "--images-per-chunk", "4", "--images-per-shard", "4", "--store", str(store)]


def env(home: Path) -> dict[str, str]:
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(home),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "CUDA_VISIBLE_DEVICES": ""}
    out.pop("PREFECT_API_URL", None)
    return out


def printed_ready(proc: subprocess.Popen) -> bool:
    """The bare process's line: it has imported everything (blocks until then)."""
    return proc.stdout.readline() == "ready\n"


def time_to_exit(argv: list[str], ready: Callable[[subprocess.Popen], bool],
                 environ: dict[str, str], delay: float = 0.0) -> tuple[float, int, str]:
    """SIGINT to the process group of ``argv`` once ``ready`` holds (``delay`` s later):
    seconds to its exit, its exit code and its stderr."""
    proc = subprocess.Popen(argv, cwd=REPO, env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not ready(proc) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv[3:5]} ended before the signal: {proc.stderr.read()[-2000:]}")
        t0 = time.perf_counter()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=600)
        elapsed = time.perf_counter() - t0
        return elapsed, proc.returncode, proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def check_interrupted(what: str, code: int, err: str) -> None:
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if code != 130 or not last.startswith("bfd: interrupted") or "Traceback" in err:
        raise RuntimeError(f"{what}: exit {code}, stderr ends {err[-1500:]!r}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-images", type=int, default=400, help="images of the extraction")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one process of each, 100 images")
    args = ap.parse_args()
    # started in the background of a shell without job control, this process has SIGINT
    # ignored and its children would inherit that (bfd keeps it ignored, as Python does): the
    # SIGINTs below would never end them. A handler here gives the children the default.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.quick:
        args.repeats, args.n_images = 1, 100
    work = Path(tempfile.mkdtemp(prefix="bfd-bench-interrupt-"))
    bfd = [sys.executable, "-m", "bfd.cli"]
    times: dict[str, list[float]] = {"bare": [], "extract": [], "decompose": []}
    try:
        for k in range(args.repeats):
            home = work / f"home-{k}"
            t, _, _ = time_to_exit([sys.executable, "-c", BARE], printed_ready, env(home))
            times["bare"].append(t)

            store = work / f"store-{k}"

            def two_shards(_proc, store=store) -> bool:
                return len(list(store.glob("runs/*/shards/*.json"))) >= 2

            t, code, err = time_to_exit([*bfd, *extract_argv(args.n_images, store)],
                                        two_shards, env(home))
            check_interrupted("extract", code, err)
            times["extract"].append(t)

            # the same run completed, then decomposed and interrupted at its start of work
            subprocess.run([*bfd, *extract_argv(args.n_images, store)], cwd=REPO,
                           env=env(home), check=True, capture_output=True)
            (run,) = [p for p in (store / "runs").iterdir()]
            # the run's lock file is there since its extraction: working once it is held
            lock = run / COMPUTE_LOCK
            t, code, err = time_to_exit([*bfd, "decompose", run.name, "--store", str(store)],
                                        lambda _p, lock=lock: lock_busy(lock), env(home))
            check_interrupted("decompose", code, err)
            times["decompose"].append(t)
            shutil.rmtree(store)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures: dict[str, object] = {"repeats": args.repeats, "n_images": args.n_images}
    bare = statistics.median(times["bare"])
    for what, values in times.items():
        figures[f"{what}_exit_s"] = round(statistics.median(values), 3)
        figures[f"{what}_exit_s_all"] = [round(v, 3) for v in values]
        if what != "bare":
            figures[f"{what}_over_bare"] = round(statistics.median(values) / bare, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
