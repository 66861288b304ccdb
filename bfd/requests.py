"""The rules of an extraction request that need no model: one definition for the command
line, the typed flow parameters (``bfd.flows.params.AuditConfig``) and the extraction's own
check (``bfd.tasks.extract.validate_config``), which adds the rules that need the model
(layer indices in range, the input size against the patch size, CUDA being there).

Imports neither torch, timm, Prefect nor pydantic, so that a command refuses a bad request
before it imports them (10-26 s).

Each rule (``check_option``) raises ``ValueError`` with what the value must be, without the
option's name or the value given: the caller names both as its user wrote them (``--n-images``
on the command line, ``config.n_images`` for a Prefect run).
"""

from __future__ import annotations

import ast
import json
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from bfd.files import WEIGHT_SUFFIXES, check_checkpoint

SITES: Final[tuple[str, ...]] = ("attn_in", "resid")
DTYPES: Final[tuple[str, ...]] = ("float16", "float32")
AUTOCASTS: Final[tuple[str, ...]] = ("none", "bf16", "fp16")
# BFD compares images with each other: the split-half and shuffle controls need two at least.
MIN_IMAGES: Final[int] = 2
_DEVICE: Final[re.Pattern[str]] = re.compile(r"(auto|cpu|cuda(:\d+)?)")
_LAYERS: Final[re.Pattern[str]] = re.compile(r"\s*(all|\d+(\s*,\s*\d+)*)\s*")
# ints, some negative: a range problem (Python's -1 for the last block is not taken)
_SIGNED_LAYERS: Final[re.Pattern[str]] = re.compile(r"\s*-?\d+(\s*,\s*-?\d+)*\s*")


