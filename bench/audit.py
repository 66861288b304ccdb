"""Benchmark of a whole ``bfd audit``: its wall time against the bare forward it cannot avoid.

Measured in the same run, on the same model, images and batch size, on the CPU:
  forward   the bare timm forward over the run's images (decoded once and held in memory, no
            hooks, no storage; one warm-up pass first), as bench/extract.py measures it; the
            mean of one measurement before the stats-only run and one after it;
  audit     ``bfd audit --model M --weights random --images samples --n-images N`` in a fresh
            process on an empty store, as a user runs it: imports, the temporary Prefect
            server, planning, extraction, decomposition, publishing, the catalog snapshot and
            the printed layer profile (all layers, both sites);
  again     the same command once more, on the store that now holds the run: without a
            Prefect API it is recorded without Prefect, torch or timm (bfd/cli_reuse.py);
  again -v  the same with ``bfd -v``, which runs the flow (imports, the temporary server,
            planning, the flow's reuse branch): the "again" of before the request keys;
  fixed     ``bfd audit`` of 2 images of the same model on an empty store: what a command pays
            whatever the work.
  set up    ``audit`` again on an empty store, with the Prefect home that ``fixed`` set up:
            the temporary server does not create its database again, as for every audit
            after a user's first.
  stats     the stats-only decomposition (``--no-store-activations``: two forwards feed the
            streaming passes of every layer and site), called in this process with the model
            loaded, as images/s against the bare forward's (goal >= 0.45); also as CPU
            seconds of this process (all threads), which a busy machine stretches less than
            wall time. ``--only stats`` measures the bare forward and this figure only.
  bound     (``--only bound``) what any audit of an exact method on stored activations pays
            beside the forward, each part timed alone in this run (wall and CPU seconds):
            ``import torch, timm`` in a fresh process (start-up and imports, not its
            teardown: bfd ends with ``os._exit``); decoding the images; writing every
            layer and site of the run's float16 activations into a Zarr store of the run's
            chunking; two bare reads of it (the method reads twice); the pass-2 projection of
            every layer's content onto all heads' modes, (N·T_patches, d) x (d, 2d) float32,
            and the per-image dh x dh Grams of the projections. Prints their sum over the
            bare forward (the least ``audit_over_forward`` such a pipeline can reach if the
            parts ran one after another) and, since two cores can overlap parts, the same
            sum in CPU seconds over the forward's CPU seconds.

Weights are random (``--weights random``): the forward costs the same as with pretrained
weights and no download is needed. Each audit but "set up" runs with a private, empty
Prefect home, so it starts its own temporary Prefect server as a new user's first command
does.

Prints the figures, then ``audit_over_forward=<ratio>`` as its last line (goal <= 1.3; the
already computed run: goal < 3 s).

Usage: python bench/audit.py [--model vit_small_patch16_224] [--n-images 512]
       [--batch-size 32] [--only stats|bound] [--quick]
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
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as the bfd command runs (bfd/cli.py)

import torch  # noqa: E402

from bfd import images as imgs  # noqa: E402
from bfd import models  # noqa: E402


def _seconds() -> tuple[float, float]:
    """Wall and CPU seconds (this process, all threads) so far."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return tuple(b - a for a, b in zip(start, _seconds(), strict=True))


def bare_forward_seconds(model_name: str, n_images: int,
                         batch_size: int) -> tuple[float, float]:
    model, _ = models.load_model(model_name, "random", device="cpu")
    transform = models.transform(model)
    records = imgs.list_images("samples", n_images)
    batches = [b.images for b in imgs.iter_batches(records, transform, batch_size)]
    with torch.inference_mode():
        model(batches[0])  # warm-up: kernels, allocator
        start = _seconds()
        for x in batches:
            model(x)
        return _since(start)


def stats_only_seconds(model_name: str, n_images: int, batch_size: int,
                       workdir: Path) -> tuple[float, float]:
    from bfd.storage import NOT_STORED
    from bfd.tasks.decompose import DecomposeOptions
    from bfd.tasks.extract import ExtractConfig, prepare_run
    from bfd.tasks.stats_only import decompose_from_forward

    def run(n: int) -> tuple[float, float]:
        cfg = ExtractConfig(model=model_name, weights="random", n_images=n,
                            batch_size=batch_size, device="cpu", extra=dict(NOT_STORED))
        root = tempfile.mkdtemp(prefix="stats-", dir=workdir)
        plan = prepare_run(root, cfg)  # request, manifest, model tensors: as the flow plans
        start = _seconds()
        decompose_from_forward(root, plan.run_id, cfg, plan.layers, list(plan.records),
                               DecomposeOptions(device="cpu"))
        return _since(start)

    run(batch_size)  # warm-up: the model cache, kernels
    return run(n_images)


