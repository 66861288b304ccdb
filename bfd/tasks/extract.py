"""Extraction: images -> timm forward with hooks -> whole Zarr chunks, one shard per task.

A shard task takes paths and a config, never a model: it loads the model itself on its own
device (once per worker process) and can run on any worker of a cluster.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

import bfd
from bfd import capture, models
from bfd import images as imgs
from bfd.files import input_path
from bfd.output import count, size_text
from bfd.requests import check_autocast, check_request
from bfd.storage import (
    ImageRecord,
    RunRequest,
    Shard,
    Store,
    create_activation_template,
    earlier_spelling,
    forget_dropped,
    mark_shard_done,
    plan_shards,
    read_request,
    trusted_shards,
    write_image_manifest,
    write_model_tensors,
    write_request,
    write_shard,
)
from bfd.storage import run_id as request_run_id
from bfd.storage.chunk_check import finite_rows
from bfd.storage.fault_lines import fault_lines
from bfd.tasks.model_check import CHECK_IMAGES, capture_logit_check, qkv_biases
from bfd.tasks.request_key import record_request_key

DEFAULT_IMAGES_PER_CHUNK = 32


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract. Everything that changes the stored activations enters the run id.

    Attributes:
        model: timm model name.
        weights: "pretrained", "random" or a checkpoint path (kept absolute: ``input_path``).
        images: a folder, a manifest file of paths (kept absolute), or "samples".
        n_images: first N listed images (all when None; 64 for samples).
        layers: "all" or block indices.
        sites: activation sites (``attn_in``, ``resid``).
        img_size: model input size (the model's default when None).
        dtype: storage dtype, "float16" or "float32".
        batch_size: images per forward.
        images_per_chunk: images per Zarr chunk (part of the store's template).
        images_per_shard: images per shard task, a multiple of images_per_chunk.
        seed: seed of a random init.
        device: "auto", "cpu", "cuda" or "cuda:K".
        autocast: "none", "bf16" or "fp16" (GPU forward under autocast).
        decode_workers: image decoding threads per shard task.
        model_args: timm.create_model keyword arguments (``--model-arg``: the model's
            configuration beyond its name, e.g. ``{"reg_tokens": 4}``); in the run id
            (``RunRequest.extra``) when given.
    """

    model: str
    weights: str = "pretrained"
    images: str = "samples"
    n_images: int | None = None
    layers: str | tuple[int, ...] = "all"
    sites: tuple[str, ...] = ("attn_in", "resid")
    img_size: int | None = None
    dtype: str = "float16"
    batch_size: int = 32
    images_per_chunk: int = DEFAULT_IMAGES_PER_CHUNK
    images_per_shard: int | None = None
    seed: int = 0
    device: str = "auto"
    autocast: str = "none"
    decode_workers: int = 2
    extra: dict = field(default_factory=dict)
    model_args: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # one spelling of the files named (bfd.files.input_path): the request key, the run
        # request and its id see the same path however it was typed, from any folder
        object.__setattr__(self, "weights", input_path(self.weights))
        object.__setattr__(self, "images", input_path(self.images))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunPlan:
    """A prepared run: its id, its shards and those still to do (``pending``); ``damaged``:
    the faults of the shards marked done whose files are not intact (in lines:
    ``bfd.storage.fault_lines``), ``repaired``: those shards, extracted again."""

    run_id: str
    layers: tuple[int, ...]
    shards: tuple[Shard, ...]
    pending: tuple[int, ...]
    records: tuple[dict, ...]
    n_images: int
    damaged: tuple[str, ...] = ()
    bytes_to_write: int = 0
    repaired: tuple[int, ...] = ()

    def summary(self) -> str:
        """One line: what this extraction will do."""
        todo = sum(self.shards[k].size for k in self.pending)
        return (f"run {self.run_id}: {count(self.n_images, 'image')} in "
                f"{count(len(self.shards), 'shard')}; {count(len(self.pending), 'shard')} "
                f"({count(todo, 'image')}) to extract, {size_text(self.bytes_to_write)} to write")


