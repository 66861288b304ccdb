"""Benchmark of extraction: pipeline images/s against the slower of two bare baselines.

Measured in the same run, on the same model, images, batch size and device:
  forward   the bare timm forward of preprocessed batches (images decoded once and held in
            memory; no hooks, no storage; the full model, while the pipeline stops after the
            last captured block);
  write     the bare write of the same bytes (precomputed random data) into the same kind of
            store: a Zarr v3 template of the same shape, chunks, dtype and compression, filled
            shard by shard with ``write_shard``;
  pipeline  the real extract path: ``prepare_run`` then ``extract_shard`` for every shard
            (decode, forward with hooks, float32 -> storage dtype, Zarr write, shard markers),
            called directly without Prefect, as many shards at once as the flow's one worker
            runs (``shard_slots``: 2 on a GPU, 1 on the CPU), in a process whose model cache is
            warm (as for every run after a process's first: the planner and the shard tasks
            share it); ``model_load_seconds`` is the cold cost that a process's first run pays
            on top; ``--one-shard-at-a-time`` times it with one shard at a time too;
  flow      the same through the Prefect flow ``bfd.flows.extract.extract`` (one in-process
            worker, as ``bfd extract``), on a temporary Prefect server, for the record.

Prints the figures as JSON, then the ratio pipeline images/s / min(forward, write) images/s
with its goal (>= 0.90 on a GPU, >= 0.85 on a CPU). ``--stages`` adds one more pipeline pass
with its stages timed (decoding, forward with hooks, cast/copy into the shard buffer, Zarr
write, markers, planning; on a GPU, decoding and writes overlap the forwards, and the stages
of shards side by side are summed over them).

Absolute figures leave out: ``forward`` the decoding (images decoded once beforehand), the
hooks, host copies and storage; ``write`` the forward and decoding; ``pipeline`` the model load
(``model_load_seconds``, paid once per process) and Prefect; ``flow`` the Prefect server's
start-up and one warm-up flow run; every figure the Python, torch and timm imports. The JSON's
``leaves_out`` says so beside them.

Usage: python bench/extract.py [--model vit_small_patch16_224] [--n-images 128]
       [--batch-size 32] [--device auto|cpu|cuda] [--stages] [--no-flow]
       [--one-shard-at-a-time] [--zarr-writes-too] [--torch-threads-too K]
       [--switch-interval-too S]
       [--quick]   (timm's test_vit at 32 px, 8 images, one rep, stages timed, no flow (the
                    flow is tests/test_extract.py's), the last three timers too: checks that the
                    bench runs, its figures mean nothing)
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

# A private Prefect home, set before bfd.tasks imports prefect: the flow figure runs on a
# temporary test server and must not touch the user's Prefect profile or database.
_PREFECT_HOME = tempfile.mkdtemp(prefix="bfd-bench-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as the bfd command runs (bfd/cli.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bfd import capture, models  # noqa: E402
from bfd import images as imgs  # noqa: E402
from bfd.storage import (  # noqa: E402
    Store,
    activations,
    create_activation_template,
    plan_shards,
    write_shard,
)
from bfd.tasks import extract as tasks  # noqa: E402
from bfd.tasks.extract import (  # noqa: E402
    ExtractConfig,
    extract_shard,
)

GOALS = {"cuda": 0.90, "cpu": 0.85}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _autocast(device: str, mode: str):
    """The pipeline's autocast, so that the bare forward runs the same kernels."""
    if mode == "none" or not device.startswith("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


@contextlib.contextmanager
def fresh_store(workdir: Path, name: str) -> Iterator[str]:
    """A new, empty store root, deleted afterwards (outside any timed region)."""
    root = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    try:
        yield str(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def make_config(args: argparse.Namespace, device: str) -> ExtractConfig:
    return ExtractConfig(
        model=args.model, weights="random", images="samples", n_images=args.n_images,
        layers=args.layers, sites=tuple(args.sites.split(",")), img_size=args.img_size,
        dtype=args.dtype, batch_size=args.batch_size, images_per_chunk=args.images_per_chunk,
        images_per_shard=args.images_per_shard, device=device, autocast=args.autocast,
        decode_workers=args.decode_workers,
    )


class BareForward:
    """The model on its device and the run's images, decoded once into batches in memory."""

    def __init__(self, cfg: ExtractConfig):
        t0 = time.perf_counter()
        self.model, self.info = models.load_model(
            cfg.model, cfg.weights, img_size=cfg.img_size, seed=cfg.seed, device=cfg.device)
        self.load_seconds = time.perf_counter() - t0
        records = imgs.list_images(cfg.images, cfg.n_images)
        transform = models.transform(self.model)
        t0 = time.perf_counter()
        self.batches = [b.images for b in imgs.iter_batches(
            records, transform, cfg.batch_size, cfg.decode_workers)]
        self.decode_seconds = time.perf_counter() - t0
        self.cfg = cfg
        self.run()  # warm-up: kernels, allocator, autotuning

    def run(self) -> float:
        device, param = self.cfg.device, next(self.model.parameters())
        _sync(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), _autocast(device, self.cfg.autocast):
            for x in self.batches:
                self.model(x.to(param.device, param.dtype))
        _sync(device)
        return time.perf_counter() - t0


class BareWrite:
    """Whole-chunk writes of precomputed data into a template shaped like the run's."""

    def __init__(self, cfg: ExtractConfig, info: models.ModelInfo, workdir: Path):
        self.cfg, self.workdir, self.info = cfg, workdir, info
        self.layers = tasks.resolve_layers(cfg.layers, info.depth)
        per_shard = cfg.images_per_shard or cfg.images_per_chunk
        self.shards = plan_shards(cfg.n_images, cfg.images_per_chunk, per_shard)
        shape = (len(self.layers), max(s.size for s in self.shards), info.num_tokens, info.width)
        rng = np.random.default_rng(0)
        self.data = {site: rng.standard_normal(shape, dtype=np.float32).astype(cfg.dtype)
                     for site in cfg.sites}

    def run(self) -> float:
        cfg, info = self.cfg, self.info
        rows, cols = info.token_rows_cols()
        with fresh_store(self.workdir, "write") as root:
            store = Store(root)
            create_activation_template(
                store, "bench", sites=list(cfg.sites), layers=list(self.layers),
                n_images=cfg.n_images, image_ids=[f"img-{i}" for i in range(cfg.n_images)],
                token_types=info.token_types(), rows=rows, cols=cols, dim=info.width,
                dtype=cfg.dtype, images_per_chunk=cfg.images_per_chunk, attrs={},
            )
            t0 = time.perf_counter()
            for s in self.shards:
                for site, data in self.data.items():
                    write_shard(store, "bench", site, s.start, s.stop, data[:, :s.size])
            return time.perf_counter() - t0


# Shard tasks run side by side in the process (None: as the flow runs them, tasks.shard_slots)
SHARD_SLOTS: int | None = None


def run_pipeline(root: str, cfg: ExtractConfig) -> str:
    """What the extract flow does with one worker, without Prefect: plan, then the pending
    shards, as many at once as the flow's thread pool runs (``tasks.shard_slots``). Calls go
    through the module, so that ``time_stages`` sees its timed wrappers."""
    plan = tasks.prepare_run(root, cfg)
    worker_cfg = replace(cfg, device=models.resolve_device(cfg.device))
    by_index = {s.index: s for s in plan.shards}
    slots = SHARD_SLOTS or tasks.shard_slots(worker_cfg.device)
    with ThreadPoolExecutor(slots) as pool:
        for done in [pool.submit(extract_shard, root, plan.run_id, worker_cfg, by_index[k],
                                 plan.layers, list(plan.records[by_index[k].start:
                                                                by_index[k].stop]))
                     for k in plan.pending]:
            done.result()
    return plan.run_id


@contextlib.contextmanager
def setting(get: Callable[[], object], put: Callable[[object], None],
            value: object) -> Iterator[None]:
    """A process-wide setting at ``value`` for the block, then back to what it was: for the
    timers beside the pipeline as it runs (``--zarr-writes-too``: ``write_shard`` through
    Zarr's own array writes, ``activations.DIRECT_WRITES`` off; ``--torch-threads-too``:
    torch's intra-op threads, which the decoding threads' transforms use;
    ``--switch-interval-too``: how long a thread holds the GIL before another that waits for
    it gets it, ``sys.setswitchinterval``, 0.005 s by default)."""
    saved = get()
    put(value)
    try:
        yield
    finally:
        put(saved)


def zarr_writes() -> contextlib.AbstractContextManager:
    return setting(lambda: activations.DIRECT_WRITES,
                   lambda v: setattr(activations, "DIRECT_WRITES", v), False)


def under(context: Callable[[], contextlib.AbstractContextManager],
          timer: Callable[[], float]) -> Callable[[], float]:
    def run() -> float:
        with context():
            return timer()
    return run


def time_pipeline(cfg: ExtractConfig, workdir: Path, slots: int | None = None) -> float:
    """Seconds of ``run_pipeline`` on a fresh store, with ``slots`` shard tasks side by side
    (None: as the flow runs them)."""
    global SHARD_SLOTS
    saved, SHARD_SLOTS = SHARD_SLOTS, slots
    try:
        with fresh_store(workdir, "pipeline") as root:
            _sync(cfg.device)
            t0 = time.perf_counter()
            run_pipeline(root, cfg)
            _sync(cfg.device)
            return time.perf_counter() - t0
    finally:
        SHARD_SLOTS = saved


class StageTimer:
    """Times the pipeline's stages by wrapping the functions ``extract_shard`` calls.

    Only for the ``--stages`` pass; the wrappers add a clock read per call, nothing else.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def _add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def timed(self, stage: str, fn: Callable, device: str) -> Callable:
        def wrapper(*args, **kwargs):
            _sync(device)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync(device)
                self._add(stage, time.perf_counter() - t0)

        return wrapper

    def timed_iter(self, stage: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            it = fn(*args, **kwargs)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    self._add(stage, time.perf_counter() - t0)
                    return
                self._add(stage, time.perf_counter() - t0)
                yield item

        return wrapper


def time_stages(cfg: ExtractConfig, workdir: Path) -> dict[str, float]:
    timer = StageTimer()
    patches = [
        (imgs, "iter_batches", timer.timed_iter("decode", imgs.iter_batches)),
        (capture, "forward_capture",
         timer.timed("forward_hooks", capture.forward_capture, cfg.device)),
        # no device sync in the writer thread: it would stall the writes behind the forward
        (tasks, "write_shard", timer.timed("zarr_write", tasks.write_shard, "cpu")),
        (tasks, "mark_shard_done", timer.timed("markers", tasks.mark_shard_done, cfg.device)),
        (tasks, "prepare_run", timer.timed("prepare_run", tasks.prepare_run, cfg.device)),
    ]
    # the parts of prepare_run, each also inside its total
    parts = {"list_images": imgs, "create_activation_template": tasks,
             "write_model_tensors": tasks, "capture_logit_check": tasks}
    patches += [(mod, name, timer.timed(f"prepare_run.{name}", getattr(mod, name),
                                        "cpu"))
                for name, mod in parts.items()]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    try:
        for mod, name, fn in patches:
            setattr(mod, name, fn)
        with fresh_store(workdir, "stages") as root:
            t0 = time.perf_counter()
            run_pipeline(root, cfg)  # a fresh store: every shard is pending
            _sync(cfg.device)
            total = time.perf_counter() - t0
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
    # On a GPU the Zarr writes run in extract_shard's writer thread beside the forward, and
    # "decode" is the time the forward loop waited for images decoded ahead; on the CPU the
    # stages take turns. The rest: the NaN shard buffer, float32 -> storage dtype copies into
    # it, the wait for the last writes and Python overhead.
    overlapped = {"zarr_write"} if tasks._overlaps(models.resolve_device(cfg.device)) else set()
    known = sum(v for k, v in timer.seconds.items()
                if k not in overlapped and not k.startswith("prepare_run."))
    timer.seconds["cast_copy_other"] = max(0.0, total - known)
    timer.seconds["total"] = total
    return {k: round(v, 3) for k, v in timer.seconds.items()}


@contextlib.contextmanager
def prefect_flow(cfg: ExtractConfig, workdir: Path) -> Iterator[Callable[[], float]]:
    """A temporary Prefect server and a timer of the ``extract`` flow on a fresh store (one
    in-process worker, as ``bfd extract``); one warm-up flow run on a small store first."""
    from prefect.testing.utilities import prefect_test_harness

    from bfd.flows.extract import extract
    from bfd.flows.runners import task_runner

    flow = extract.with_options(task_runner=task_runner(1, None,
                                                        models.resolve_device(cfg.device)))
    config = {**cfg.to_dict(), "sites": list(cfg.sites)}

    def run() -> float:
        with fresh_store(workdir, "flow") as root:
            _sync(cfg.device)
            t0 = time.perf_counter()
            flow(config, store=root)
            _sync(cfg.device)
            return time.perf_counter() - t0

    with prefect_test_harness(server_startup_timeout=120):
        with fresh_store(workdir, "flow-warm") as root:
            flow({**config, "n_images": min(cfg.n_images, cfg.images_per_chunk)}, store=root)
        yield run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--n-images", type=int, default=None,
                   help="images per run (default 128 on CPU, 1024 on CUDA)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--images-per-chunk", type=int, default=tasks.DEFAULT_IMAGES_PER_CHUNK)
    p.add_argument("--images-per-shard", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--layers", default="all")
    p.add_argument("--sites", default="attn_in,resid")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    p.add_argument("--autocast", default="none", choices=["none", "bf16", "fp16"])
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="best of this many of each timing")
    p.add_argument("--stages", action="store_true", help="time the pipeline's stages too")
    p.add_argument("--no-flow", action="store_true", help="skip the Prefect flow figure")
    p.add_argument("--one-shard-at-a-time", action="store_true",
                   help="also time the pipeline with its shards one at a time (on a GPU the "
                   "flow runs tasks.shard_slots of them side by side)")
    p.add_argument("--zarr-writes-too", action="store_true",
                   help="also time the bare write and the pipeline with Zarr's own chunk "
                   "writes (write_shard writes a local uncompressed store's files itself)")
    p.add_argument("--torch-threads-too", type=int, default=None, metavar="K",
                   help="also time the pipeline with torch's intra-op threads set to K")
    p.add_argument("--switch-interval-too", type=float, default=None, metavar="S",
                   help="also time the pipeline with Python's thread switch interval S seconds")
    p.add_argument("--workdir", default=None, help="where the temporary stores go")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model and run, one rep: the bench runs, the figures mean nothing")
    args = p.parse_args()
    if args.quick:
        args.model, args.img_size, args.n_images, args.batch_size = "test_vit", 32, 8, 4
        args.images_per_chunk, args.reps, args.stages, args.no_flow = 4, 1, True, True
        args.zarr_writes_too, args.torch_threads_too = True, 1  # every timer runs once
        args.switch_interval_too = 0.05

    device = models.resolve_device(args.device)
    if args.n_images is None:
        args.n_images = 1024 if device.startswith("cuda") else 128
    cfg = make_config(args, device)
    workdir = Path(tempfile.mkdtemp(prefix="bfd-bench-extract-", dir=args.workdir))
    flow_error = None
    try:
        fwd = BareForward(cfg)
        write = BareWrite(cfg, fwd.info, workdir)
        # Warm the worker's model cache, transform and kernels on a small run of its own.
        warm = replace(cfg, n_images=min(cfg.n_images, cfg.images_per_chunk))
        with fresh_store(workdir, "warm") as root:
            run_pipeline(root, warm)
        timers = {"forward": fwd.run, "write": write.run,
                  "pipeline": lambda: time_pipeline(cfg, workdir)}
        if args.one_shard_at_a_time:  # the baseline of shard_slots, in the same run
            timers["pipeline_one_shard_at_a_time"] = lambda: time_pipeline(cfg, workdir, 1)
        if args.zarr_writes_too:  # the baseline of the direct chunk writes, in the same run
            timers["write_zarr"] = under(zarr_writes, write.run)
            timers["pipeline_zarr_writes"] = under(zarr_writes,
                                                   lambda: time_pipeline(cfg, workdir))
        if args.switch_interval_too:
            timers[f"pipeline_switch_interval_{args.switch_interval_too}"] = under(
                lambda: setting(sys.getswitchinterval, sys.setswitchinterval,
                                args.switch_interval_too),
                lambda: time_pipeline(cfg, workdir))
        if args.torch_threads_too:
            timers[f"pipeline_torch_threads_{args.torch_threads_too}"] = under(
                lambda: setting(torch.get_num_threads, torch.set_num_threads,
                                args.torch_threads_too), lambda: time_pipeline(cfg, workdir))
        with contextlib.ExitStack() as stack:
            if not args.no_flow:
                try:
                    timers["flow"] = stack.enter_context(prefect_flow(cfg, workdir))
                except Exception as e:  # the flow figure is for the record only
                    flow_error = f"{type(e).__name__}: {e}"
            best = dict.fromkeys(timers, float("inf"))
            for _ in range(args.reps):  # interleaved, so that load from other jobs hits all
                for name, timer in timers.items():
                    best[name] = min(best[name], timer())
        stages = time_stages(cfg, workdir) if args.stages else None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    n = cfg.n_images
    rate = {k: n / v for k, v in best.items()}
    limit = min(("forward", "write"), key=lambda k: rate[k])
    ratio = rate["pipeline"] / rate[limit]
    info = fwd.info
    bytes_per_image = (len(write.layers) * len(cfg.sites) * info.num_tokens * info.width
                       * np.dtype(cfg.dtype).itemsize)
    figures = {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "torch_threads": torch.get_num_threads(),
        "model": cfg.model,
        "shape": {"layers": len(write.layers), "sites": list(cfg.sites), "n_images": n,
                  "tokens": info.num_tokens, "dim": info.width, "dtype": cfg.dtype},
        "batch_size": cfg.batch_size,
        "images_per_chunk": cfg.images_per_chunk,
        "images_per_shard": cfg.images_per_shard or cfg.images_per_chunk,
        "shard_slots": tasks.shard_slots(device),
        "decode_workers": cfg.decode_workers,
        "stored_mib_per_run": round(bytes_per_image * n / 2**20, 1),
        "model_load_seconds": round(fwd.load_seconds, 3),
        "decode_images_per_s": round(n / fwd.decode_seconds, 1),
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "images_per_s": {k: round(v, 2) for k, v in rate.items()},
        "write_mib_per_s": round(rate["write"] * bytes_per_image / 2**20, 1),
        "leaves_out": {
            "forward": "decoding (done beforehand), hooks, host copies, storage",
            "write": "forward and decoding",
            "pipeline": "model load (model_load_seconds, once per process), Prefect",
            "flow": "Prefect server start-up and one warm-up flow run",
            "decode": "the forward and storage (decoding and transform only)",
            "all": "Python, torch and timm imports",
        },
        "limiting_baseline": limit,
        "ratio_pipeline_vs_baseline": round(ratio, 3),
    }
    if stages is not None:
        figures["stages_seconds"] = stages
    if "flow" in rate:
        figures["ratio_flow_vs_baseline"] = round(rate["flow"] / rate[limit], 3)
    if "pipeline_one_shard_at_a_time" in rate:
        figures["ratio_one_shard_at_a_time_vs_baseline"] = round(
            rate["pipeline_one_shard_at_a_time"] / rate[limit], 3)
    for name in rate:
        if name.startswith("pipeline_") and name != "pipeline_one_shard_at_a_time":
            figures[f"ratio_{name}_vs_baseline"] = round(rate[name] / rate[limit], 3)
    if "write_zarr" in rate:
        figures["ratio_write_zarr_vs_write"] = round(rate["write_zarr"] / rate["write"], 3)
    if flow_error:
        figures["flow_error"] = flow_error
    print(json.dumps(figures, indent=2))
    goal = GOALS["cuda" if device.startswith("cuda") else "cpu"]
    print(f"(a) pipeline images/s / min(bare forward, bare write) images/s [{limit}]: "
          f"{figures['ratio_pipeline_vs_baseline']} (goal >= {goal})")
    if "ratio_flow_vs_baseline" in figures:
        print(f"(b) Prefect flow images/s / min(bare forward, bare write) images/s: "
              f"{figures['ratio_flow_vs_baseline']} (for the record; goal of (a) >= {goal})")


if __name__ == "__main__":
    main()
