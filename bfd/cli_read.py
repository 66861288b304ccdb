"""The ``bfd`` commands that only read a store: ``verify``, ``sql``, ``catalog``, ``query``,
``runs``, ``dashboard`` and ``plot``. None imports torch, timm or Prefect
(tests/test_cli.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bfd import cli

FORMATS = ("table", "csv", "json", "jsonl", "parquet")


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, default="table",
                   help="output format (json: one array, jsonl: one object a line; NaN and "
                   "infinities as null; timestamps ISO 8601; lists and structs JSON, in csv and "
                   "table as JSON text)")
    p.add_argument("--output", metavar="FILE",
                   help="write to FILE instead of stdout (needed by parquet); FILE appears only "
                   "once the result is complete")


def _add_store(p: argparse.ArgumentParser) -> None:
    from bfd.storage.paths import STORE_ENTRIES_TEXT  # the store check's list (stdlib only)

    p.add_argument("--store", help=f"store directory: a folder holding {STORE_ENTRIES_TEXT}, "
                   "or an empty one (default: $BFD_STORE or ./bfd-store)")


def _add_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the query after this many seconds (exit 2)")


def _check_timeout(args: argparse.Namespace) -> float | None:
    if args.timeout is not None and not args.timeout > 0:
        raise ValueError(f"--timeout must be a positive number of seconds; got {args.timeout:g}")
    return args.timeout


def _store(args: argparse.Namespace) -> str:
    """The store to read. A folder of other files (a typo, a home folder) is refused in one
    line here (``cli._store``), as by every command; the library's readers refuse it too: the
    catalog (``bfd.queries.connect``), before it writes anything into it, and ``verify_run``
    when it finds no such run (``check_store``). A store that does not exist (a first try in
    a fresh folder, a typo) is refused in one line that says how to make a first run."""
    root = cli._store(args)
    if not os.path.exists(root):
        raise FileNotFoundError(f"no store at {root} ({_named_by(args)}); check it, or make a "
                                f"first run there: {_first_run(args)}")
    return root


def _named_by(args: argparse.Namespace) -> str:
    """What named the store: --store, $BFD_STORE or the default."""
    from bfd.storage.paths import DEFAULT_ROOT, STORE_ENV

    if args.store:
        return "--store"
    if os.environ.get(STORE_ENV):
        return f"${STORE_ENV}"
    return f"the default {DEFAULT_ROOT}; --store or ${STORE_ENV} name another"


def _first_run(args: argparse.Namespace) -> str:
    """The command of a first run into the store of ``args`` (the offline demo)."""
    import shlex

    return "bfd audit --demo" + (f" --store {shlex.quote(args.store)}" if args.store else "")


def _attached(args: argparse.Namespace) -> dict[str, str]:
    """``--attach NAME=STORE`` options as {name: store}."""
    out = {}
    for item in args.attach:
        name, sep, store = item.partition("=")
        if not sep or not name or not store:
            raise ValueError(f"--attach must be NAME=STORE; got {item!r}")
        if name in out:
            raise ValueError(f"--attach name {name!r} is given twice")
        out[name] = store
    return out


class _Damage:
    """What ``_told_damage`` found: the catalogs' notes so far (``bfd.queries.listing.Note``)
    and, once its block is done, the exit code of a reading command."""

    def __init__(self, notes: list) -> None:
        self.notes, self.code = notes, 0

    @property
    def runs(self) -> list[str]:
        """The runs left out so far, each once, in the order they were told."""
        return list(dict.fromkeys(n.run_id for n in self.notes if n.run_id is not None))


@contextlib.contextmanager
def _told_damage(args: argparse.Namespace, built: str | None = None) -> Iterator[_Damage]:
    """A reading command's block: when a catalog it opened left out a damaged or missing store
    file (each named on stderr as it was found, ``bfd.queries.snapshot``), its output is still
    written, and one more line says so and how to repair it; the command exits 1 (a damaged
    store file, README "Errors and exit codes"): its answers lack what those files held.
    ``built``: what a command that built something whole from what reads calls it (``the
    dashboard``): its line is a warning (``bfd: warning: the dashboard leaves out ...``), not
    an error, since what it made is there and usable (``bfd dashboard --serve`` serves it),
    with the same exit 1."""
    from bfd.queries.snapshot import left_out

    with left_out() as notes:
        found = _Damage(notes)
        yield found
    if not notes:
        return
    runs = found.runs
    # another user's files this user may not read (their umask): no damage, nothing to repair
    refused = [n for n in notes if "Permission denied" in n.text]
    denied = {n.run_id for n in refused}
    events = len([n for n in notes if n.run_id is None and n not in refused])
    todo = [f"run {r} cannot be read by this user: its owner can make it readable (chmod -R "
            "g+rX)" if r in denied else
            f"bfd verify {r} --store {cli._store(args)} says how to repair run {r}"
            for r in runs[:3]]
    if len(runs) > 3:
        todo.append(f"likewise runs {', '.join(runs[3:])}")
    if events:
        todo.append("move the damaged audit files out of the store")
    if None in denied:
        todo.append("the owner of the unreadable folders can make them readable (chmod -R g+rX)")
    level, what = ("error", "the output") if built is None else ("warning", built)
    kinds = "damaged, missing or unreadable" if denied else "damaged or missing"
    print(f"bfd: {level}: {what} leaves out what {len(notes)} {kinds} store "
          f"file(s) held (named above): {'; '.join(todo)}", file=sys.stderr)
    found.code = 1


def cmd_sql(args: argparse.Namespace) -> int:
    from bfd.queries import connect
    from bfd.queries.stream import stream_sql

    attach = _attached(args)
    with _told_damage(args) as damage:
        store = connect(_store(args), attach) if attach else _store(args)
        with stream_sql(store, args.sql, timeout=_check_timeout(args)) as reader:
            cli._print_table(reader, args.format, args.output)
    return damage.code


def cmd_catalog(args: argparse.Namespace) -> int:
    from bfd.queries import current_catalog

    path = current_catalog(_store(args))
    print(path if args.path else f"catalog: {path} (open it read-only; replaced atomically "
          "when the tables change)")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    if args.list or not args.name:
        # the headers alone: neither DuckDB nor pyarrow is imported
        from bfd.queries.specs import list_queries, read_spec

        names = list_queries()
        width = max(map(len, names)) + 2
        for name in names:
            spec = read_spec(name)
            params = (", ".join(str(p) for p in spec.params) or "no parameters") + spec.steps_line
            # the header comment may start with the query's name: not repeated beside it
            description = spec.description.removeprefix(f"{name}: ")
            # continuation lines indented, so that only a query's own line starts with a name
            description = description.replace("\n", "\n" + " " * width)
            print(f"{name:{width}s}{description}  [{params}]")
        return 0
    params = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--param must be key=value; got {item!r}")
        if key in params:
            raise ValueError(f"--param {key} is given twice ({key}={params[key]!r} and "
                             f"{item!r}); give it once")
        params[key] = value
    from bfd.queries import connect
    from bfd.queries.hints import CountedRows, no_rows, refusal
    from bfd.queries.named import check_params, runs_at_steps
    from bfd.queries.stream import stream_query

    store, timeout = _store(args), _check_timeout(args)
    check_params(args.name, params)  # before the catalog is opened
    with _told_damage(args) as damage:
        con = connect(store)  # one snapshot for the checks and the query
        try:
            # runs named as audits of a series (series, step_a, step_b): their run ids
            params = runs_at_steps(con, args.name, params)
            # a parameter naming no model, run or series (a typo), or two that contradict
            # each other: a mistake in the request (exit 2), whatever the query would answer
            refused = refusal(con, args.name, params, root=store)
            with stream_query(con, args.name, params, timeout=timeout) as reader:
                result = CountedRows(reader, empty=refused is not None)
                cli._print_table(result, args.format, args.output)
            hint = refused
            if hint is None and not result.rows:  # why not, said beside the result
                hint, _ = no_rows(con, args.name, params, root=store)
        finally:
            con.close()
        if hint:
            print(f"bfd: {'error: ' if refused else ''}no rows: {hint}", file=sys.stderr)
    return 2 if refused else damage.code


# `bfd runs`: the published runs' columns, then the runs not published (bfd.storage.unpublished)
_RUNS_COLUMNS = ("run_id", "model", "weights", "weights_sha256", "images", "images_sha256",
                 "img_size", "n_images", "n_skipped", "layers", "sites", "status")
_RUNS_TYPES = ("VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "VARCHAR", "INTEGER",
               "BIGINT", "BIGINT", "VARCHAR", "VARCHAR", "VARCHAR")
# What `bfd runs` shows of a run's images, img_size and prefix option: the run_shapes view's
# images (the source's name, '@' and 12 hex digits of images_sha256; NULL without a hash),
# img_size (NULL for 0) and prefix (the decompose --prefix option of a published run, 'exclude'
# where its config does not say; NULL for a run not published: not decomposed, or damaged),
# the same rule (bfd/queries/_run_shapes.sql; tests/test_cli.py checks they agree); the
# weights' sha256 as its first 12 hex digits, so that weights rewritten at one path (a weekly
# checkpoint) are told apart, and whole where it is no digest (random weights:
# random-seed-12, whose first 12 characters every seed shares)
SHORT_WEIGHTS_SHA = ("CASE WHEN regexp_full_match(weights_sha256, '[0-9a-f]{64}') THEN "
                     "left(weights_sha256, 12) ELSE nullif(weights_sha256, '') END")
_RUNS_SHOWN = (
    f"run_id, model, weights, {SHORT_WEIGHTS_SHA} AS weights_sha256, "
    "CASE WHEN nullif(images_sha256, '') IS NOT NULL THEN concat("
    "coalesce(nullif(regexp_extract(rtrim(images, '/\\'), '[^/\\\\]*$'), ''), '?'), '@', "
    "left(images_sha256, 12)) END AS images, nullif(img_size, 0) AS img_size, prefix, "
    "activations, n_images, n_skipped, layers, sites, status, method, created_at")
# A published run's prefix option (run_shapes' rule: json_valid, so that a row of other JSON
# than bfd's does not fail the listing)
PREFIX_OPTION_SQL = ("coalesce(CASE WHEN json_valid(config_json) THEN json_extract_string("
                     "config_json, '$.decompose.prefix') END, 'exclude')")
# A published run's model with its --model-arg options (bfd.storage.model_label; the
# run_shapes view's model, bfd/queries/_run_shapes.sql)
_MODEL_LABEL = ("model || coalesce(' ' || CASE WHEN json_valid(config_json) THEN CAST("
                "json_extract(config_json, '$.request.extra.model_args') AS VARCHAR) END, '') "
                "AS model")
# Lines on stderr saying what to do with runs not published; the rest are in the status column.
_RUNS_NOTES = 10


def _runs_sql(pending: list, dropped: list[str] = ()) -> tuple[str, dict]:
    """The statement of ``bfd runs`` over the catalog, with the runs not published bound as
    its parameters (no pyarrow table built from Python values: that would import pandas);
    ``dropped``: the published runs whose activations ``bfd drop-activations`` removed."""
    from bfd.storage.unpublished import activations_sql

    columns = ", ".join(_MODEL_LABEL if c == "model" else c for c in _RUNS_COLUMNS)
    # a stats-only run's activations 'not stored', else 'stored' (bfd.storage's rule)
    sql = (f"SELECT {columns}, {PREFIX_OPTION_SQL} AS prefix, CASE WHEN list_contains("
           f"$dropped::VARCHAR[], run_id) THEN 'dropped' ELSE {activations_sql('config_json')} "
           "END AS activations, method, created_at FROM runs")
    params: dict = {"dropped": sorted(dropped)}
    rows = []
    for i, run in enumerate(pending):
        values = []
        for name, kind in zip(_RUNS_COLUMNS, _RUNS_TYPES, strict=True):
            params[f"{name}_{i}"] = getattr(run, name)
            values.append(f"${name}_{i}::{kind}")
        params[f"created_at_{i}"] = run.created_at  # a damaged published run's, else None
        params[f"activations_{i}"] = run.activations
        # no prefix nor method: not decomposed, or (damaged) its config unread
        rows.append(f"({', '.join(values)}, NULL::VARCHAR, $activations_{i}::VARCHAR, "
                    f"NULL::BIGINT, $created_at_{i}::TIMESTAMPTZ)")
    if rows:
        sql += f" UNION ALL SELECT * FROM (VALUES {', '.join(rows)})"
    return (f"SELECT {_RUNS_SHOWN} FROM ({sql}) ORDER BY created_at NULLS LAST, run_id",
            params)


def cmd_runs(args: argparse.Namespace) -> int:
    from bfd.queries import connect
    from bfd.queries.stream import stream_sql
    from bfd.storage import Store, dropped, unpublished_runs

    store = _store(args)
    with _told_damage(args) as damage:
        con = connect(store)
        try:
            published = {row[0] for row in con.execute("SELECT run_id FROM runs").fetchall()}
            pending = unpublished_runs(Store(store), published)
            sql, params = _runs_sql(pending, [r for r in published
                                              if dropped(Store(store), r) is not None])
            with stream_sql(con, sql, params) as reader:
                cli._print_table(reader, args.format, args.output)
        finally:
            con.close()
        if not published and not pending:
            print(f"bfd: the store holds no runs yet; make a first run: {_first_run(args)}",
                  file=sys.stderr)
        # a published run the catalog left out (status damaged) is told in _told_damage's line
        told = set(damage.runs)
        notes = [run for run in pending if run.run_id not in told]
        for run in notes[:_RUNS_NOTES]:
            print(f"bfd: run {run.run_id}: {run.next}", file=sys.stderr)
        if len(notes) > _RUNS_NOTES:
            print(f"bfd: {len(notes) - _RUNS_NOTES} more runs are not published (their "
                  "status says why)", file=sys.stderr)
    return damage.code


def cmd_dashboard(args: argparse.Namespace) -> int:
    from bfd.report.dashboard import build_dashboard, serve_dashboard

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0-65535; got {args.port}")
    store = _store(args)
    own = os.path.join(store, "dashboard")
    out = args.out or own
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is a file; expected a folder for the dashboard")
    _check_dashboard_folder(out, store, own)
    if not os.path.exists(out):
        # the folder it is made in must take it, said naming --out (/proc answers "No such
        # file or directory" to a new folder, which read as a typo, exit 2)
        from bfd.storage.paths import require_writable

        try:
            require_writable(out)
        except OSError as err:
            raise OSError(err.errno, err.strerror, out) from None
    with _told_damage(args, "the dashboard") as damage:
        build = build_dashboard(store, out, force=args.force)
        pages = len(build.pages_written)
        print(f"dashboard: {build.index} ({pages + len(build.unchanged)} pages: {pages} "
              f"written, {len(build.unchanged)} unchanged; {len(build.removed)} removed; "
              f"{len(build.written) - pages} asset files written)")
    if args.serve:
        with _sigterm_as_interrupt() as ended:
            try:
                serve_dashboard(out, args.port)  # until Ctrl-C (or SIGTERM)
            except OSError as err:
                raise RuntimeError(f"cannot serve on 127.0.0.1:{args.port}: "
                                   f"{err.strerror}") from err
        if ended:  # a service stopped, a scheduler's time limit: said, as the other commands
            # say it (README, exit status 143; it ended without a line: trial 31)
            from bfd.cli_interrupt import EXIT_TERMINATED

            print("bfd: terminated (SIGTERM); the dashboard is no longer served",
                  file=sys.stderr)
            return EXIT_TERMINATED
    return damage.code


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[bool]]:
    """SIGTERM in the block raises KeyboardInterrupt, as Ctrl-C does (where this is the main
    thread); the list yielded holds True once it came."""
    import signal
    import threading

    came: list[bool] = []
    if threading.current_thread() is not threading.main_thread():
        yield came
        return

    def interrupt(signum, frame) -> None:  # noqa: ARG001 - a signal handler's signature
        came.append(True)
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield came
    finally:
        signal.signal(signal.SIGTERM, before)


def _check_dashboard_folder(out: str, store: str, own: str) -> None:
    """Refuses an ``--out`` whose files a build would overwrite or remove though they are not
    a dashboard's (trial 25, F7): a folder of the store's other than its own ``dashboard``
    (the pages went among the run folders), and a folder holding files that no ``bfd
    dashboard`` made (no ``.bfd-dashboard.json``: its ``index.html`` was overwritten)."""
    from bfd.report.dashboard import MANIFEST

    real, root = os.path.realpath(out), os.path.realpath(store)
    if real == os.path.realpath(own):
        return
    if os.path.commonpath([real, root]) == root:
        raise ValueError(f"--out {out!r} is inside the store; a store's dashboard goes in "
                         f"{own} (leave out --out) or in a folder outside the store")
    if not os.path.isdir(out) or os.path.exists(os.path.join(out, MANIFEST)):
        return
    with os.scandir(out) as entries:
        foreign = any(entries)
    if foreign:
        raise ValueError(f"--out {out!r} holds files that bfd dashboard did not write (it has "
                         f"no {MANIFEST}); give a new or empty folder")


def cmd_plot(args: argparse.Namespace) -> int:
    from bfd.report.plots import plot_run

    written, skipped = plot_run(_store(args), args.run_id, args.out, args.format)
    for path in written:
        print(path)
    if skipped:
        print(f"bfd plot: no data for {', '.join(skipped)}; not drawn", file=sys.stderr)
    return 0


def _say_weights_gone(store, run_id: str) -> None:
    """A line when the repair command printed would make another run, the run's weights file
    being gone or changed (``bfd.storage.weights_gone``)."""
    from bfd.storage import weights_gone

    gone = weights_gone(store, run_id)
    if gone:
        print(f"bfd: but {gone}", file=sys.stderr)


def _say_damaged_events(store) -> None:
    """A line per damaged audit event file of the store: no run's fault, but what ``verify``
    is asked for (its exit stays the run's)."""
    from bfd.storage.audits import damaged_event_files

    for line in damaged_event_files(store):
        print(f"bfd: note (not of this run): {line}", file=sys.stderr)


def _stats_only_repair(store, run_id: str) -> str:
    """The ``bfd audit --no-store-activations`` command that computes a stats-only run again
    (``repair_command``), with the decompose options it was published with that are not the
    defaults (``result_flags``: the same figures); when no copy of them reads, a note says to
    give them."""
    from bfd.storage import published_options, repair_command
    from bfd.tasks.options import flags_of

    options, _ = published_options(store, run_id)
    if options is None:
        return (f"{repair_command(store, run_id)} (no copy of the decompose options it was "
                "published with reads: give those it was published with, else its figures "
                "change)")
    flags = flags_of(options)
    return repair_command(store, run_id, decompose_flags=flags)


# sysexits.h's EX_TEMPFAIL: the faults seen may be another process's work in progress
EXIT_BUSY = 75


def _older_said(store, run_id: str, older: list, unchecked: list[str], remedy: str
                ) -> str | None:
    """What ``verify`` says of a run published by an older bfd, in a few words: its table
    files' bytes not checked (``unchecked``: the tables whose sha256 its pointer does not
    record, or every one in the older layout) and the columns added since that its files
    lack (``older``: those faults, ``Fault.older``), with the command that publishes it
    again with both (``remedy``); None when neither."""
    if not older and not unchecked:
        return None
    published = "published by an older bfd without checksums" if unchecked else \
        "published by an older bfd"
    said = ""
    if unchecked:
        every = set(unchecked) >= set(_run_tables(store, run_id))
        said = ("table bytes not checked: " if every else
                f"bytes of its {', '.join(unchecked)} table file{'s' if len(unchecked) > 1 else ''}"
                " not checked: ")
    said += published
    if older:
        tables = sorted({_table_of(f.path) for f in older})
        said += (f"{' and' if unchecked else ''} without the columns added since in its "
                 f"{' and '.join(tables)} table file{'s' if len(tables) > 1 else ''}")
    does = " and ".join(w for w, on in (("adds the columns", older),
                                        ("records checksums", unchecked)) if on)
    return f"{said}; {remedy} {does}"


def _run_tables(store, run_id: str) -> list[str]:
    """The tables the run has a published file of."""
    from bfd.storage.integrity import _table_files
    from bfd.storage.published import read_pointer

    try:
        return list(_table_files(store, run_id, read_pointer(store, run_id)))
    except ValueError:
        return []


def _table_of(path: str) -> str:
    """The table a published table file is of: the folder under ``tables/``."""
    parts = Path(path).parts
    return parts[parts.index("tables") + 1] if "tables" in parts else Path(path).name


def cmd_verify(args: argparse.Namespace) -> int:
    from bfd.storage import (
        Store,
        decompose_command,
        dropped,
        kept_no_activations,
        repair_command,
        run_busy,
        unchecked_tables,
        verify_run,
    )
    from bfd.storage.fault_lines import distinct, fault_lines
    from bfd.storage.unpublished import busy_said

    store = Store(_store(args))
    # each damaged file once, and the chunk files' faults counted when there are many
    found = distinct(verify_run(store, args.run_id))
    # a table file of an older bfd, lacking only columns added since, is no damage: said in
    # the run's line, as the table files whose bytes its pointer gives nothing to check by
    older = [f for f in found if f.older]
    faults = [f for f in found if not f.older]
    _say_damaged_events(store)
    stats_only = kept_no_activations(store, args.run_id)
    for line in fault_lines(faults):
        print(f"fault: {line}")
    if faults and run_busy(store, args.run_id):  # what it writes now may be among them
        print(f"bfd: run {args.run_id} has {len(faults)} fault(s), but it is "
              f"{busy_said(store, args.run_id)}; then run bfd verify again", file=sys.stderr)
        # not 1 (damaged): a monitor tells a run at work from a damaged one (trial 19)
        return EXIT_BUSY
    gone = dropped(store, args.run_id)
    remedy = (f"{repair_command(store, args.run_id)} then {decompose_command(store, args.run_id)}"
              if gone is not None else _stats_only_repair(store, args.run_id) if stats_only
              else decompose_command(store, args.run_id))
    older_note = _older_said(store, args.run_id, older, unchecked_tables(store, args.run_id),
                             remedy)
    if faults and older_note:
        print(f"bfd: note: run {args.run_id}: {older_note}", file=sys.stderr)
    if faults and gone is not None:  # its activations are to extract before a decomposition
        print(f"bfd: run {args.run_id} has {len(faults)} fault(s); its activations were "
              f"dropped (bfd drop-activations): {repair_command(store, args.run_id)} extracts "
              f"them again, then {decompose_command(store, args.run_id)} publishes it again",
              file=sys.stderr)
        return 1
    if faults and stats_only:  # no activations to extract or decompose again
        print(f"bfd: run {args.run_id} has {len(faults)} fault(s); the stats-only run is "
              f"computed and published again by: {_stats_only_repair(store, args.run_id)}",
              file=sys.stderr)
        _say_weights_gone(store, args.run_id)
        return 1
    if faults:
        repairs = []
        if any(not f.published for f in faults):
            repairs.append(f"damaged shards are extracted again by: "
                           f"{repair_command(store, args.run_id)}")
        if any(f.published for f in faults):
            repairs.append(f"damaged table files are published again by: "
                           f"{decompose_command(store, args.run_id)}")
        print(f"bfd: run {args.run_id} has {len(faults)} fault(s); {'; '.join(repairs)}",
              file=sys.stderr)
        if any(not f.published for f in faults):
            _say_weights_gone(store, args.run_id)
        return 1
    # intact: what was not checked, or is of an older bfd, is said in the one line (exit 0:
    # no damage, which a cron'd verify alarms on; the line names what makes it checkable)
    said = []
    if gone is not None:
        said.append(f"activations dropped by bfd drop-activations: results, tables and audits "
                    f"kept; {repair_command(store, args.run_id)} extracts them again")
    elif stats_only:
        said.append("stats-only: no activations kept")
    if older_note:
        said.append(older_note)
    print(f"run {args.run_id}: intact" + (f" ({'; '.join(said)})" if said else ""))
    return 0


def cmd_drop_activations(args: argparse.Namespace) -> int:
    from bfd.output import size_text
    from bfd.storage import Store, drop_activations

    if args.keep is None:
        if not args.run_ids:
            raise ValueError("name the runs (RUN_ID ...) or give --keep K (keep each series' "
                             "K latest runs' activations)")
        if args.series is not None or args.dry_run:
            raise ValueError(f"{'--series' if args.series is not None else '--dry-run'} goes "
                             "with --keep K, not with RUN_IDs")
    elif args.run_ids:
        raise ValueError("give RUN_IDs or --keep K, not both")
    store = Store(_store(args))
    if args.keep is not None:
        return _drop_past_keep(store, args.series, args.keep, args.dry_run)
    freed = 0
    for run_id in args.run_ids:
        n, before = drop_activations(store, run_id)
        freed += n
        print(f"run {run_id}: activations dropped{' before' if before else ''}, {size_text(n)} "
              "freed (results, tables and audits kept)")
    if len(args.run_ids) > 1:
        print(f"{size_text(freed)} freed in all")
    return 0


def _drop_past_keep(store, series: str | None, keep: int, dry_run: bool) -> int:
    """``bfd drop-activations --keep K``: each series' runs past its K latest (or ``series``'s),
    a line each, then a line per series; exit 1 when a run could not be dropped now."""
    from bfd.storage import check_keep, read_audits
    from bfd.tasks.retention import drop_past_keep, retention_said

    check_keep(keep, "--keep")
    audits = read_audits(store)  # once: dropping runs changes no audit
    every = sorted({row["series"] for row in audits})
    if series is not None and series not in every:
        raise ValueError(f"the store has no audits of series {series!r}"
                         + (f"; its series: {', '.join(every[:5])}" if every else ""))
    code = 0
    for name in [series] if series is not None else every:
        dropped = drop_past_keep(store, name, keep, dry_run, audits=audits)
        for d in dropped:
            print(f"run {d.run_id}: activations would be dropped" if dry_run else d.line())
        print(retention_said(name, keep, dropped, dry_run))
        code = max(code, int(any(d.kept is not None for d in dropped)))
    if not every:
        print("the store holds no audits: nothing to keep or drop")
    return code


def add_reading_parsers(sub) -> None:
    """The reading commands' parsers, on the ``bfd`` command's subparsers."""
    s = sub.add_parser("verify", help="check a run's stored files; exit 1 when any is damaged")
    s.add_argument("run_id", help="the run to check (bfd runs lists them)")
    _add_store(s)
    s.set_defaults(fn=cmd_verify)

    s = sub.add_parser("drop-activations", help="free the disk of published runs' "
                       "activations, keeping their results, tables and audits (an extraction "
                       "or audit of a run's request stores them again)")
    s.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="a published run (bfd runs "
                   "lists them)")
    s.add_argument("--keep", type=int, metavar="K", help="instead of RUN_IDs: in each series "
                   "(or --series), keep the activations of the runs of its K latest audits "
                   "and drop the others' (a run another series keeps is kept)")
    s.add_argument("--series", help="with --keep: this series only")
    s.add_argument("--dry-run", action="store_true", help="with --keep: name the runs whose "
                   "activations would be dropped, dropping nothing")
    _add_store(s)
    s.set_defaults(fn=cmd_drop_activations)

    s = sub.add_parser("sql", help="run read-only SQL over the result tables")
    s.add_argument("sql", help="one read-only SQL statement over the tables")
    s.add_argument("--attach", action="append", default=[], metavar="NAME=STORE",
                   help="also query another store, read-only, as database NAME (repeatable)")
    _add_store(s)
    _add_format(s)
    _add_timeout(s)
    s.set_defaults(fn=cmd_sql)

    s = sub.add_parser("catalog", help="bring the SQL catalog up to date and print its "
                       "stable path, for other tools")
    s.add_argument("--path", action="store_true", help="print only the path")
    _add_store(s)
    s.set_defaults(fn=cmd_catalog)

    s = sub.add_parser("query", help="run a named query (bfd query --list)")
    s.add_argument("name", nargs="?", help="the named query (bfd query --list)")
    s.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the query; repeatable")
    s.add_argument("--list", action="store_true", help="list the named queries")
    _add_store(s)
    _add_format(s)
    _add_timeout(s)
    s.set_defaults(fn=cmd_query)

    s = sub.add_parser("runs", help="list the runs of a store, published (status complete) "
                       "or not (extracted, incomplete, damaged: stderr says what to do)")
    _add_store(s)
    _add_format(s)
    s.set_defaults(fn=cmd_runs)

    s = sub.add_parser("dashboard", help="write (refresh) the interactive dashboard of a store")
    s.add_argument("--out", help="output folder (default: <store>/dashboard)")
    s.add_argument("--force", action="store_true", help="rewrite every page")
    s.add_argument("--serve", action="store_true", help="then serve it on 127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="port of --serve (default 8000)")
    _add_store(s)
    s.set_defaults(fn=cmd_dashboard)

    s = sub.add_parser("plot", help="write a run's views as figures for papers")
    s.add_argument("run_id", help="the run to draw (bfd runs lists them)")
    s.add_argument("--out", default="figures", help="output folder (default: ./figures)")
    s.add_argument("--format", choices=("png", "svg", "pdf"), default="png",
                   help="figure file format")
    _add_store(s)
    s.set_defaults(fn=cmd_plot)