def resolve_layers(layers: str | tuple[int, ...] | list[int], depth: int) -> tuple[int, ...]:
    """``"all"``, ``"0,5,11"`` or a sequence of ints -> validated, sorted block indices."""
    if isinstance(layers, str):
        if layers.strip() == "all":
            return tuple(range(depth))
        try:
            layers = [int(v) for v in layers.split(",") if v.strip()]
        except ValueError as e:
            raise ValueError(f"--layers: must be 'all' or comma-separated ints; got "
                             f"{layers!r}") from e
    out = tuple(sorted({int(v) for v in layers}))
    bad = [v for v in out if not 0 <= v < depth]
    if not out or bad:
        raise ValueError(f"--layers: must be in [0, {depth}) for a {depth}-block model; "
                         f"got {bad}")
    return out


def validate_config(cfg: ExtractConfig) -> models.ModelInfo:
    """Check every option of a request before any work: no model weights are loaded (a
    weights file's first bytes are read), no image listed, nothing written.

    Returns:
        The model's shapes and token layout (built without weights).

    Raises:
        ValueError: Naming the first bad option and what it should be.
        UnsupportedModelError: For a model BFD cannot decompose.
    """
    check_request(cfg.to_dict())  # the rules that need no model (bfd.requests)
    check_autocast(cfg.autocast, models.resolve_device(cfg.device), cfg.device)
    info = models.describe(cfg.model, cfg.img_size, cfg.model_args)
    if cfg.img_size is not None and cfg.img_size % info.patch_size[0]:
        raise ValueError(f"--img-size must be a multiple of the patch size {info.patch_size[0]} "
                         f"of {cfg.model!r}; got {cfg.img_size}")
    resolve_layers(cfg.layers, info.depth)
    h, w = info.grid
    if h * w < 2:
        raise ValueError(f"{cfg.model} at img_size {info.img_size[0]} has {h}x{w} patch "
                         "position(s); BFD needs at least 2 (a larger --img-size)")
    return info


def load_weights(cfg: ExtractConfig) -> models.ModelInfo:
    """The request's model loaded with its weights, as ``prepare_run`` loads it (this
    process's model cache: ``prepare_run`` then reuses it), to refuse before any work weights
    that cannot be used: a damaged file that passed ``check_checkpoint``, tensors that do not
    fit the model, non-finite values.

    Raises:
        ValueError: Naming the weights and what is wrong with them (``models.load_model``).
    """
    return _model(cfg, "cpu")[1]


def refuse_before_work(cfg: ExtractConfig) -> models.ModelInfo:
    """Everything that refuses a request before any work, so that an audit of it is not
    recorded: its options (``validate_config``), its image source (``images.check_source``,
    no image hashed) and its weights (``load_weights``). A request refused here is the
    user's to fix; what fails after it is a failure of the work.

    Raises:
        ValueError, FileNotFoundError: Naming what is wrong.
        UnsupportedModelError, WeightsUnavailableError: As ``models.load_model``.
    """
    check_before_work(cfg)
    return load_weights(cfg)


def check_before_work(cfg: ExtractConfig) -> models.ModelInfo:
    """``refuse_before_work`` but the weights: the options and the image source."""
    info = validate_config(cfg)
    imgs.check_source(cfg.images, cfg.n_images)
    return info


@dataclass(frozen=True)
class Planned:
    """What ``plan_request`` finds of a request, nothing written: its model, its request and
    run id, its images, layers and shards, and of those the shards stored intact (``done``),
    the faults of marked ones that are not (``damaged``) and the bytes still to write."""

    model: torch.nn.Module
    info: models.ModelInfo
    request: RunRequest
    run_id: str
    records: list[ImageRecord]
    layers: tuple[int, ...]
    shards: list[Shard]
    done: set[int]
    damaged: list
    to_write: int
    preprocessing: dict

    def again(self, store: Store, cfg: ExtractConfig) -> Planned:
        """The same plan with the shards stored as they are now (after a wait on the run's
        lock: what another process did meanwhile)."""
        done, damaged, to_write = _to_do(store, cfg, self.info, self.run_id, self.shards,
                                         len(self.layers))
        return replace(self, done=done, damaged=damaged, to_write=to_write)


