"""Audits as events: which series an audit belongs to, where it sits in it (its step), whether
its run is already computed, and which checkpoint files of a folder are still to audit."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from bfd.core.method import RESULTS_METHOD
from bfd.faults import store_fault
from bfd.files import WEIGHT_SUFFIXES, check_checkpoint, input_path, sha256_file
from bfd.output import count, shown
from bfd.requests import model_args_text
from bfd.storage import (
    SEEN_FIGURES,
    Store,
    current_left_out,
    earlier_audits,
    new_audit_id,
    read_audits,
    read_request,
    recorded_inputs,
    series_lock,
    write_audit,
    write_drift,
)
from bfd.storage.audits import series_folder
from bfd.tasks.drift import decompose_options_of, drift_rows, latest_comparable
from bfd.tasks.request_key import key_inputs, key_listing, request_identity

# Decomposition options that do not change the results (where and in what pieces it ran).
_PLACEMENT_OPTIONS: Final[frozenset[str]] = frozenset({"device", "images_per_task"})
# A number in a checkpoint's name: an integer (0300), a decimal (2.0), scientific notation
# (1e4, 1.5e+3) or a k/M multiple (10k, 1.5M); not when a letter or digit follows the exponent
# or multiple (3e5f2a is a hash: 3, 5, 2).
_NUMBER_TEXT: Final[str] = (r"\d+(?:\.\d+)?(?:[eE]\+?\d+|[kKM])(?![A-Za-z0-9])"
                            r"|\d+(?:\.\d+)?")
_NUMBER: Final[re.Pattern[str]] = re.compile(_NUMBER_TEXT)
# The number after step/iter/it/epoch/ep, the word not the end of another (vit_1e4 is no it_1)
_STEP_WORD: Final[re.Pattern[str]] = re.compile(
    rf"(?<![A-Za-z])(?:step|iter|it|epoch|ep)[_\-=]?({_NUMBER_TEXT})", re.I)
_MULTIPLES: Final[dict[str, int]] = {"k": 10**3, "K": 10**3, "M": 10**6}
# A file's suffixes (.pth, .safetensors.index.json): the name's number is before them.
_SUFFIXES: Final[re.Pattern[str]] = re.compile(r"(?:\.[A-Za-z]+)+$")
# The longest file name most file systems allow, in bytes (a series is a folder's name).
_NAME_MAX: Final[int] = 255


def model_series_name(model: str, model_args: Mapping[str, Any] | None = None) -> str:
    """A model in a default series: its name, with its ``--model-arg`` options in brackets
    when it has any (``vit_t[class_token=False,global_pool='avg']``): the model built
    otherwise is another model, so another series."""
    if not model_args:
        return model
    return f"{model}[{','.join(f'{k}={v!r}' for k, v in sorted(model_args.items()))}]"


def default_series(model: str, weights: str, seed: int = 0,
                   model_args: Mapping[str, Any] | None = None) -> str:
    """The series of an audit that names none: the model with the source of its weights.

    ``test_vit@random-seed-0``, ``vit_small_patch16_224.augreg_in21k@pretrained``,
    ``vit_b@/ckpts/run7/last.pth``, ``vit_t[reg_tokens=4]@random-seed-0``: seeds,
    checkpoints and fine-tunes of one architecture, and its builds with other model
    arguments, are different series.
    """
    if weights == "random":
        source = f"random-seed-{seed}"
    elif weights == "pretrained":
        source = "pretrained"
    else:
        source = os.path.abspath(weights)
    return f"{model_series_name(model, model_args)}@{source}"


def skipped_said(skipped: Sequence[Mapping[str, Any]]) -> str:
    """The audits an audit's comparison skipped (``compared_audit``), in words: ``skipped 1
    audit not comparable (B at step 150: another decoded N (N 16 -> 8))``; each one's reason
    where it is known (``why``)."""
    each = [f"{s['audit_id']} at step {s['step']}" + (f": {s['why']}" if s.get("why") else "")
            for s in skipped]
    return (f"skipped {len(skipped)} audit{'s' if len(skipped) > 1 else ''} not comparable "
            f"({'; '.join(each)})")


def drift_said(audit: Mapping[str, Any]) -> str:
    """What an audit's drift check found, in the words of ``bfd audit``'s line ``drift: ...``:
    nothing to compare with (the first audit of its series), why nothing was compared (its
    ``drift_note``), or the number of values flagged against the audit it was compared with
    (``prev_audit_id``), with the later audits it skipped as not comparable (``skipped``,
    where the audit's dict holds them: ``compared_audit``, ``skipped_audits``)."""
    if audit.get("prev_audit_id") is None:
        return "first audit of this series, nothing to compare with"
    if audit.get("drift_note"):
        return str(audit["drift_note"])
    said = f"{audit['n_flagged']} value(s) flagged against audit {audit['prev_audit_id']}"
    skipped = audit.get("skipped")
    if skipped:
        step = audit.get("prev_step")
        said += (f"{f' (step {step})' if step is not None else ''}, the latest comparable; "
                 f"{skipped_said(skipped)}")
    return said


def skipped_audits(audits: Sequence[Mapping[str, Any]],
                   audit: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The audits that ``audit``'s comparison skipped as not comparable, from its series'
    stored audits (``read_audits``, series order): the complete ones after the audit it was
    compared with (``prev_audit_id``) and before it, that had finished when it did (one
    audited later at a step in between was not there to skip). No reasons (``why``): what
    each skipped audit saw is said when the audit runs (``compared_audit``). [] when it
    compared nothing (``drift_note``) or is the first of its series."""
    if audit.get("prev_audit_id") is None or audit.get("drift_note"):
        return []
    mine = [a for a in audits if a["series"] == audit["series"]]
    ids = [a["audit_id"] for a in mine]
    if audit["prev_audit_id"] not in ids or audit["audit_id"] not in ids:
        return []
    between = mine[ids.index(audit["prev_audit_id"]) + 1:ids.index(audit["audit_id"])]
    end = audit.get("finished_at")
    return [{"audit_id": a["audit_id"], "step": a["step"]} for a in between
            if a["status"] == "complete"
            and (end is None or a["finished_at"] is None or a["finished_at"] <= end)]


def other_method(store: Store, run_id: str) -> int | None:
    """The method version of ``run_id``'s published results (``bfd.core.method``; 1 for a
    run published before it was recorded) when it is not the installed bfd's
    (``RESULTS_METHOD``): an audit does not reuse them, it computes the run again. None when
    they are of this method or the run is not published."""
    from bfd.storage.methods import published_method

    method = published_method(store, run_id)
    return method if method is not None and method != RESULTS_METHOD else None


def published_by(method: int, brackets: bool = True) -> str:
    """Which bfd published results of ``method``, in words: ``an older bfd (method 1; now
    2)``, without brackets ``an older bfd, method 1; now 2``."""
    which, now = (("an older", "now") if method < RESULTS_METHOD
                  else ("a newer", "this bfd's is"))
    methods = f"method {method}; {now} {RESULTS_METHOD}"
    return f"{which} bfd ({methods})" if brackets else f"{which} bfd, {methods}"


def other_method_said(run_id: str, method: int, extracted: Sequence[int] = (),
                      stats_only: bool = False, planned: bool = False) -> str:
    """The line an audit says of a run whose published results are of another method
    (``other_method``): ``run R was published by an older bfd (method 1; now 2): decomposed
    again, activations reused``; for a stats-only run, computed again from two forward
    passes; ``extracted``: the shards of its activations extracted again (dropped or
    damaged); ``planned``: said before the audit (``bfd audit --dry-run``: "to decompose
    again")."""
    if stats_only:
        what = ("to compute again" if planned else "computed again") + (
            " from two forward passes over its images (no activations kept)")
    elif planned:
        what = "to decompose again" + (
            f", {count(len(extracted), 'shard')} of its activations to extract again"
            if extracted else ", activations reused")
    else:
        what = "decomposed again" + (
            f", {count(len(extracted), 'shard')} of its activations extracted again"
            if extracted else ", activations reused")
    return f"run {run_id} was published by {published_by(method)}: {what}"


def run_reuse(extracted: Sequence[int] = (), repaired: Sequence[int] = (),
              decomposed: bool = False, republished: bool = False,
              n_shards: int | None = None, older: bool = False,
              method: int | None = None) -> str:
    """How an audit got its run, in the words of its report and its command's line.

    Args:
        extracted: The shards of the run's activations this audit extracted.
        repaired: Those of them that had been marked done but were damaged.
        decomposed: The results were computed (else those published were kept).
        republished: They were computed because table files of the run, published with
            these options, were damaged (``table_faults``).
        n_shards: The run's shards of activations (None: not known, or none stored: a
            stats-only run), to say those kept from an earlier extraction (an interrupted
            audit's, resumed).
        older: Those table files were none damaged, all published by an older bfd (lacking
            columns added since: ``Fault.older``).
        method: They were computed because the run's published results were of this other
            method (``other_method``).
    """
    if not extracted and not decomposed:
        return "reused, nothing recomputed"
    damaged = [k for k in extracted if k in set(repaired)]
    what = "damaged shard" if len(damaged) == len(extracted) else "shard"
    shards = f"{what}{'s' if len(extracted) > 1 else ''} {', '.join(map(str, extracted))}"
    if not decomposed:
        return f"repaired: {shards} of its activations extracted again, results reused"
    if republished:
        why = ("table files of an older bfd, without the columns added since" if older
               else "damaged table files")
        return f"published again ({why}), " + (
            f"{shards} of its activations extracted again" if extracted
            else "activations reused")
    if method is not None:
        return (f"{'decomposed' if n_shards else 'computed'} again (published by "
                f"{published_by(method, brackets=False)}), " + (
                    f"{shards} of its activations extracted again" if extracted
                    else "activations reused" if n_shards else "no activations kept"))
    if repaired:
        return (f"computed (damaged shard{'s' if len(repaired) > 1 else ''} "
                f"{', '.join(map(str, repaired))} of its activations extracted again)")
    if n_shards and len(extracted) < n_shards:
        kept = n_shards - len(extracted)
        return ("computed (its activations stored already: none extracted)" if not extracted
                else f"computed ({kept} of its {n_shards} shards of activations kept from an "
                f"earlier extraction, {len(extracted)} extracted)")
    return "computed"


def checkpoints_series(model: str, pattern: str,
                       model_args: Mapping[str, Any] | None = None) -> str:
    """The default series of the checkpoints of a folder or glob: the model (with its model
    arguments: ``model_series_name``) and that folder."""
    return f"{model_series_name(model, model_args)}@{os.path.abspath(pattern)}"


def check_place(series: str, step: int | None = None) -> None:
    """Refuses, before any work, a series or step that the ``audits`` table cannot hold (it
    said so only when the audit's row was written, after the run was computed).

    Raises:
        ValueError: The series is empty, ``.`` or ``..``, holds a control character (a
            terminal would act on it wherever the series is printed), or its folder name
            (``series_folder``) is longer than a file name may be; the step does not fit the
            table's int64.
    """
    try:
        folder = series_folder(series)
    except ValueError:
        raise ValueError(f"--series must not be empty, '.' or '..'; got {series!r}") from None
    if shown(series) != series:
        raise ValueError(f"a series must not hold control characters (a newline, a tab, a "
                         f"terminal's escape); got '{shown(series)}': give --series another "
                         "name")
    if len(folder.encode()) > _NAME_MAX:
        raise ValueError(f"--series {series[:60]!r}... is too long: its folder name would be "
                         f"{len(folder.encode())} bytes, over the {_NAME_MAX} a file name may "
                         "have; give a shorter --series")
    if step is not None and not -(2**63) <= step < 2**63:
        raise ValueError(f"--step must fit a 64-bit integer; got {step}")


def check_series(store: Store, series: str) -> None:
    """Refuses, before an audit's row is opened, a series whose stored audits cannot all be
    read: its next audit would compare with the wrong previous one, and each try would
    record one more failed audit.

    Raises:
        DamagedStoreError: An audit file of the series is damaged; the line names it and
            what to do (``bfd.storage.audits.damaged_event_message``).
    """
    read_audits(store, series)


def _step_value(text: str) -> int | None:
    """A number of a checkpoint's name as the step it means: ``0300`` -> 300, ``1e4`` ->
    10000, ``1.5e3`` -> 1500, ``10k`` -> 10000, ``2M`` -> 2000000, ``2.0`` -> 2; None for one
    that is no whole step (``1.5``, ``1.25e1``) or does not fit a 64-bit integer."""
    multiple = _MULTIPLES.get(text[-1], 1)
    if multiple != 1:
        text = text[:-1]
    mantissa, _, exponent = text.lower().partition("e")
    whole, _, fraction = mantissa.partition(".")
    power = int(exponent or 0) + len(str(multiple)) - 1 - len(fraction)
    digits = int(whole + fraction)
    if power < 0:
        digits, rest = divmod(digits, 10 ** -power)
        if rest:
            return None
        value = digits
    elif power > 20:  # beyond int64 whatever the digits (no 10**huge computed)
        return None if digits else 0
    else:
        value = digits * 10**power
    return value if value < 2**63 else None


def step_from_name(path: str | os.PathLike[str]) -> int | None:
    """The training step in a checkpoint's file name (docs/layout.md, ``step``): the number
    after ``step``/``iter``/``it``/``epoch``/``ep`` (``epoch=3-step=1200.pt`` -> 1200), else
    the last number (``ckpt_0300.pth`` -> 300), read as a user means it: ``ckpt_1e4.pth`` ->
    10000, ``step_1.5e3.pt`` -> 1500, ``ckpt_10k.pth`` -> 10000 (k: 10^3, M: 10^6). None when
    the name holds no number, or that number is no whole step (``ckpt_1.5.pth``: fractional
    epochs? a version?): such a file is placed by its modification time, after the others."""
    stem = _SUFFIXES.sub("", Path(path).name)
    words = _STEP_WORD.findall(stem)
    numbers = words or _NUMBER.findall(stem)
    return _step_value(numbers[-1]) if numbers else None


def time_step(when: datetime) -> int:
    """The step of an audit that has none of its own: its time, in seconds since the epoch."""
    return int(when.timestamp())


def checkpoint_files(pattern: str) -> list[Path]:
    """The checkpoint files of a folder (its direct children) or a glob, by step then name.

    Raises:
        FileNotFoundError: Nothing matches.
    """
    path = Path(pattern)
    found = ([p for p in path.iterdir() if p.is_file()] if path.is_dir()
             else [Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)])
    files = [p for p in found if p.suffix.lower() in WEIGHT_SUFFIXES and
             not p.name.startswith(".")]
    if not files and not (path.is_dir() or glob.has_magic(pattern)):
        raise FileNotFoundError(f"checkpoints {pattern!r}: no such folder or file; expected a "
                                "folder of checkpoints or a glob like 'ckpts/*.safetensors'")
    return sorted(files, key=lambda p: (step_from_name(p) is None, step_from_name(p) or 0,
                                        p.name))


def audited_requests(store: Store, series: str,
                     decompose_options: Mapping[str, Any] | None = None,
                     other: dict[str, int] | None = None) -> dict[str, str]:
    """The request identities (``bfd.tasks.request_key.request_identity``), each with the
    weights file its run's request names, of every complete
    audit of a series decomposed with results options as ``decompose_options``'s (the
    decompose options that change results, ``RESULT_FLAGS``; None: any audit): the recorded
    request keys that name its runs, each checked against the run's stored request (model and
    weights). An audit whose run has no recorded key (a store written before request keys, or
    a read-only key folder) counts as not audited; so does one whose run's published results
    are of another method than this bfd's (``other_method``: an older bfd's), whose identity
    goes to ``other``, when given, with that method."""
    from bfd.tasks.options import changed_from_defaults

    wanted = changed_from_defaults(decompose_options)
    runs = {row["run_id"] for row in read_audits(store, series)
            if row["status"] == "complete" and row["run_id"]
            and (decompose_options is None
                 or changed_from_defaults(_seen_options(row)) == wanted)}
    out: dict[str, str] = {}
    for run_id, inputs in recorded_inputs(store, runs):
        try:
            request = read_request(store, run_id)
        except (OSError, ValueError):
            continue
        if (request.model, request.weights_sha256) == (inputs.get("model"),
                                                        inputs.get("weights_sha256")):
            method = other_method(store, run_id)
            if method is None:
                out[request_identity(inputs)] = request.weights
            elif other is not None:
                other[request_identity(inputs)] = method
    if other is not None:
        for identity in out.keys() & set(other):
            del other[identity]
    return out


def describe_request(config: Mapping[str, Any],
                     decompose_options: Mapping[str, Any] | None = None) -> str:
    """What ``audited_requests`` compares, in words, for a line saying a request was seen;
    with the decompose options of ``decompose_options`` that change results, where they are
    not the defaults."""
    from bfd.tasks.options import flags_of

    def given(name: str, default: str) -> str:
        value = config.get(name)
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        return default if value is None or value == "" else str(value)

    args = config.get("model_args") or {}
    built = f" ({model_args_text(args)})" if args else ""
    flags = flags_of(decompose_options)
    return (f"model {config['model']}{built}, images {config['images']} (N "
            f"{given('n_images', 'all')}), layers {given('layers', 'all')}, sites "
            f"{given('sites', 'default')}, img_size {given('img_size', 'default')}, dtype "
            f"{config['dtype']}"
            + (f", {flags}" if flags else "") + " and each file's sha256")


def _result_options(options: Mapping[str, Any], prefix_tokens: int | None = None
                    ) -> dict[str, Any]:
    """The options that shape a decomposition's results (placement aside); for a run with no
    prefix token (``prefix_tokens`` 0: SigLIP, ``class_token=False``), ``--prefix`` aside too:
    include and exclude are then the same positions and the same figures."""
    return {k: v for k, v in options.items()
            if k not in _PLACEMENT_OPTIONS and not (k == "prefix" and prefix_tokens == 0)}


def computed_run(store: Store, run_id: str, decompose_options: Mapping[str, Any],
                 faults: Sequence[Any] | None = None) -> dict | None:
    """The ``runs`` row of ``run_id`` when it is complete, was decomposed with these options
    (placement aside) by this bfd's method (``other_method`` None) and every table file of it
    reads (``table_faults``, or ``faults`` when the caller has just read them: each file is
    read whole), else None: an audit of it need not compute anything. A damaged table file of
    the run makes it not computed: the audit publishes it again (another run's damaged file is
    no concern of this one); so do results of another method (an older bfd's): the audit
    computes them again, its activations reused."""
    # here, not above: the rest of this module (audit-checkpoints with nothing to do,
    # bfd.cli_reuse) needs neither xarray nor Zarr, which these import (2 s)
    from bfd.storage import read_run_table, table_faults

    if other_method(store, run_id) is not None:
        return None
    if table_faults(store, run_id) if faults is None else faults:
        return None
    runs = read_run_table(store, "runs", run_id)
    rows = [r for r in runs.to_pylist() if r["run_id"] == run_id and r["status"] == "complete"]
    for row in rows:
        stored = decompose_options_of(row.get("config_json"))
        tokens = row.get("prefix_tokens")
        if stored and _result_options(stored, tokens) == _result_options(decompose_options,
                                                                          tokens):
            return row
    return None


def options_replaced(store: Store, run_id: str,
                     decompose_options: Mapping[str, Any]) -> str | None:
    """One line when ``run_id`` is published complete decomposed with other options than
    ``decompose_options`` (placement aside; e.g. ``bfd decompose RUN --prefix include`` since
    its audit): the audit's decomposition replaces those results. None when the run is not
    published, its ``runs`` file does not read (it is then published again) or its options
    are these. Call it before the run is decomposed again (its command restores them)."""
    from bfd.storage import decompose_command, read_run_table
    from bfd.storage.republish import RESULT_FLAGS

    try:
        runs = read_run_table(store, run_id=run_id, table="runs")
    except (OSError, ValueError):
        return None
    rows = [r for r in runs.to_pylist() if r["run_id"] == run_id and r["status"] == "complete"]
    stored = decompose_options_of(rows[-1].get("config_json")) if rows else {}
    if not stored:
        return None
    wanted = _result_options(decompose_options, rows[-1].get("prefix_tokens"))
    changed = [k for k in RESULT_FLAGS if k in wanted and stored.get(k, wanted[k]) != wanted[k]]
    if not changed:
        return None

    def flags(options: Mapping[str, Any]) -> str:
        return " ".join(f"{RESULT_FLAGS[k]} {options[k]}" for k in changed)

    return (f"run {run_id} is published decomposed with {flags(stored)}; this audit decomposes "
            f"it again with {flags(wanted)}, replacing those results "
            f"({decompose_command(store, run_id)} publishes them again)")


def say_waiting(line: str) -> None:
    """Says on stderr that a command waits for another process (``waiting`` of ``audit_row``
    and ``series_lock``, outside a flow run)."""
    print(f"bfd: {line}", file=sys.stderr, flush=True)


class RunChanged(Exception):
    """The run an audit was to record as already computed is no longer so once the audit holds
    its lock (another process decomposed it again, with other options, while the audit
    waited): nothing is recorded, and the audit computes it (``audit_row`` writes no row)."""


@contextlib.contextmanager
def audit_row(store: Store, series: str, step: int, trigger: str,
              flow_run_id: str | None, started: datetime | None = None,
              writing: Callable[[dict], contextlib.AbstractContextManager] | None = None,
              waiting: Callable[[str], None] = say_waiting) -> Iterator[dict]:
    """The ``audits`` row of one audit, written when the block ends however it ends (but by
    ``RunChanged``: no audit took place): as ``failed`` unless ``drift_since_previous``
    completed it. Every audit writes its row
    through here (the flow ``audit``, and ``bfd audit`` of an already computed run).

    The block holds the series' lock (``series_lock``, waiting for another process's audit
    of the series, ``audit-checkpoints`` included, to be recorded): the audits of one series
    take turns, so that the audit this one compares with (``compared_audit``) was recorded
    before it, and none is recorded between its choice and its own row.

    Args:
        writing: Called with the row, the context the write is done in: the command's
            Ctrl-C waits for it, then names the audit (``bfd.cli_interrupt.recording``).
        waiting: Called with one line when another process holds the series' lock, before
            waiting for it.
    """
    started = started or datetime.now(UTC)
    waited: list[str] = []

    def wait(line: str) -> None:
        waited.append(line)
        waiting(line)

    with series_lock(store, series, wait):
        # An audit that waited for another's starts when it takes the lock: series order
        # (step, start) then lists it after the audit it waited for, which it may compare
        # with (stamped before the wait, it came first in the order and compared with neither:
        # trial 19).
        if waited:
            started = datetime.now(UTC)
        row: dict[str, Any] = {
            "audit_id": new_audit_id(started), "series": series, "run_id": None, "step": step,
            "started_at": started, "trigger": trigger, "flow_run_id": flow_run_id,
            "status": "failed", "prev_audit_id": None, "n_flagged": None, "drift_note": None,
            "prev_step": None, "skipped": [],  # said, not stored (drift_since_previous)
        }
        try:
            yield row
        except RunChanged:
            raise  # no audit took place: the caller audits the run another way
        except BaseException as err:
            row["error"] = failure_said(err, str(store.root))
            _write_row(store, row, writing)
            raise
        _write_row(store, row, writing)


# How much of a failed audit's error its row keeps
_ERROR_CHARS: Final[int] = 500


def failure_said(err: BaseException, root: str) -> str:
    """A failed audit's reason as its row keeps it: its error's first line (``interrupted``
    for Ctrl-C or a stop; a full or read-only disk as the flow's line says it, naming the
    store at ``root`` and what to do: ``bfd.faults.store_fault``), at most ``_ERROR_CHARS``
    characters."""
    if isinstance(err, KeyboardInterrupt | SystemExit):
        return "interrupted"
    fault = store_fault(err, root)
    if fault is not None:
        err = fault
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return line[:_ERROR_CHARS]


def _write_row(store: Store, row: dict[str, Any],
               writing: Callable[[dict], contextlib.AbstractContextManager] | None) -> None:
    row["finished_at"] = datetime.now(UTC)
    with writing(row) if writing is not None else contextlib.nullcontext():
        write_audit(store, row)


def _seen_options(audit: Mapping[str, Any]) -> dict[str, Any] | None:
    """The decomposition options an audit saw (None: one that did not keep them)."""
    return json.loads(audit["decompose_json"]) if audit.get("decompose_json") else None


def compared_audit(store: Store, series: str, step: int, run_id: str,
                   before: Mapping[str, Any] | None = None,
                   after: Mapping[str, Any] | None = None,
                   ) -> tuple[dict[str, Any] | None, str | None, list[dict[str, Any]]]:
    """The audit that an audit of ``run_id`` at ``step`` of ``series`` compares with: the
    latest complete audit of the series at or before ``step`` (series order; before the
    audit ``before``, its row, when given: ``earlier_audits``) whose run is
    comparable with ``run_id`` (``bfd.tasks.drift.not_comparable`` None, with that audit's
    own decomposition options), so that an audit of another N, other images or another
    model in between (an ad-hoc audit) does not leave the next one uncompared. ``after``:
    the ``runs`` row of ``run_id`` when it is not computed yet (``latest_comparable``).

    Returns:
        That audit, None (comparable) and the audits after it that were skipped, in series
        order (``audit_id``, ``step`` and ``why``, in short); when no earlier audit is
        comparable, the latest, why it is not (``drift_note``: nothing is compared) and [];
        (None, None, []) for the first audit of a series.
    """
    done = earlier_audits(store, series, step, before)
    if not done:
        return None, None, []
    at, why = latest_comparable(store, run_id, [(r["run_id"], _seen_options(r)) for r in done],
                                after)
    if at is None:
        return done[-1], why[0][1], []
    later = done[at + 1:]
    skipped = [{"audit_id": r["audit_id"], "step": r["step"], "why": short}
               for r, (short, _) in zip(later, reversed(why), strict=True)]
    return done[at], None, skipped


# how often an audit reads the previous audit's run again when it was decomposed again while
# read (drift_since_previous), before it says so and compares nothing
_COMPARE_TRIES = 3


def drift_since_previous(store: Store, row: dict[str, Any], run_id: str,
                         thresholds: Mapping[str, Any],
                         seen: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Completes an audit's ``row`` (``audit_row``) with its run: what the audit saw of it
    (``seen``: ``bfd.queries.seen.run_seen`` of the run, kept as its results version,
    decomposition options and ``SEEN_FIGURES``), the drift rows against the latest earlier
    complete audit of its series whose run is comparable (``compared_audit``; written as
    this audit's ``drift`` file; none for a series' first audit), its flag count and status
    ``complete``. ``prev_audit_id`` names the audit compared with; ``row["skipped"]`` (the
    later audits passed over, each with why) and ``row["prev_step"]`` are said, not stored
    (``drift_said``; the skipped ones are the audits between the two in series order).

    When no earlier audit is comparable (``not_comparable``: another model, other images,
    decoded N or img_size, another prefix option, or the previous audit's run decomposed
    again with another since), nothing is compared: no drift rows, 0 flagged,
    ``prev_audit_id`` the previous audit and ``row["drift_note"]`` why it is not comparable,
    in one line.

    Returns:
        The drift rows written.
    """
    options = _result_options(decompose_options_of(seen["config_json"]))
    row.update(run_id=run_id, results_version=seen["results_version"],
               decompose_json=json.dumps(options, sort_keys=True),
               **{name: seen[name] for name, _ in SEEN_FIGURES})
    prev, note, skipped = compared_audit(store, row["series"], row["step"], run_id, row)
    found: list[dict[str, Any]] = []
    for _ in range(_COMPARE_TRIES):
        if prev is None or note is not None:
            break
        # The previous audit's run is not locked here (its lock, taken inside this run's,
        # could deadlock with an audit of it): another process may decompose it again at any
        # time (trial 19). So its version is read before the check that it is comparable, the
        # check made again, its figures read from that version, and all of it kept only if it
        # was still the published one after the read: the check and the figures are of one
        # version, the one the previous audit saw.
        from bfd.storage import results_group_of

        group = results_group_of(store, prev["run_id"])
        prev, note, skipped = compared_audit(store, row["series"], row["step"], run_id, row)
        if prev is None or note is not None:
            break
        try:
            found = drift_rows(store, prev["run_id"], run_id, thresholds, before_group=group)
        except FileNotFoundError:  # the version, removed once another was published
            if results_group_of(store, prev["run_id"]) == group:
                raise
        if results_group_of(store, prev["run_id"]) == group:
            break
        found = []  # decomposed again meanwhile: checked again
    else:
        note = (f"previous audit's run {prev['run_id']} was decomposed again "
                f"{_COMPARE_TRIES} times while this audit read it; not compared")
    row.update(prev_audit_id=None if prev is None else prev["audit_id"],
               prev_step=None if prev is None else prev["step"], drift_note=note,
               skipped=skipped)
    rows: list[dict[str, Any]] = []
    if prev is not None and note is None:
        # comparable: compared only so (``compared_audit``); drift of an earlier bfd lacks it
        rows = [{"audit_id": row["audit_id"], "prev_audit_id": prev["audit_id"], **r,
                 "comparable": True} for r in found]
        write_drift(store, row["series"], row["audit_id"], rows)
    row.update(status="complete", n_flagged=sum(r["flagged"] for r in rows))
    return rows


def pending_checkpoints(store: Store, pattern: str, series: str, config: Mapping[str, Any],
                        decompose_options: Mapping[str, Any] | None = None,
                        left: list[str] | None = None,
                        copies: list[str] | None = None,
                        ) -> tuple[list[dict], int, list[str]]:
    """The checkpoints still to audit with the request ``config`` (fields of
    ``ExtractConfig``; its weights are each file) decomposed with ``decompose_options``, in
    step order, the number of checkpoint files found, and one line per file that is no
    readable checkpoint (``check_checkpoint``), left out.

    A file is audited already when a complete audit of the series had the same request
    (``audited_requests``: model, weights bytes, images, N, layers, sites, img_size, dtype,
    ...) and the same decompose options that change results (``--prefix``, ...; None: the
    defaults), and its run's results are of this bfd's method; each request is audited once,
    so a copy of a checkpoint is not audited twice. One audited before whose run's results
    are of another method (an older bfd's: ``other_method``) is to audit again, its entry's
    ``method`` naming that method: its audit computes the run again, activations reused.
    ``left``, when given, gets the path of each file left out (as listed), in the order of
    the lines; ``copies`` one line per file not to audit because it holds the weights of
    another file (audited, or to audit: ``step_4000.pth (the weights of step_3000.pth)``),
    whose step then gets no audit and no point.
    """
    files = checkpoint_files(pattern)
    other: dict[str, int] = {}
    seen = audited_requests(store, series, decompose_options or {}, other)
    records = key_listing(config)
    todo, bad = [], []
    for path in files:
        try:
            check_checkpoint(path)
        except (OSError, ValueError) as err:
            bad.append(" ".join(str(err).split()))
            if left is not None:
                left.append(str(path))
            continue
        sha = sha256_file(path)  # the checkpoint's audit reuses this digest
        inputs = (key_inputs({**config, "weights": str(path)}, sha, records)
                  if records is not None else None)
        identity = request_identity(inputs) if inputs else None
        spelled = input_path(str(path))  # as a run's request names its weights
        if identity is not None and identity in seen:
            same = seen[identity]
            if copies is not None and same and Path(same) != Path(spelled):
                copies.append(f"{Path(path).name} (the weights of {Path(same).name})")
            continue
        if identity is not None:
            seen[identity] = spelled
        step = step_from_name(path)
        todo.append({"path": str(path), "sha256": sha,
                     "step": step if step is not None else int(os.stat(path).st_mtime),
                     **({"method": other[identity]} if identity in other else {})})
    return sorted(todo, key=lambda c: c["step"]), len(files), bad


def checkpoint_misfit(request: Mapping[str, Any], path: str) -> str | None:
    """Why the checkpoint ``path`` (listed so, from the folder or glob given), which passed
    its first-bytes check (``check_checkpoint``), cannot be audited with ``request`` (fields
    of ``ExtractConfig``): it does not load or does not fit the model (``load_weights``), in
    one line naming the file as listed; None when it loads and fits. Loads it with torch."""
    from bfd.tasks.extract import ExtractConfig, load_weights

    try:
        load_weights(ExtractConfig(**{**request, "weights": path}))
    except (OSError, ValueError) as err:
        message, spelled = str(err), input_path(path)
        # the load's errors name the file by its one spelling (absolute): named as listed
        if spelled != path:
            message = message.replace(repr(spelled), repr(path))
        return " ".join(message.split())
    return None


def fitting_checkpoints(request: Mapping[str, Any], todo: Sequence[dict], bad: list[str],
                        left: list[str] | None = None,
                        told: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """The checkpoints of ``todo`` (``pending_checkpoints``' list) that load and fit the
    model of ``request``, each loaded as its audit loads it (``checkpoint_misfit``), in the
    same order: what ``bfd audit-checkpoints`` audits, and what its ``--dry-run`` and its run
    count as to audit, so that both give the same numbers. Each other file's line is appended
    to ``bad`` (its path to ``left``, when given) and, as found, passed to ``told`` with its
    position in ``todo`` (from 1) and their number."""
    fits = []
    for k, one in enumerate(todo, 1):
        misfit = checkpoint_misfit(request, one["path"])
        if misfit is None:
            fits.append(one)
            continue
        bad.append(misfit)
        if left is not None:
            left.append(one["path"])
        if told is not None:
            told(k, len(todo), misfit)
    return fits


def left_out_changes(store: Store, series: str, checkpoints: str, bad: Sequence[str],
                     left: Sequence[str], audited: Sequence[str] = (),
                     pending: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The ``left_out`` rows (``bfd.storage.left_out``; but ``checkpoints`` and
    ``flow_run_id``) that an ``audit-checkpoints`` of ``checkpoints`` records: each file left
    out now (its line in ``bad``, its path as listed in ``left``) that the series does not
    hold left out for that reason already, and each file the series holds left out that was
    audited now (``audited``: their paths), is listed now and was neither left out nor to
    audit (``pending``: the checkpoints to audit; one of them neither audited nor left out
    was not tried, an audit before it failed) (readable, audited already with the same
    request), or is gone: cleared. [] when nothing changed."""
    before = current_left_out(store, series)
    now = {input_path(path): (path, line) for path, line in zip(left, bad, strict=True)}
    rows: list[dict[str, Any]] = []
    for weights, (path, line) in now.items():
        if before.get(weights, {}).get("reason") != line:
            rows.append({"checkpoint": path, "weights": weights,
                         "file": os.path.basename(path), "step": step_from_name(path),
                         "status": "left out", "reason": line})
    if not before:
        return rows
    done = {input_path(path) for path in audited}
    untried = {input_path(path) for path in pending} - done
    try:
        listed = {input_path(str(p)) for p in checkpoint_files(checkpoints)}
    except (OSError, ValueError):
        listed = set()
    for weights, row in before.items():
        why = ("audited" if weights in done
               else "readable now, audited already with the same request"
               if weights in listed and weights not in now and weights not in untried
               else "the file is gone" if not os.path.exists(weights) else None)
        if why is not None:
            rows.append({**{k: row[k] for k in ("checkpoint", "weights", "file", "step")},
                         "status": "cleared", "reason": why})
    return rows

