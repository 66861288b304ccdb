"""Request keys: which run a request of the command line resolved to, found again without
loading the model (``bfd.tasks.request_key`` computes the keys).

``request_keys/<key>.json`` holds ``{"key", "run_id", "inputs"}``; several keys may name one
run (``--layers 0,1`` and ``--layers 0, 1`` resolve alike). A key file is only a hint: a
reader checks the run it names before trusting it, and an unreadable one counts as absent.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Set
from pathlib import Path
from typing import Any, Final

from .paths import DamagedStoreError, Store, read_json, validate_run_id, write_json_atomic

KEYS_DIR: Final[str] = "request_keys"
_KEY_RE: Final = re.compile(r"^[0-9a-f]{64}$")


def _key_path(store: Store, key: str) -> Path:
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid request key {key!r}: expected 64 hex digits")
    return store.root / KEYS_DIR / f"{key}.json"


def write_request_key(store: Store, key: str, run_id: str, inputs: Mapping[str, Any]) -> None:
    """Record that the request keyed ``key`` (made of ``inputs``) resolved to ``run_id``
    (atomic; a key that resolved elsewhere before is overwritten by this newer resolution)."""
    path = _key_path(store, key)
    payload = {"key": key, "run_id": validate_run_id(run_id), "inputs": dict(inputs)}
    try:
        if path.exists() and read_json(path) == payload:
            return  # nothing to write: a repeated request works on a read-only key folder
    except DamagedStoreError:
        pass
    write_json_atomic(path, payload)


def has_request_keys(store: Store) -> bool:
    """Whether any request key was ever recorded in the store (before a key is computed)."""
    return (store.root / KEYS_DIR).is_dir()


def read_request_key(store: Store, key: str) -> str | None:
    """The run id recorded for ``key``, or None when none is (or its file is unreadable)."""
    path = _key_path(store, key)
    try:
        payload = read_json(path)
        run_id = validate_run_id(payload["run_id"]) if payload.get("key") == key else None
    except (FileNotFoundError, DamagedStoreError, KeyError, TypeError, AttributeError,
            ValueError):
        return None
    return run_id


def recorded_inputs(store: Store, run_ids: Set[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(run id, inputs)`` of every recorded key that names one of ``run_ids`` (the requests
    known to have resolved to those runs); unreadable key files are skipped."""
    folder = store.root / KEYS_DIR
    if not run_ids or not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        try:
            payload = read_json(path)
            run_id, inputs = payload["run_id"], payload["inputs"]
        except (OSError, DamagedStoreError, KeyError, TypeError):
            continue
        if run_id in run_ids and isinstance(inputs, dict):
            yield run_id, inputs