def _to_do(store: Store, cfg: ExtractConfig, info: models.ModelInfo, rid: str,
           shards: list[Shard], n_layers: int) -> tuple[set[int], list, int]:
    done, damaged = trusted_shards(store, rid, shards)
    todo_images = sum(s.size for s in shards if s.index not in done)
    return done, damaged, bytes_to_write(cfg, info, n_layers, todo_images, whole_run=not done)


def plan_request(store_root: str, cfg: ExtractConfig) -> Planned:
    """What ``prepare_run`` plans for ``cfg``, writing nothing (``bfd audit --dry-run`` says
    it): the model loaded with its weights, the images listed and hashed, the run id, and the
    shards of it already stored intact.

    Raises:
        ValueError: A request ``prepare_run`` refuses (fewer than 2 images, a shard plan that
            disagrees with the shards done), before anything is written.
    """
    store = Store(store_root)
    validate_config(cfg)
    # the CPU copy of the worker cache: a CPU run's shard tasks in this process reuse it
    model, info = _model(cfg, "cpu")
    layers = resolve_layers(cfg.layers, info.depth)
    records = imgs.list_images(cfg.images, cfg.n_images)
    if len(records) < 2:
        raise ValueError(f"BFD needs at least 2 images; {cfg.images!r} lists {len(records)}")
    preprocessing = json.loads(json.dumps(models.data_config(model), default=list))
    request = RunRequest(
        model=cfg.model, weights=cfg.weights, weights_sha256=info.weights_sha256,
        images=cfg.images, images_sha256=imgs.manifest_sha256(records),
        n_images=len(records), preprocessing=preprocessing, img_size=tuple(info.img_size),
        sites=tuple(cfg.sites), layers=layers, dtype=cfg.dtype, code_version=bfd.__version__,
        # model arguments only when given: a request without them keeps its run id
        extra={"autocast": cfg.autocast, "seed": cfg.seed,
               **({"model_args": dict(sorted(cfg.model_args.items()))} if cfg.model_args
                  else {}), **cfg.extra},
    )
    # a run of this request made before paths had one spelling is this request's run
    request = earlier_spelling(store, request) or request
    rid = request_run_id(request)
    # Refuse a shard plan that splits chunks or disagrees with the shards already done before
    # anything is written, so that a refused request leaves the store as it was.
    per_shard = cfg.images_per_shard or cfg.images_per_chunk
    shards = plan_shards(len(records), cfg.images_per_chunk, per_shard)
    # a marked shard whose chunk files are gone or cut short is done again, bit for bit
    done, damaged, to_write = _to_do(store, cfg, info, rid, shards, len(layers))
    return Planned(model, info, request, rid, records, tuple(layers), shards, done, damaged,
                   to_write, preprocessing)


