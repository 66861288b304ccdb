"""The two streaming passes, driven over any source of image chunks.

``decompose_layer`` is the reference driver (an iterable of chunks, pass 1 then pass 2). The
flows map the same ``pass1_chunk``/``Pass2Plan.chunk`` functions over dask chunks or GPU
shards and reduce the states with ``+``: the states are sums, so every order and grouping
gives the same result up to float64 rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

from bfd.core.anova import DEFAULT_GROUPS, Pass1State, as_chunk, finalize_means, select_tokens
from bfd.core.checks import require
from bfd.core.content import Pass2Plan, Pass2State
from bfd.core.heads import HeadMaps, bi_orthogonal_modes
from bfd.core.summary import LayerResult, summarize
from bfd.core.uncertainty import DEFAULT_CI_TARGET

Chunk = tuple[int | np.ndarray, np.ndarray | torch.Tensor]
ChunkSource = Callable[[], Iterable[Chunk]]


def prepare_chunk(
    x: np.ndarray | torch.Tensor, prefix_tokens: int = 0, prefix: str = "exclude"
) -> torch.Tensor:
    """Check a raw (n, T_total, d) chunk and select the tokens that count as positions."""
    return select_tokens(as_chunk(x, check_finite=False), prefix_tokens, prefix)


def pass1_chunk(
    x: np.ndarray | torch.Tensor,
    index: int | np.ndarray,
    *,
    prefix_tokens: int = 0,
    prefix: str = "exclude",
    seed: int = 0,
    groups: int = DEFAULT_GROUPS,
) -> Pass1State:
    """Pass-1 sums of one raw chunk; ``index`` is its first image's global index or all n."""
    return Pass1State.from_chunk(prepare_chunk(x, prefix_tokens, prefix), index, seed, groups)


def decompose_layer(
    chunks: ChunkSource,
    maps: HeadMaps | None,
    *,
    prefix_tokens: int = 0,
    prefix: str = "exclude",
    seed: int = 0,
    compute_dtype: str = "float32",
    device: str | torch.device = "cpu",
    check_images: int = 2,
    groups: int = DEFAULT_GROUPS,
    ci_target: float = DEFAULT_CI_TARGET,
) -> LayerResult:
    """Both passes of docs/method.md over one layer's chunks.

    Args:
        chunks: called once per pass; yields ``(index, x)`` with ``x`` a raw
            ``(n, T_total, d)`` chunk of activations and ``index`` the global index of its
            first image (or an array of all n). Together the chunks must cover each image
            exactly once.
        maps: the layer's head read-in maps; None for Stage 1 only (e.g. the resid site).
        prefix_tokens: leading non-grid tokens (CLS, registers) of each image.
        prefix: "exclude" (docs/method.md default) or "include".
        seed: seed of the split-half and shuffle controls.
        compute_dtype: dtype of the pass-2 projection and Grams.
        device: where pass 2 runs.
        check_images: images (lowest indices) that get the 9-block logit check.
        groups: jackknife groups G of the intervals (0: no intervals).
        ci_target: interval half-width that the main shares should reach.

    Returns:
        The layer's results.
    """
    modes = bi_orthogonal_modes(maps) if maps is not None else None
    p1 = _total(
        pass1_chunk(x, s, prefix_tokens=prefix_tokens, prefix=prefix, seed=seed, groups=groups)
        for s, x in chunks()
    )
    means = finalize_means(p1)
    plan = Pass2Plan(means, maps, modes, compute_dtype, device, check_images)
    p2: Pass2State = _total(
        plan.chunk(prepare_chunk(x, prefix_tokens, prefix), s) for s, x in chunks()
    )
    require(
        p2.n == means.n,
        f"pass 2 saw {p2.n} images but pass 1 saw {means.n}; the chunk source must be stable",
    )
    return summarize(means, p2, modes, ci_target)


def _total(states: Iterable[Pass1State | Pass2State]):
    """Sum states as they stream by: holding every chunk's state would grow with N."""
    total = None
    for state in states:
        total = state if total is None else total + state
    require(total is not None, "no chunks of activations were given; expected at least one")
    return total