def _in_child(code: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system of the child) of ``python -c code``."""
    import resource

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0, cpu() - c0


def bound_seconds(model_name: str, n_images: int, batch_size: int,
                  workdir: Path) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds of each part that an exact audit on stored activations cannot
    avoid beside the forward (module docstring, ``bound``), each timed alone."""
    import numpy as np

    from bfd.storage import Store, create_activation_template, write_shard

    parts: dict[str, tuple[float, float]] = {}
    # os._exit: not the interpreter's teardown of torch (seconds), which bfd skips too
    parts["import torch, timm"] = _in_child("import os, torch, timm; os._exit(0)")
    model, info = models.load_model(model_name, "random", device="cpu")
    records = imgs.list_images("samples", n_images)
    transform = models.transform(model)
    start = _seconds()
    for _ in imgs.iter_batches(records, transform, batch_size):
        pass
    parts["decode the images"] = _since(start)

    sites, layers, chunk = ("attn_in", "resid"), list(range(info.depth)), 32
    rows, cols = info.token_rows_cols()
    store, run_id = Store(str(workdir / "bound")), "bound"
    create_activation_template(
        store, run_id, sites=sites, layers=layers, n_images=n_images,
        image_ids=[f"img-{i}" for i in range(n_images)], token_types=info.token_types(),
        rows=rows, cols=cols, dim=info.width, dtype="float16", images_per_chunk=chunk,
        attrs={})
    shard = np.random.default_rng(0).standard_normal(
        (len(layers), chunk, info.num_tokens, info.width), dtype=np.float32).astype("float16")
    start = _seconds()
    for lo in range(0, n_images, chunk):
        hi = min(lo + chunk, n_images)
        for site in sites:
            write_shard(store, run_id, site, lo, hi, shard[:, :hi - lo])
    parts["write the activations"] = _since(start)

    sys.path.insert(0, str(Path(__file__).parent))
    from decompose import read_pass  # the bare read of bench/decompose.py's floor

    start = _seconds()
    for _ in range(2):
        read_pass(str(workdir / "bound"), run_id)
    parts["read them twice"] = _since(start)

    patches = sum(t == "patch" for t in info.token_types())
    h, dh, d = info.num_heads, info.head_dim, info.width
    x = torch.randn(batch_size * patches, d)
    w = torch.randn(d, 2 * h * dh)
    torch.matmul(x, w)  # warm-up
    start = _seconds()
    for _ in layers:
        for lo in range(0, n_images, batch_size):
            b = min(batch_size, n_images - lo)
            y = torch.matmul(x[:b * patches], w).view(b, patches, 2 * h, dh).transpose(1, 2)
            torch.matmul(y.transpose(-1, -2), y)
    parts["project onto the modes, Grams"] = _since(start)
    return parts


