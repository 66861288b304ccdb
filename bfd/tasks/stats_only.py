"""Stats-only decomposition: the core's two streaming passes fed by the forward itself, for
image sets too large to store (``bfd audit --no-store-activations``).

Each pass runs the model over every image once and hands each batch's activations at every
(site, layer) to the same ``pass1_chunk`` / ``Pass2Plan.chunk`` functions that the stored path
maps over Zarr chunks: two forwards instead of one forward, one write and two reads. The
activations are rounded to the request's storage dtype first, as the stored path stores them,
so both paths decompose the same numbers; their sums differ only in grouping (METHOD.md's
states are sums), i.e. in float64 rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing

import numpy as np
import torch
import xarray as xr

from bfd import images as imgs
from bfd import models
from bfd.core import (
    Pass2Plan,
    bi_orthogonal_modes,
    finalize_means,
    head_maps,
    pass1_chunk,
    pos_embed_cosine,
    prepare_chunk,
    summarize,
    to_dataset,
)
from bfd.storage import ImageRecord, Store, read_model_tensors
from bfd.tasks.decompose import DecomposeOptions, _model_check
from bfd.tasks.extract import ExtractConfig, _autocast, _model

# The request field that marks a stats-only run: it enters the run id (a stored run of the
# same request keeps its own id) and its record, ``runs.config_json``.
NOT_STORED = {"activations": "not stored"}


def is_stats_only(extra: dict) -> bool:
    """Whether a run request's ``extra`` marks a run whose activations were not kept."""
    return extra.get("activations") == NOT_STORED["activations"]


def _forward(cfg: ExtractConfig, model: torch.nn.Module, layers: tuple[int, ...],
             records: list[imgs.ImageRecord], device: str,
             errors: dict[int, str]) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """``(image indices, {site: (layer, batch, token, dim)})`` per batch, in storage dtype;
    undecodable images go to ``errors``. Batches are aligned to the stored path's chunks."""
    transform = models.transform(model)
    dtype = getattr(torch, cfg.dtype)
    batches = imgs.iter_batches(records, transform, cfg.batch_size, cfg.decode_workers,
                                align=cfg.images_per_chunk, prefetch=0 if device == "cpu" else 2)
    with closing(batches):
        for batch in batches:
            errors.update(batch.errors)
            if batch.indices:
                with _autocast(device, cfg.autocast):
                    acts = models.forward_capture(model, batch.images, layers, cfg.sites,
                                                  dtype=dtype)
                yield np.asarray(batch.indices, dtype=np.int64), acts


def decompose_from_forward(
    store_root: str,
    run_id: str,
    cfg: ExtractConfig,
    layers: tuple[int, ...],
    records: list[dict],
    options: DecomposeOptions,
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

    Returns:
        One Dataset per (site, layer), as ``decompose_site_layer`` returns it, and the image
        records with their statuses (``ok``, or ``skipped`` with the decoding error).

    Raises:
        ValueError: Fewer than 2 images could be decoded.
    """
    store = Store(store_root)
    device = models.resolve_device(cfg.device)
    pass_device = models.resolve_device(options.device)
    model, info = _model(cfg, device)
    recs = [imgs.ImageRecord(**r) for r in records]
    prefix_tokens = info.num_prefix_tokens
    kw = dict(prefix_tokens=prefix_tokens, prefix=options.prefix)
    keys = [(site, layer) for site in cfg.sites for layer in layers]

    errors: dict[int, str] = {}
    p1: dict = {}
    for index, acts in _forward(cfg, model, layers, recs, device, errors):
        for site, layer in keys:
            x = acts[site][layers.index(layer)].to(pass_device)
            state = pass1_chunk(x, index, seed=options.seed, groups=options.jackknife_groups,
                                **kw)
            p1[site, layer] = state if (site, layer) not in p1 else p1[site, layer] + state
    n_ok = len(recs) - len(errors)
    if n_ok < 2:
        raise ValueError(f"{n_ok} of {len(recs)} images could be decoded; BFD needs at least 2")

    # the full means: a Pass2Plan keeps them without the per-group sums that summarize needs
    plans, means, modes, maps, tensors = {}, {}, {}, {}, {}
    for site, layer in keys:
        if layer not in tensors:
            tensors[layer] = read_model_tensors(store, run_id, layer)
        t = tensors[layer]
        maps[site, layer] = None
        if site == "attn_in":
            maps[site, layer] = head_maps(
                t.qkv_weight.sel(layer=layer).values, int(t.attrs["num_heads"]),
                float(t.attn_scale.sel(layer=layer)),
                t.qkv_bias.sel(layer=layer).values if "qkv_bias" in t else None)
        m = maps[site, layer]
        modes[site, layer] = bi_orthogonal_modes(m) if m is not None else None
        means[site, layer] = finalize_means(p1[site, layer])
        plans[site, layer] = Pass2Plan(means[site, layer], m, modes[site, layer],
                                       options.compute_dtype, pass_device,
                                       check_images=options.check_images)
    p2: dict = {}
    for index, acts in _forward(cfg, model, layers, recs, device, {}):
        for site, layer in keys:
            x = prepare_chunk(acts[site][layers.index(layer)].to(pass_device), **kw)
            state = plans[site, layer].chunk(x, index)
            p2[site, layer] = state if (site, layer) not in p2 else p2[site, layer] + state

    parts = []
    for site, layer in keys:
        m, t = means[site, layer], tensors[layer]
        ds = to_dataset(summarize(m, p2[site, layer], modes[site, layer], options.ci_target),
                        first_token=prefix_tokens if options.prefix == "exclude" else 0)
        cos = np.nan
        if (site == "resid" and layer == 0 and options.prefix == "exclude"
                and "pos_embed" in t):
            cos = pos_embed_cosine(ds.pos.values, t.pos_embed.values)
        ds["pos_embed_cos"] = ((), cos)
        _model_check(ds, store, run_id, layer, maps[site, layer], m, prefix_tokens,
                     options.prefix)
        ds.attrs = {"site": site, "layer": int(layer), "n_images": n_ok}
        parts.append(ds)
    statuses = [ImageRecord(r.index, r.id, r.sha256, "skipped" if r.index in errors else "ok",
                            errors.get(r.index)) for r in recs]
    return parts, statuses
