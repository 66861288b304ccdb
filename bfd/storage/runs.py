"""Run identity: the request that defines a run, and the stable id it hashes to.

A run is named by what produced it, never by when: the same request gives the same id in any
process on any machine, and any change of any field gives a new one. The request is kept as
``runs/<run_id>/request.json`` beside the Zarr store (docs/layout.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .paths import DamagedStoreError, Store, read_json, validate_run_id, write_json_atomic

DTYPES: Final[tuple[str, ...]] = ("float16", "float32")
# The request field that marks a stats-only run (``bfd audit --no-store-activations``): it
# enters the run id (a stored run of the same request keeps its own id) and its record,
# ``runs.config_json``.
NOT_STORED: Final[dict[str, str]] = {"activations": "not stored"}
# Known values named beside an unknown one (a run id, a query's parameter), the closest first.
CLOSEST: Final[int] = 3
_HASH_CHARS: Final[int] = 16
_SLUG_CHARS: Final[int] = 64


def is_stats_only(extra: Mapping[str, Any]) -> bool:
    """Whether a run request's ``extra`` marks a run whose activations were not kept."""
    return extra.get("activations") == NOT_STORED["activations"]


def with_stats_only(request: Mapping[str, Any]) -> dict[str, Any]:
    """A run request (``ExtractConfig.to_dict()``) with its ``extra`` marked stats-only, as
    ``bfd audit --no-store-activations`` plans it: its run id and request key are this."""
    return {**request, "extra": {**request.get("extra", {}), **NOT_STORED}}


def canonical_json(obj: Any) -> str:
    """The one JSON text of a value that hashes use: sorted keys, no spaces, no NaN.

    Tuples and lists give the same text, so ``(1, 2)`` and ``[1, 2]`` hash alike.

    Args:
        obj: A JSON-serialisable value.

    Returns:
        Compact, key-sorted JSON.

    Raises:
        TypeError: If ``obj`` holds something JSON cannot represent.
        ValueError: If it holds NaN or an infinity (not valid JSON).
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
    )


def sha256_hex(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj``, as 64 hex digits."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def _freeze_json(value: Any, name: str) -> Any:
    """Round-trip through canonical JSON: proves serialisability and drops aliasing."""
    try:
        return json.loads(canonical_json(value))
    except (TypeError, ValueError) as e:
        raise ValueError(f"RunRequest.{name} must be JSON-serialisable, got {value!r}: {e}") from e


def _as_int(value: Any, name: str) -> int:
    """``int`` of an integer-like value (numpy ints too); bools and floats are refused."""
    if isinstance(value, bool):
        raise TypeError(f"RunRequest.{name} must hold ints, got {value!r}")
    try:
        return operator.index(value)
    except TypeError as e:
        raise TypeError(f"RunRequest.{name} must hold ints, got {value!r}") from e


@dataclass(frozen=True)
class RunRequest:
    """Everything that determines a run's activations; its hash is the run id.

    Attributes:
        model: timm model name, e.g. ``"vit_small_patch16_224.augreg_in21k"``.
        weights: Where the weights came from: ``pretrained``, ``random`` or a file's path,
            absolute (``bfd.files.input_path``; a run made before may hold it as typed).
        weights_sha256: sha256 of the weight bytes.
        images: Image source: a folder or manifest file, absolute like ``weights``, or
            ``samples``.
        images_sha256: Hash of the image manifest (see ``image_list_sha256``).
        n_images: Number of images requested.
        preprocessing: Resolved preprocessing config (resize, crop, mean, std, ...).
        img_size: Model input size, ``224`` or ``(h, w)``.
        sites: Activation sites, e.g. ``("attn_in", "resid")``; order is part of the identity.
        layers: Block indices, e.g. ``(0, 1, 2)``; order is part of the identity.
        dtype: Storage dtype of activations, ``"float16"`` or ``"float32"``.
        code_version: Version of the code that extracts (e.g. bfd version or git commit).
        extra: Any further options that change the activations (JSON-serialisable).

    Note:
        The dataclass is frozen but holds dicts, so it is not hashable; hash ``run_id(req)``.
    """

    model: str
    weights: str
    weights_sha256: str
    images: str
    images_sha256: str
    n_images: int
    preprocessing: Mapping[str, Any]
    img_size: int | tuple[int, int]
    sites: tuple[str, ...]
    layers: tuple[int, ...]
    dtype: Literal["float16", "float32"]
    code_version: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (
            "model",
            "weights",
            "weights_sha256",
            "images",
            "images_sha256",
            "code_version",
        ):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"RunRequest.{name} must be str, got {getattr(self, name)!r}")
        if not self.model:
            raise ValueError("RunRequest.model must not be empty")
        n_images = _as_int(self.n_images, "n_images")
        if n_images < 1:
            raise ValueError(f"RunRequest.n_images must be >= 1, got {self.n_images!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"RunRequest.dtype must be one of {DTYPES}, got {self.dtype!r}")
        sites = tuple(self.sites)
        if not sites or len(set(sites)) != len(sites) or not all(isinstance(s, str) for s in sites):
            raise ValueError(f"RunRequest.sites must be unique strings, got {self.sites!r}")
        layers = tuple(_as_int(x, "layers") for x in self.layers)
        if not layers or len(set(layers)) != len(layers) or min(layers) < 0:
            raise ValueError(f"RunRequest.layers must be unique ints >= 0, got {self.layers!r}")
        if isinstance(self.img_size, (tuple, list)):
            img_size: int | tuple[int, ...] = tuple(_as_int(v, "img_size") for v in self.img_size)
            if len(img_size) != 2:
                raise ValueError(
                    f"RunRequest.img_size must be an int or (h, w), got {self.img_size!r}"
                )
        else:
            img_size = _as_int(self.img_size, "img_size")
        # Frozen: normalise list inputs in place once so that equality and hashing agree.
        object.__setattr__(self, "n_images", n_images)
        object.__setattr__(self, "sites", sites)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "img_size", img_size)
        object.__setattr__(
            self, "preprocessing", _freeze_json(dict(self.preprocessing), "preprocessing")
        )
        object.__setattr__(self, "extra", _freeze_json(dict(self.extra), "extra"))

    def to_json_dict(self) -> dict[str, Any]:
        """The request as plain JSON types (what is hashed and stored)."""
        out = dataclasses.asdict(self)
        return json.loads(canonical_json(out))

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> RunRequest:
        """Rebuild a request from ``to_json_dict`` output.

        Raises:
            ValueError: If fields are missing or unknown.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        missing = sorted(
            f.name for f in dataclasses.fields(cls) if f.name not in data and f.name != "extra"
        )
        if unknown or missing:
            raise ValueError(
                f"run request fields: missing {missing}, unknown {unknown}; "
                f"expected {sorted(names)}"
            )
        kwargs = dict(data)
        kwargs["sites"] = tuple(kwargs["sites"])
        kwargs["layers"] = tuple(kwargs["layers"])
        if isinstance(kwargs["img_size"], list):
            kwargs["img_size"] = tuple(kwargs["img_size"])
        return cls(**kwargs)