def _positive(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError("must be a positive integer")


def _n_images(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < MIN_IMAGES):
        raise ValueError(f"must be an integer >= {MIN_IMAGES} (BFD needs at least "
                         f"{MIN_IMAGES} images), or unset for all")


def _layers(value: Any) -> None:
    if isinstance(value, str):
        if _SIGNED_LAYERS.fullmatch(value) and not _LAYERS.fullmatch(value):
            raise ValueError("layers are block indices from 0 to the model's depth - 1 "
                             "(0,5,11 or all): a negative one is not allowed")
        if not _LAYERS.fullmatch(value):
            raise ValueError("must be 'all' or comma-separated ints like 0,5,11")
    elif not value or not all(isinstance(v, int) and v >= 0 for v in value):
        raise ValueError("must be 'all' or block indices >= 0")


def _sites(value: Any) -> None:
    sites = list(value or ())
    choices = " and/or ".join(SITES)
    unknown = [s for s in sites if s not in SITES]
    if unknown:
        names = ", ".join(repr(s) for s in dict.fromkeys(unknown))
        raise ValueError(f"unknown site{'s' * (len(set(unknown)) > 1)} {names}; the sites "
                         f"are {choices}")
    if not sites:
        raise ValueError(f"must name at least one site: {choices}")
    twice = next((s for i, s in enumerate(sites) if s in sites[:i]), None)
    if twice is not None:
        raise ValueError(f"names {twice!r} twice; give distinct sites from {choices}")


def _one_of(choices: tuple[str, ...]) -> Callable[[Any], None]:
    def rule(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be {' or '.join(choices)}")
    return rule


def check_device(value: Any) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:K`` (whether CUDA is there is torch's to say)."""
    if not (isinstance(value, str) and _DEVICE.fullmatch(value)):
        raise ValueError("must be auto, cpu, cuda or cuda:K")


def check_weights(value: Any) -> None:
    """``pretrained``, ``random``, or a checkpoint file that exists and whose first bytes are
    those of a checkpoint (``bfd.files.check_checkpoint``: neither hashed nor loaded).

    Raises:
        ValueError: Naming the file and what is wrong with it.
        OSError: The file cannot be read.
    """
    if value in ("pretrained", "random"):
        return
    if Path(str(value)).suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"{value!r} is not pretrained, random or a checkpoint file ending "
                         f"in {'/'.join(WEIGHT_SUFFIXES)}")
    if not Path(value).is_file():
        raise ValueError(f"checkpoint file {value!r} does not exist")
    check_checkpoint(value)


# timm.create_model arguments that --model-arg does not pass: each has its own option, or
# would load other weights than --weights names
_OWN_OPTIONS: Final[dict[str, str]] = {
    "img_size": "give --img-size",
    "pretrained": "give --weights",
    "pretrained_cfg": "give --weights",
    "pretrained_cfg_overlay": "give --weights",
    "checkpoint_path": "give --weights",
    "features_only": "BFD reads every block itself",
}
_SCALARS = (bool, int, float, str, type(None))


def parse_model_arg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--model-arg``: VALUE a Python or JSON literal (``4``, ``0.5``,
    ``False``/``false``, ``None``/``null``, ``'avg'``), else the text itself (``avg``).

    Raises:
        ValueError: No ``=``, or a key that is no Python name.
    """
    key, eq, value = text.partition("=")
    key = key.strip()
    if not eq or not key.isidentifier():
        raise ValueError(f"--model-arg must be KEY=VALUE, a timm.create_model argument such "
                         f"as reg_tokens=4 or class_token=False; got {text!r}")
    value = value.strip()
    for parse in (ast.literal_eval, json.loads):
        try:
            return key, parse(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return key, value


def model_args_text(args: Mapping[str, Any]) -> str:
    """``args`` as the command line gives them: ``--model-arg reg_tokens=4 ...`` (sorted)."""
    return " ".join(f"--model-arg {k}={v!r}" if isinstance(v, str) else f"--model-arg {k}={v}"
                    for k, v in sorted(args.items()))


def model_arg_words(args: Mapping[str, Any]) -> list[str]:
    """``args`` as shell words of a command line that ``parse_model_arg`` reads back to the
    same values and types (sorted): ``--model-arg depth=6``, ``--model-arg global_pool=avg``,
    a string that would read as a literal kept as one (``--model-arg 'k='"'"'4'"'"''``)."""
    words = []
    for key, value in sorted(args.items()):
        text = f"{key}={value}"
        back = parse_model_arg(text)[1]
        if back != value or type(back) is not type(value):
            text = f"{key}={value!r}"
        words += ["--model-arg", shlex.quote(text)]
    return words


def check_model_args(value: Any) -> None:
    """A mapping of timm.create_model keyword arguments to int, float, bool, None or str;
    none of those that another option gives (``_OWN_OPTIONS``). Whether timm takes them is
    timm's to say (``bfd.models.describe``)."""
    if not isinstance(value, Mapping):
        raise ValueError("must be a mapping of timm.create_model arguments to values")
    for key, arg in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{key!r} is no argument name")
        if key in _OWN_OPTIONS:
            raise ValueError(f"{key} is not passed as a model argument: {_OWN_OPTIONS[key]}")
        if not isinstance(arg, _SCALARS):
            raise ValueError(f"{key}={arg!r}: a value must be an int, float, bool, None or "
                             "str")


# the rule of each option of a request that has one without the model
RULES: Final[dict[str, Callable[[Any], None]]] = {
    "weights": check_weights,
    "n_images": _n_images,
    "layers": _layers,
    "sites": _sites,
    "img_size": _positive,
    "dtype": _one_of(DTYPES),
    "batch_size": _positive,
    "images_per_chunk": _positive,
    "images_per_shard": _positive,
    "device": check_device,
    "autocast": _one_of(AUTOCASTS),
    "decode_workers": _positive,
    "model_args": check_model_args,
}


# The rules above as JSON schema, for forms and a deployment run's submission (Prefect checks
# parameters against the schema when a run is submitted); the rules themselves decide.
SCHEMA: Final[dict[str, dict[str, Any]]] = {
    "n_images": {"minimum": MIN_IMAGES},
    "layers": {"pattern": f"^{_LAYERS.pattern}$"},
    "img_size": {"minimum": 1},
    "batch_size": {"minimum": 1},
    "images_per_chunk": {"minimum": 1},
    "images_per_shard": {"minimum": 1},
    "device": {"pattern": f"^{_DEVICE.pattern}$"},
}


def check_option(name: str, value: Any) -> Any:
    """``value`` of option ``name`` (a field of ``ExtractConfig``) if its rule holds.

    Raises:
        ValueError: What the value must be (neither the option nor the value named).
    """
    rule = RULES.get(name)
    if rule is not None:
        rule(value)
    return value


def as_typed(value: Any) -> Any:
    """A value as its option was typed on the command line: a list of names (``--sites``)
    comma-joined."""
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return value


def check_shards(images_per_chunk: int, images_per_shard: int | None) -> None:
    """A shard owns whole Zarr chunks."""
    if images_per_shard and images_per_shard % images_per_chunk:
        raise ValueError(f"--images-per-shard {images_per_shard} must be a multiple of "
                         f"images_per_chunk={images_per_chunk}, so that each shard owns whole "
                         "chunks")


def check_autocast(autocast: Any, device: Any, asked: Any = None) -> None:
    """Autocast is CUDA's: on the CPU the forward runs in float32 whatever ``--autocast``
    says, so a request naming it there would record a computation that does not happen (and
    get another run id for the same one).

    Args:
        device: The device the forward runs on (``auto`` passes: see ``asked``).
        asked: The ``--device`` given, when ``device`` is what ``auto`` resolved to.
    """
    if autocast in (None, "none") or device != "cpu":
        return
    where = ("--device auto: torch sees no CUDA device here" if asked == "auto"
             else "--device cpu")
    raise ValueError(f"--autocast {autocast} applies to a CUDA forward only ({where}: the "
                     "forward would be float32 all the same); leave out --autocast, or run "
                     "on --device cuda")


def check_workers(workers: Any) -> None:
    """Local extraction workers: one at least."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"--workers must be >= 1; got {workers}")


def check_request(config: Mapping[str, Any]) -> None:
    """Every rule above over the fields of an extraction request that ``config`` holds.

    Raises:
        ValueError: Naming the first bad option (``--n-images``) and what was given.
    """
    for name, value in config.items():
        try:
            check_option(name, value)
        except ValueError as err:  # as bfd.flows.params.describe_errors names it
            given = as_typed(value)
            given = "" if repr(given) in str(err) else f" (given {given!r})"
            option = "--model-arg" if name == "model_args" else f"--{name.replace('_', '-')}"
            raise ValueError(f"{option}: {err}{given}") from None
    check_shards(config.get("images_per_chunk") or 1, config.get("images_per_shard"))
    check_autocast(config.get("autocast"), config.get("device"))
    check_init(config.get("weights"), config.get("model_args"))


def check_init(weights: str | None, model_args: Mapping[str, Any] | None) -> None:
    """Refuse a random init that timm leaves uninitialised (``--model-arg weight_init=skip``:
    its parameters stay ``torch.empty``, whatever memory held: not one network per seed, and
    at times not finite)."""
    if weights == "random" and (model_args or {}).get("weight_init") == "skip":
        raise ValueError("--model-arg weight_init=skip leaves the model's parameters "
                         "uninitialised under --weights random (timm's torch.empty: whatever "
                         "memory held, not seeded, not finite at times); drop it: the default "
                         "init is seeded by --seed")
