"""The request key: what determines a run's id, computed without torch, timm or Prefect.

A run id hashes the run's request (``bfd.storage.RunRequest``), and part of that request
needs the model: the resolved layers, input size and preprocessing come from timm. Those are
functions of the request's own options and of the installed timm and torch, so the key hashes
the options as given (a file's path in its one absolute spelling, ``bfd.files.input_path``),
the installed versions of bfd, timm and torch, and the content of every
input file: the sha256 of a weights file's bytes and of the image listing (each image's id and
the sha256 of its bytes), as the run request holds them. The embedded ``samples`` are crops
(bfd's code) of images shipped inside scikit-image: their key is the installed bfd and
scikit-image versions and their number, not their pixels, which take a second to decode.
Equal keys therefore resolve to equal run ids. When the planner of a run resolves one
(``bfd.tasks.extract.prepare_run``), it records ``key -> run id`` in the store
(``bfd.storage.write_request_key``); an audit of an already computed run finds the run from
its key alone (``bfd.cli_reuse``).

``--weights pretrained`` has no key: which file timm loads depends on the timm and Hugging
Face caches, which only loading the model resolves.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import bfd
from bfd.files import input_path, sha256_file
from bfd.images import (
    SAMPLES,
    SAMPLES_DEFAULT_N,
    SAMPLES_MAX,
    ImageRecord,
    list_images,
    manifest_sha256,
)
from bfd.storage import Store, sha256_hex, write_request_key

# The fields of ExtractConfig that shape a run: its request, or the shard plan that a repeated
# request must match. batch_size, device and decode_workers change neither.
KEYED_FIELDS: tuple[str, ...] = (
    "model", "weights", "images", "n_images", "layers", "sites", "img_size", "dtype",
    "images_per_chunk", "images_per_shard", "seed", "autocast", "extra",
)
# What a key holds that does not change the run it resolves to: the weights file's path as
# spelled (its bytes are ``weights_sha256``) and the shard plan.
_NOT_IDENTITY: tuple[str, ...] = ("weights", "images_per_chunk", "images_per_shard")


def _installed(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def weights_sha256(weights: str, seed: int) -> str | None:
    """The run request's ``weights_sha256`` of ``--weights``: ``random-seed-<seed>``, the
    sha256 of a file's bytes, or None for ``pretrained`` (not known without timm).

    Raises:
        OSError: The weights file cannot be read.
    """
    if weights == "pretrained":
        return None
    if weights == "random":
        return f"random-seed-{seed}"
    return sha256_file(weights)


def _samples_fingerprint() -> str:
    return f"samples of bfd {bfd.__version__} from scikit-image {_installed('scikit-image')}"


def key_inputs(config: Mapping[str, Any], weights_sha256: str | None,
               images: Sequence[ImageRecord]) -> dict[str, Any] | None:
    """What the key hashes: the keyed options of ``config`` (fields of ``ExtractConfig``), the
    content of the weights and images, and the versions that resolve the rest; None when the
    weights have no key (``pretrained``).

    Args:
        config: Fields of ``ExtractConfig`` (``extra`` may be missing: empty).
        weights_sha256: As the run request holds it (``weights_sha256`` above).
        images: The image listing of ``config`` (``bfd.images.list_images``).
    """
    if weights_sha256 is None or config.get("weights") == "pretrained":
        return None
    options = {name: config.get(name) for name in KEYED_FIELDS}
    # the one spelling of a path, as the run request holds it (ExtractConfig spells it so)
    options["weights"] = input_path(options["weights"])
    options["images"] = input_path(options["images"])
    options["extra"] = dict(options["extra"] or {})
    if config.get("model_args"):  # only when given: the key of a request without them stays
        options["model_args"] = dict(sorted(config["model_args"].items()))
    sites = options["sites"]
    options["sites"] = list(sites) if not isinstance(sites, str) else sites
    samples = config.get("images") == SAMPLES
    return {
        **options,
        "weights_sha256": weights_sha256,
        "images_sha256": _samples_fingerprint() if samples else manifest_sha256(images),
        "n_listed": len(images),
        "bfd_version": bfd.__version__,
        "timm_version": _installed("timm"),
        "torch_version": _installed("torch"),
    }


def request_key(inputs: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``key_inputs``, 64 hex digits."""
    return sha256_hex(dict(inputs))


def request_identity(inputs: Mapping[str, Any]) -> str:
    """The key of ``key_inputs`` without the path the weights were given by and the shard
    plan: equal for two requests of the same model (and model arguments), weights bytes,
    images, N, layers, sites, img_size, dtype, seed and versions, that is, of the same run's
    computation. The images' path is taken in its one spelling: a key recorded before paths
    had one (``imgs``) names the same images as ``/work/imgs`` from the folder it was typed
    in."""
    kept = {k: v for k, v in inputs.items() if k not in _NOT_IDENTITY}
    if "images" in kept:
        kept["images"] = input_path(kept["images"])
    return request_key(kept)


def key_listing(config: Mapping[str, Any]) -> Sequence[ImageRecord] | None:
    """The image listing the key needs: ids and hashes of files; for ``samples`` their ids
    alone (the key does not hash their pixels); None when samples cannot be made."""
    n_images = config.get("n_images")
    if config.get("images") != SAMPLES:
        return list_images(config["images"], n_images)
    n = n_images or SAMPLES_DEFAULT_N
    if not 1 <= n <= SAMPLES_MAX:
        return None
    return [ImageRecord(k, f"{SAMPLES}/{k}", "", None) for k in range(n)]


def key_of_config(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The key of a request from its options alone (lists and hashes its images, hashes its
    weights file), or None when it has none.

    Raises:
        OSError, ValueError: The images or the weights file cannot be listed or read (what
            the full path then reports in its own words).
    """
    weights = weights_sha256(str(config["weights"]), int(config.get("seed") or 0))
    records = key_listing(config) if weights is not None else None
    inputs = key_inputs(config, weights, records) if records is not None else None
    return (request_key(inputs), inputs) if inputs is not None else None


def record_request_key(store: Store, config: Mapping[str, Any], weights_sha256: str,
                       images: Sequence[ImageRecord], run_id: str) -> None:
    """Record which run a planned request resolved to. Only a hint for later audits, which
    check the run it names: a store whose key folder cannot be written (read-only) keeps
    working without it."""
    inputs = key_inputs(config, weights_sha256, images)
    if inputs is None:
        return
    with contextlib.suppress(OSError):
        write_request_key(store, request_key(inputs), run_id, inputs)
