"""Streaming a read-only statement's result in record batches, stoppable by Ctrl-C and a timeout.

``run_sql`` returns a whole ``pyarrow.Table``; ``stream_sql`` hands out the result batch by batch
while DuckDB computes it, so a command can print 10 M rows in the memory of one batch.

A query runs in DuckDB's C++ code, which does not look at Python's pending signals: a plain
Ctrl-C waits for the query to end. So while a statement runs, SIGINT also writes to a wakeup
file descriptor (``signal.set_wakeup_fd``) that a watcher thread reads; it interrupts the
connection (``DuckDBPyConnection.interrupt``), and the statement stops at once. The same thread
interrupts the connection when the timeout passes.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Final

import duckdb
import pyarrow as pa

from bfd.faults import duckdb_line
from bfd.queries.catalog import ParamValue, ReadOnlyError, Store, check_read_only, connect
from bfd.queries.named import _bind_params, own_errors, query_spec, runs_at_steps

__all__ = ["BATCH_ROWS", "QueryTimeoutError", "interruptible", "stream_query", "stream_sql"]

# Rows per record batch: small enough that the first rows come at once and memory stays that
# of one batch, large enough that the per-batch cost of a writer is amortised.
BATCH_ROWS: Final[int] = 65_536


class QueryTimeoutError(RuntimeError):
    """A statement ran longer than its timeout and was stopped."""


class _Watch:
    """What stopped a statement: the timeout or a signal (None: nothing yet)."""

    def __init__(self) -> None:
        self.reason: str | None = None


@contextlib.contextmanager
def interruptible(con: duckdb.DuckDBPyConnection, timeout: float | None = None) -> Iterator[_Watch]:
    """Interrupts ``con``'s running statement on SIGINT and after ``timeout`` seconds.

    Signals are watched only from the main thread (where Python delivers them); elsewhere only
    the timeout applies. Python's own SIGINT handler still runs, so the caller sees a
    ``KeyboardInterrupt`` as soon as DuckDB returns.

    Args:
        con: The connection whose statements to interrupt.
        timeout: Seconds, or None for no limit.

    Yields:
        A watch whose ``reason`` is ``"timeout"`` or ``"signal"`` once the connection was
        interrupted.
    """
    watch = _Watch()
    wake_r, wake_w = os.pipe()
    stop_r, stop_w = os.pipe()
    os.set_blocking(wake_w, False)
    previous: int | None = None
    try:
        previous = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    except ValueError:  # not the main thread: no signals to watch
        pass
    deadline = None if timeout is None else time.monotonic() + timeout

    def run() -> None:
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([wake_r, stop_r], [], [], left)
            if stop_r in ready:
                return
            if wake_r in ready:
                if signal.SIGINT not in os.read(wake_r, 64):
                    continue
                watch.reason = "signal"
            else:
                watch.reason = "timeout"
            con.interrupt()
            return

    thread = threading.Thread(target=run, name="bfd-query-watch", daemon=True)
    thread.start()
    try:
        yield watch
    finally:
        os.write(stop_w, b"x")
        thread.join()
        if previous is not None:
            signal.set_wakeup_fd(previous)
        for fd in (wake_r, wake_w, stop_r, stop_w):
            os.close(fd)


def _check_params(statement: duckdb.Statement, params: Mapping[str, ParamValue] | None) -> None:
    wanted = set(statement.named_parameters)
    given = set(params or {})
    if wanted != given:
        raise ValueError(
            f"SQL parameters {sorted(wanted)} do not match the given params {sorted(given)}"
            f" (missing {sorted(wanted - given)}, unknown {sorted(given - wanted)})"
        )


@contextlib.contextmanager
def stream_sql(
    store: Store,
    sql: str,
    params: Mapping[str, ParamValue] | None = None,
    *,
    timeout: float | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.RecordBatchReader]:
    """Runs one read-only statement on a store's catalog and streams its result.

    Args:
        store: A store directory, or a connection from ``connect``.
        sql: Exactly one statement that ``check_read_only`` lets through.
        params: Values of its named parameters (``$model``).
        timeout: Seconds the statement may run, reading its result included; None: no limit.
        batch_rows: Rows per record batch.

    Yields:
        The result's batches, computed as they are read; read them inside the ``with`` block.

    Raises:
        ReadOnlyError, ValueError: As ``run_sql``.
        QueryTimeoutError: The statement ran longer than ``timeout`` (one line naming it).
        KeyboardInterrupt: Ctrl-C, within a moment even while DuckDB computes.
    """
    statements = check_read_only(sql)
    if len(statements) != 1:
        raise ValueError(f"a query runs exactly one statement; given {len(statements)}")
    _check_params(statements[0], params)
    con = store.cursor() if isinstance(store, duckdb.DuckDBPyConnection) else connect(store)
    try:
        with interruptible(con, timeout) as watch:
            try:
                relation = con.sql(sql, params=dict(params) if params else None)
                if relation is None:  # a statement without a result (none is allowed today)
                    yield pa.RecordBatchReader.from_batches(pa.schema([]), [])
                else:
                    yield relation.to_arrow_reader(batch_rows)
            except duckdb.PermissionException as err:
                raise ReadOnlyError(
                    "the BFD catalog reads only its store's tables; file access from SQL is off: "
                    + duckdb_line(err)
                ) from err
            except Exception as err:
                # An interrupted statement fails as whatever the reading layer makes of
                # DuckDB's "Interrupted!" (an InterruptException, or an Arrow error).
                if watch.reason == "timeout":
                    raise QueryTimeoutError(
                        f"the query ran longer than --timeout {timeout:g} s and was stopped"
                    ) from err
                if watch.reason == "signal":
                    raise KeyboardInterrupt from err
                raise
    finally:
        con.close()


@contextlib.contextmanager
def stream_query(
    store: Store,
    name: str,
    params: Mapping[str, ParamValue] | None = None,
    *,
    timeout: float | None = None,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[pa.RecordBatchReader]:
    """``stream_sql`` of a named query (``run_query``'s parameter rules)."""
    spec = query_spec(name)
    params = _bind_params(spec, runs_at_steps(store, name, params))
    with own_errors(name), stream_sql(store, spec.sql, params, timeout=timeout,
                                      batch_rows=batch_rows) as reader:
        yield reader
