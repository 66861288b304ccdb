"""The timm adapter: load a ViT, refuse what BFD cannot decompose, read its weights.

Everything model-specific lives here and in ``bfd.capture`` (activations read by hooks), so the
rest of the package sees a model only through ``ModelInfo``, ``qkv_weight``/``attn_scale``
(docs/method.md, "Stage 2") and ``bfd.capture.forward_capture`` (docs/method.md, "Stage 1"
sites). timm is never patched.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import os
import re
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import timm
import torch
from timm.layers import Attention
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from bfd.files import WEIGHT_SUFFIXES as WEIGHT_SUFFIXES
from bfd.files import sha256_file
from bfd.requests import check_weights, model_args_text

# The timm modules whose models are built on VisionTransformer; check_supported decides.
VIT_MODULES: tuple[str, ...] = ("vision_transformer", "deit", "vision_transformer_hybrid")


class UnsupportedModelError(ValueError):
    """The model's attention logits are not a bilinear form x M xᵀ of one input (or no ViT)."""


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but are neither cached nor downloadable."""


@dataclass(frozen=True)
class ModelInfo:
    """What the pipeline needs to know about a loaded model; JSON-able via ``to_dict``."""

    name: str
    weights: str
    weights_sha256: str
    depth: int
    width: int
    num_heads: int
    head_dim: int
    d_attn: int
    num_prefix_tokens: int
    num_reg_tokens: int
    has_cls: bool
    has_dist: bool
    grid: tuple[int, int]
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    has_pos_embed: bool
    pos_embed_covers_prefix: bool
    timm_version: str
    torch_version: str

    @property
    def num_tokens(self) -> int:
        """Prefix plus patch tokens: the token axis length of every captured site."""
        return self.num_prefix_tokens + self.grid[0] * self.grid[1]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def token_types(self) -> list[str]:
        """``cls``/``dist``/``register`` for prefix tokens (timm's order), then ``patch``."""
        prefix = ["cls"] * self.has_cls + ["dist"] * self.has_dist
        prefix += ["register"] * self.num_reg_tokens
        return prefix + ["patch"] * (self.grid[0] * self.grid[1])

    def token_rows_cols(self) -> tuple[list[int], list[int]]:
        """Grid row and column of each token (row-major patches), -1 for prefix tokens."""
        h, w = self.grid
        pre = [-1] * self.num_prefix_tokens
        return pre + [t // w for t in range(h * w)], pre + [t % w for t in range(h * w)]


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(model).__name__


# the family that works, named in each refusal of another class
_WORKS = ("timm's VisionTransformer with a learned absolute pos_embed works: vit_*, deit*, "
          "*_dinov2 (with registers too), CLIP/SigLIP towers")


def _class_reason(model: nn.Module) -> str:
    """Why a model that is no timm VisionTransformer is refused, and what works instead."""
    cls = type(model).__name__
    names = [k for k, _ in (*model.named_parameters(), *model.named_buffers())]
    relative = [m.group(1) for k in names
                if (m := re.search(r"(?:^|\.)(\w*rel_pos\w*|relative_position\w*)(?:\.|$)", k))]
    attention = list(dict.fromkeys(type(m).__name__ for m in model.modules()
                                   if _is_attention(m)))
    if relative:
        table = relative[0]
        return (f"its class is {cls}, whose attention adds a relative position bias to the "
                f"logits ({table}): a position term that is not in the token activations, so "
                "the logits are not x_i M x_j of them and BFD's positional factor (the "
                "absolute position code the token stream carries) does not see it; " + _WORKS)
    if not attention:
        return (f"its class is {cls}, with no attention heads to decompose (BFD splits "
                "the query-key logits of a Vision Transformer's heads); " + _WORKS)
    layout = ("the token layout (patch_embed, pos_embed, prefix tokens, blocks[l].attn) that "
              "the capture reads and whose logits are checked to be x_i M x_j; " + _WORKS)
    if all(isinstance(m, Attention) for m in model.modules() if _is_attention(m)):
        # timm's own Attention in another model class (NaFlexViT: trial 34 read "its attention
        # (Attention) is not timm's Attention")
        return (f"its class is {cls}, not timm's VisionTransformer: its attention is timm's "
                f"Attention, but its tokens are not in " + layout)
    said = [f"{name}: {_ATTENTION_NOTES[name]}" if name in _ATTENTION_NOTES else name
            for name in attention[:4]]
    return (f"its class is {cls}, not timm's VisionTransformer: its attention "
            f"({'; '.join(said)}) is not timm's Attention in " + layout)


# What sets some attention classes of timm's other families apart from softmax(x_i M x_j).
_ATTENTION_NOTES: Final[dict[str, str]] = {
    "GPSA": "gated positional self-attention, each head's softmax mixed with a learned "
            "positional attention, a term outside x_i M x_j",
    "FactorAttnConvRelPosEnc": "factorised attention q (softmax(k)ᵀ v), no query-key logits, "
                               "with a convolutional relative position encoding",
    "LiteMLA": "ReLU linear attention, no softmax of query-key logits",
}


def _is_attention(module: nn.Module) -> bool:
    """An attention module of any family: its class is named so (``*Attention*``, ``*Attn*``,
    ConViT's ``MHSA``/``GPSA``, SHViT's ``SHSA``, EfficientViT's ``LiteMLA``), or it holds
    query-key projections (a child ``qkv`` or ``qk``, or both ``q`` and ``k``)."""
    name = type(module).__name__
    if re.search(r"attention|attn", name, re.IGNORECASE) or re.search(r"SA$|MLA$", name):
        return True
    children = dict(module.named_children())
    return "qkv" in children or "qk" in children or ("q" in children and "k" in children)


def check_supported(model: nn.Module, name: str | None = None, model_args: str = "") -> None:
    """Refuse models whose head logits are not x M xᵀ (docs/method.md, "Stage 2").

    Args:
        model: A timm model, typically built on the meta device (see ``describe``).
        name: Model name for the message; defaults to the model's timm architecture.
        model_args: The ``--model-arg`` options it was built with, for the message.

    Raises:
        UnsupportedModelError: One line naming the model and the reason.
    """
    name = name or _model_name(model)

    def refuse(reason: str) -> UnsupportedModelError:
        given = f" with {model_args}" if model_args else ""
        works = "" if _WORKS in reason else f"; {_WORKS}"  # every refusal names what works
        return UnsupportedModelError(f"model {name!r}{given} is not supported: {reason}{works}")

    rotary = [type(m).__name__ for m in model.modules()
              if any(k in type(m).__name__.lower() for k in ("rotary", "rope"))]
    if rotary or getattr(model, "rope", None) is not None:
        raise refuse(f"it uses rotary position embeddings ({(rotary or ['rope'])[0]}), so "
                     "logits are not bilinear in the token activations")
    if not isinstance(model, VisionTransformer):
        raise refuse(_class_reason(model))
    heads = set()
    for l, block in enumerate(model.blocks):
        attn = getattr(block, "attn", None)
        if attn is None:
            raise refuse(f"block {l} ({type(block).__name__}) has no single `attn` module, "
                         "expected timm's Block with one Attention")
        if not isinstance(getattr(attn, "qkv", None), nn.Linear):
            raise refuse(f"block {l} attention ({type(attn).__name__}) has no fused `qkv` "
                         "Linear (separate q/k/v projections), expected timm Attention")
        if not isinstance(attn, Attention):
            raise refuse(f"block {l} attention is {type(attn).__name__}, expected timm "
                         "Attention (one softmax(q kᵀ) per head)")
        for norm in ("q_norm", "k_norm"):
            if not isinstance(getattr(attn, norm, nn.Identity()), nn.Identity):
                raise refuse(f"block {l} attention has an active {norm} "
                             f"({type(getattr(attn, norm)).__name__}), so logits are not "
                             "bilinear; expected nn.Identity (qk_norm=False)")
        heads.add((attn.num_heads, attn.head_dim))
    if len(heads) != 1:
        raise refuse(f"blocks differ in (num_heads, head_dim): {sorted(heads)}")


def _build(name: str, meta: bool, **kwargs: Any) -> nn.Module:
    ctx = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with ctx:
            return timm.create_model(name, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e) or "Invalid pretrained tag" in str(e):
            raise UnsupportedModelError(
                f"model {name!r} is unknown to timm {timm.__version__}: {e}; "
                f"{_close_names(name)}see timm.list_models('vit_*')") from None
        raise


def _close_names(name: str) -> str:
    """``did you mean ...; `` with up to 3 timm names (or pretrained tags of the same
    architecture) close to a mistyped ``name``; empty when none is close."""
    arch, dot, _ = name.partition(".")
    candidates = (timm.list_pretrained(f"{arch}.*") if dot and timm.is_model(arch)
                  else timm.list_models())
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.75)
    return f"did you mean {', '.join(close)}? " if close else ""


def _info(model: VisionTransformer, name: str, weights: str, sha: str) -> ModelInfo:
    attn = model.blocks[0].attn
    pe = model.patch_embed
    has_pos = model.pos_embed is not None
    return ModelInfo(
        name=name, weights=weights, weights_sha256=sha, depth=len(model.blocks),
        width=model.embed_dim, num_heads=attn.num_heads, head_dim=attn.head_dim,
        d_attn=attn.attn_dim, num_prefix_tokens=model.num_prefix_tokens,
        num_reg_tokens=model.num_reg_tokens, has_cls=model.cls_token is not None,
        has_dist=getattr(model, "dist_token", None) is not None,
        grid=tuple(pe.grid_size), img_size=tuple(pe.img_size), patch_size=tuple(pe.patch_size),
        has_pos_embed=has_pos,
        pos_embed_covers_prefix=has_pos and not model.no_embed_class
        and model.num_prefix_tokens > 0,
        timm_version=timm.__version__, torch_version=torch.__version__,
    )


def _size_kwargs(img_size: int | None) -> dict[str, Any]:
    return {} if img_size is None else {"img_size": img_size}


def describe(name: str, img_size: int | None = None,
             model_args: dict[str, Any] | None = None) -> ModelInfo:
    """Shapes and token layout of a supported model, built on the meta device (no weights).

    Args:
        model_args: timm.create_model keyword arguments (``--model-arg``).

    Raises:
        UnsupportedModelError: Unknown to timm, refused by ``check_supported``, or
            ``model_args`` that timm refuses.
    """
    args = dict(model_args or {})
    try:
        model = _build(name, meta=True, pretrained=False, **_size_kwargs(img_size), **args)
    except UnsupportedModelError:
        raise
    except (TypeError, AssertionError, ValueError, KeyError) as err:
        if not args and img_size is None:
            raise
        # non-ViT constructors (ResNet, ...) reject img_size (and a ViT's arguments): build
        # without them so that check_supported can refuse the model with its reason
        base = _build(name, meta=True, pretrained=False)
        check_supported(base, name)
        if args:
            try:  # the arguments alone: are they what timm refuses, or the size?
                _build(name, meta=True, pretrained=False, **args)
            except (TypeError, AssertionError, ValueError, KeyError):
                raise _refused_args(name, args, err) from None
        if img_size is None:
            raise
        raise _refused_size(name, img_size, args, err, base) from None
    check_supported(model, name, model_args_text(args))
    return _info(model, name, weights="none", sha="")


def _said(err: BaseException) -> str:
    """timm's words for ``err``; for a bare ``assert`` (no message), the line that failed and
    where."""
    said = " ".join(str(err).split())[:300]
    if said:
        return said
    frames = traceback.extract_tb(err.__traceback__)
    if not frames:
        return type(err).__name__
    last = frames[-1]
    where = "/".join(Path(last.filename).parts[-3:])
    line = " ".join((last.line or "").split())[:200]
    return f"{type(err).__name__}: {line} ({where}:{last.lineno})"


def _refused_size(name: str, img_size: int, args: dict[str, Any], err: BaseException,
                  base: nn.Module, tries: int = 3) -> UnsupportedModelError:
    """One line: timm's constructor of ``name`` (with ``args``) refuses ``--img-size
    img_size``, in its words, with the sizes nearest to it that it builds with (up to
    ``tries`` multiples of the patch size either side: a hybrid's CNN stem needs a larger
    multiple than its patch size)."""
    patch = getattr(getattr(base, "patch_embed", None), "patch_size", 16)
    step = int((patch[0] if isinstance(patch, tuple | list) else patch) or 16)
    near = []
    for direction in (-1, 1):
        size = (img_size // step) * step if direction < 0 else -(-img_size // step) * step
        for _ in range(tries):
            if size == img_size:
                size += direction * step
            if size < step:
                break
            try:
                _build(name, meta=True, pretrained=False, img_size=size, **args)
            except (TypeError, AssertionError, ValueError, KeyError):
                size += direction * step
                continue
            near.append(size)
            break
    given = f" with {model_args_text(args)}" if args else ""
    hint = (f"; sizes near it that it builds with: {', '.join(map(str, sorted(near)))}" if near
            else "")
    return UnsupportedModelError(
        f"--img-size {img_size} does not fit model {name!r}{given}: timm's constructor refuses "
        f"it ({_said(err)}){hint}")


def _refused_args(name: str, args: dict[str, Any], err: Exception) -> UnsupportedModelError:
    """One line: timm refused ``args`` for ``name`` (an unknown argument, a value it asserts
    against), with its words and where its arguments are listed."""
    said = " ".join(str(err).split())[:300] or type(err).__name__
    if args.get("class_token") is False and "global_pool" not in args:
        said += " (give --model-arg global_pool=avg too: no class token to pool)"
    return UnsupportedModelError(
        f"timm refuses {model_args_text(args)} for {name!r}: {said}; the arguments are "
        f"those of the model's class (timm.create_model({name!r}, ...): for a ViT, "
        "timm.models.vision_transformer.VisionTransformer)")


def supported_model_names(filter: str = "*") -> list[str]:
    """timm model names matching ``filter`` that pass ``check_supported``.

    Each candidate is built on the meta device (about 0.2-0.7 s each on a CPU core), so pass a
    narrow filter such as ``"vit_small*"``; ``"*"`` checks every ViT in timm (a minute or more).
    """
    names = timm.list_models(module=list(VIT_MODULES))
    out = []
    for n in fnmatch.filter(names, filter):
        try:
            check_supported(_build(n, meta=True, pretrained=False), n)
        except (UnsupportedModelError, AssertionError, TypeError):
            continue
        out.append(n)
    return out


def _hub_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    return env or bool(constants.HF_HUB_OFFLINE)


def _pretrained_file(name: str) -> str:
    """The checkpoint timm would load for ``name``: from the HF cache, else downloaded.

    Raises:
        WeightsUnavailableError: Not cached, and the hub is offline, unreachable or failing.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(name)
    repo, _, rev = (cfg.hf_hub_id or "").partition("@") if cfg else ("", "", "")
    files = [cfg.hf_hub_filename] if cfg and cfg.hf_hub_filename else [
        "model.safetensors", "pytorch_model.bin"]
    for f in files if repo else []:
        hit = try_to_load_from_cache(repo, f, revision=rev or None)
        if isinstance(hit, str):
            return hit
    msg = (f"pretrained weights for {name!r} are not in the Hugging Face cache "
           f"({constants.HF_HUB_CACHE}) and ")
    alt = "; pass --weights PATH (a .safetensors/.pth/.bin file) or --weights random"
    if not repo:
        raise WeightsUnavailableError(msg + "timm names no hub repo for them" + alt)
    if _hub_offline():
        raise WeightsUnavailableError(msg + "the hub is offline (HF_HUB_OFFLINE)" + alt)
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if not (os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")):
        # huggingface_hub retries an unreachable host for most of a minute; a 3 s probe
        # turns that into an immediate, explained failure.
        try:
            socket.create_connection((host, 443), timeout=3).close()
        except OSError as e:
            raise WeightsUnavailableError(msg + f"{host} is unreachable ({e})" + alt) from None
    errors = []
    for f in files:
        try:
            return hf_hub_download(repo, f, revision=rev or None)
        except Exception as e:  # any hub failure means "unavailable"; the message says which
            errors.append(f"{f}: {type(e).__name__}")
    raise WeightsUnavailableError(msg + f"the download failed ({', '.join(errors)})" + alt)


def resolve_device(device: str) -> str:
    """The torch device a task runs on: ``auto`` is CUDA when torch sees one, else the CPU.

    Raises:
        ValueError: ``device`` is not auto, cpu, cuda or cuda:K, or asks for CUDA where there
            is none.
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:K; got {device!r}")
    return device


# What torch says of a file it cannot read (rather than of tensors that do not fit).
_UNREADABLE = ("pytorchstreamreader", "pickle", "eof", "corrupt", "weights_only")


def _weights_error(path: str, name: str, err: Exception) -> ValueError:
    """One line for a weights file whose load failed: not a readable checkpoint (damaged,
    truncated, not a torch file: torch.load fails as RuntimeError, EOFError,
    UnicodeDecodeError, UnpicklingError, ...), or tensors that do not fit the model."""
    detail = " ".join(str(err).split())  # timm/torch list every key on its own line
    if type(err).__name__ == "SafetensorError":  # safetensors' own type for a damaged file
        return ValueError(f"weights file {path!r} is not a readable .safetensors file "
                          f"({detail}); re-download or re-export it")
    if isinstance(err, (RuntimeError, KeyError)) and not any(
            word in detail.lower() for word in _UNREADABLE):
        return ValueError(f"weights {path!r} do not fit {name!r}: {_misfit(detail)}")
    return ValueError(f"weights file {path!r} is not a readable checkpoint (damaged, "
                      f"truncated or not a torch file): "
                      f"{': '.join(filter(None, (type(err).__name__, detail[:200])))}")


def _misfit(detail: str) -> str:
    """torch's list of every key that does not fit (thousands of words for another model),
    counted, with the first few named; its first 300 characters when it says otherwise."""
    def keys(label: str) -> list[str]:
        found = re.search(label + r' key\(s\) in state_dict: ((?:"[^"]*"(?:, )?)+)', detail)
        return re.findall(r'"([^"]*)"', found.group(1)) if found else []

    def first(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    shapes = re.findall(r"size mismatch for ([^:]+): copying a param with shape "
                        r"torch\.Size\((\[[^\]]*\])\) from checkpoint, the shape in current "
                        r"model is torch\.Size\((\[[^\]]*\])\)", detail)
    missing, unexpected = keys("Missing"), keys("Unexpected")
    parts = []
    if shapes:
        key, theirs, ours = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape ({key}: {theirs} in the file, "
                     f"{ours} in the model{', ...' if len(shapes) > 1 else ''})")
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the model missing ({first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} tensor(s) not in the model ({first(unexpected)})")
    return "; ".join(parts) if parts else detail[:300]


def _file_tensors(path: str) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor of a checkpoint file, as timm reads it ({} when it cannot)."""
    from timm.models import load_state_dict

    try:
        state = load_state_dict(path, use_ema=False)
    except Exception:  # any failure: no hint, the load's own error stands
        return {}
    return {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def misfit_hint(path: str, name: str, img_size: int | None,
                model_args: dict[str, Any]) -> str | None:
    """What of a checkpoint that does not fit ``name`` (built with ``model_args``) says how it
    was built, as the ``--model-arg`` to give: its register tokens (``reg_token``), class
    token, qkv biases, classifier head (a fine-tune's ``num_classes``), whether ``pos_embed``
    covers the prefix tokens; None when none of these
    differ (another architecture: another timm name)."""
    file = _file_tensors(path)
    if not file:
        return None
    model = _build(name, meta=True, pretrained=False, **_size_kwargs(img_size), **model_args)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def shape(tensors: dict[str, tuple[int, ...]]) -> tuple[int, int]:  # (width, depth)
        width = tensors.get("blocks.0.norm1.weight", (0,))[0]
        return width, len({k.split(".")[1] for k in tensors if k.startswith("blocks.")})

    if shape(file) != shape(ours):  # registers and the rest would not make it fit
        (w, d), (mw, md) = shape(file), shape(ours)
        return (f"the file holds a ViT of width {w} and depth {d}, the model's are {mw} and "
                f"{md}: give the timm name of its architecture as --model")
    args: dict[str, Any] = {}
    said: list[str] = []
    reg = file.get("reg_token", (1, 0))[1]
    if reg != getattr(model, "num_reg_tokens", 0):
        args["reg_tokens"] = reg
        said.append(f"{reg} register token(s) (reg_token)" if reg else "no register tokens")
    cls = "cls_token" in file
    if cls != ("cls_token" in ours):
        args["class_token"] = cls
        if not cls:  # timm pools a model without a class token otherwise
            args["global_pool"] = "map" if any(k.startswith("attn_pool.") for k in file) \
                else "avg"
        said.append("a class token (cls_token)" if cls else "no class token (cls_token)")
    bias = "blocks.0.attn.qkv.bias" in file
    if "blocks.0.attn.qkv.weight" in file and bias != ("blocks.0.attn.qkv.bias" in ours):
        args["qkv_bias"] = bias
        said.append("qkv biases" if bias else "no qkv biases (blocks.*.attn.qkv.bias)")
    head = file.get("head.weight")  # (classes, width): a fine-tune's own classes
    if head != ours.get("head.weight"):
        args["num_classes"] = head[0] if head else 0
        said.append(f"a classifier head of {head[0]} classes (head.weight; no part of BFD)"
                    if head else "no classifier head (head.weight)")
    prefix = cls + reg + ("dist_token" in file)
    rows = file.get("pos_embed", (1, 0))[1]
    if prefix and rows:
        def square(n: int) -> bool:
            return n > 0 and round(n ** 0.5) ** 2 == n
        # a square count of rows: pos_embed of the patches alone (no_embed_class=True)
        covers = square(rows - prefix)  # known when one of the two counts is a square only
        if covers != square(rows) and covers == bool(getattr(model, "no_embed_class", False)):
            args["no_embed_class"] = not covers
            said.append("pos_embed rows of the patches alone" if not covers
                        else "pos_embed rows of the prefix tokens too")
    if not args:
        return None
    given = {**model_args, **args}
    return (f"the file holds {' and '.join(said)}: give "
            f"{model_args_text({k: given[k] for k in sorted(args)})}"
            + (" (with the other --model-arg given)" if set(model_args) - set(args) else ""))


def load_model(
    name: str,
    weights: str = "pretrained",
    *,
    img_size: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    model_args: dict[str, Any] | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """Build a supported timm ViT in eval mode with frozen parameters.

    Args:
        name: timm model name, optionally with a pretrained tag (``vit_base_patch16_224.augreg``).
        weights: ``"pretrained"`` (timm's weights from the HF cache; downloaded only when the hub
            is online and reachable), ``"random"`` (timm init under ``seed``), or a path to a
            ``.safetensors``/``.pth``/``.pt``/``.bin`` state dict for this architecture.
        img_size: Input size; a learned ``pos_embed`` is resampled to the new grid on load.
        seed: Seed of the random init (``weights="random"``); the global RNG is left untouched.
        device: Where to put the model.
        model_args: timm.create_model keyword arguments (``--model-arg``): the model's
            configuration beyond its name (``reg_tokens``, ``class_token``, ...).

    Returns:
        The model and its ``ModelInfo`` (``weights_sha256``: sha256 of the checkpoint file, or
        ``"random-seed-<seed>"``).

    Raises:
        UnsupportedModelError: Before any weights are read (see ``check_supported``).
        WeightsUnavailableError: Pretrained weights neither cached nor downloadable.
        FileNotFoundError, ValueError: A bad ``weights`` or ``img_size`` argument.
    """
    args = dict(model_args or {})
    info = describe(name, img_size, args)
    if img_size is not None and img_size % info.patch_size[0]:
        raise ValueError(f"img_size must be a multiple of the patch size {info.patch_size[0]} "
                         f"of {name!r}; got {img_size}")
    kw = {"pretrained": False, **_size_kwargs(img_size), **args}
    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build(name, meta=False, **kw)
        sha = f"random-seed-{seed}"
    else:
        if weights == "pretrained":
            path = _pretrained_file(name)
        else:
            path = weights
            check_weights(weights)
        # its size and time before it is read and after it is hashed: the hash is of the
        # bytes loaded only if the file did not change in between (trial 26)
        before = _stamp(path)
        # A local file through timm's own pretrained path keeps each model's checkpoint filter
        # (format conversion, pos_embed resampling) without any hub access.
        overlay = {"file": str(path), "source": "", "custom_load": False}
        try:
            model = _build(name, meta=False, **{**kw, "pretrained": True},
                           pretrained_cfg_overlay=overlay)
        except (OSError, MemoryError):  # the file gone or unreadable, the machine's memory
            raise
        except Exception as e:
            err = _weights_error(str(path), name, e)
            if "do not fit" in str(err):
                hint = misfit_hint(str(path), name, img_size, args)
                err = ValueError(f"{err}; {hint}" if hint else str(err))
            raise err from e
        bad = [k for k, v in model.state_dict().items()
               if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise ValueError(f"weights file {str(path)!r} holds non-finite values (NaN or inf) "
                             f"in tensor {bad[0]!r}" + (f" and {len(bad) - 1} more" if bad[1:]
                                                       else "") + "; BFD of such a model is "
                             "undefined")
        sha = sha256_file(path)
        if _stamp(path) != before:
            raise ValueError(f"weights file {str(path)!r} changed while it was loaded (a "
                             "training job saving it again?); audit it once it no longer "
                             "changes")
    model.eval().requires_grad_(False)
    model.to(device)
    return model, _info(model, name, weights, sha)


def _stamp(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """A file's size, modification time and inode: any write or replacement changes one."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns, st.st_ino


def block(model: nn.Module, layer: int) -> nn.Module:
    """Block ``layer`` of ``model``.

    Raises:
        ValueError: ``layer`` is outside ``[0, depth)``.
    """
    depth = len(model.blocks)
    if not 0 <= layer < depth:
        raise ValueError(f"layer must be in [0, {depth}) for a {depth}-block model; got {layer}")
    return model.blocks[layer]


def qkv_weight(model: nn.Module, layer: int) -> torch.Tensor:
    """The fused qkv weight W (3·d_attn, d) of block ``layer`` (docs/method.md, "Stage 2")."""
    return block(model, layer).attn.qkv.weight.detach()


def attn_scale(model: nn.Module, layer: int) -> float:
    """The logit scale s of block ``layer`` (``attn.scale``, dh^-1/2 in timm)."""
    return float(block(model, layer).attn.scale)


def qkv_bias(model: nn.Module, layer: int) -> torch.Tensor | None:
    """The fused qkv bias (3·d_attn,) of block ``layer``; None when the Linear has none."""
    bias = block(model, layer).attn.qkv.bias
    return None if bias is None else bias.detach()


def pos_embed_patch_rows(model: nn.Module) -> np.ndarray | None:
    """The patch rows (grid_h·grid_w, d) of the learned absolute ``pos_embed``, as stored.

    Prefix rows (when ``pos_embed`` covers the prefix) are dropped; no centring is applied.
    None when the model has no learned ``pos_embed``.
    """
    pe = getattr(model, "pos_embed", None)
    if pe is None:
        return None
    skip = 0 if model.no_embed_class else model.num_prefix_tokens
    rows = pe.detach()[0, skip:].float().cpu().numpy()
    h, w = model.patch_embed.grid_size
    if rows.shape[0] != h * w:
        raise ValueError(f"pos_embed has {rows.shape[0]} patch rows; expected {h}x{w}={h * w}")
    return rows


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's eval preprocessing config, with ``input_size`` set to the model's ``img_size``.

    timm resolves ``input_size`` from the pretrained cfg, which ignores an ``img_size`` override.
    """
    cfg = dict(timm.data.resolve_model_data_config(model))
    cfg["input_size"] = (cfg["input_size"][0], *model.patch_embed.img_size)
    return cfg


def transform(model: nn.Module) -> Callable[[Any], torch.Tensor]:
    """The eval transform (PIL RGB image -> normalized (3, H, W) tensor) for ``model``."""
    return timm.data.create_transform(**data_config(model), is_training=False)