def model_label(model: str | None, model_args: Mapping[str, Any] | None) -> str:
    """A model's name with its ``--model-arg`` options (``extra.model_args``) as compact JSON,
    as the ``run_shapes`` view (SQL) and ``bfd runs`` spell it: ``test_vit {"reg_tokens":4}``;
    the name alone without them."""
    if not model_args:
        return str(model or "")
    return f"{model} {json.dumps(dict(model_args), sort_keys=True, separators=(',', ':'))}"


def request_columns(request: RunRequest) -> dict[str, Any]:
    """The columns of a ``runs`` row that the run's request alone gives (``runs_row`` of
    ``bfd.tasks.publish``; ``bfd runs`` of a run not published): ``img_size`` one int (the
    height of an ``(h, w)`` request), ``sites`` and ``layers`` comma-joined."""
    size = request.img_size
    return {
        "model": request.model,
        "weights": request.weights,
        "weights_sha256": request.weights_sha256,
        "images": request.images,
        "images_sha256": request.images_sha256,
        "n_images": request.n_images,
        "img_size": size if isinstance(size, int) else size[0],
        "sites": ",".join(request.sites),
        "layers": ",".join(map(str, request.layers)),
        "dtype": request.dtype,
    }


def model_slug(model: str) -> str:
    """A path- and SQL-safe prefix for run ids: ``hf-hub:timm/vit_b`` -> ``hf_hub_timm_vit_b``.

    ``-`` is replaced too, so the hash always follows the last ``-`` of a run id.
    """
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", model).strip("._")
    return slug[:_SLUG_CHARS].rstrip("._") or "model"


