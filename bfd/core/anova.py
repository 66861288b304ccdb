"""Stage 1, pass 1: the means (docs/method.md, "Stage 1 — ANOVA decomposition").

Pass 1 streams over chunks of images and accumulates float64 sums; its states add, so chunks
can be reduced in any order or tree (dask, GPU shards). ``finalize`` turns the sums into
``mu`` and ``pos`` plus the pass-1 validation terms (split-half ``pos``, shuffle control).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from bfd.core.checks import require
from bfd.core.sampling import DEFAULT_GROUPS as DEFAULT_GROUPS
from bfd.core.sampling import (
    half_a,
    image_indices,
    jackknife_group,
    stored_groups,
    token_permutations,
)

# float64 elements of activations that a pass converts and sums at a time on the CPU (4 MiB:
# 6 images of ViT-S/16), so that they stay in the cache between their uses; a whole 32-image
# chunk's (19 MB) went to memory and back on each
BLOCK_ELEMENTS = 1 << 19


def images_per_block(n: int, T: int, d: int, device: torch.device) -> int:
    """Images of an ``(n, T, d)`` chunk that a pass converts to float64 and sums at a time:
    ``BLOCK_ELEMENTS`` worth on the CPU, the whole chunk on CUDA."""
    return n if device.type == "cuda" else max(1, BLOCK_ELEMENTS // (T * d))


def as_chunk(
    x: np.ndarray | torch.Tensor, name: str = "x", check_finite: bool = True
) -> torch.Tensor:
    """A (n, T, d) chunk as a torch tensor (no copy for numpy input).

    Streaming passes skip the elementwise finiteness check: pass 1 checks its sums instead.
    """
    t = torch.as_tensor(x)
    require(t.ndim == 3, f"{name} must be (n_images, tokens, dim); got shape {tuple(t.shape)}")
    require(
        t.is_floating_point(),
        f"{name} must be floating point; got dtype {t.dtype}",
    )
    require(
        not check_finite or bool(torch.isfinite(t).all()),
        f"{name} holds NaN or inf (an unfinished extraction?); expected finite values",
    )
    return t


def select_tokens(x: torch.Tensor, prefix_tokens: int, prefix: str) -> torch.Tensor:
    """Drop the prefix tokens (``prefix="exclude"``) or keep them as positions ("include")."""
    T_total = x.shape[1]
    require(
        0 <= prefix_tokens < T_total,
        f"prefix_tokens must be in [0, {T_total}) for {T_total} tokens; got {prefix_tokens}",
    )
    require(prefix in ("exclude", "include"), f"prefix must be exclude|include; got {prefix!r}")
    return x[:, prefix_tokens:] if prefix == "exclude" else x


@dataclass
class Pass1State:
    """Additive float64 sums of pass 1 over a set of images.

    Attributes:
        n: images seen.
        sum_x: ``Σ_n x[n, t]``, ``(T, d)``.
        n_half: images of split half "a" seen.
        sum_half: ``Σ_{n in a} x[n, t]``.
        sum_shuffled: ``Σ_n x[n, π_n(t)]`` for per-image token permutations ``π_n``.
        groups: jackknife groups G (0: none).
        group_n: images seen per stored group (``index mod stored_groups(G)``), ``(G',)``.
        group_sum: ``Σ_{n in g} x[n, t]`` per stored group, ``(G', T, d)``.
    """

    n: int
    sum_x: np.ndarray
    n_half: int
    sum_half: np.ndarray
    sum_shuffled: np.ndarray
    groups: int = 0
    group_n: np.ndarray | None = None
    group_sum: np.ndarray | None = None

    @classmethod
    def empty(cls, n_tokens: int, dim: int, groups: int = DEFAULT_GROUPS) -> Pass1State:
        z = np.zeros((n_tokens, dim))
        G = stored_groups(groups)
        return cls(0, z, 0, z.copy(), z.copy(), groups, np.zeros(G, np.int64),
                   np.zeros((G, n_tokens, dim)))

    @classmethod
    def from_chunk(
        cls, x: torch.Tensor, index: int | np.ndarray, seed: int = 0,
        groups: int = DEFAULT_GROUPS,
    ) -> Pass1State:
        """Sums of one chunk; ``index`` is its first image's global index or all n of them.

        Raises:
            ValueError: when the chunk holds NaN or inf (they propagate into the sums, which
                are checked instead of every element).
        """
        n, T, d = x.shape
        idx = image_indices(index, n)
        G = stored_groups(groups)
        group = jackknife_group(idx, G)
        weights = np.stack([np.ones(n), half_a(idx, seed)])
        f64 = dict(dtype=torch.float64, device=x.device)
        w = torch.from_numpy(weights).to(x.device)
        g = torch.from_numpy(group).to(x.device)
        perm = torch.from_numpy(token_permutations(idx, T, seed)).to(x.device)
        sums = torch.zeros((2, T * d), **f64)
        group_sum = torch.zeros((G, T * d), **f64)
        shuffled = torch.zeros((T, d), **f64)
        # A few images at a time, so that their float64 copy is read from the cache by the
        # three sums (bfd.core.content: the same blocks)
        step = images_per_block(n, T, d, x.device)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            x64 = x[lo:hi].to(torch.float64).reshape(hi - lo, T * d)
            # the total and half "a" as one product; every group's sum by adding its images'
            # rows (a (2 + G)-row product of 0/1 weights ran at a fifth of the speed)
            sums.addmm_(w[:, lo:hi], x64)
            group_sum.index_add_(0, g[lo:hi], x64)
            shuffled.index_add_(0, perm[lo:hi].reshape(-1), x64.reshape((hi - lo) * T, d))
        sums = sums.cpu().numpy()
        require(
            bool(np.isfinite(sums).all()),
            f"activations of images {idx.min()}..{idx.max()} hold NaN or inf "
            "(an unfinished extraction?); expected finite values",
        )
        return cls(
            n=n,
            sum_x=sums[0].reshape(T, d),
            n_half=int(weights[1].sum()),
            sum_half=sums[1].reshape(T, d),
            sum_shuffled=shuffled.cpu().numpy(),
            groups=int(groups),
            group_n=np.bincount(group, minlength=G),
            group_sum=group_sum.cpu().numpy().reshape(G, T, d),
        )

    def _check_merge(self, other: Pass1State) -> None:
        require(
            self.sum_x.shape == other.sum_x.shape,
            f"cannot merge pass-1 states of shapes {self.sum_x.shape} and {other.sum_x.shape}",
        )
        require(
            self.groups == other.groups,
            f"cannot merge pass-1 states of {self.groups} and {other.groups} jackknife groups",
        )

    def __iadd__(self, other: Pass1State) -> Pass1State:
        """``other`` added into this state's arrays (the same sums as ``+``, no new arrays)."""
        self._check_merge(other)
        self.n += other.n
        self.n_half += other.n_half
        for name in ("sum_x", "sum_half", "sum_shuffled", "group_n", "group_sum"):
            getattr(self, name).__iadd__(getattr(other, name))
        return self

    def __add__(self, other: Pass1State) -> Pass1State:
        out = copy.deepcopy(self)
        out += other
        return out


@dataclass(frozen=True)
class Means:
    """Result of pass 1.

    Attributes:
        n: number of images N.
        mu: grand mean, ``(d,)``.
        pos: positional factor ``pos[t] = mean_n x[n, t] − mu``, ``(T, d)``.
        pos_split_half_r: correlation of ``pos`` estimated on two random halves of the images.
        ss_pos_shuffled: ``N Σ_t ||pos'[t]||²`` after shuffling tokens within each image.
        groups: jackknife groups G (0: no intervals).
        group_n: images per stored group, ``(G',)`` (G' = G, or 4 quarters without intervals).
        group_content: ``D_g[t] = Σ_{n in g} c[n, t]``, each group's sum of the content,
            ``(G', T, d)`` (docs/method.md, "Uncertainty").
    """

    n: int
    mu: np.ndarray
    pos: np.ndarray
    pos_split_half_r: float
    ss_pos_shuffled: float
    groups: int = 0
    group_n: np.ndarray | None = None
    group_content: np.ndarray | None = None

    @property
    def ss_pos(self) -> float:
        """``SS_pos = N Σ_t ||pos[t]||²``."""
        return float(self.n * np.sum(self.pos**2))


def _positional(sum_x: np.ndarray, n: int) -> np.ndarray:
    mean_t = sum_x / n
    return mean_t - mean_t.mean(axis=0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    # np.sum of products, not numpy's BLAS dot: right after torch's threaded GEMMs the BLAS
    # threads wake into their spinning workers (median 6 ms per dot of a ViT-S/16 pos here)
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    denom = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / denom) if denom > 0 else float("nan")


def finalize_means(state: Pass1State) -> Means:
    """``mu``, ``pos`` and the pass-1 validation terms from the accumulated sums."""
    require(state.n >= 2, f"BFD needs at least 2 images; got {state.n}")
    mean_t = state.sum_x / state.n
    mu = mean_t.mean(axis=0)
    pos = mean_t - mu
    n_b = state.n - state.n_half
    if state.n_half > 0 and n_b > 0:
        pos_a = _positional(state.sum_half, state.n_half)
        r = _correlation(pos_a, _positional(state.sum_x - state.sum_half, n_b))
    else:
        r = float("nan")
    pos_shuffled = _positional(state.sum_shuffled, state.n)
    return Means(
        n=state.n,
        mu=mu,
        pos=pos,
        pos_split_half_r=r,
        ss_pos_shuffled=float(state.n * np.sum(pos_shuffled**2)),
        groups=state.groups,
        group_n=state.group_n,
        group_content=state.group_sum - state.group_n[:, None, None] * mean_t,
    )
