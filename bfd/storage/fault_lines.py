"""A run's faults in a few lines: one per damaged file while they are few, else the chunk
files' faults counted per activation array and kind (a deleted folder of activations is
thousands of chunk files missing: ``bfd verify`` and extraction printed a line for each)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, Protocol

# Beyond this many faults, those of chunk files are counted, not listed.
FAULT_LINES: Final[int] = 8


class _Fault(Protocol):  # bfd.storage.integrity.Fault
    path: str
    problem: str
    shard: int | None
    array: str | None
    layer: int | None
    kind: str | None


def spans(indices: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out: list[str] = []
    for i in sorted(set(indices)):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in out)


def _plural(word: str, items: set) -> str:
    return word if len(items) == 1 else f"{word}s"


def distinct(faults: Sequence[_Fault]) -> list[_Fault]:
    """The faults, each (file, problem) once: an activation array gone is a fault of every
    shard marked done, said once."""
    first: dict[tuple[str, str], _Fault] = {}
    for f in faults:
        first.setdefault((f.path, f.problem), f)
    return list(first.values())


def fault_lines(faults: Sequence[_Fault], limit: int = FAULT_LINES) -> list[str]:
    """One line per distinct fault (``distinct``) while there are at most ``limit``; else the
    faults of chunk files in one line per activation array and kind, e.g.
    ``.../bfd.zarr/RUN/attn_in: 60 chunk files missing (layers 0, 2, 5 of shards 0-19)``,
    the other faults one line each, in the order found."""
    faults = distinct(faults)
    if len(faults) <= limit:
        return [str(f) for f in faults]
    groups: dict[tuple, list[_Fault]] = {}
    for f in faults:
        key = (f.array, f.kind) if f.array and f.kind and f.layer is not None else (f,)
        groups.setdefault(key, []).append(f)
    lines = []
    for key, group in groups.items():
        if len(key) == 1:
            lines.append(str(group[0]))
            continue
        layers = {f.layer for f in group}
        shards = {f.shard for f in group if f.shard is not None}
        where = f"{_plural('layer', layers)} {spans(layers)}" + (
            f" of {_plural('shard', shards)} {spans(shards)}" if shards else "")
        lines.append(f"{key[0]}: {len(group)} {key[1]} ({where})")
    return lines