def audit_seconds(store: Path, model_name: str, n_images: int, batch_size: int,
                  workdir: Path, verbose: bool = False, home: Path | None = None) -> float:
    """Wall seconds of ``bfd audit`` in a fresh process, with the Prefect home ``home`` (a
    new, empty one when None)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    home = home or Path(tempfile.mkdtemp(prefix="prefect-home-", dir=workdir))
    env |= {"PREFECT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "bfd.cli", *(["-v"] if verbose else []), "audit", "--model",
            model_name, "--weights", "random", "--images", "samples", "--n-images",
            str(n_images), "--batch-size", str(batch_size), "--device", "cpu", "--store",
            str(store)]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"bfd audit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def print_bound(args: argparse.Namespace, workdir: Path) -> None:
    before = bare_forward_seconds(args.model, args.n_images, args.batch_size)
    parts = bound_seconds(args.model, args.n_images, args.batch_size, workdir)
    after = bare_forward_seconds(args.model, args.n_images, args.batch_size)
    forward, forward_cpu = ((a + b) / 2 for a, b in zip(before, after, strict=True))
    print(f"bare forward ({args.model}, {args.n_images} images): {forward:.2f} s, "
          f"{forward_cpu:.2f} CPU s (before {before[0]:.2f} s, after {after[0]:.2f} s)")
    for name, (wall, cpu) in parts.items():
        print(f"  {name:32s} {wall:7.2f} s {cpu:7.2f} CPU s  "
              f"({wall / forward:.3f} / {cpu / forward_cpu:.3f} of the forward)")
    wall = forward + sum(w for w, _ in parts.values())
    cpu = forward_cpu + sum(c for _, c in parts.values())
    print(f"forward + parts: {wall:.2f} s, {cpu:.2f} CPU s")
    print(json.dumps({"model": args.model, "n_images": args.n_images,
                      "bare_forward_s": round(forward, 3),
                      "bare_forward_cpu_s": round(forward_cpu, 3),
                      "parts_s": {k: [round(w, 3), round(c, 3)] for k, (w, c) in parts.items()},
                      "bound_over_forward": round(wall / forward, 3),
                      "cpu_bound_over_forward": round(cpu / forward_cpu, 3)}, indent=2))
    print(f"bound_over_forward={wall / forward:.3f} cpu_bound_over_forward="
          f"{cpu / forward_cpu:.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--n-images", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--only", choices=["stats", "bound"],
                   help="measure only the bare forward and the stats-only decomposition "
                        "(stats), or the bare forward and the unavoidable parts (bound)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model on 4 images, one audit only (that the bench runs; CI); "
                        "with --only bound, the bound only")
    args = p.parse_args()
    if args.quick:
        args.model, args.n_images, args.batch_size = "test_vit", 4, 4

    workdir = Path(tempfile.mkdtemp(prefix="bfd-bench-audit-"))
    if args.only == "bound":
        try:
            print_bound(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    audit = again = again_flow = fixed = audit_set_up = None
    try:
        before = bare_forward_seconds(args.model, args.n_images, args.batch_size)
        stats, stats_cpu = stats_only_seconds(args.model, args.n_images, args.batch_size,
                                              workdir)
        # the bare forward on both sides of the stats-only run: on a shared machine the load
        # drifts between measurements
        after = bare_forward_seconds(args.model, args.n_images, args.batch_size)
        forward, forward_cpu = ((a + b) / 2 for a, b in zip(before, after, strict=True))
        store = workdir / "store"
        if args.only is None:
            audit = audit_seconds(store, args.model, args.n_images, args.batch_size, workdir)
        if args.only is None and not args.quick:
            again = audit_seconds(store, args.model, args.n_images, args.batch_size, workdir)
            again_flow = audit_seconds(store, args.model, args.n_images, args.batch_size,
                                       workdir, verbose=True)
            # a Prefect home that an earlier command set up (the 2-image audit), as every
            # audit after a user's first has it: its database is not created again
            home = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=workdir))
            fixed = audit_seconds(workdir / "fixed", args.model, 2, args.batch_size, workdir,
                                  home=home)
            audit_set_up = audit_seconds(workdir / "store-2", args.model, args.n_images,
                                         args.batch_size, workdir, home=home)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    figures = {
        "model": args.model, "n_images": args.n_images, "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "bare_forward_s": round(forward, 3),
        "bare_forward_cpu_s": round(forward_cpu, 3),
        "audit_s": audit and round(audit, 3), "audit_again_s": again and round(again, 3),
        "audit_again_flow_s": again_flow and round(again_flow, 3),
        "audit_2_images_s": fixed and round(fixed, 3), "stats_only_s": round(stats, 3),
        "stats_only_cpu_s": round(stats_cpu, 3),
        "stats_only_over_forward_images_per_s": round(forward / stats, 3),
        "stats_only_over_forward_cpu": round(forward_cpu / stats_cpu, 3),
        "audit_set_up_home_s": audit_set_up and round(audit_set_up, 3),
        "audit_set_up_home_over_forward": audit_set_up and round(audit_set_up / forward, 3),
        "audit_over_forward": audit and round(audit / forward, 3),
    }
    print(json.dumps(figures, indent=2))
    print(f"bare forward:                {forward:8.2f} s "
          f"({args.n_images / forward:.1f} images/s; {forward_cpu:.2f} CPU s)")
    if audit is not None:
        print(f"bfd audit:                   {audit:8.2f} s")
    if again is not None:
        print(f"bfd audit, run already done: {again:8.2f} s  (goal < 3 s)")
        print(f"the same through the flow:   {again_flow:8.2f} s  (bfd -v audit)")
        print(f"bfd audit of 2 images:       {fixed:8.2f} s  (what any audit pays)")
        print(f"bfd audit, Prefect home set: {audit_set_up:8.2f} s  "
              f"({audit_set_up / forward:.2f} x the bare forward; every audit after a user's "
              "first)")
    print(f"stats-only decomposition:    {stats:8.2f} s ({args.n_images / stats:.1f} images/s, "
          f"{forward / stats:.2f} x the bare forward's; goal >= 0.45; "
          f"{stats_cpu:.2f} CPU s, {forward_cpu / stats_cpu:.2f} x)")
    if audit is not None:
        print(f"audit_over_forward={audit / forward:.2f}")

if __name__ == "__main__":
    main()
