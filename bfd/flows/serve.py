"""``bfd serve``: the deployments of ``prefect.yaml`` with their schedules and parameters,
served from this process (Prefect's ``Runner``, as ``prefect.serve`` runs it): no work pool
or worker to set up.

What a user sees in the terminal (stdout): one line when serving starts, one per deployment
(its schedules, its next run), then one line when each run of a served deployment starts and
one when it ends (its state; the run's name at its start when the flow renamed it since; an
audit's run id, series and drift; the checkpoints audited; a failure's error), each poll's
lines in the order of their times. Ctrl-C's (or SIGTERM's) line names the runs in progress and
whether their audits were recorded (``RunLines.interrupted_line``); with a Prefect API of its
own, those runs are stopped and set ``Crashed`` there first (``RunLines.end_runs``). Prefect
logs at WARNING in the CLI, so these lines are ``RunLines``' own: it reads the served
deployments' flow runs from the API every ``POLL_SECONDS``, and the audits of a run from the
store it wrote to (the ``audits`` table, by flow run id).

``RunLines`` also creates the served schedules' runs through the API (``POST
/deployments/{id}/schedule``, what the server's scheduler service does): Prefect's temporary
server, which ``bfd serve`` runs on without ``PREFECT_API_URL``, runs no scheduler service,
and its deployments' schedules then never produced a run. On a server with a scheduler the
calls change nothing (a scheduled run is created once: Prefect's idempotency key per
schedule and time).
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import yaml

POLL_SECONDS = 2.0  # how often the served deployments' runs are read (their lines' delay)
SCHEDULE_SECONDS = 60.0  # how often their schedules' runs are created ahead
# how long the end of serving (Ctrl-C, SIGTERM) waits for the API to take the Crashed states of
# the runs it stopped, and for their processes to die; it never waits for more
END_TIMEOUT_S = 5.0

_SCHEDULE_KEYS = ("cron", "interval", "rrule", "timezone", "anchor_date", "active", "parameters")


def _load_flow(entrypoint: str, root: Path):
    """The flow object of ``path/to/module.py:name``, imported as a module of the package.

    The path is relative to ``root`` (the deployments file's folder, as ``prefect deploy``
    reads it from the repository root); where no such file is there, a path ``bfd/...`` is
    the installed ``bfd`` package's, so that a ``prefect.yaml`` outside the repository serves
    the project's flows.

    Raises:
        FileNotFoundError: Neither file exists.
    """
    import bfd

    path, _, name = entrypoint.partition(":")
    parts = Path(path).with_suffix("").parts
    installed = Path(bfd.__file__).parent.joinpath(*Path(path).parts[1:])
    if not (root / path).is_file() and not (parts[:1] == ("bfd",) and installed.is_file()):
        also = f" nor {installed} (the installed bfd package)" if parts[:1] == ("bfd",) else ""
        raise FileNotFoundError(f"entrypoint {entrypoint!r}: no file {root / path}{also}")
    return getattr(importlib.import_module(".".join(parts)), name)


def _schedule(spec: dict[str, Any]):
    from prefect.schedules import Cron, Interval, RRule

    spec = {k: v for k, v in spec.items() if k in _SCHEDULE_KEYS}
    common = {k: spec[k] for k in ("timezone", "active", "parameters") if k in spec}
    if "cron" in spec:
        return Cron(spec["cron"], **common)
    if "interval" in spec:
        anchor = {"anchor_date": spec["anchor_date"]} if "anchor_date" in spec else {}
        return Interval(spec["interval"], **anchor, **common)
    if "rrule" in spec:
        return RRule(spec["rrule"], **common)
    raise ValueError(f"schedule {spec}: expected cron, interval or rrule")


def _check_parameters(flow, parameters: dict[str, Any], where: str) -> None:
    """The flow's own validation of a deployment's parameters, said in one line before
    anything is registered (the server's answer was the whole schema, 16 kB on one line).
    A missing parameter is not refused: a run may still give it.

    Raises:
        ValueError: A parameter the flow does not take or of the wrong type.
    """
    from prefect.exceptions import ParameterTypeError

    try:
        flow.validate_parameters(parameters)
    except ParameterTypeError as e:
        problems = [line.strip()[2:] for line in str(e).splitlines()
                    if line.strip().startswith("- ") and "Field required" not in line]
        if problems:
            raise ValueError(f"{where}: invalid parameters: {'; '.join(problems)}") from None


def runner_deployments(prefect_file: str | Path = "prefect.yaml") -> list:
    """One ``RunnerDeployment`` per deployment of the file: the same name, flow, parameters,
    tags, description and schedules.

    Raises:
        FileNotFoundError: No such file or entrypoint.
        ValueError: Not YAML, or no deployment with a name and an entrypoint.
    """
    path = Path(prefect_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such deployments file; expected a prefect.yaml")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"{path}: not a YAML deployments file{line}: "
                         f"{getattr(e, 'problem', None) or e}") from None
    deployments = spec.get("deployments") if isinstance(spec, dict) else None
    if not deployments or not isinstance(deployments, list):
        raise ValueError(f"{path}: no deployments to serve (expected a 'deployments:' list, "
                         "as in the project's prefect.yaml)")
    out = []
    for k, dep in enumerate(deployments):
        if not isinstance(dep, dict) or not dep.get("name") or not dep.get("entrypoint"):
            raise ValueError(f"{path}: deployment {k + 1} needs a name and an entrypoint")
        flow = _load_flow(dep["entrypoint"], path.parent)
        for spec in [{}, *(dep.get("schedules") or [])]:
            _check_parameters(flow, {**(dep.get("parameters") or {}),
                                     **(spec.get("parameters") or {})}, f"{path}: {dep['name']}")
        out.append(flow.to_deployment(
            name=dep["name"], parameters=dep.get("parameters") or {},
            tags=dep.get("tags") or [], description=dep.get("description"),
            schedules=[_schedule(s) for s in dep.get("schedules") or []]))
    return out


def _stdout_line(line: str) -> None:
    sys.stdout.write(f"{line}\n")
    sys.stdout.flush()


def serve(prefect_file: str | Path = "prefect.yaml",
          say: Callable[[str], None] = _stdout_line,
          watch: Callable[[RunLines], None] | None = None) -> None:
    """Serve every deployment of the file until interrupted, saying what it serves and each
    run's start and end (``RunLines``) through ``say``; ``watch`` is given the ``RunLines``
    before serving starts (``bfd serve``: Ctrl-C's line names the runs in progress, and
    ``RunLines.end_runs`` ends them). Where this process has a SIGTERM handler of its own
    (``bfd serve``'s), SIGTERM is left to it, not to Prefect's runner (``_runner_class``).
    Ended by a ``KeyboardInterrupt`` (Prefect's own shutdown: serving called in-process), it
    says on stderr what became of the runs in progress, if any
    (``RunLines.interrupted_line``)."""
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    deployments = runner_deployments(prefect_file)
    runner = _runner_class(Runner)(pause_on_shutdown=True)  # as prefect.serve builds it
    served = {runner.add_deployment(d): d for d in deployments}
    lines = RunLines(served, say)
    if hasattr(runner, "_cancel_run"):  # the runner's own cancellation of a run it runs
        lines.on_cancelling = lambda run: runner.execute_in_background(runner._cancel_run, run)
    if watch is not None:
        watch(lines)
    try:
        lines.drop_late_runs()
        lines.schedule_runs()
    except Exception as err:  # noqa: BLE001 - a server's own scheduler may still create them
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        sys.stderr.write(f"bfd: warning: serve: the schedules' runs could not be created "
                         f"({first}); retried every {SCHEDULE_SECONDS:g} s\n")
    lines.say_serving(prefect_file)
    lines.start()
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        # Prefect's own shutdown ran (the schedules paused); as prefect.serve ends
        if lines.in_progress():
            sys.stderr.write(lines.interrupted_line("bfd: interrupted; serving stopped")
                             + "\n")
    finally:
        lines.stop()


def _runner_class(runner):
    """Prefect's ``Runner`` class, or, where this process installed a SIGTERM handler of its
    own (``bfd serve``: ``bfd.cli_interrupt``, its line and exit 143), a subclass that leaves
    SIGTERM to that handler: the Runner's (installed as it starts) cancelled the runs in
    progress as if a person had, and ended serving with no line and exit 0 (trial 26, F6)."""
    own = signal.getsignal(signal.SIGTERM)
    if not callable(own):
        return runner

    class Served(runner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:  # noqa: ARG002
            own(signal.SIGTERM, None)

    return Served


def _scheduled_runs(client, dep_id: UUID, before: datetime | None = None, **read) -> list:
    """The flow runs of deployment ``dep_id`` still waiting in state Scheduled (expected to
    start before ``before``, where given); ``read``: more arguments of ``read_flow_runs``."""
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    when = ({} if before is None else
            {"expected_start_time": FlowRunFilterExpectedStartTime(before_=before)})
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])), **when),
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])), **read)


def _when(moment: datetime | None) -> str:
    """A time of the API in the terminal's time zone, to the second, with its offset from
    UTC (a zone's name may not say it: under TZ=UTC-14 it is "UTC" at +14 h, trial 31)."""
    moment = moment or datetime.now(UTC)
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def _duration(seconds: float) -> str:
    """``41 s``, ``4 min 11 s``, ``1 h``, ``2 h 5 min``, ``1 d``."""
    seconds = round(seconds)
    units = [(86400, "d"), (3600, "h"), (60, "min"), (1, "s")]
    parts = []
    for size, name in units:
        if seconds >= size or (size == 1 and not parts):
            parts.append(f"{seconds // size} {name}")
            seconds %= size
    return " ".join(parts[:2])


def _stamp(moment: datetime) -> float:
    """Seconds since the epoch of a stored time (naive: UTC)."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _describe_schedule(item) -> str:
    """One schedule of a deployment, in words: ``cron '0 3 * * *' (UTC)``, ``every 1 h``."""
    sched = item.schedule
    if getattr(sched, "cron", None):
        text = f"cron '{sched.cron}' ({sched.timezone or 'UTC'})"
    elif getattr(sched, "interval", None):
        text = f"every {_duration(sched.interval.total_seconds())}"
    else:
        text = f"rrule '{sched.rrule}'"
    return text if getattr(item, "active", True) is not False else f"{text} (inactive)"


def schedule_line(items, next_run) -> str:
    """A deployment's schedules in words and its next run (``next_run()``: its earliest
    scheduled run's start, or None); a deployment whose schedules are all inactive is said
    paused, with no next run (a run left scheduled by an earlier serve of the same name
    does not start while its schedules are paused: its time was said as the next run)."""
    if not items:
        return "no schedule"
    said = ", ".join(_describe_schedule(s) for s in items)
    if all(getattr(s, "active", True) is False for s in items):
        return f"{said}; paused: no run until a schedule is active (active: true in the file)"
    nxt = next_run()
    return f"{said}; next run {_when(nxt) if nxt else 'none scheduled'}"


class RunLines:
    """The terminal's view of ``bfd serve`` (module docstring): a thread that reads the runs
    of the served deployments (``served``: id -> deployment) from the API and says one line
    when each starts and one when it ends; it also creates their schedules' runs ahead."""

    def __init__(self, served: dict[UUID, Any], say: Callable[[str], None]) -> None:
        self.served = served
        self.say = say
        self.since = datetime.now(UTC)  # runs that start or end from now on
        self.began = self.since  # serving's start: the runs it may have started came after
        # each run said started: as it was then (its first name; the flow renames it once its
        # series and step are known), and its store's root (None: unknown)
        self.started: dict[UUID, tuple[Any, str | None]] = {}
        self.ended: set[UUID] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = 0  # polls failed in a row
        # called with each run of a served deployment found Cancelling (``say_runs``): the
        # runner's own cancellation (``serve``); None: nothing done
        self.on_cancelling: Callable[[Any], Any] | None = None
        self._cancels: set[UUID] = set()  # the runs handed to it
        # each served deployment's late runs that drop_late_runs deleted
        self.dropped: dict[UUID, list] = {}

    def drop_late_runs(self) -> None:
        """Deletes the runs that a served deployment's schedule created before this serve
        and that still wait, late (an earlier server's or serve's, stopped since): each holds
        the deployment's parameters of then, not the file's now (Prefect's update of a
        deployment deletes only the scheduled runs of future times), and a backlog of them
        started all at once when serving began (trial 17). Runs made by hand (``prefect
        deployment run``) are kept: someone asked for them."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for dep_id in self.served:
                late = [r for r in _scheduled_runs(client, dep_id, before=self.since)
                        if r.auto_scheduled and not r.run_count]
                for run in late:
                    client.delete_flow_run(run.id)
                if late:
                    self.dropped[dep_id] = late

    def schedule_runs(self) -> None:
        """Creates the next runs of the active schedules of each served deployment that is
        not paused."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            for dep_id, dep in self.served.items():
                if not any(getattr(s, "active", True) is not False for s in dep.schedules or []):
                    continue
                if client.read_deployment(dep_id).paused:
                    continue
                # the next run of each schedule, and those of the next two refreshes: a run
                # created ahead and not run (serving stopped) runs late when serving resumes
                client.request("POST", "/deployments/{id}/schedule", path_params={"id": dep_id},
                               json={"min_runs": 1, "min_time": 2 * SCHEDULE_SECONDS})

    def _next_run(self, client, dep_id: UUID):
        from prefect.client.schemas.sorting import FlowRunSort

        runs = _scheduled_runs(client, dep_id, sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
        return runs[0].expected_start_time if runs else None

    def say_serving(self, prefect_file: str | Path) -> None:
        """The line of the start of serving (the deployments, the store of their runs), then
        one per deployment: its flow, schedules and next run, its own store."""
        from prefect.client.orchestration import get_client

        from bfd.flows.prefect_io import STORE_VARIABLE, deployment_store
        from bfd.storage.paths import STORE_ENV

        root, named = deployment_store(None)
        store = (f"store {root} ({named})" if root else
                 f"no store set (a run without a 'store' parameter fails: set the Prefect "
                 f"Variable {STORE_VARIABLE} or ${STORE_ENV})")
        self.say(f"bfd serve: {len(self.served)} deployment(s) of {prefect_file} being served "
                 f"by this process, {store}; a line per run as it starts and ends; Ctrl-C "
                 "stops serving")
        with get_client(sync_client=True) as client:
            for dep_id, dep in self.served.items():
                when = schedule_line(dep.schedules or [],
                                     lambda dep_id=dep_id: self._next_run(client, dep_id))
                own = (dep.parameters or {}).get("store")
                own = f"; store {deployment_store(own)[0]}" if own else ""
                late = self.dropped.get(dep_id, [])
                if late:
                    first = min(r.expected_start_time for r in late)
                    own += (f"; {len(late)} late run(s) its schedule made before this serve "
                            f"(from {_when(first)} on, with the parameters of then) deleted")
                self.say(f"  {dep.name} (flow {dep.flow_name}): {when}{own}")

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bfd-serve-lines", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        from prefect.client.orchestration import get_client

        scheduled = datetime.now(UTC)
        while not self._stop.wait(POLL_SECONDS):
            try:
                with get_client(sync_client=True) as client:
                    self.poll(client)
                if (datetime.now(UTC) - scheduled).total_seconds() >= SCHEDULE_SECONDS:
                    scheduled = datetime.now(UTC)
                    self.schedule_runs()
                self._failed = 0
            except Exception as err:  # noqa: BLE001 - the API away a while: said once, retried
                self._failed += 1
                # not at the first failure: serving that ends (Ctrl-C stops the temporary
                # server) is no outage
                if self._failed == 2 and not self._stop.is_set():
                    first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                    sys.stderr.write(f"bfd: warning: serve: the Prefect API did not answer "
                                     f"({first}); retrying\n")

    def poll(self, client, say: bool = True) -> None:
        """Says the lines of the runs of the served deployments that started or ended since
        the last poll, and of those still running (``say`` False: notes them only, the end
        of serving: ``end_runs``)."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterEndTime,
            FlowRunFilterId,
            FlowRunFilterStartTime,
            Operator,
        )

        polled = datetime.now(UTC)
        running = sorted(set(self.started) - self.ended)
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                operator=Operator.or_, start_time=FlowRunFilterStartTime(after_=self.since),
                end_time=FlowRunFilterEndTime(after_=self.since),
                **({"id": FlowRunFilterId(any_=running)} if running else {})),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(self.served))),
            limit=200)
        self.say_runs(runs, client, say)
        # the next poll looks back a minute: a run whose times the API wrote late is not missed
        self.since = max(self.since, polled - timedelta(seconds=60))

    def say_runs(self, runs, client, say: bool = True) -> None:
        """The lines of ``runs`` (flow runs of the served deployments, as the API read them)
        not said yet: a start line for each run started, an end line for each run ended, in
        the order of their times (a run's end may come after another's start); ``say``
        False: noted as started or ended, not said."""
        from bfd.flows.prefect_io import deployment_store

        said = []  # (time, line)
        for run in runs:
            dep = self.served.get(run.deployment_id)
            if dep is None or run.id in self.ended:
                continue
            if run.start_time is not None and run.id not in self.started:
                try:  # known now, while the API answers: Ctrl-C's line reads that store
                    root = deployment_store((run.parameters or {}).get("store"))[0]
                except Exception:  # noqa: BLE001 - Ctrl-C's line then says less
                    root = None
                self.started[run.id] = (run, root)
                said.append((run.start_time, f"{_when(run.start_time)}  {dep.name}: flow run "
                             f"'{run.name}' ({run.id}) started"))
            if (run.state is not None and run.state.is_cancelling()
                    and self.on_cancelling is not None and run.id not in self._cancels):
                # the runner's watch for cancellations (Prefect's websocket and its poll)
                # ends for good when the API is away a while: a cancel after a server's
                # restart was never acted on; the run went on, published and recorded its
                # audit, then timed out Cancelled (trial 26, F2). This poll survives an
                # outage: it hands the run to the runner, which kills a run it runs, once
                self._cancels.add(run.id)
                with contextlib.suppress(Exception):
                    self.on_cancelling(run)
            if run.state is not None and run.state.is_final():
                self.ended.add(run.id)
                said.append((run.end_time or datetime.now(UTC),
                             self.end_line(client, run, dep)))
        for _, line in sorted(said, key=lambda x: x[0]) if say else ():
            self.say(line)

    def in_progress(self) -> list:
        """The runs said started and not ended, as they were at their start."""
        # copies: the poll's thread may add to them meanwhile (Ctrl-C's line is said from another)
        ended = set(self.ended)
        return [run for run_id, (run, _) in list(self.started.items()) if run_id not in ended]

    def interrupted_line(self, head: str) -> str:
        """``head`` (the line of Ctrl-C), then what became of each run in progress, read from
        its store (no API: it may be stopping): an ``audit`` run's audit recorded or not; how
        many audits a run of another flow recorded since it started. ``head`` alone when no
        run was in progress."""
        parts = []
        for run in self.in_progress():
            try:
                parts.append(self._stopped(run))
            except Exception:  # noqa: BLE001 - said without its audits
                parts.append(f"flow run '{run.name}' ({run.id})")
        if not parts:
            return head
        return f"{head}; {len(parts)} run(s) in progress stopped: {'; '.join(parts)}"

    def end_runs(self, head: str, timeout: float = END_TIMEOUT_S) -> str:
        """The end of serving by Ctrl-C or SIGTERM with a Prefect API of its own (not the
        temporary server, which ends with this process): the line to say, ``head`` then what
        became of each run in progress (``interrupted_line``) and what Prefect was told.

        Before the line: the runs' processes (this process's children, and theirs) are killed,
        so that none goes on to publish or record an audit the line says was not (a partial
        run is never published: everything they write survives a kill at any moment); the runs
        are read once more (one started since the last poll is named too). After it, each run
        of a served deployment still ``Running``, ``Pending`` or ``Cancelling`` in the API
        since serving began, and the subflow runs under it, are set ``Crashed`` with the line
        as message (before: left ``Running`` by Ctrl-C, set ``Cancelled`` by SIGTERM as if a
        person had cancelled them; trial 26, F5 and F6), and the served deployments' schedules
        are paused, as Prefect's own shutdown of a served runner does. The API is given
        ``timeout`` seconds in all: an API that does not answer is said on the line."""
        import psutil

        self.stop()
        self.on_cancelling = None  # the runner is not run any more
        with contextlib.suppress(psutil.Error):
            children = psutil.Process().children(recursive=True)
            for child in children:
                with contextlib.suppress(psutil.Error):
                    child.kill()
            psutil.wait_procs(children, timeout=timeout)
        told: dict[str, Any] = {}

        def tell() -> None:
            from prefect.client.orchestration import get_client

            with get_client(sync_client=True) as client:
                self.poll(client, say=False)
                told["line"] = line = self.interrupted_line(head)
                told["crashed"] = self._crash(client, line.removeprefix("bfd: "))
                for dep_id in self.served:
                    with contextlib.suppress(Exception):
                        client.pause_deployment(dep_id)

        def quietly() -> None:
            try:
                tell()
            except Exception as err:  # noqa: BLE001 - said on the line
                told["error"] = (str(err).strip().splitlines() or [type(err).__name__])[0]

        thread = threading.Thread(target=quietly, name="bfd-serve-end", daemon=True)
        thread.start()
        thread.join(timeout)
        line = told.get("line") or self.interrupted_line(head)
        if "crashed" in told:
            n = told["crashed"]
            return (f"{line}; {n} flow run(s) marked Crashed in Prefect, with this line" if n
                    else line)
        if not self.in_progress():
            return line
        why = told.get("error") or f"no answer in {timeout:g} s"
        return (f"{line}; the Prefect API was not told ({why}): their flow runs may stay "
                "Running there")

    def _crash(self, client, message: str) -> int:
        """Sets ``Crashed`` (``message``) each flow run of the served deployments that the API
        still has running, pending or cancelling since serving began, and the subflow runs
        under them, innermost first; returns how many."""
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterParentFlowRunId,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.states import Crashed

        alive = FlowRunFilterState(type=FlowRunFilterStateType(
            any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]))
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=alive),
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=list(self.served))))
        ids = {r.id for r in runs if r.id in self.started or r.start_time is None
               or _stamp(r.start_time) >= self.began.timestamp() - 1}
        todo, order = list(ids), list(ids)
        while todo:  # the subflow runs (an audit's extract and decompose), level by level
            under = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=todo), state=alive))
            todo = [r.id for r in under if r.id not in ids]
            ids |= set(todo)
            order += todo
        for run_id in reversed(order):
            client.set_flow_run_state(run_id, Crashed(message=message), force=True)
        return len(order)

    def _stopped(self, run) -> str:
        from bfd.storage import Store, read_audits

        dep = self.served.get(run.deployment_id)
        root = self.started[run.id][1]
        name = f"{dep.name}: flow run '{run.name}' ({run.id})"
        if dep.flow_name in ("extract", "decompose"):
            return f"{name}, no audit of its own: completed shards are kept"
        if root is None:
            return f"{name} (its store unknown: whether its audit was recorded is too)"
        stored = read_audits(Store(root))
        if dep.flow_name == "audit":
            mine = [a for a in stored if a["flow_run_id"] == str(run.id)]
            if not mine:
                return f"{name}: no audit was recorded (a rerun audits it)"
            a = mine[-1]
            status = "" if a["status"] == "complete" else f" as {a['status']}"
            return (f"{name}: audit {a['audit_id']} of series {a['series']} (step {a['step']}) "
                    f"was recorded{status}")
        start = run.start_time.timestamp()
        done = [a for a in stored if a["trigger"] in ("checkpoints", "compare")
                and a["status"] == "complete" and _stamp(a["started_at"]) >= start]
        return (f"{name}: {len(done)} audit(s) recorded since it started, the one in progress "
                "not (a rerun audits the rest)")

    def end_line(self, client, run, dep) -> str:
        """The line of a run's end: its state, how long it ran, and what it did (an audit's
        run, series and drift; the checkpoints audited) or, if it failed, why."""
        state = run.state
        took = (f" after {_duration((run.end_time - run.start_time).total_seconds())}"
                if run.start_time and run.end_time else "")
        line = f"{_when(run.end_time)}  {dep.name}: flow run '{run.name}' ({run.id}) {state.name}"
        first = self.started.get(run.id, (None,))[0]
        if first is not None and first.name != run.name:  # renamed since its start line
            took += f", named '{first.name}' at its start"
        said = [self._what_it_did(client, run, dep)]
        if not state.is_completed():
            said.append(" ".join((state.message or "").split()) or None)
        return line + took + "".join(f"; {s}" for s in said if s)

    def _what_it_did(self, client, run, dep) -> str | None:
        """An audit's run, series and drift (``drift_said``, as ``bfd audit`` says it, with
        the audits its comparison skipped: ``skipped_audits``), or how many checkpoints a run
        audited: the store's audits of the run and of its subflow runs; None when there are
        none, or the store cannot be read."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        from bfd.flows.prefect_io import deployment_store
        from bfd.storage import Store, read_audits
        from bfd.tasks.audits import drift_said, skipped_audits

        try:
            root, _ = deployment_store((run.parameters or {}).get("store"))
            if root is None:
                return None
            ids = {str(run.id)}
            if dep.flow_name != "audit":
                children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
                ids |= {str(r.id) for r in children}
            stored = read_audits(Store(root))
            audits = [a for a in stored if a["flow_run_id"] in ids]
        except Exception:  # noqa: BLE001 - the line says the state alone
            return None
        done = [a for a in audits if a["status"] == "complete"]
        if dep.flow_name == "audit" and len(done) == 1:
            a = done[0]
            # the audits its comparison skipped as not comparable: those between the two
            skipped = skipped_audits(stored, a)
            prev = next((p for p in stored if p["audit_id"] == a["prev_audit_id"]), None)
            said = drift_said({**a, "skipped": skipped, "prev_step": prev and prev["step"]})
            # the store's first audit: a moved store or a mistyped path began a new history
            new = ("; the first audit of store " + root + " (was it moved, or its path "
                   "mistyped?)" if all(x["started_at"] >= a["started_at"] for x in stored)
                   else "")
            return (f"audit {a['audit_id']} of series {a['series']} (step {a['step']}): run "
                    f"{a['run_id']}; drift: {said}{new}")
        if dep.flow_name == "audit-checkpoints" or done:
            series = sorted({a["series"] for a in done})
            flagged = sum(a["n_flagged"] or 0 for a in done)
            where = f" in series {', '.join(series)}" if series else ""
            return (f"{len(done)} checkpoint(s) audited{where}, {flagged} drift value(s) "
                    f"flagged; store {root}" if dep.flow_name == "audit-checkpoints" else
                    f"{len(done)} audit(s){where}, {flagged} drift value(s) flagged")
        return None
