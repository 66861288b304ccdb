"""The drift gate: whether an audit (or the audits of one command or flow run) fails under
``fail_on_drift`` (drift flagged) and ``fail_if_not_compared`` (an audit compared nothing
with any earlier audit of its series). One rule for ``bfd audit``'s exit status 3
(``bfd.cli_audits.drift_exit``) and for the flows' ``Failed`` end (``bfd.flows.audit``,
``bfd.flows.checkpoints``); each caller spells the options its own way (``--fail-on-drift``,
``fail_on_drift``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


def not_compared(audit: Mapping[str, Any]) -> str | None:
    """Why the audit compared nothing (no earlier audit of its series comparable: its
    ``drift_note``, said of the previous audit; or the first of its series), in one line;
    None when it compared with one."""
    if audit.get("drift_note"):
        return audit["drift_note"]
    if audit.get("prev_audit_id") is None:
        return (f"audit {audit['audit_id']} is the first of series {audit['series']}, with "
                "nothing to compare with (it is kept: the next audit compares with it)")
    return None


@dataclass(frozen=True)
class DriftVerdict:
    """``failures``: one line per reason the gate fails (empty: it passes); ``warnings``: one
    line per audit that passes ``fail_on_drift`` without a check (it compared nothing)."""

    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def message(self) -> str:
        """The failures in one line (a flow run's ``Failed`` message): the first of each
        kind, with how many more."""
        unchecked = [f for f in self.failures if f.startswith("drift not compared")]
        parts = [f for f in self.failures if f not in unchecked]  # the flagged line
        if unchecked:
            more = f" (and {len(unchecked) - 1} more)" if len(unchecked) > 1 else ""
            parts.append(unchecked[0] + more)
        return "; ".join(parts)


def drift_verdict(n_flagged: int, fail_on_drift: bool, audits: Sequence[Mapping] = (),
                  fail_if_not_compared: bool = False,
                  spell: Callable[[str], str] = str) -> DriftVerdict:
    """The gate of ``audits`` (``n_flagged`` drift values flagged among them): it fails when
    drift was flagged under ``fail_on_drift``, or an audit compared nothing under
    ``fail_if_not_compared``. Under ``fail_on_drift`` alone an audit that compared nothing
    passes, with a warning: nothing was checked. An audit compared with an earlier audit than
    the previous one (those between not comparable with it) is checked like any other.
    ``spell`` names an option as the caller's user wrote it (``fail_on_drift`` ->
    ``--fail-on-drift``)."""
    failures, warnings = [], []
    for audit in audits:
        why = not_compared(audit)
        if why is not None and fail_if_not_compared:
            failures.append(f"drift not compared ({spell('fail_if_not_compared')}): {why}")
        elif fail_on_drift and why is not None:  # the first of its series too
            warnings.append(f"drift not compared ({spell('fail_on_drift')} passes without a "
                            f"check): {why}")
    if n_flagged and fail_on_drift:
        failures.append(f"drift: {n_flagged} value(s) flagged ({spell('fail_on_drift')})")
    return DriftVerdict(failures, warnings)


class DriftGateFailed(ValueError):
    """Raised by a call of a flow whose drift gate failed (``fail_on_drift``,
    ``fail_if_not_compared``) after everything was recorded: its run ends ``Failed`` with the
    one-line message; ``out`` is what the flow returns otherwise."""

    def __init__(self, message: str, out: dict[str, Any]) -> None:
        super().__init__(message)
        self.out = out

    def __reduce__(self):  # pickled with its result, as Prefect may persist it
        return type(self), (str(self), self.out)
