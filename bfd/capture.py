"""Read a model's activations by hooks: one forward that stops once every tap has fired.

The capture sites (``SITES``, docs/method.md, "Stage 1") and the logit check's queries and keys
(docs/method.md, "Validation" 1) are read through forward (pre-)hooks on timm's modules; timm is
never patched. The model itself comes from ``bfd.models``.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from bfd.models import block
from bfd.requests import SITES as SITES


class _StopForward(Exception):
    """Raised by the last capture hook: later blocks and the head are not needed."""


# One lock per model: the capture hooks are registered on the model itself, so two captures
# running at once on one model (shard tasks in threads of one worker sharing its cached model)
# would each see the other's activations.
_CAPTURE_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _capture_lock(model: nn.Module) -> threading.Lock:
    with _LOCKS_LOCK:
        return _CAPTURE_LOCKS.setdefault(model, threading.Lock())


def _hooked_forward(
    model: nn.Module,
    images: torch.Tensor,
    taps: Sequence[tuple[nn.Module, tuple[str, int], bool]],
    input_dtype: torch.dtype | None = None,
    keep: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
) -> dict[tuple[str, int], torch.Tensor]:
    """One forward that records, for each tap ``(module, key, pre)``, ``keep`` of the module's
    first input (``pre``) or of its output, and stops once every tap has fired. Hooks are
    removed even when the forward fails; captures on one model take turns.

    Args:
        input_dtype: dtype the images are cast to (the model's parameters' when None).
    """
    got: dict[tuple[str, int], torch.Tensor] = {}

    def hook(key: tuple[str, int], pre: bool) -> Callable[..., None]:
        def fn(_module: nn.Module, args: tuple, out: torch.Tensor | None = None) -> None:
            # timm's blocks never modify these tensors in place, so no copy is needed here
            got[key] = keep((args[0] if pre else out).detach())
            if len(got) == len(taps):
                raise _StopForward

        return fn

    handles = []
    with _capture_lock(model):
        try:
            for module, key, pre in taps:
                register = (module.register_forward_pre_hook if pre
                            else module.register_forward_hook)
                handles.append(register(hook(key, pre)))
            param = next(model.parameters())
            with torch.inference_mode(), contextlib.suppress(_StopForward):
                model(images.to(param.device, input_dtype or param.dtype))
        finally:
            for h in handles:
                h.remove()
    return got


def _capture_taps(
    model: nn.Module, images: torch.Tensor, layers: Sequence[int], sites: Sequence[str]
) -> tuple[list[int], list[str], list[tuple[nn.Module, tuple[str, int], bool]]]:
    """Check a capture request; the distinct layers and sites, and the hooks' taps."""
    layers, sites = [int(l) for l in layers], list(sites)
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"layers must be a non-empty list of distinct indices; got {layers}")
    for l in layers:
        block(model, l)
    bad = [s for s in sites if s not in SITES]
    if not sites or bad or len(set(sites)) != len(sites):
        raise ValueError(f"sites must be distinct names from {SITES}; got {sites}")
    if model.training:
        raise ValueError("model is in training mode; expected model.eval() (dropout off)")
    expected = (3, *model.patch_embed.img_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(f"images must be (B, {', '.join(map(str, expected))}); "
                         f"got {tuple(images.shape)}")
    taps = []
    for l in layers:
        blk = model.blocks[l]
        if "resid" in sites:
            taps.append((blk, ("resid", l), True))
        if "attn_in" in sites:
            taps.append((blk.attn.qkv, ("attn_in", l), True))
    return layers, sites, taps


def forward_capture(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[int],
    sites: Sequence[str],
    dtype: torch.dtype = torch.float32,
    to_host: bool = True,
) -> dict[str, torch.Tensor]:
    """Run the model and return the activations at ``sites`` of blocks ``layers``.

    ``attn_in`` is the input of ``blocks[l].attn.qkv`` (hooked there: ``norm1``'s output in a
    pre-norm block; in a post-norm one, timm's ``ResPostBlock``, the residual stream itself,
    ``norm1`` coming after the attention), ``resid`` the input of ``blocks[l]``. The forward
    stops after the last needed capture. Hooks are removed even when the forward fails.
    Captures on one model from several threads take turns: the hooks live on the model, so
    overlapping forwards would see each other's activations.

    Args:
        model: A supported model in eval mode.
        images: Float tensor (B, 3, H, W) at the model's ``img_size``.
        layers: Distinct block indices; the output follows this order.
        sites: Distinct names from ``SITES``.
        dtype: Dtype of the returned tensors (e.g. the storage dtype). The cast happens on
            the model's device, before one copy per site to the host: on a GPU that halves
            the bytes over the bus for float16 and avoids a synchronisation per hook.
        to_host: Copy the result to the host (False: leave it on the model's device, for a
            caller that copies it into pinned memory itself).

    Returns:
        ``{site: tensor (len(layers), B, T_total, d)}`` of ``dtype``, on the CPU when
        ``to_host``.
    """
    layers, sites, taps = _capture_taps(model, images, layers, sites)
    store = _hooked_forward(model, images, taps)
    out = {s: torch.stack([store[(s, l)] for l in layers]).to(dtype) for s in sites}
    return {s: a.cpu() for s, a in out.items()} if to_host else out


def forward_capture_each(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[int],
    sites: Sequence[str],
    dtype: torch.dtype = torch.float32,
) -> dict[tuple[str, int], torch.Tensor]:
    """``forward_capture``'s activations one tensor per ``(site, layer)``, on the model's
    device, each cast to ``dtype`` as its hook fires: no stacked copy, and with another
    dtype than the forward's the activation it was cast from is freed as the forward moves
    on (for a consumer that handles each (site, layer) apart: the stats-only passes).

    Returns:
        ``{(site, layer): tensor (B, T_total, d)}`` of ``dtype``; equal to
        ``forward_capture(...)[site][layers.index(layer)]``.
    """
    _, _, taps = _capture_taps(model, images, layers, sites)
    return _hooked_forward(model, images, taps, keep=lambda t: t.to(dtype))


def capture_logit_check(
    model: nn.Module, images: torch.Tensor, layers: Sequence[int]
) -> dict[str, np.ndarray]:
    """The model's own query and key vectors of a few images, for the logit check of
    docs/method.md ("Validation" 1): a float32 forward (no autocast) read through hooks.

    q and k are the outputs of ``attn.q_norm``/``attn.k_norm`` (identities in supported
    models): timm's own head split of its qkv output, biases included. The check at
    decomposition compares them with the stored weights; here the scale is checked against
    the model itself: ``softmax(attn.scale · q kᵀ) v`` must equal the attention output the
    model computed (the input of ``attn.norm``), whichever attention kernel it ran.

    Returns:
        ``x (layer, image, token, dim)`` (attn_in), ``q``/``k (layer, image, head, token,
        head_dim)``, ``scale (layer,)`` and ``attn_out_residual (layer,)``, the relative
        residual of that attention output, all numpy float32/float64.
    """
    layers = [int(l) for l in layers]
    for l in layers:
        block(model, l)
    taps = []
    for l in layers:
        attn = model.blocks[l].attn
        taps += [(attn.qkv, ("x", l), True), (attn.qkv, ("qkv", l), False),
                 (attn.q_norm, ("q", l), False), (attn.k_norm, ("k", l), False),
                 (getattr(attn, "norm", attn.proj), ("o", l), True)]
    device = next(model.parameters()).device.type
    with torch.autocast(device, enabled=False):
        got = _hooked_forward(model, images, taps, torch.float32,
                              keep=lambda t: t.to(torch.float64))
    residual, scales = [], []
    for l in layers:
        attn = model.blocks[l].attn
        q, k, o = got[("q", l)], got[("k", l)], got[("o", l)]
        B, H, N, dh = q.shape
        v = got[("qkv", l)].reshape(B, N, 3, H, dh)[:, :, 2].transpose(1, 2)
        ref = torch.softmax(float(attn.scale) * q @ k.transpose(-1, -2), -1) @ v
        ref = ref.transpose(1, 2).reshape(B, N, H * dh)
        residual.append(float(torch.linalg.vector_norm(ref - o) / torch.linalg.vector_norm(o)))
        scales.append(float(attn.scale))

    def stack(name: str) -> np.ndarray:
        return torch.stack([got[(name, l)] for l in layers]).float().cpu().numpy()

    return {"x": stack("x"), "q": stack("q"), "k": stack("k"), "scale": np.array(scales),
            "attn_out_residual": np.array(residual)}