def run_id(request: RunRequest) -> str:
    """The stable id of a run: ``<model slug>-<16 hex digits of sha256(request)>``.

    Args:
        request: The run request.

    Returns:
        e.g. ``"vit_small_patch16_224-3fa1c2d4e5f60718"``. Same in every process and for
        any dict ordering; changes when any field changes.
    """
    digest = sha256_hex(request.to_json_dict())
    return f"{model_slug(request.model)}-{digest[:_HASH_CHARS]}"


_compute_run_id = run_id


def write_request(store: Store, request: RunRequest) -> str:
    """Store ``runs/<run_id>/request.json`` (idempotent).

    Args:
        store: The store.
        request: The run request.

    Returns:
        The run id.

    Raises:
        ValueError: If a different request is already stored under the same id (a hash
            collision or a hand-edited file).
    """
    rid = run_id(request)
    path = store.run_dir(rid) / "request.json"
    payload = {"run_id": rid, "request": request.to_json_dict()}
    existing = None
    if path.exists():
        try:
            existing = read_json(path)
        except DamagedStoreError:
            pass  # damaged: written again below, from the request that hashes to its id
    if existing is not None:
        if existing != payload:
            raise ValueError(
                f"{path} holds a different request than the one hashing to {rid}; "
                "refusing to overwrite"
            )
        return rid
    write_json_atomic(path, payload)
    return rid


def read_request(store: Store, run_id: str) -> RunRequest:
    """Read the request of a run and check that it still hashes to its id.

    Args:
        store: The store.
        run_id: The run id.

    Returns:
        The stored request.

    Raises:
        FileNotFoundError: If the run has no request.json.
        ValueError: If the stored request no longer hashes to ``run_id``.
    """
    path = store.run_dir(validate_run_id(run_id)) / "request.json"
    if not path.exists():
        known = list_requests(store)
        if not known:
            raise FileNotFoundError(f"no run request at {path}; the store holds no run "
                                    "request yet")
        listing = f"bfd runs --store {store.root} lists them all"
        raise FileNotFoundError(
            f"no run request at {path}; closest of the {len(known)} runs with requests: "
            f"{', '.join(closest_known(run_id, known))} ({listing})")
    try:
        request = RunRequest.from_json_dict(read_json(path)["request"])
    except (KeyError, TypeError) as e:
        raise DamagedStoreError(f"{path} is damaged: not a run request ({e})") from e
    actual = _compute_run_id(request)
    if actual != run_id:
        raise ValueError(f"{path} hashes to {actual}, expected {run_id}: the file was edited")
    return request


def earlier_spelling(store: Store, request: RunRequest) -> RunRequest | None:
    """The stored request of ``request``'s run made before paths had one spelling, if any.

    ``request`` names its weights file and images folder by their one spelling
    (``bfd.files.input_path``); a run made before kept them as typed (``imgs``, ``./imgs/``),
    so the same request hashes to another id. Such a run is ``request``'s when every other
    field is equal and its paths name what ``request`` names (``bfd.files.same_input``; a
    relative one taken from the current directory): the same command line, from the same
    folder, as the one that made it. Nothing is recomputed for it, and its stored request is
    kept as it was made. A relative path typed in another folder is recognised only where,
    taken from this one, it names the same file (else that run is computed once more, under
    its new id).

    Returns:
        That stored request (the first by run id), or None: ``request``'s own run is stored,
        or no earlier one is there.
    """
    from bfd.files import same_input

    if (store.run_dir(run_id(request)) / "request.json").exists():
        return None
    slug = f"{model_slug(request.model)}-"
    for rid in list_requests(store):
        if not rid.startswith(slug):
            continue
        try:
            stored = read_request(store, rid)
        except (OSError, ValueError):
            continue
        if (stored != request and same_input(stored.weights, request.weights)
                and same_input(stored.images, request.images)
                and dataclasses.replace(stored, weights=request.weights,
                                        images=request.images) == request):
            return stored
    return None


def closest_known(value: str, known: Sequence[str], n: int = CLOSEST) -> list[str]:
    """The ``n`` values of ``known`` closest to ``value`` (difflib's ratio), the closest
    first: what a message names beside a value that names nothing."""
    return difflib.get_close_matches(value, list(known), n=n, cutoff=0)


def list_requests(store: Store) -> list[str]:
    """Ids of the runs that have a stored request, sorted."""
    if not store.runs_dir.is_dir():
        return []
    return sorted(p.parent.name for p in store.runs_dir.glob("*/request.json"))
