"""What the logit check of decomposition needs from the model, captured at extraction
(docs/method.md, "Validation" 1; docs/checks.md): the qkv biases of every layer, and the model's
own queries and keys of the first few images of the run that decode."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bfd import capture, models
from bfd import images as imgs
from bfd.storage import Store, write_logit_check

CHECK_IMAGES = 2


def qkv_biases(model: torch.nn.Module, layers: Sequence[int]) -> np.ndarray:
    """``(layer, 3·d_attn)`` qkv biases; zeros for a block whose qkv has none."""
    rows = models.qkv_weight(model, layers[0]).shape[0]
    out = np.zeros((len(layers), rows), dtype=np.float32)
    for i, l in enumerate(layers):
        b = models.qkv_bias(model, l)
        if b is not None:
            out[i] = b.float().cpu().numpy()
    return out


def capture_logit_check(
    store: Store,
    run_id: str,
    model: torch.nn.Module,
    records: Sequence[imgs.ImageRecord],
    layers: Sequence[int],
    n_images: int = CHECK_IMAGES,
) -> list[int]:
    """Store the model's q and k of the first ``n_images`` records that decode (a float32
    forward, whatever the run's device and autocast). Idempotent.

    Returns:
        The indices of the checked images (empty when none decoded: nothing is written).
    """
    transform = models.transform(model)
    picked, batch = [], []
    for r in records:
        if len(picked) == n_images:
            break
        try:
            batch.append(transform(imgs.load_image(r)))
        except imgs.ImageDecodeError:
            continue
        picked.append(r)
    if picked:
        captured = capture.capture_logit_check(model, torch.stack(batch), layers)
        write_logit_check(store, run_id, layers=list(layers),
                          image_index=[r.index for r in picked],
                          image_ids=[r.id for r in picked], **captured)
    return [r.index for r in picked]
