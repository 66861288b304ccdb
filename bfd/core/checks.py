"""Input checks shared by the core: one-line errors that say what was given and what was
expected."""

from __future__ import annotations

import numpy as np
import torch


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def as_float64(a: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A float64 numpy copy of ``a``, refusing non-numeric and non-finite input."""
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(a)
    require(
        np.issubdtype(a.dtype, np.number) and not np.iscomplexobj(a),
        f"{name} must be a real numeric array; got dtype {a.dtype}",
    )
    a = a.astype(np.float64, copy=False)
    require(bool(np.isfinite(a).all()), f"{name} holds NaN or inf; expected finite values")
    return a
