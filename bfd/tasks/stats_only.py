"""Stats-only decomposition: the core's two streaming passes fed by the forward itself, for
image sets too large to store (``bfd audit --no-store-activations``).

Each pass runs the model over every image once and hands each batch's activations at every
(site, layer) to the same ``pass1_chunk`` / ``Pass2Plan.chunk`` functions that the stored path
maps over Zarr chunks: two forwards instead of one forward, one write and two reads. The
activations are rounded to the request's storage dtype first, as the stored path stores them,
so both paths decompose the same numbers; their sums differ only in grouping (METHOD.md's
states are sums), i.e. in float64 rounding.

The images are decoded once (kept in memory up to ``KEEP_IMAGES_BYTES``, the rest decoded
again for the second pass); each batch's sums run in a worker thread during the next
forward, and the layers' summaries two at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from typing import TypeVar

import numpy as np
import torch
import xarray as xr

from bfd import capture, models
from bfd import images as imgs
from bfd.core import (
    Pass2Plan,
    bi_orthogonal_modes,
    finalize_means,
    pass1_chunk,
    prepare_chunk,
)
from bfd.storage import ImageRecord, Store, read_model_tensors
from bfd.tasks.decompose import (
    DecomposeOptions,
    layer_dataset,
    layer_head_maps,
    model_check_vars,
)
from bfd.tasks.extract import ExtractConfig, _autocast, _run_model

T = TypeVar("T")


# Decoded images kept in memory for the second forward, at most this many bytes (a float32
# 3x224x224 image weighs 0.6 MB: about 850 images); the images beyond it are decoded again.
KEEP_IMAGES_BYTES = 512 << 20
# Layers summarized at a time once both passes are done.
SUMMARY_THREADS = 2
# The stages a stats-only run reports (``report``: done of total): the two forwards, in
# images, then the summaries of its (site, layer)s, as the stored path's decomposition.
FORWARD_STAGES = ("forward 1/2", "forward 2/2")
SUMMARY_STAGE = "decompose"

Report = Callable[[str, int, int], None]


class _Images:
    """The run's images in forward batches, decoded once where they fit: ``first`` decodes
    every image and keeps the batches, up to ``max_bytes``, that ``again`` yields before it
    decodes the rest anew. Batches are aligned to the stored path's chunks, and the kept part
    ends on a chunk boundary, so both passes see the same batches either way."""

    def __init__(self, cfg: ExtractConfig, records: list[imgs.ImageRecord],
                 transform: Callable, prefetch: int, max_bytes: int) -> None:
        self.cfg, self.records, self.transform = cfg, records, transform
        self.prefetch, self.max_bytes = prefetch, max_bytes
        self.kept: list[imgs.Batch] = []
        self.cut = 0  # records covered by the kept batches
        self.errors: dict[int, str] = {}  # undecodable images, by index

    def _decode(self, records: list[imgs.ImageRecord]) -> Iterator[imgs.Batch]:
        batches = imgs.iter_batches(records, self.transform, self.cfg.batch_size,
                                    self.cfg.decode_workers, align=self.cfg.images_per_chunk,
                                    prefetch=self.prefetch)
        with closing(batches):
            yield from batches

    def first(self) -> Iterator[imgs.Batch]:
        """Every batch, decoded; keeps what fits for ``again``."""
        ends, used, start, keeping = [], 0, 0, True
        for batch in self._decode(self.records):
            self.errors.update(batch.errors)
            stop = start + len(batch.indices) + len(batch.errors)
            if keeping and used + batch.images.nbytes <= self.max_bytes:
                self.kept.append(batch)
                ends.append(stop)
                used, self.cut = used + batch.images.nbytes, stop
            elif keeping:
                # no batch crosses a chunk boundary: cut at the last one before this batch,
                # where decoding the rest again starts the same batches
                keeping = False
                self.cut = start - start % self.cfg.images_per_chunk
                self.kept = [b for b, end in zip(self.kept, ends, strict=True)
                             if end <= self.cut]
            start = stop
            yield batch

    def again(self) -> Iterator[imgs.Batch]:
        """The same batches once more: the kept ones, then the rest decoded again.

        Raises:
            ValueError: An image decoded again did not decode where the first forward's did
                (changed or unreadable since), or the other way round: the second pass would
                sum other images than the first one's means (found in trial 24: shares moved,
                the image still counted ``ok``). Nothing is published; a new run lists the
                folder again.
        """
        yield from self.kept
        if self.cut < len(self.records):
            by_index = {r.index: r for r in self.records}
            for batch in self._decode(self.records[self.cut:]):
                now = dict(batch.errors)
                lost = [i for i in now if i not in self.errors]
                back = [i for i in batch.indices if i in self.errors]
                if lost or back:
                    i = (lost or back)[0]
                    why = (f"did not decode the second time ({now[i]})" if lost else
                           f"decoded the second time, not the first ({self.errors[i]})")
                    more = len(lost) + len(back) - 1
                    raise ValueError(
                        f"image {by_index[i].id} {why}, between the two forward passes of "
                        f"--no-store-activations" + (f" (and {more} more)" if more else "")
                        + ": the passes would sum other images; nothing is published. Leave "
                        "the images unchanged while the audit runs, and run it again")
                yield batch


def _forward(cfg: ExtractConfig, model: torch.nn.Module, layers: tuple[int, ...],
             batches: Iterable[imgs.Batch], device: str,
             ) -> Iterator[tuple[np.ndarray, dict[tuple[str, int], torch.Tensor]]]:
    """``(image indices, {(site, layer): (batch, token, dim)})`` per batch, in storage dtype
    (each activation cast as its hook fires: no stacked float32 copy)."""
    dtype = getattr(torch, cfg.dtype)
    for batch in batches:
        if batch.indices:
            with _autocast(device, cfg.autocast):
                acts = capture.forward_capture_each(model, batch.images, layers, cfg.sites,
                                                    dtype=dtype)
            yield np.asarray(batch.indices, dtype=np.int64), acts


def _counted(batches: Iterable[imgs.Batch], stage: str, total: int,
             report: Report | None) -> Iterator[imgs.Batch]:
    """``batches``, reporting ``stage``'s images done (decoded or not) as each batch is done
    with: when the next one is asked for, its forward run and its sums handed on."""
    if report is None:
        yield from batches
        return
    done = 0
    report(stage, done, total)
    for batch in batches:
        yield batch
        done += len(batch.indices) + len(batch.errors)
        report(stage, done, total)


def _overlapped(worker: ThreadPoolExecutor, items: Iterable[T],
                fn: Callable[[T], None]) -> None:
    """``fn`` of every item in order, in ``worker``, while the next item is produced (the
    next forward): one item ahead at most, so two batches of activations are held."""
    pending: Future | None = None
    for item in items:
        if pending is not None:
            pending.result()
        pending = worker.submit(fn, item)
    if pending is not None:
        pending.result()


def decompose_from_forward(
    store_root: str,
    run_id: str,
    cfg: ExtractConfig,
    layers: tuple[int, ...],
    records: list[dict],
    options: DecomposeOptions,
    keep_images_bytes: int = KEEP_IMAGES_BYTES,
    report: Report | None = None,
) -> tuple[list[xr.Dataset], list[ImageRecord]]:
    """Every docs/method.md quantity of every (site, layer) of a run, from two forwards.

    The model tensors and the logit check come from the store, where ``prepare_run`` wrote
    them, as ``decompose_site_layer`` reads them.

    Args:
        store_root: The store.
        run_id: The planned run (``prepare_run`` of ``cfg``).
        cfg: The run's extraction request.
        layers: Its resolved block indices.
        records: Its image manifest rows (``RunPlan.records``).
        options: The decomposition's options.
        keep_images_bytes: Decoded images kept for the second forward, at most; the rest
            is decoded again.
        report: Called with ``(stage, done, total)`` as the work goes: each forward's images
            (``FORWARD_STAGES``), batch by batch, then the (site, layer)s summarized
            (``SUMMARY_STAGE``).

    Returns:
        One Dataset per (site, layer), as ``decompose_site_layer`` returns it, and the image
        records with their statuses (``ok``, or ``skipped`` with the decoding error).

    Raises:
        ValueError: Fewer than 2 images could be decoded.
    """
    store = Store(store_root)
    device = models.resolve_device(cfg.device)
    pass_device = models.resolve_device(options.device)
    model, info = _run_model(cfg, device, store, run_id)
    recs = [imgs.ImageRecord(**r) for r in records]
    images = _Images(cfg, recs, models.transform(model), 0 if device == "cpu" else 2,
                     keep_images_bytes)
    prefix_tokens = info.num_prefix_tokens
    kw = dict(prefix_tokens=prefix_tokens, prefix=options.prefix)
    keys = [(site, layer) for site in cfg.sites for layer in layers]
    p1: dict = {}
    p2: dict = {}

    def pass1(batch: tuple[np.ndarray, dict[tuple[str, int], torch.Tensor]]) -> None:
        index, acts = batch
        for site, layer in keys:
            x = acts[site, layer].to(pass_device)
            state = pass1_chunk(x, index, seed=options.seed, groups=options.jackknife_groups,
                                **kw)
            p1[site, layer] = state if (site, layer) not in p1 else p1[site, layer] + state

    def pass2(batch: tuple[np.ndarray, dict[tuple[str, int], torch.Tensor]]) -> None:
        index, acts = batch
        for site, layer in keys:
            x = prepare_chunk(acts[site, layer].to(pass_device), **kw)
            state = plans[site, layer].chunk(x, index)
            p2[site, layer] = state if (site, layer) not in p2 else p2[site, layer] + state

    # one worker thread does each batch's sums while the main thread runs the next forward
    with ThreadPoolExecutor(1, thread_name_prefix="bfd-stats-only") as worker:
        # what needs no activations (the model tensors, head maps and modes) during pass 1
        layer_maps = worker.submit(_layer_maps, store, run_id, keys)
        first = _counted(images.first(), FORWARD_STAGES[0], len(recs), report)
        _overlapped(worker, _forward(cfg, model, layers, first, device), pass1)
        n_ok = len(recs) - len(images.errors)
        if n_ok < 2:
            raise ValueError(f"{n_ok} of {len(recs)} images could be decoded; "
                             "BFD needs at least 2")
        tensors, maps, modes = layer_maps.result()
        # the full means: a Pass2Plan keeps them without the per-group sums that summarize
        # needs
        means = {key: finalize_means(p1[key]) for key in keys}
        plans = {key: Pass2Plan(means[key], maps[key], modes[key], options.compute_dtype,
                                pass_device, check_images=options.check_images)
                 for key in keys}
        # the logit checks against the model's q and k need the means only: during pass 2
        checks = {key: worker.submit(model_check_vars, store, run_id, key[1], maps[key],
                                     means[key], prefix_tokens, options.prefix)
                  for key in keys}
        again = _counted(images.again(), FORWARD_STAGES[1], len(recs), report)
        _overlapped(worker, _forward(cfg, model, layers, again, device), pass2)

    def part(key: tuple[str, int]) -> xr.Dataset:
        site, layer = key
        ds = layer_dataset(means[key], p2[key], modes[key], options, prefix_tokens, site, layer,
                           tensors[layer], extra=checks[key].result())
        ds.attrs = {"site": site, "layer": int(layer), "n_images": n_ok}
        return ds

    # the summaries run on one torch thread each (small matrices): several at a time
    with ThreadPoolExecutor(SUMMARY_THREADS, thread_name_prefix="bfd-summary") as pool:
        parts = []
        if report is not None:  # the stage begins: its bar (and its clock) from now
            report(SUMMARY_STAGE, 0, len(keys))
        for ds in pool.map(part, keys):  # in order, reported from this thread
            parts.append(ds)
            if report is not None:
                report(SUMMARY_STAGE, len(parts), len(keys))
    errors = images.errors
    statuses = [ImageRecord(r.index, r.id, r.sha256, "skipped" if r.index in errors else "ok",
                            errors.get(r.index)) for r in recs]
    return parts, statuses


def _layer_maps(store: Store, run_id: str, keys: list[tuple[str, int]]) -> tuple[dict, ...]:
    """The model tensors of every layer, and the head maps and modes of every (site, layer)
    (None at the ``resid`` site), as ``decompose_site_layer`` reads them."""
    tensors, maps, modes = {}, {}, {}
    for site, layer in keys:
        if layer not in tensors:
            tensors[layer] = read_model_tensors(store, run_id, layer)
        m = layer_head_maps(tensors[layer], layer) if site == "attn_in" else None
        maps[site, layer] = m
        modes[site, layer] = bi_orthogonal_modes(m) if m is not None else None
    return tensors, maps, modes