def prepare_run(store_root: str, cfg: ExtractConfig,
                hold: Callable[[str], None] | None = None) -> RunPlan:
    """Describe the model and images, fix the run id, write the store's template, request,
    image manifest and model tensors (all idempotent), and list the shards still to do.

    Args:
        hold: Called with the run id once it is known, after the checks that refuse a
            request and before anything is written: the caller takes the run's lock there
            (``bfd.storage.run_lock``, waiting for another process computing the run), and
            the shards still to do are listed after it.
    """
    store = Store(store_root)
    planned = plan_request(store_root, cfg)
    _require_space(store, planned.to_write)
    if hold is not None:
        hold(planned.run_id)
        planned = planned.again(store, cfg)  # what another process did while this one waited
    model, info, request, rid = planned.model, planned.info, planned.request, planned.run_id
    records, layers, shards = planned.records, planned.layers, planned.shards
    done, damaged, to_write = planned.done, planned.damaged, planned.to_write
    preprocessing = planned.preprocessing
    write_request(store, request)
    forget_dropped(store, rid)  # its activations, dropped (bfd drop-activations), come back
    rows, cols = info.token_rows_cols()
    create_activation_template(
        store, rid, sites=list(cfg.sites), layers=list(layers), n_images=len(records),
        image_ids=[r.id for r in records], token_types=info.token_types(), rows=rows,
        cols=cols, dim=info.width, dtype=cfg.dtype, images_per_chunk=cfg.images_per_chunk,
        attrs={
            "model": cfg.model, "weights": request.weights,
            "weights_sha256": info.weights_sha256,
            # the weights as the request names them (a run made before: as typed then)
            "run_id": rid, "model_info": json.dumps({**info.to_dict(),
                                                     "weights": request.weights}),
            "preprocessing": json.dumps(preprocessing), "img_size": list(info.img_size),
            "dtype": cfg.dtype, "timm_version": info.timm_version,
            "torch_version": info.torch_version, "bfd_version": bfd.__version__,
            "config_json": json.dumps(request.to_json_dict(), sort_keys=True),
        },
    )
    write_image_manifest(store, rid, [ImageRecord(r.index, r.id, r.sha256) for r in records])
    write_model_tensors(
        store, rid, layers=list(layers),
        qkv_weight=np.stack([models.qkv_weight(model, l).float().numpy() for l in layers]),
        attn_scale=np.array([models.attn_scale(model, l) for l in layers]),
        num_heads=info.num_heads, pos_embed=models.pos_embed_patch_rows(model),
        qkv_bias=qkv_biases(model, layers),
    )
    capture_logit_check(store, rid, model, records, layers)
    record_request_key(store, cfg.to_dict(), info.weights_sha256, records, rid)
    return RunPlan(
        run_id=rid, layers=layers, shards=tuple(shards),
        pending=tuple(s.index for s in shards if s.index not in done),
        records=tuple(asdict(r) for r in records), n_images=len(records),
        damaged=tuple(fault_lines(damaged)), bytes_to_write=to_write,
        repaired=tuple(sorted({f.shard for f in damaged if f.shard is not None} - done)),
    )


