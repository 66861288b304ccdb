"""Bad input to bfd.analyze raises a ValueError that names what was given and expected."""

from __future__ import annotations

import numpy as np
import pytest

import bfd
from bfd.core import head_maps

rng = np.random.default_rng(0)
X = rng.normal(size=(4, 10, 12)).astype(np.float32)
W = rng.normal(size=(36, 12))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(x=X[0]), r"\(n_images, tokens, dim\); got shape \(10, 12\)"),
        (dict(x=X[None]), r"got shape \(1, 4, 10, 12\)"),
        (dict(qkv_weight=W[0]), r"must be \(3\*d_attn, d\) with d=12.*got shape \(12,\)"),
        (dict(qkv_weight=W[:35]), r"3\*d_attn; got 35 rows"),
        (dict(qkv_weight=rng.normal(size=(36, 11))), r"with d=12.*got shape \(36, 11\)"),
        (dict(num_heads=5), r"divisor of d_attn=12 \(.*shape \(36, 12\)\); got num_heads=5"),
        (dict(num_heads=0), r"divisor of d_attn=12 \(.*; got num_heads=0"),
        (dict(x=X[:1]), r"at least 2 images; got x with N=1"),
        (dict(prefix_tokens=10), r"prefix_tokens must be in \[0, 10\).*got 10"),
        (dict(prefix_tokens=-1), r"got -1"),
        (dict(chunk_size=0), r"chunk_size must be >= 1; got 0"),
        (dict(prefix="drop"), r"prefix must be exclude\|include; got 'drop'"),
        (dict(compute_dtype="float16"), r"compute_dtype must be one of"),
    ],
)
def test_bad_input_raises_value_error(kwargs, match):
    args = dict(x=X, qkv_weight=W, num_heads=3) | kwargs
    with pytest.raises(ValueError, match=match):
        bfd.analyze(**args)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_activations(bad):
    x = X.copy()
    x[2, 3, 4] = bad
    with pytest.raises(ValueError, match="x holds NaN or inf"):
        bfd.analyze(x, W, 3)


def test_non_finite_weight():
    w = W.copy()
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="qkv_weight holds NaN or inf"):
        bfd.analyze(X, w, 3)


def test_torch_inputs_accepted_integer_activations_refused():
    import torch

    ds = bfd.analyze(torch.from_numpy(X), torch.from_numpy(W), 3)
    assert ds.sizes["head"] == 3
    with pytest.raises(ValueError, match="must be floating point; got dtype torch.int64"):
        bfd.analyze(np.ones((4, 10, 12), dtype=np.int64), W, 3)
    assert head_maps(W.astype(np.int64), 3).A.dtype == np.float64
