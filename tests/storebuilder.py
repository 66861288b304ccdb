"""Builds a run in a real store from arrays held in memory (no model, no extraction), for the
decomposition, SQL and dashboard tests."""

from __future__ import annotations

import json

import numpy as np

from bfd.storage import (
    ImageRecord,
    RunRequest,
    Store,
    create_activation_template,
    mark_shard_done,
    plan_shards,
    write_image_manifest,
    write_logit_check,
    write_model_tensors,
    write_request,
    write_shard,
)


def build_run(
    store: Store,
    acts: dict[str, np.ndarray],
    qkv: np.ndarray,
    num_heads: int,
    *,
    model: str = "toy_vit",
    prefix_tokens: int = 1,
    grid: tuple[int, int] | None = None,
    images_per_chunk: int = 4,
    skipped: tuple[int, ...] = (),
    pos_embed: np.ndarray | None = None,
    weights_sha256: str = "random-seed-0",
    dtype: str = "float32",
    shards_done: int | None = None,
    qkv_bias: np.ndarray | None = None,
    logit_check: dict | None = None,
) -> str:
    """Store ``acts[site]`` of shape (layer, image, token, dim) as one complete run, or as an
    interrupted one: only the first ``shards_done`` shards (one chunk each) written
    (``logit_check``: arguments of ``write_logit_check`` but layers, e.g. from
    ``planted_logit_check``)."""
    first = next(iter(acts.values()))
    L, N, T, d = first.shape
    grid = grid or (1, T - prefix_tokens)
    request = RunRequest(
        model=model, weights="random", weights_sha256=weights_sha256, images="planted",
        images_sha256="planted", n_images=N, preprocessing={}, img_size=grid[0],
        sites=tuple(acts), layers=tuple(range(L)), dtype=dtype, code_version="test",
    )
    rid = write_request(store, request)
    info = {"grid": list(grid), "num_prefix_tokens": prefix_tokens, "depth": L,
            "num_heads": num_heads, "width": d}
    ids = [f"img-{i:04d}" for i in range(N)]
    create_activation_template(
        store, rid, sites=list(acts), layers=list(range(L)), n_images=N, image_ids=ids,
        token_types=["cls"] * prefix_tokens + ["patch"] * (T - prefix_tokens),
        rows=[-1] * prefix_tokens + [t // grid[1] for t in range(T - prefix_tokens)],
        cols=[-1] * prefix_tokens + [t % grid[1] for t in range(T - prefix_tokens)],
        dim=d, dtype=dtype, images_per_chunk=images_per_chunk,
        attrs={"model_info": json.dumps(info), "timm_version": "test",
               "torch_version": "test"},
    )
    write_image_manifest(store, rid, [ImageRecord(i, ids[i]) for i in range(N)])
    for shard in plan_shards(N, images_per_chunk, images_per_chunk)[:shards_done]:
        for site, a in acts.items():
            block = a[:, shard.start:shard.stop].copy()
            block[:, [i - shard.start for i in skipped if shard.start <= i < shard.stop]] = np.nan
            write_shard(store, rid, site, shard.start, shard.stop, block)
        mark_shard_done(store, rid, shard, [
            ImageRecord(i, ids[i], "x", "skipped" if i in skipped else "ok",
                        "planted failure" if i in skipped else None)
            for i in range(shard.start, shard.stop)
        ])
    write_model_tensors(store, rid, layers=list(range(L)), qkv_weight=qkv,
                        attn_scale=np.full(L, (d_attn_of(qkv) // num_heads) ** -0.5),
                        num_heads=num_heads, pos_embed=pos_embed, qkv_bias=qkv_bias)
    if logit_check is not None:
        write_logit_check(store, rid, layers=list(range(L)), **logit_check)
    return rid


def d_attn_of(qkv: np.ndarray) -> int:
    return qkv.shape[1] // 3


def random_run_arrays(seed: int, L: int = 3, N: int = 10, T: int = 10, d: int = 16,
                      H: int = 2, sites: tuple[str, ...] = ("attn_in", "resid")):
    """Activations with a positional signal per layer and a random qkv per layer."""
    rng = np.random.default_rng(seed)
    acts = {}
    for k, site in enumerate(sites):
        pos = rng.normal(size=(L, 1, T, d)) * np.linspace(1.5, 0.2, L)[:, None, None, None]
        acts[site] = (pos + rng.normal(size=(L, N, T, d)) + 0.1 * k).astype(np.float32)
    qkv = (rng.normal(size=(L, 3 * d, d)) / np.sqrt(d)).astype(np.float32)
    return acts, qkv, H


def planted_logit_check(x: np.ndarray, qkv: np.ndarray, qkv_bias: np.ndarray, num_heads: int,
                        images: list[int], noise: float = 0.0, seed: int = 0) -> dict:
    """A logit-check capture of ``images`` as a timm model with these weights would give it:
    ``q``/``k`` split from ``x W^T + b`` as timm reshapes its qkv output (token, 3, head,
    head_dim), plus ``noise`` (relative) so that the check has a known non-zero residual."""
    rng = np.random.default_rng(seed)
    L, _, T, _ = x.shape
    d_attn = d_attn_of(qkv)
    dh = d_attn // num_heads
    xs = x[:, images].astype(np.float64)
    out = np.einsum("lntd,lrd->lntr", xs, qkv.astype(np.float64)) + qkv_bias[:, None, None]
    qkv_heads = out.reshape(L, len(images), T, 3, num_heads, dh).transpose(3, 0, 1, 4, 2, 5)
    q, k = (a * (1 + noise * rng.standard_normal(a.shape)) for a in qkv_heads[:2])
    return {"image_index": list(images), "image_ids": [f"img-{i:04d}" for i in images],
            "x": xs, "q": q, "k": k, "scale": np.full(L, dh**-0.5),
            "attn_out_residual": 1e-7 * np.arange(1, L + 1)}
