"""Decomposition of stored activations: the core's two streaming passes mapped over the dask
chunks of a run's Zarr arrays, one (site, layer) at a time, never loading a layer whole."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Sequence
from operator import add, iadd

import dask
import numpy as np
import torch
import xarray as xr
from dask.delayed import Delayed, delayed

from bfd.core import (
    HeadMaps,
    Means,
    Modes,
    Pass2Plan,
    Pass2State,
    bi_orthogonal_modes,
    finalize_means,
    head_maps,
    pass1_chunk,
    pos_embed_cosine,
    prepare_chunk,
    summarize,
    to_dataset,
)
from bfd.core.dataset import SCALARS, STATISTICS
from bfd.core.heads import one_thread
from bfd.core.model_check import model_logit_check
from bfd.models import resolve_device
from bfd.storage import (
    ImageRecord,
    Store,
    open_activations,
    read_image_manifest,
    read_logit_check,
    read_model_tensors,
    read_request,
    repair_command,
    shard_ranges,
)
from bfd.tasks.options import DecomposeOptions as DecomposeOptions

STAGE1_VARS = (*SCALARS, *STATISTICS, "pos", "mu", "pos_embed_cos", "model_logit_residual",
               "model_attn_residual")
BIAS_SHARES = ("bias_key_share", "bias_key_pos_share", "bias_key_con_share")


_OPENING = threading.Lock()


def _activations(store: Store, run_id: str) -> xr.Dataset:
    """``open_activations``, once per process and run for its many (site, layer) tasks, also
    when they start together on a flow's threads (without the lock each of them opened the
    run: 24 opens at once for a 12-block ViT)."""
    with _OPENING:
        return _opened_activations(store, run_id)


@functools.lru_cache(maxsize=8)
def _opened_activations(store: Store, run_id: str) -> xr.Dataset:
    """Safe to keep: a run's template never changes once written (its id hashes everything
    that shapes it) and the chunks themselves are read at compute time."""
    return open_activations(store, run_id)


def ok_images(store: Store, run_id: str) -> np.ndarray:
    """Indices of the images whose activations were written (skipped ones excluded).

    Raises:
        ValueError: If a shard of the run is not complete (see ``require_extracted``).
    """
    records = read_image_manifest(store, run_id)
    require_extracted(store, run_id, records)
    return np.array([r.index for r in records if r.status == "ok"], dtype=np.int64)


def _spans(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans, start = [], indices[0]
    for prev, cur in zip(indices, [*indices[1:], None], strict=True):
        if cur != prev + 1:
            spans.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = cur
    return ", ".join(spans)


def require_extracted(store: Store, run_id: str,
                      records: Sequence[ImageRecord] | None = None) -> None:
    """Refuse a run with images still ``pending``: a shard without its completion marker was
    interrupted or is still being extracted, and a decomposition of the rest would be
    published as the whole run.

    Raises:
        ValueError: One line naming the missing shards and the command that finishes them.
    """
    records = read_image_manifest(store, run_id) if records is None else records
    pending = [r.index for r in records if r.status == "pending"]
    if not pending:
        return
    # The shard plan is not part of the request; a finished shard shows its size.
    ranges = shard_ranges(store, run_id)
    size = next((start // k for k, (start, _) in ranges.items() if k), None)
    if size is None and 0 in ranges:
        size = ranges[0][1]
    size = size or int(_activations(store, run_id)[read_request(store, run_id).sites[0]]
                       .chunks[1][0])
    missing = sorted({i // size for i in pending})
    raise ValueError(
        f"run {run_id} is not completely extracted: shard(s) {_spans(missing)} (images "
        f"{_spans(pending)}, {len(pending)} of {len(records)}) have no completion marker, so "
        "nothing was decomposed or published; if no extraction of it is still running, finish "
        f"it with `{repair_command(store, run_id, size)}` (or `bfd audit` with the same "
        "options), then decompose again"
    )


def _tree_sum(parts: Sequence[Delayed], in_place: bool = False) -> Delayed:
    """Pairwise reduction, so no single task holds every chunk's state.

    ``in_place`` adds each right state into its left one (``+=``), which no other task reads:
    no new arrays (a pass-1 state of ViT-S/16 holds 10 MB of group sums). Only on a local
    scheduler: a cluster may run an add again on an input it already changed.
    """
    parts = list(parts)
    while len(parts) > 1:
        parts = [delayed(iadd if in_place else add)(*parts[i:i + 2]) if i + 1 < len(parts)
                 else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


def _pass1(x: np.ndarray, index: np.ndarray, device: str, **kw):
    return pass1_chunk(torch.from_numpy(x).to(device), index, **kw)


def _pass2(plan: Pass2Plan, x: np.ndarray, index: np.ndarray, prefix_tokens: int, prefix: str):
    return plan.chunk(prepare_chunk(torch.from_numpy(x).to(plan.device), prefix_tokens, prefix),
                      index)


@contextlib.contextmanager
def dask_scheduler(address: str | None) -> Iterator[dict]:
    """Keyword arguments for ``dask.compute``: the local threaded scheduler, or the cluster
    at ``address``."""
    if address is None:
        yield {"scheduler": "threads"}
        return
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        yield {"scheduler": client}


def decompose_site_layer(
    store_root: str,
    run_id: str,
    site: str,
    layer: int,
    options: DecomposeOptions,
    dask_address: str | None = None,
    threads: int | None = None,
) -> xr.Dataset:
    """Every docs/method.md quantity of one (site, layer): Stage 1 everywhere, Stage 2 at
    ``attn_in``. Both passes run as dask graphs over the stored chunks.

    ``threads=1`` runs a CPU task on the calling thread alone (dask's synchronous scheduler,
    one torch thread), for a flow that runs as many tasks at once as there are cores
    (``bfd.flows.runners.one_thread_per_task``); None computes on dask's and torch's threads.
    """
    device = ("cpu" if dask_address is not None and options.device == "auto"
              else resolve_device(options.device))
    if threads == 1 and dask_address is None and device == "cpu":
        with one_thread():
            return _decompose_site_layer(store_root, run_id, site, layer, options, device,
                                         contextlib.nullcontext({"scheduler": "sync"}))
    return _decompose_site_layer(store_root, run_id, site, layer, options, device,
                                 dask_scheduler(dask_address))


def _decompose_site_layer(store_root: str, run_id: str, site: str, layer: int,
                          options: DecomposeOptions, device: str,
                          scheduling: contextlib.AbstractContextManager[dict]) -> xr.Dataset:
    store = Store(store_root)
    acts = _activations(store, run_id)
    if site not in acts:
        raise ValueError(f"site {site!r} was not extracted in run {run_id}; it has "
                         f"{[v for v in acts.data_vars]}")
    prefix_tokens = int((acts.token_type.values != "patch").sum())
    require_positions(acts, run_id, options.prefix)
    want_cos = site == "resid" and layer == 0
    # the weights are read only where they are used: Stage 2 and the pos_embed cosine
    tensors = (read_model_tensors(store, run_id, layer) if site == "attn_in" or want_cos
               else None)
    maps = layer_head_maps(tensors, layer) if site == "attn_in" else None
    indices = ok_images(store, run_id)
    if len(indices) < 2:
        raise ValueError(f"run {run_id} has {len(indices)} decoded images; BFD needs at least 2")
    arr = acts[site].sel(layer=layer).isel(image=indices).data
    if options.images_per_task:
        arr = arr.rechunk({0: options.images_per_task, 1: -1, 2: -1})
    bounds = np.cumsum((0, *arr.chunks[0]))
    blocks = list(zip(arr.to_delayed().ravel(), bounds[:-1], bounds[1:], strict=True))
    kw = dict(prefix_tokens=prefix_tokens, prefix=options.prefix)

    with scheduling as scheduler:
        local = isinstance(scheduler["scheduler"], str)  # "sync" or "threads"
        p1 = _tree_sum([delayed(_pass1)(b, indices[lo:hi], device, seed=options.seed,
                                        groups=options.jackknife_groups, **kw)
                        for b, lo, hi in blocks], in_place=local)
        (p1,) = dask.compute(p1, **scheduler)
        means = finalize_means(p1)
        modes = bi_orthogonal_modes(maps) if maps is not None else None
        plan = Pass2Plan(means, maps, modes, options.compute_dtype, device,
                         check_images=options.check_images)
        p2 = _tree_sum([delayed(_pass2)(plan, b, indices[lo:hi], **kw) for b, lo, hi in blocks],
                       in_place=local)
        (p2,) = dask.compute(p2, **scheduler)

    ds = layer_dataset(means, p2, modes, options, prefix_tokens, site, layer, tensors,
                       extra=model_check_vars(store, run_id, layer, maps, means, prefix_tokens,
                                              options.prefix))
    ds.attrs = {"site": site, "layer": int(layer), "n_images": int(len(indices))}
    return ds


def require_positions(acts: xr.Dataset, run_id: str, prefix: str) -> None:
    """Refuse a run of fewer than 2 token positions to decompose (``prefix``: whether its
    prefix tokens count as positions): nothing to split into position and content.

    Raises:
        ValueError: One line, with what to do.
    """
    prefix_tokens = int((acts.token_type.values != "patch").sum())
    positions = acts.sizes["token"] - (prefix_tokens if prefix == "exclude" else 0)
    if positions < 2:
        raise ValueError(f"run {run_id} has {positions} token position(s) to decompose; BFD "
                         "needs at least 2 (extract at a larger --img-size)")


def layer_head_maps(tensors: xr.Dataset, layer: int) -> HeadMaps:
    """The head maps of one block from the run's stored model tensors
    (``read_model_tensors``)."""
    return head_maps(tensors.qkv_weight.sel(layer=layer).values, int(tensors.attrs["num_heads"]),
                     float(tensors.attn_scale.sel(layer=layer)),
                     tensors.qkv_bias.sel(layer=layer).values if "qkv_bias" in tensors
                     else None)


def layer_dataset(means: Means, p2: Pass2State, modes: Modes | None,
                  options: DecomposeOptions, prefix_tokens: int, site: str, layer: int,
                  tensors: xr.Dataset | None, extra: dict[str, tuple] | None = None
                  ) -> xr.Dataset:
    """One (site, layer)'s results from its two passes' states: the summary, and the cosine
    of ``pos`` with the model's ``pos_embed`` (the resid site of block 0, over the patch
    positions whatever the prefix option, where ``tensors`` holds it; NaN elsewhere), then the
    variables of ``extra``
    (``name: (dims, values)``, e.g. ``model_check_vars``)."""
    result = summarize(means, p2, modes, options.ci_target)
    cos = np.nan
    if site == "resid" and layer == 0 and tensors is not None and "pos_embed" in tensors:
        # pos of the patch positions, centred over them: with --prefix include, pos's patch
        # rows centred again are exactly pos of --prefix exclude (both mu_t less a mean)
        patch = result.pos if options.prefix == "exclude" else result.pos[prefix_tokens:]
        cos = pos_embed_cosine(patch - patch.mean(axis=0), tensors.pos_embed.values)
    return to_dataset(result, first_token=prefix_tokens if options.prefix == "exclude" else 0,
                      extra={"pos_embed_cos": ((), cos), **(extra or {})})


def model_check_vars(store: Store, run_id: str, layer: int, maps: HeadMaps | None,
                     means: Means, prefix_tokens: int, prefix: str) -> dict[str, tuple]:
    """The logit check against the model's own q and k (docs/checks.md), as Dataset
    variables ``name: (dims, values)``: NaN where the run stored no capture (runs extracted
    before the check) and at the resid site."""
    check = read_logit_check(store, run_id, layer) if maps is not None else None
    out = {"model_attn_residual": ((), np.nan if check is None
                                   else float(check.attn_out_residual)),
           "model_logit_residual": ((), np.nan)}
    if maps is None:
        return out
    shares = {name: np.full(maps.num_heads, np.nan) for name in BIAS_SHARES}
    if check is not None:
        result = model_logit_check(check.x.values, check.q.values, check.k.values,
                                   float(check.scale), maps, means, prefix_tokens, prefix)
        out["model_logit_residual"] = ((), result.residual)
        shares = {name: getattr(result, name) for name in BIAS_SHARES}
    return out | {name: (("head",), values) for name, values in shares.items()}


def assemble_results(parts: Sequence[xr.Dataset], attrs: dict) -> xr.Dataset:
    """One Dataset from the per-(site, layer) parts: Stage 1 variables over ``(site, layer)``,
    Stage 2 variables (``attn_in``) over ``layer``."""
    by_site: dict[str, list[xr.Dataset]] = {}
    for p in sorted(parts, key=lambda p: (p.attrs["site"], p.attrs["layer"])):
        by_site.setdefault(p.attrs["site"], []).append(p)
    stage1 = xr.concat(
        [xr.concat([p[list(STAGE1_VARS)].expand_dims(layer=[p.attrs["layer"]]) for p in ps],
                   dim="layer")
         for ps in by_site.values()],
        dim=xr.DataArray(list(by_site), dims="site", name="site"),
        join="outer",
    )
    out = stage1
    if "attn_in" in by_site:
        stage2 = xr.concat(
            [p.drop_vars(list(STAGE1_VARS)).expand_dims(layer=[p.attrs["layer"]])
             for p in by_site["attn_in"]],
            dim="layer",
        )
        out = xr.merge([stage1, stage2], join="outer", compat="override")
    n_images = {p.attrs["n_images"] for p in parts}
    out.attrs = {**attrs, "n_images": n_images.pop() if len(n_images) == 1 else -1}
    return out
