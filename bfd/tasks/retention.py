"""Retention of a series' activations: after each scheduled audit, only the runs of its latest
audits keep their activations (``bfd audit --keep-activations K``, ``bfd drop-activations
--series S --keep K``); older runs keep their results, tables and audits
(``bfd.storage.drop``), and their activations can be extracted again, bit for bit, from
their weights and images."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bfd.output import count, size_text
from bfd.storage import (
    DamagedStoreError,
    RunBusyError,
    Store,
    drop_activations,
    runs_past_keep,
)


@dataclass(frozen=True)
class Dropped:
    """One run past the retention: ``freed`` bytes, or ``kept`` saying why it was not
    dropped (another process computes it, its tables are damaged, ...)."""

    run_id: str
    freed: int = 0
    kept: str | None = None

    def line(self) -> str:
        if self.kept is not None:
            return f"run {self.run_id}: activations kept: {self.kept}"
        return f"run {self.run_id}: activations dropped, {size_text(self.freed)} freed"


def drop_past_keep(store: Store, series: str, keep: int, dry_run: bool = False,
                   also_keep: str | None = None,
                   audits: Sequence[Mapping[str, Any]] | None = None) -> list[Dropped]:
    """Drops the activations of the runs of ``series`` past its ``keep`` latest and other
    than ``also_keep`` (``runs_past_keep``, with its ``audits``), oldest first; a run that
    cannot be dropped now is said and left. ``dry_run``: drops nothing; each run's ``freed``
    is 0."""
    out = []
    for run_id in runs_past_keep(store, series, keep, also_keep, audits):
        if dry_run:
            out.append(Dropped(run_id))
            continue
        try:
            freed, _ = drop_activations(store, run_id)
        except (ValueError, RunBusyError, OSError) as err:  # said; the audit stays recorded
            out.append(Dropped(run_id, kept=str(err)))
        else:
            out.append(Dropped(run_id, freed))
    return out


def retention_said(series: str, keep: int, dropped: list[Dropped],
                   dry_run: bool = False) -> str:
    """The last line of a retention: ``series S keeps the activations of its 2 latest runs;
    3 runs dropped, 1.2 GB freed``."""
    head = f"series {series} keeps the activations of its {count(keep, 'latest run')}"
    if dry_run:
        return f"{head}; would drop those of {count(len(dropped), 'run')}"
    done = [d for d in dropped if d.kept is None]
    freed = size_text(sum(d.freed for d in done))
    said = f"{head}; {count(len(done), 'run')} dropped, {freed} freed"
    left = len(dropped) - len(done)
    return said + (f"; {count(left, 'run')} kept (said above)" if left else "")


def keep_latest(store: Store, series: str, keep: int | None, run_id: str,
                say: Callable[[str], None]) -> list[str] | None:
    """After an audit of ``run_id`` in ``series``: with ``keep``, the series' runs past the
    ``keep`` latest, other than ``run_id``, dropped (``drop_past_keep``), each line and the
    last said; None without ``keep``."""
    if keep is None:
        return None
    try:
        dropped = drop_past_keep(store, series, keep, also_keep=run_id)
    except DamagedStoreError as err:  # an audit file of the store does not read: said, the
        # audit before it stays recorded and no activations are dropped
        lines = [f"no activations dropped: {err}"]
    else:
        lines = [d.line() for d in dropped] + [retention_said(series, keep, dropped)]
    for line in lines:
        say(line)
    return lines
