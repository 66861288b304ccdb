"""Deterministic per-image randomness for the validation metrics.

Every random choice is a pure function of ``(seed, global image index)``, so results do not
depend on how images are chunked, sharded or ordered across workers.
"""

from __future__ import annotations

import numpy as np

_M = np.uint64(0xFFFFFFFFFFFFFFFF)
# Image groups of the interval jackknife, and the interval half-width the main shares should
# reach (docs/method.md); here, without torch, so that options can be checked without it.
DEFAULT_GROUPS = 16
DEFAULT_CI_TARGET = 0.02


def image_indices(index: int | np.ndarray, n: int) -> np.ndarray:
    """Global indices of a chunk's n images: ``start..start+n`` or an explicit array (a chunk
    of a selection, e.g. without the images that failed to decode)."""
    if np.ndim(index) == 0:
        return np.arange(int(index), int(index) + n)
    idx = np.asarray(index, dtype=np.int64)
    if idx.shape != (n,):
        raise ValueError(f"a chunk of {n} images needs {n} indices; got shape {idx.shape}")
    return idx


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser, elementwise on uint64 (wrapping arithmetic is intended)."""
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _key(seed: int, stream: int, values: np.ndarray) -> np.ndarray:
    base = splitmix64(np.uint64(seed & 0xFFFFFFFF) << np.uint64(8) | np.uint64(stream))
    with np.errstate(over="ignore"):
        return splitmix64(base ^ splitmix64(np.asarray(values, dtype=np.uint64)))


def half_a(indices: np.ndarray, seed: int) -> np.ndarray:
    """Membership of images in split half "a".

    Images are paired (2m, 2m+1) and a coin per pair sends one of the two to each half, so
    the halves differ in size by at most one whatever the chunking.
    """
    indices = np.asarray(indices, dtype=np.int64)
    coin = (_key(seed, 1, indices // 2) & np.uint64(1)).astype(np.int64)
    return (indices % 2) == coin


def token_permutations(indices: np.ndarray, n_tokens: int, seed: int) -> np.ndarray:
    """One independent random permutation of ``range(n_tokens)`` per image, ``(n, n_tokens)``."""
    indices = np.asarray(indices, dtype=np.int64)
    keys = _key(seed, 2, indices[:, None] * n_tokens + np.arange(n_tokens)[None, :])
    return np.argsort(keys, axis=1, kind="stable")


def jackknife_group(indices: np.ndarray, groups: int) -> np.ndarray:
    """Group of each image for the delete-a-group jackknife: ``index mod groups``.

    By index, so the groups do not depend on chunking; interleaved, so that images stored in
    some order (by class, by source) spread over all groups. ``index mod 4`` (the quarter
    that the unbiased ``E_pp`` uses) is then ``group mod 4`` whenever 4 divides ``groups``.
    """
    return np.asarray(indices, dtype=np.int64) % groups


def stored_groups(groups: int) -> int:
    """Image groups the passes keep sums for: the jackknife's ``groups``, or without a
    jackknife (``groups=0``) the 4 quarters that the unbiased ``E_pp`` needs."""
    if not (isinstance(groups, int | np.integer)
            and (groups == 0 or (groups >= 8 and groups % 4 == 0))):
        raise ValueError(f"jackknife groups must be 0 (no intervals) or a multiple of 4 that "
                         f"is >= 8; got {groups!r}")
    return int(groups) or 4