def bytes_to_write(cfg: ExtractConfig, info: models.ModelInfo, n_layers: int,
                   n_images: int, whole_run: bool = False) -> int:
    """The bytes a run of ``cfg`` takes on the store's disk for ``n_images`` images still to
    extract: their activations at every site of ``n_layers`` layers, every token, in the
    storage dtype, in whole chunks (a run's last chunk is written whole: 16 images in chunks
    of 32 take 32 images' bytes), each chunk file with its folders in whole blocks (``DISK_BLOCK``);
    with ``whole_run``, also what the run writes once besides
    (``run_overhead``). None for a stats-only request (``bfd audit
    --no-store-activations``), which keeps no activations."""
    from bfd.storage import is_stats_only

    if is_stats_only(cfg.extra):
        return 0
    chunk = cfg.images_per_chunk
    n_chunks = -(-n_images // chunk) * n_layers * len(cfg.sites)
    chunk_bytes = chunk * info.num_tokens * info.width * np.dtype(cfg.dtype).itemsize
    # on the disk: each chunk file in whole blocks, in two folders of its own (its key
    # c/<layer>/<chunk>/0/0), below a folder per site (c/) and per site and layer, which the
    # data bytes alone left out (1.8-2.6 % more, trial 30)
    folders = len(cfg.sites) * (1 + n_layers)
    activations = n_chunks * (_in_blocks(chunk_bytes) + 2 * DISK_BLOCK) + folders * DISK_BLOCK
    return activations + (run_overhead(cfg, info, n_layers) if whole_run else 0)


# the allocation unit of the usual file systems (ext4, xfs, tmpfs): a file or folder takes
# whole blocks of it
DISK_BLOCK = 4096


def _in_blocks(nbytes: int) -> int:
    return -(-nbytes // DISK_BLOCK) * DISK_BLOCK


# What a run's groups besides its activations take on the disk whatever their data: the
# metadata (zarr.json) and small chunk files of its results' ~180 arrays and of its model,
# logit-check and coordinate arrays, each in whole blocks with their folders: at most this
# per run and RUN_FILES_PER_LAYER per layer (2.4 MB measured for a test_vit run of one
# layer, 2.6 MB of two; trial 33: a small run took 2.6 times the "at most" said before)
RUN_FILES_OVERHEAD = 2 * 2**20
RUN_FILES_PER_LAYER = 2**19


def run_overhead(cfg: ExtractConfig, info: models.ModelInfo, n_layers: int) -> int:
    """What a stored run writes besides its activations: in data bytes, the model tensors
    (float32 qkv weights and biases of its layers, the pos_embed patch rows), the logit
    check's x, q and k of ``CHECK_IMAGES`` images per layer (float32) and its results' pos and
    mu per (site, layer) (float64), the bulk of them (the tables and the rest of the results,
    per head and mode, are small beside them); and the files' overhead
    (``RUN_FILES_OVERHEAD``, ``RUN_FILES_PER_LAYER``)."""
    t, d, d_attn = info.num_tokens, info.width, info.d_attn
    model = 4 * (n_layers * (3 * d_attn * d + 3 * d_attn) + info.grid[0] * info.grid[1] * d)
    check = 4 * n_layers * CHECK_IMAGES * t * (d + 2 * d_attn)
    results = 8 * n_layers * len(cfg.sites) * 2 * t * d
    return model + check + results + RUN_FILES_OVERHEAD + n_layers * RUN_FILES_PER_LAYER


class NotEnoughSpaceError(OSError):
    """A run whose activations cannot fit in the free space of the store's disk: refused
    before anything is written (``bfd.faults``: its one line, exit 1)."""

    def __str__(self) -> str:  # the sentence alone: it names the disk itself
        return self.strerror or super().__str__()


def _require_space(store: Store, nbytes: int) -> None:
    """Refuse, before anything is written, a run whose ``nbytes`` (``bytes_to_write``) cannot
    fit on the store's disk (a local Zarr part only; a remote one reports its own limits)."""
    if store.zarr_dir is None:
        return
    where = _existing(store.zarr_dir)
    free = shutil.disk_usage(where).free
    if nbytes > free:
        raise NotEnoughSpaceError(
            errno.ENOSPC, f"the run needs {size_text(nbytes)} (its activations, and for a new "
            f"run its model tensors and results) but the disk of the store ({where}) has "
            f"{size_text(free)} free; free space or choose another --store (bfd audit "
            "--no-store-activations stores none)", str(where))


def _existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def run_size(store_root: str, cfg: ExtractConfig, info: models.ModelInfo
             ) -> tuple[int, int, int, int | None]:
    """What a new run of ``cfg`` holds: its layers and images (those the source lists, up
    to ``n_images``), the bytes it writes on the store's disk (``bytes_to_write`` of the
    whole run: 0 for a stats-only request) and the bytes free there (None for a remote
    Zarr store). ``info``: the model's shapes (``validate_config``)."""
    n_layers = len(resolve_layers(cfg.layers, info.depth))
    held = imgs.check_source(cfg.images, cfg.n_images)
    n_images = held if held is not None else cfg.n_images or imgs.SAMPLES_DEFAULT_N
    need = bytes_to_write(cfg, info, n_layers, n_images, whole_run=True)
    return n_layers, n_images, need, disk_free(store_root)


def disk_free(store_root: str) -> int | None:
    """The bytes free on the disk of the store's Zarr part (None for a remote Zarr store)."""
    zarr_dir = Store(store_root).zarr_dir
    return None if zarr_dir is None else shutil.disk_usage(_existing(zarr_dir)).free


def check_space(store_root: str, cfg: ExtractConfig,
                info: models.ModelInfo | None = None) -> None:
    """``prepare_run``'s refusal of a run that cannot fit on the store's disk, made before any
    image is hashed or anything recorded (``bfd audit`` and ``bfd extract`` before Prefect
    starts; the flow ``audit`` before its audit's row) wherever it can be: when the whole run
    fits, or when nothing of it can be stored yet (no run of this model in the store holds a
    completed shard), or when the store's request key names the run (the shards it has done
    are not counted). Otherwise the planner checks it, knowing the run. A stats-only request
    writes no activations (``bytes_to_write``). ``info``: the model's shapes
    (``validate_config`` of ``cfg``), when known.

    Raises:
        NotEnoughSpaceError: Naming what the run needs and what the disk has free.
    """
    from bfd.storage import has_request_keys, is_stats_only, model_slug, read_request_key
    from bfd.tasks.request_key import key_of_config

    if is_stats_only(cfg.extra):
        return
    store = Store(store_root)
    if store.zarr_dir is None:
        return
    info = info if info is not None else validate_config(cfg)
    n_layers, n_images, need, free = run_size(store_root, cfg, info)
    if need <= free:
        return
    slug = f"{model_slug(cfg.model)}-"
    started = [run.name for run in (store.runs_dir.iterdir() if store.runs_dir.is_dir()
                                    else ()) if run.name.startswith(slug)
               and any(store.shards_dir(run.name).glob("*.json"))]
    if started:  # one of them may be this request's run: what is left of it, when known
        try:
            found = key_of_config(cfg.to_dict()) if has_request_keys(store) else None
        except (OSError, ValueError):  # the planner says it in its own words
            return
        rid = read_request_key(store, found[0]) if found is not None else None
        if rid is None:
            return
        per_shard = cfg.images_per_shard or cfg.images_per_chunk
        shards = plan_shards(n_images, cfg.images_per_chunk, per_shard)
        done, _ = trusted_shards(store, rid, shards)
        need = bytes_to_write(cfg, info, n_layers,
                              sum(s.size for s in shards if s.index not in done),
                              whole_run=not done)
    _require_space(store, need)


# One model load at a time in a process: shard tasks that start side by side (``shard_slots``)
# wait for the first one's load and share its model instead of each loading a copy.
_MODEL_LOCK = threading.Lock()


def _model(cfg: ExtractConfig, device: str) -> tuple[torch.nn.Module, models.ModelInfo]:
    """The run's model on ``device``, loaded once per process: the planner and the shard tasks
    of a run reuse it (read-only: eval mode, and ``forward_capture`` lets one forward at a
    time). A weights file is keyed by its size and mtime too, so a file changed in place is
    loaded (and hashed) again rather than served stale."""
    stamp = None
    if cfg.weights not in ("pretrained", "random") and os.path.isfile(cfg.weights):
        st = os.stat(cfg.weights)
        stamp = (st.st_size, st.st_mtime_ns)
    args = json.dumps(cfg.model_args, sort_keys=True)  # hashable, for the cache
    with _MODEL_LOCK:
        return _cached_model(cfg.model, cfg.weights, cfg.img_size, cfg.seed, device, stamp,
                             args)


def _run_model(cfg: ExtractConfig, device: str, store: Store,
               run_id: str) -> tuple[torch.nn.Module, models.ModelInfo]:
    """``_model``, refused when its weights are not those the run was planned with (its
    request's ``weights_sha256``): a weights file overwritten while the run was extracted
    (a training job saving ``last.pth`` again) would make its later shards another model's,
    published as one run with the first file's hash (trial 26: shards 0-4 of one seed, 5-15
    of another, ``verify`` intact)."""
    model, info = _model(cfg, device)
    planned = read_request(store, run_id).weights_sha256
    if info.weights_sha256 != planned:
        raise ValueError(
            f"weights file {cfg.weights!r} changed while run {run_id} was extracted (sha256 "
            f"{info.weights_sha256[:12]} now, {planned[:12]} when the run was planned): its "
            "activations would mix two models, so nothing more is extracted; the shards done "
            "are kept. Audit the file again once it no longer changes (a new run, of its new "
            "bytes), or restore the file to finish this one")
    return model, info


@functools.lru_cache(maxsize=2)
def _cached_model(name: str, weights: str, img_size: int | None, seed: int, device: str,
                  stamp: tuple[int, int] | None, model_args: str = "{}"):
    return models.load_model(name, weights, img_size=img_size, seed=seed, device=device,
                             model_args=json.loads(model_args))


def worker_device(device: str, worker_name: object = None, gpus: int | None = None) -> str:
    """The GPU of this worker when ``device`` is plain ``cuda`` on a machine with several:
    local worker processes (``--workers K``, Dask workers named 0..K-1) take
    ``cuda:<name mod gpus>``, one GPU each. A worker that sees one GPU (e.g. given its own by
    ``CUDA_VISIBLE_DEVICES``, as dask-cuda does), a worker without an integer name, and any
    other device keep ``device``.

    Args:
        device: The resolved device of the run (``cpu``, ``cuda``, ``cuda:K``).
        worker_name: The Dask worker's name; this process's worker when None.
        gpus: GPUs this process sees; ``torch.cuda.device_count()`` when None.
    """
    if device != "cuda":
        return device
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if gpus <= 1:
        return device
    if worker_name is None:
        try:
            from distributed import get_worker

            worker_name = get_worker().name
        except (ImportError, ValueError):  # not inside a Dask worker
            return device
    if isinstance(worker_name, int) or (isinstance(worker_name, str) and worker_name.isdigit()):
        return f"cuda:{int(worker_name) % gpus}"
    return device


def _autocast(device: str, mode: str):
    if mode == "none" or not device.startswith("cuda"):
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def _overlaps(device: str) -> bool:
    """Whether a shard's decoding, forwards and writes run side by side (see extract_shard)."""
    return device != "cpu"


# Shard tasks one worker process runs side by side on a GPU (``shard_slots``).
GPU_SHARD_SLOTS = 2


def shard_slots(device: str) -> int:
    """How many shard tasks one worker process runs at once on ``device`` (resolved).

    On a GPU two: a shard decodes its first batch before its first forward and waits for its
    last chunk's writes before it is marked done, and the other shard's forwards fill those
    waits (the forwards themselves still take turns: ``forward_capture`` holds the model).
    On the CPU one: the forward keeps every core busy, and work beside it only slows it down.
    """
    return GPU_SHARD_SLOTS if _overlaps(device) else 1


def _nonfinite_rows(a: torch.Tensor, stored: torch.Tensor) -> torch.Tensor:
    """``(layer, image)`` flags of the images of a forward's activations ``a`` (layer, image,
    token, dim) that hold a NaN or inf as stored in ``stored``, their rows of the shard buffer,
    just copied.

    On a GPU, ``a`` is already in the storage dtype: tested there, a few microseconds, rather
    than on the host buffer after the copy (``torch.isfinite`` on the host read float16 at about
    1 GB/s, in the forward loop's thread). On the CPU, ``a`` is float32 and the copy casts it:
    the stored bits are tested (``finite_rows``, four times faster than ``isfinite``), while
    they are still in cache."""
    if a.device.type != "cpu":
        return (~torch.isfinite(a)).flatten(2).any(2)
    rows = stored.numpy()
    return torch.from_numpy(np.stack([~finite_rows(layer) for layer in rows]))


def _require_finite(bad: torch.Tensor, decoded: list[int], offset: int, site: str,
                    layers: tuple[int, ...], dtype: str) -> None:
    """Refuse activations that are NaN or infinite as stored (undecodable images are NaN by
    design and left out): their BFD is undefined, and a shard must not be marked done with
    them, or decomposition fails far from the cause.

    Args:
        bad: ``(layer, image)`` flags of the chunk's images (``_nonfinite_rows``), on the host.
    """
    bad = bad[:, [i - offset for i in decoded]].any(1)
    if bad.any():
        layer = layers[int(bad.nonzero()[0, 0])]
        hint = (" (float16 holds at most 65504: try --dtype float32)" if dtype == "float16"
                else "")
        raise ValueError(f"non-finite activations (NaN or inf) at site {site} of layer {layer}"
                         f"{hint}; nothing of this shard was marked done")


def extract_shard(
    store_root: str,
    run_id: str,
    cfg: ExtractConfig,
    shard: Shard,
    layers: tuple[int, ...],
    records: list[dict],
) -> dict:
    """Forward one shard's images, write its whole chunks for every site, mark it done.

    Batches never cross a chunk boundary and always start at one, so the batch composition
    (and hence every bit of a CPU float32 forward) is the same for any shard size or worker
    count. Undecodable images keep NaN rows and are recorded as skipped with their reason.

    Returns:
        Counts and timing of the shard.
    """
    t0 = time.perf_counter()
    store = Store(store_root)
    device = worker_device(models.resolve_device(cfg.device))
    model, info = _run_model(cfg, device, store, run_id)
    transform = models.transform(model)
    recs = [imgs.ImageRecord(**r) for r in records]
    n, T, d = shard.size, info.num_tokens, info.width
    # On CUDA the shard buffers are pinned host memory: each forward's activations go from
    # the device straight into them (one asynchronous copy at full bus speed) instead of
    # through a pageable host tensor and a second host copy.
    pinned = device.startswith("cuda")
    # Every row is written: by its image's forward, or NaN where the image did not decode.
    bufs = {site: torch.empty((len(layers), n, T, d), dtype=getattr(torch, cfg.dtype),
                              pin_memory=pinned)
            for site in cfg.sites}
    out = {site: b.numpy() for site, b in bufs.items()}
    # (layer, image) flags of the images holding a non-finite value, where the forward ran
    bad = {site: torch.zeros((len(layers), n), dtype=torch.bool, device=device)
           for site in cfg.sites}
    # On a GPU, cast to the storage dtype there: half the bytes to the host for float16. On
    # the CPU, copy_ below casts while it copies into the shard buffer, one pass fewer
    # (bench/extract.py). torch rounds to nearest even either way, as a host cast would.
    capture_dtype = torch.float32 if device == "cpu" else getattr(torch, cfg.dtype)
    errors: dict[int, str] = {}
    ipc = cfg.images_per_chunk
    # On a GPU the host is idle during a forward: decoding runs ahead in threads
    # (iter_batches prefetch) and a writer thread writes each finished chunk while the next
    # chunk's forward runs. On the CPU the forward already keeps every core busy, and work
    # beside it only slows its threads down (bench/extract.py), so the stages take turns.
    # Either way batches never cross a chunk, so the batch composition is the same.
    overlap = _overlaps(device)
    batches = imgs.iter_batches(recs, transform, cfg.batch_size, cfg.decode_workers, align=ipc,
                                prefetch=2 if overlap else 0)
    writes = []
    # Writes of distinct chunks are independent (each owns whole chunks), and compressing
    # them releases the GIL: on a GPU several writer threads keep up with the forwards.
    writer_threads = 4 if overlap else 1
    with closing(batches), ThreadPoolExecutor(writer_threads,
                                              thread_name_prefix="bfd-write") as writer:
        written = seen = 0  # shard offsets: handed to the writer, and forwarded so far
        for batch in batches:
            errors.update(batch.errors)
            seen += len(batch.indices) + len(batch.errors)
            if batch.errors:
                failed = [i - shard.start for i, _ in batch.errors]
                for buf in bufs.values():
                    buf[:, failed] = float("nan")
            if batch.indices:
                with _autocast(device, cfg.autocast):
                    acts = capture.forward_capture(model, batch.images, layers, cfg.sites,
                                                   dtype=capture_dtype, to_host=not pinned)
                first, k = batch.indices[0] - shard.start, len(batch.indices)
                contiguous = batch.indices[-1] - batch.indices[0] + 1 == k
                rows = slice(first, first + k) if contiguous else [
                    i - shard.start for i in batch.indices]
                for site, a in acts.items():
                    dst = bufs[site]
                    if contiguous:  # per layer: a contiguous destination, so copy_ is async
                        for i in range(len(layers)):
                            dst[i, rows].copy_(a[i], non_blocking=pinned)
                    else:
                        dst[:, rows] = a.cpu().to(dst.dtype)
                    bad[site][:, rows] = _nonfinite_rows(a, dst[:, rows])
            if seen == n or seen % ipc == 0:  # the batch closed a chunk: write it
                if pinned:  # the chunk's device-to-host copies have landed
                    torch.cuda.current_stream(device).synchronize()
                decoded = [i for i in range(written, seen) if shard.start + i not in errors]
                for site, flags in bad.items():
                    _require_finite(flags[:, written:seen].cpu(), decoded, written, site,
                                    layers, cfg.dtype)
                for site, a in out.items():
                    args = (store, run_id, site, shard.start + written, shard.start + seen,
                            a[:, written:seen])
                    writes.append(writer.submit(write_shard, *args))
                    if not overlap:
                        writes[-1].result()
                written = seen
        for w in writes:
            w.result()  # a failed write fails the shard before it is marked done
    mark_shard_done(store, run_id, shard, [
        ImageRecord(r.index, r.id, r.sha256, "skipped" if r.index in errors else "ok",
                    errors.get(r.index))
        for r in recs
    ])
    return {"shard": shard.index, "images": n, "skipped": len(errors),
            "seconds": time.perf_counter() - t0}
