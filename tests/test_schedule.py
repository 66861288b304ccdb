"""README "Schedule it", every command of it, against a real local Prefect server and a
`process` worker (both started and stopped here by process id): deploy from prefect.yaml, audit
a folder of three planted checkpoints, and check the audits, the one drift flag, the artifact,
the event, the run names, a second run doing nothing, and typed parameters at submission; then
`bfd serve` on the same server: its schedule's runs, and its lines of a run's start and end."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from uuid import UUID

import pytest
from checkpoints import AUDIT, make_checkpoints

from bfd.flows.prefect_io import DRIFT_EVENT, artifact_key
from bfd.flows.serve import runner_deployments
from bfd.storage import Store, read_audits, read_drift, read_table

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LONG_RUNNING = ("prefect server start", "prefect worker start")
# The run's config: only some fields (dtype comes from the deployment), and a drift threshold
# that flags frac_pos alone (the other thresholds: 1, and the deployment's head_type).
CONFIG = {k: v for k, v in AUDIT.items() if k != "dtype"}
DRIFT = {"fraction": 1.0, "metrics": {"frac_pos": 0.05}}


def readme_commands() -> list[str]:
    """The commands of the README's "Schedule it" block, comments dropped."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Schedule it", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group it leads (the server's uvicorn, the worker's flow run),
    SIGKILL if it has not ended in 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"Prefect server not healthy in {seconds} s: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_schedule_it_end_to_end(tmp_path):
    port, store, ckpts = free_port(), tmp_path / "store", tmp_path / "ckpts"
    make_checkpoints(ckpts)
    url = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PREFECT_HOME=str(tmp_path / "ph"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1",
               PREFECT_LOGGING_LEVEL="WARNING",
               # no scheduled runs of the deployed schedules while the test runs its own
               PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="1")
    run_params = '"config": {"model": "vit_base_patch16_224"}'
    subs = {"4200": str(port), "/data/bfd-store": str(store), "/data/checkpoints": str(ckpts),
            # the dashboard refresh is tested with `bfd audit --demo` (tests/test_audit.py)
            run_params: f'"config": {json.dumps(CONFIG)}, "drift": {json.dumps(DRIFT)}, '
                        '"dashboard": false'}
    commands = readme_commands()
    assert any(run_params in c for c in commands) and "prefect deploy --all" in commands
    started: list[subprocess.Popen] = []
    outputs = {}
    try:
        for command in commands:
            for old, new in subs.items():
                command = command.replace(old, new)
            if command.startswith(LONG_RUNNING):
                log = tmp_path / f"{len(started)}.log"
                proc = subprocess.Popen(shlex.split(command), cwd=REPO, env=env,
                                        stdin=subprocess.DEVNULL, stdout=log.open("w"),
                                        stderr=subprocess.STDOUT, start_new_session=True)
                started.append(proc)
                if command.startswith("prefect server start"):
                    wait_healthy(url, proc, log)
                continue
            t0 = time.monotonic()
            done = subprocess.run(command, shell=True, cwd=REPO, env=env, text=True,
                                  stdin=subprocess.DEVNULL, capture_output=True, timeout=150)
            print(f"{time.monotonic() - t0:6.1f} s  {command[:60]}")
            assert done.returncode == 0, (command, done.stdout[-3000:], done.stderr[-3000:])
            outputs[command.split()[0] + " " + command.split()[1]] = done.stdout
        series = f"{CONFIG['model']}@{ckpts}"
        check_audits(store, series)
        assert series in outputs["bfd query"]
        check_prefect(url, store, series, ckpts, env, commands, subs)
        t0 = time.monotonic()
        check_serve(tmp_path, url, env)
        print(f"{time.monotonic() - t0:6.1f} s  bfd serve, one run of its schedule")
    finally:
        for proc in reversed(started):
            stop(proc)


def check_audits(store: Path, series: str) -> None:
    audits = read_audits(Store(store), series)
    assert [(a["step"], a["status"], a["trigger"]) for a in audits] == [
        (100, "complete", "checkpoints"), (200, "complete", "checkpoints"),
        (300, "complete", "checkpoints")]
    assert [a["prev_audit_id"] for a in audits] == [None] + [a["audit_id"] for a in audits[:2]]
    flagged = [r for r in read_drift(Store(store), series) if r["flagged"]]
    assert [(r["audit_id"], r["layer"], r["head"], r["metric"]) for r in flagged] == [
        (audits[1]["audit_id"], 0, None, "frac_pos")]
    assert [a["n_flagged"] for a in audits] == [0, 1, 0]
    runs = {r["run_id"]: r for r in read_table(Store(store), "runs").to_pylist()}
    # the run gave some fields of config; the others are the deployment's, and what neither
    # gives the command's default (dtype float16, as `bfd audit-checkpoints`: its audits are
    # not audited again by the deployment)
    assert [(runs[a["run_id"]]["dtype"], runs[a["run_id"]]["n_images"],
             runs[a["run_id"]]["layers"]) for a in audits] == [("float16", 6, "0")] * 3


def check_prefect(url, store, series, ckpts, env, commands, subs) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.settings import PREFECT_API_URL, temporary_settings

    audits = read_audits(Store(store), series)
    with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
        for a in audits:
            run = client.read_flow_run(UUID(a["flow_run_id"]))
            assert run.name == f"{series} step {a['step']}"
            assert {"model:test_vit", f"series:{series}"} <= set(run.tags)
        key = ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("audit", series)]))
        reports = [x for x in client.read_artifacts(artifact_filter=key) if x.type == "markdown"]
        assert len(reports) == 3 and any("**1 flagged**" in x.data for x in reports)
        assert all(str(store) in x.data and "Per-layer summary" in x.data for x in reports)
        drift_events = EventFilter(event=EventNameFilter(name=[DRIFT_EVENT]))
        deadline = time.monotonic() + 30
        while not (events := client.read_events(drift_events, limit=50).events):
            assert time.monotonic() < deadline, "no bfd.drift.detected event in 30 s"
            time.sleep(1)
        assert [(e.resource.id, e.payload["audit_id"]) for e in events] == [
            (f"bfd.series.{series}", audits[1]["audit_id"])]
        # a second run on the unchanged folder does nothing, and says so
        (line,) = [c for c in commands if c.startswith("prefect deployment run")]
        for old, new in subs.items():
            line = line.replace(old, new)
        done = subprocess.run(line, shell=True, cwd=REPO, env=env, text=True, timeout=150,
                              stdin=subprocess.DEVNULL, capture_output=True)
        assert done.returncode == 0, done.stderr[-3000:]
        assert len(read_audits(Store(store), series)) == 3
        key = ArtifactFilter(key=ArtifactFilterKey(any_=[artifact_key("checkpoints", series)]))
        notes = sorted(client.read_artifacts(artifact_filter=key), key=lambda x: x.created)
        assert notes[-1].data.startswith("Nothing to do: all 3 checkpoint file(s)")
        assert "with the same request (model test_vit, images samples (N 6)" in notes[-1].data
        # the shipped schedules are deployed paused: none runs against the example's
        # /data/checkpoints or downloads its pretrained model before the user points it at theirs
        deployment = client.read_deployment_by_name("audit-checkpoints/audit-checkpoints")
        nightly = client.read_deployment_by_name("audit/nightly-audit")
        assert [s.active for s in deployment.schedules + nightly.schedules] == [False, False]
        # a typo is refused when the run is submitted, naming the field
        with pytest.raises(PrefectHTTPStatusError, match="n_image"):
            client.create_flow_run_from_deployment(
                deployment.id, parameters={"checkpoints": str(ckpts), "config": {"n_image": 3}})


def check_serve(tmp_path: Path, url: str, env: dict) -> None:
    """`bfd serve` on a server without a scheduler service (the test's, as Prefect's temporary
    one): its schedule's runs are created, the next one said; a run of it, made due now, is
    said when it starts and when it ends, with its audit, run id, series and drift. Before:
    no scheduled run at all, and nothing on stdout after Prefect's banner."""
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Scheduled

    import bfd

    folder, store = tmp_path / "served", tmp_path / "served-store"
    ckpts, missing = tmp_path / "served-ckpts", tmp_path / "no-such-images"
    folder.mkdir()
    ckpts.mkdir()
    shutil.copy(tmp_path / "ckpts" / "step_100.safetensors", ckpts)
    cwd_runs = REPO / "bfd-store" / "runs"  # where the runs' default store was, before
    before = sorted(cwd_runs.iterdir()) if cwd_runs.exists() else []
    (folder / "bfd").symlink_to(Path(bfd.__file__).parent)
    spec = {"deployments": [{
        "name": "served-audit", "entrypoint": "bfd/flows/audit.py:audit",
        "schedules": [{"interval": 3600}],
        "parameters": {"config": {**CONFIG, "weights": "random"}, "store": str(store),
                       "series": "served", "dashboard": False}},
        # no store parameter: the README's Prefect Variable bfd_store names the store (extract
        # and decompose wrote into ./bfd-store of the run's working directory instead)
        {"name": "served-extract", "entrypoint": "bfd/flows/extract.py:extract",
         "schedules": [{"interval": 3600}],
         "parameters": {"config": {**CONFIG, "weights": "random", "layers": "0"}}},
        # a folder of one checkpoint: its end line counts the checkpoints audited
        {"name": "served-checkpoints", "entrypoint": "bfd/flows/checkpoints.py:audit_checkpoints",
         "schedules": [{"interval": 3600}],
         "parameters": {"checkpoints": str(ckpts), "config": CONFIG, "store": str(store),
                        "dashboard": False}},
        # images that are not there: its end line says the run failed, and why
        {"name": "served-broken", "entrypoint": "bfd/flows/audit.py:audit",
         "schedules": [{"interval": 3600}],
         "parameters": {"config": {**CONFIG, "weights": "random", "images": str(missing)},
                        "store": str(store), "series": "broken", "dashboard": False}}]}
    (folder / "prefect.yaml").write_text(yaml.safe_dump(spec))
    proc = subprocess.Popen(
        [str(BIN / "bfd"), "serve", "--file", str(folder / "prefect.yaml")], cwd=REPO,
        env={**env, "PREFECT_API_URL": url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=(tmp_path / "serve.log").open("w"),
        text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout],
                     daemon=True).start()

    def next_line(seconds: float) -> str:
        try:
            return lines.get(timeout=seconds)
        except queue.Empty:
            raise AssertionError(f"no line of bfd serve in {seconds} s; its stderr: "
                                 f"{(tmp_path / 'serve.log').read_text()[-3000:]}") from None

    try:
        first, deployment = next_line(120), next_line(30)
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            due = []
            for name in ("audit/served-audit", "extract/served-extract",
                         "audit-checkpoints/served-checkpoints", "audit/served-broken"):
                dep = client.read_deployment_by_name(name)
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep.id])))
                assert runs, "no run of the served schedule (the server runs no scheduler)"
                assert {r.state.type.value for r in runs} == {"SCHEDULED"}
                due.append(min(runs, key=lambda r: r.expected_start_time))
                client.set_flow_run_state(due[-1].id, Scheduled(), force=True)  # due now
            run, extract_run, ckpt_run, broken_run = due
        assert first.startswith("bfd serve: 4 deployment(s) of ") and "being served" in first
        assert deployment.startswith("  served-audit (flow audit): every 1 h; next run 20")
        assert deployment.endswith(f"; store {store}\n"), deployment
        for _ in range(3):
            next_line(30)  # the other deployments'
        said = [next_line(150) for _ in range(8)]
        extract_said, ckpt_said, broken_said = (
            [line for line in said if f"({r.id})" in line]
            for r in (extract_run, ckpt_run, broken_run))
        said = [line for line in said if f"({run.id})" in line]
        assert "Completed" in extract_said[1], extract_said
        (ckpt_audit,) = read_audits(Store(store), f"{CONFIG['model']}@{ckpts}")
        assert ckpt_said[1].endswith(
            f"Completed after {ckpt_said[1].split(' after ')[1].split(';')[0]}; 1 checkpoint(s) "
            f"audited in series {ckpt_audit['series']}, 0 drift value(s) flagged; "
            f"store {store}\n"), ckpt_said
        assert "  served-broken: flow run " in broken_said[1] and " Failed after " in \
            broken_said[1] and str(missing) in broken_said[1], broken_said
        assert read_audits(Store(store), "broken") == []  # refused before any work: no audit
        assert not (folder / "bfd-store").exists()
        assert (sorted(cwd_runs.iterdir()) if cwd_runs.exists() else []) == before
        written = {r["run_id"] for r in read_table(Store(tmp_path / "store"), "runs").to_pylist()}
        extracted = [p.name for p in (tmp_path / "store" / "runs").iterdir()
                     if p.name not in written]
        assert len(extracted) == 1, extracted  # the Variable's store, extracted, not decomposed
        (audit,) = read_audits(Store(store), "served")
        assert audit["flow_run_id"] == str(run.id) and audit["status"] == "complete"
        assert audit["trigger"] == "schedule"  # its schedule's run (it was "flow")
        assert said[0].startswith("20") and said[0].endswith(f"({run.id}) started\n"), said
        assert f"  served-audit: flow run 'served step {audit['step']}' ({run.id}) Completed " \
            "after " in said[1], said
        # the store's first audit is said so, unless the checkpoints' deployment audited into
        # it before (they run side by side)
        ended = (f"; audit {audit['audit_id']} of series served (step {audit['step']}): run "
                 f"{audit['run_id']}; drift: first audit of this series, nothing to compare with")
        first_of_store = f"; the first audit of store {store} (was it moved, or its path mistyped?)"
        assert said[1].endswith((ended + "\n", ended + first_of_store + "\n")), said
    finally:
        stop(proc)


def test_an_audit_s_trigger_tells_a_schedule_from_a_run_by_hand():
    """A deployment's run says what created it whatever its ``trigger`` parameter: prefect.yaml's
    nightly audit gives ``schedule``, and a ``prefect deployment run`` of it was recorded as
    scheduled. The served schedule's run is checked end to end above (``schedule``)."""
    import yaml

    from bfd.flows.prefect_io import audit_trigger, deployment_trigger

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    (nightly,) = [d for d in spec["deployments"] if d["name"] == "nightly-audit"]
    assert nightly["parameters"]["trigger"] == "schedule"
    deployment = UUID(int=1)
    assert deployment_trigger(deployment, True, "schedule") == "schedule"
    assert deployment_trigger(deployment, False, "schedule") == "deployment"
    assert deployment_trigger(deployment, False, None) == "deployment"
    assert deployment_trigger(None, False, None) == "flow"
    assert deployment_trigger(None, False, "schedule") == "schedule"
    # outside a flow run the parameter stands; a caller's name always does
    assert [audit_trigger(t) for t in (None, "schedule", "cli", "checkpoints")] == [
        "flow", "schedule", "cli", "checkpoints"]


def test_serve_builds_the_deployments_of_prefect_yaml():
    """`bfd serve` serves what prefect.yaml declares: names, schedules, parameters."""
    import yaml

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    served = {d.name: d for d in runner_deployments(REPO / "prefect.yaml")}
    assert set(served) == {d["name"] for d in spec["deployments"]}
    assert {"nightly-audit", "audit-checkpoints", "compare"} <= set(served)
    for d in spec["deployments"]:
        assert served[d["name"]].parameters == (d.get("parameters") or {})
        assert len(served[d["name"]].schedules or []) == len(d.get("schedules") or [])
    (cron,) = served["nightly-audit"].schedules
    assert cron.schedule.cron == "0 3 * * *"
    assert cron.active is False  # shipped paused, as prefect deploy registers it
    assert "store" not in json.dumps(spec["deployments"])  # the store is never a working dir


def test_serve_file_outside_the_repository_finds_the_installed_flows(tmp_path):
    """A prefect.yaml in a folder of its own (no bfd/ there): its entrypoints `bfd/...` are
    the installed package's; an entrypoint found in neither place is named in one line."""
    import bfd

    (tmp_path / "prefect.yaml").write_text(
        "deployments:\n  - name: nightly\n    entrypoint: bfd/flows/audit.py:audit\n"
        "    parameters: {config: {model: test_vit}, fail_on_drift: true}\n"
        "  - name: checkpoints\n    entrypoint: bfd/flows/checkpoints.py:audit_checkpoints\n"
        "    schedules: [{interval: 3600}]\n", encoding="utf-8")
    served = runner_deployments(tmp_path / "prefect.yaml")
    assert [(d.name, d.flow_name) for d in served] == [("nightly", "audit"),
                                                         ("checkpoints", "audit-checkpoints")]
    assert served[0].parameters == {"config": {"model": "test_vit"}, "fail_on_drift": True}
    (tmp_path / "prefect.yaml").write_text(
        "deployments:\n  - name: x\n    entrypoint: bfd/flows/nope.py:x\n", encoding="utf-8")
    installed = Path(bfd.__file__).parent / "flows" / "nope.py"
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"entrypoint 'bfd/flows/nope.py:x': no file {tmp_path}/bfd/flows/nope.py nor "
            f"{installed} (the installed bfd package)")):
        runner_deployments(tmp_path / "prefect.yaml")


def served_lines(tmp_path):
    """A ``RunLines`` of two real served deployments (audit, audit-checkpoints), its lines
    kept, and a flow run of each maker (Prefect's own client-side schema objects)."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from prefect.client.schemas.objects import FlowRun

    from bfd.flows.serve import RunLines

    (tmp_path / "prefect.yaml").write_text(
        "deployments:\n  - name: nightly\n    entrypoint: bfd/flows/audit.py:audit\n"
        "  - name: ckpts\n    entrypoint: bfd/flows/checkpoints.py:audit_checkpoints\n",
        encoding="utf-8")
    deps = runner_deployments(tmp_path / "prefect.yaml")
    ids = {d.name: uuid4() for d in deps}
    said: list[str] = []
    lines = RunLines({ids[d.name]: d for d in deps}, said.append)
    t0 = datetime(2026, 12, 3, 13, 22, 50, tzinfo=UTC)

    def run(dep: str, name: str, start: float, end: float | None = None, state=None, **kw):
        return FlowRun(flow_id=uuid4(), deployment_id=ids[dep], name=name,
                       start_time=t0 + timedelta(seconds=start),
                       end_time=None if end is None else t0 + timedelta(seconds=end),
                       state=state, parameters={"store": str(tmp_path / "store")}, **kw)

    return lines, said, run


def test_serve_lines_come_in_time_order_and_name_a_renamed_run_both_ways(tmp_path):
    """One poll that reads a run that started and ended and another that started between:
    the lines in the order of their times (before: the first run's end line, 13:22:57, came
    before the other's start, 13:22:53); the end line of a run renamed since its start line
    gives the name of that line too (before: two names for one id)."""
    from prefect.states import Completed, Running

    from bfd.flows.serve import _when

    lines, said, run = served_lines(tmp_path)
    first = run("nightly", "vit@random audit", 0, state=Running())
    lines.say_runs([first], None)
    renamed = first.model_copy(update={"name": "vit@random-seed-0 step 1796304123",
                                       "end_time": first.start_time.replace(second=57),
                                       "state": Completed()})
    other = run("ckpts", "checkpoints /data/ckpts", 3, state=Running())
    lines.say_runs([renamed, other], None)
    assert [line.split("  ")[0] for line in said] == [
        _when(t) for t in (first.start_time, other.start_time, renamed.end_time)], said
    assert said[1].endswith(f"ckpts: flow run 'checkpoints /data/ckpts' ({other.id}) started")
    assert f"nightly: flow run 'vit@random-seed-0 step 1796304123' ({first.id}) Completed " \
        f"after 7 s, named 'vit@random audit' at its start" in said[2], said
    lines.say_runs([renamed, other], None)  # nothing new: nothing said again
    assert len(said) == 3


def test_serve_ctrl_c_line_says_what_became_of_the_runs_in_progress(tmp_path):
    """Ctrl-C's line of `bfd serve` names each run in progress and whether its audit was
    recorded, read from its store; a run that ended is not named; none in progress: the
    line alone (before: the line alone, whatever was running)."""
    from datetime import UTC, datetime

    from prefect.states import Completed, Running

    from bfd.storage import Store
    from bfd.tasks.audits import audit_row

    lines, said, run = served_lines(tmp_path)
    assert lines.interrupted_line("bfd: interrupted") == "bfd: interrupted"
    recorded, unrecorded, ckpts = (run("nightly", "a audit", 0, state=Running()),
                                   run("nightly", "b audit", 1, state=Running()),
                                   run("ckpts", "checkpoints x", 2, state=Running()))
    done = run("nightly", "c audit", 0, 1, state=Completed())
    lines.say_runs([recorded, unrecorded, ckpts, done], None)
    # the first run's audit row written (as failed: its block ended without drift)
    with audit_row(Store(tmp_path / "store"), "s", 1, "schedule", str(recorded.id),
                   datetime.now(UTC)) as row:
        pass
    assert lines.interrupted_line("bfd: interrupted") == (
        f"bfd: interrupted; 3 run(s) in progress stopped: nightly: flow run 'a audit' "
        f"({recorded.id}): audit {row['audit_id']} of series s (step 1) was recorded as "
        f"failed; nightly: flow run 'b audit' ({unrecorded.id}): no audit was recorded (a "
        f"rerun audits it); ckpts: flow run 'checkpoints x' ({ckpts.id}): 0 audit(s) "
        "recorded since it started, the one in progress not (a rerun audits the rest)")


def test_serve_hands_a_cancelling_run_to_the_runner_once(tmp_path):
    """A run found `Cancelling` by serve's own poll is handed to the runner's cancellation,
    once: Prefect's runner watches for cancellations itself, but that watch ends for good
    after an API outage of a minute, and a cancel was then never acted on (trial 26, F2: the
    run went on, published and recorded its audit; measured by hand with a server restart:
    now `Cancelled` within seconds, nothing published)."""
    from prefect.states import Cancelling, Completed, Running

    lines, said, run = served_lines(tmp_path)
    handed: list = []
    lines.on_cancelling = handed.append
    running = run("nightly", "a audit", 0, state=Running())
    lines.say_runs([running], None)
    assert handed == []
    cancelling = running.model_copy(update={"state": Cancelling()})
    lines.say_runs([cancelling], None)
    lines.say_runs([cancelling], None)  # the next poll: not again
    assert [r.id for r in handed] == [running.id]
    other = run("ckpts", "checkpoints x", 1, 2, state=Completed())
    lines.say_runs([other], None)
    assert len(handed) == 1


@pytest.mark.parametrize(("flow_name", "bad", "needle"), [
    ("audit", {"drift": {"fraction": 2}}, "2 is greater than the maximum of 1"),
    ("audit", {"drift": {"head_type": 1.5}}, "1.5 is greater than the maximum of 1"),
    ("audit", {"drift": {"metrics": {"frac_pos": 3}}}, "3 is greater than the maximum of 1"),
    ("audit", {"drift": {"fraction": -0.1}}, "-0.1 is less than the minimum of 0"),
    ("audit", {"workers": 0}, "0 is less than the minimum of 1"),
    ("audit", {"config": {"model": "m", "n_images": 1}}, "1 is less than the minimum of 2"),
    ("audit", {"config": {"model": "m", "batch_size": 0}}, "0 is less than the minimum of 1"),
    ("audit", {"fail_on_drift": "yes"}, "'yes' is not of type 'boolean'"),
    ("audit-checkpoints", {"workers": 0}, "0 is less than the minimum of 1"),
    ("audit-checkpoints", {"drift": {"fraction": 2}}, "2 is greater than the maximum of 1"),
    ("audit-checkpoints", {"fail_if_not_compared": 1}, "1 is not of type 'boolean'"),
    ("compare", {"workers": 0}, "0 is less than the minimum of 1"),
], ids=lambda v: v if isinstance(v, str) and " " not in v else None)
def test_deployment_schemas_refuse_values_out_of_bounds(flow_name, bad, needle):
    """A deployment's parameter schema (what the server checks a run's parameters against
    when it is submitted: built from the flow as `prefect deploy` and `bfd serve` build it)
    holds the simple bounds: a threshold above 1, a count below its minimum, a gate that is
    no boolean are refused there, not when the run starts; the deployment's own values pass."""
    import jsonschema
    import yaml
    from prefect.utilities.callables import parameter_schema

    from bfd.flows.serve import _load_flow

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    (dep,) = [d for d in spec["deployments"]
              if _load_flow(d["entrypoint"], REPO).name == flow_name]
    schema = parameter_schema(_load_flow(dep["entrypoint"], REPO)).model_dump_for_openapi()
    good = dep["parameters"]
    jsonschema.validate(good, schema)  # the deployment's own parameters pass
    with pytest.raises(jsonschema.ValidationError, match=re.escape(needle)):
        jsonschema.validate({**good, **bad}, schema)


def test_run_start_checks_still_say_why():
    """The schema's bounds do not replace the run's own checks: they still say why."""
    from bfd.flows.params import DriftThresholds

    with pytest.raises(ValueError, match="can never flag: every drift metric is a fraction"):
        DriftThresholds.model_validate({"fraction": 2})
    with pytest.raises(ValueError, match="frac_pos=3 can never flag"):
        DriftThresholds.model_validate({"metrics": {"frac_pos": 3}})


@pytest.mark.parametrize(("text", "needle"), [
    ("deployments: [\n  - a: b\n", "not a YAML deployments file (line 2)"),
    ("", "no deployments to serve"),
    ("deployments:\n  - name: x\n", "deployment 1 needs a name and an entrypoint"),
    ("just a string\n", "no deployments to serve"),
], ids=["not-yaml", "empty", "no-entrypoint", "not-a-mapping"])
def test_serve_refuses_a_bad_deployments_file_in_one_line(tmp_path, capsys, text, needle):
    """Before: a traceback for bad YAML, and an empty file served nothing, never exiting."""
    from conftest import run_cli

    path = tmp_path / "deploy.yaml"
    path.write_text(text)
    code, out, err = run_cli(["serve", "--file", str(path)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"bfd: error: {path}: ") and needle in err, err


def test_serve_ends_on_ctrl_c_in_one_line_and_leaves_no_process(tmp_path):
    """Ctrl-C of `bfd serve` on the temporary server: one line, exit 130, its server gone.
    Before: 110 lines of traceback ending in httpx.ConnectError, exit 1 (the runner paused its
    schedules through the server that the same Ctrl-C had stopped)."""
    import psutil

    from bfd.cli_audits import SERVE_INTERRUPTED

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "bfd.cli", "serve"], cwd=REPO,
                            env={**env, "PREFECT_HOME": str(tmp_path / "home")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    children: list = []
    try:
        assert "being served" in proc.stdout.readline()
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the temporary server
        time.sleep(5)  # serving, as a user's Ctrl-C finds it (not while Prefect starts up)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        _, err = proc.communicate(timeout=60)
        assert (proc.returncode, err) == (130, f"{SERVE_INTERRUPTED}\n")
        assert psutil.wait_procs(children, timeout=10)[1] == []
    finally:
        for pid in [proc.pid, *(c.pid for c in children)]:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        proc.communicate()


@pytest.mark.parametrize(("parameters", "needle"), [
    ("    parameters:\n      config: {modle: vit_tiny_patch16_224}\n",
     "config.modle: Extra inputs are not permitted"),
    ("    schedules:\n      - cron: '0 3 * * *'\n        parameters: {workers: many}\n",
     "workers: Input should be a valid integer"),
], ids=["typo-in-config", "bad-type-in-a-schedule"])
def test_serve_refuses_bad_deployment_parameters_in_one_line(tmp_path, capsys, parameters,
                                                             needle):
    """A typo in a deployment's parameters is named in one short line before anything is
    registered (the server's 422 answer printed its whole schema, 16 kB on one line)."""
    from conftest import run_cli

    import bfd

    (tmp_path / "bfd").symlink_to(Path(bfd.__file__).parent)
    path = tmp_path / "prefect.yaml"
    path.write_text("deployments:\n  - name: nightly\n    entrypoint: bfd/flows/audit.py:audit\n"
                    + parameters)
    code, out, err = run_cli(["serve", "--file", str(path)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"bfd: error: {path}: nightly: invalid parameters: ") and needle in err
    assert len(err) < 300, err


def test_a_paused_deployment_is_said_paused_with_no_next_run():
    """The shipped deployments are paused: `bfd serve` said a stale "next run" in the past
    for them (runs left scheduled by an earlier serve of the same names), which never ran."""
    from datetime import UTC, datetime

    from bfd.flows.serve import _when, schedule_line

    served = {d.name: d for d in runner_deployments(REPO / "prefect.yaml")}
    stale = datetime(2026, 12, 4, 2, 14, tzinfo=UTC)
    assert schedule_line(served["nightly-audit"].schedules, lambda: stale) == (
        "cron '0 3 * * *' (UTC) (inactive); paused: no run until a schedule is active "
        "(active: true in the file)")
    (item,) = served["nightly-audit"].schedules
    active = item.model_copy(update={"active": True})
    assert schedule_line([active], lambda: stale) == (
        f"cron '0 3 * * *' (UTC); next run {_when(stale)}")
    assert schedule_line([active], lambda: None).endswith("; next run none scheduled")
    assert schedule_line([], lambda: stale) == "no schedule"


@pytest.mark.slow
def test_serve_deletes_the_late_runs_an_earlier_schedule_made(prefect_harness, tmp_path):
    """Runs an earlier server's (or serve's) schedule made and nobody ran, late now: `bfd
    serve` started them all at once with the deployment's parameters of then (trial 17: 4 at
    once, with a dtype no file held any more). It deletes them and says so on the
    deployment's line; a late run made by hand is kept."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.runner import Runner
    from prefect.states import Scheduled

    from bfd.flows.serve import RunLines

    (tmp_path / "prefect.yaml").write_text(
        "deployments:\n  - name: ckpts\n    entrypoint: bfd/flows/checkpoints.py:"
        "audit_checkpoints\n    schedules:\n      - interval: 60\n    parameters:\n"
        "      checkpoints: /data/ckpts\n      config:\n        model: test_vit\n",
        encoding="utf-8")
    (dep,) = runner_deployments(tmp_path / "prefect.yaml")
    dep_id = Runner().add_deployment(dep)
    now = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        # the schedule's runs of the last 10 minutes, as a stopped server's scheduler left them
        client.request("POST", "/deployments/{id}/schedule", path_params={"id": dep_id},
                       json={"start_time": (now - timedelta(minutes=10)).isoformat(),
                             "end_time": (now - timedelta(minutes=1)).isoformat(),
                             "max_runs": 3})
        by_hand = client.create_flow_run_from_deployment(
            dep_id, state=Scheduled(scheduled_time=now - timedelta(minutes=5)))

        def waiting() -> list:
            runs = client.read_flow_runs()
            return [r for r in runs if r.deployment_id == dep_id
                    and r.state.type.value == "SCHEDULED"
                    and r.expected_start_time < now]

        late = [r for r in waiting() if r.auto_scheduled]
        assert len(late) == 3
        said: list[str] = []
        lines = RunLines({dep_id: dep}, said.append)
        lines.drop_late_runs()
        assert [r.id for r in waiting()] == [by_hand.id]
        lines.say_serving(tmp_path / "prefect.yaml")
    first = min(r.expected_start_time for r in late).astimezone().strftime(
        "%Y-%m-%d %H:%M:%S %z")
    assert said[1].endswith(f"; 3 late run(s) its schedule made before this serve (from "
                            f"{first} on, with the parameters of then) deleted"), said


# An audit served for the signal tests: 16 shards of 4 images at 224 px, several seconds of
# extraction on 2 cores, so that a signal at its first shard finds it in progress.
SLOW_AUDIT = {"model": "test_vit", "weights": "random", "images": "samples", "n_images": 64,
              "img_size": 224, "images_per_chunk": 4, "layers": "0,1"}


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code", "head"), [
    (signal.SIGINT, 130, "bfd: interrupted; serving stopped"),
    (signal.SIGTERM, 143, "bfd: terminated (SIGTERM); serving stopped"),
], ids=["ctrl-c", "sigterm"])
def test_serve_stopped_mid_run_crashes_the_run_in_prefect_and_exits_non_zero(
        prefect_harness, tmp_path, signum, code, head):
    """Ctrl-C or SIGTERM of `bfd serve` on a Prefect server of its own (PREFECT_API_URL) while
    a served audit extracts: one line naming the run and that its audit was not recorded, exit
    130 or 143, the run and its subflow runs `Crashed` in Prefect with that line, its process
    gone (no more shards), no audit and no run published. Before (trial 26, F5, F6): Ctrl-C
    let the run go on and publish, or left it `Running` for good; SIGTERM set it `Cancelled`
    as if a person had cancelled it; no line, exit 0 both."""
    import psutil
    import yaml
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    import bfd

    store = tmp_path / "store"
    (tmp_path / "bfd").symlink_to(Path(bfd.__file__).parent)
    (tmp_path / "prefect.yaml").write_text(yaml.safe_dump({"deployments": [{
        "name": f"stopped-{signum}", "entrypoint": "bfd/flows/audit.py:audit",
        "parameters": {"config": SLOW_AUDIT, "store": str(store), "dashboard": False}}]}))
    proc = subprocess.Popen(
        [str(BIN / "bfd"), "serve", "--file", str(tmp_path / "prefect.yaml")], cwd=tmp_path,
        env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    children: list = []
    try:
        assert "being served" in proc.stdout.readline()
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(f"audit/stopped-{signum}")
            run = client.create_flow_run_from_deployment(dep.id)
            shards = store / "runs"
            deadline = time.monotonic() + 120
            while not list(shards.glob("*/shards/*.json")):
                assert time.monotonic() < deadline and proc.poll() is None, "no shard in 120 s"
                time.sleep(0.1)
            children = psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, signum)  # the service's stop (systemd, kill PID), or Ctrl-C
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == code, err
            assert err.count("\n") == 1 and err.startswith(f"{head}; 1 run(s) in progress "
                                                           f"stopped: "), err
            assert f"({run.id}): no audit was recorded (a rerun audits it)" in err, err
            assert err.endswith("flow run(s) marked Crashed in Prefect, with this line\n"), err
            assert psutil.wait_procs(children, timeout=10)[1] == []  # the run's process too
            kept = sorted(shards.glob("*/shards/*.json"))
            time.sleep(2)
            assert sorted(shards.glob("*/shards/*.json")) == kept  # nothing goes on
            ended = client.read_flow_run(run.id)
            assert ended.state.type.value == "CRASHED", ended.state
            assert err.startswith(f"bfd: {ended.state.message}; 2 flow run(s) marked "), err
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])))
            assert subflows and {r.state.type.value for r in subflows} == {"CRASHED"}
            assert client.read_deployment(dep.id).paused  # as Prefect's shutdown leaves it
        assert read_audits(Store(store)) == []
        assert read_table(Store(store), "runs").num_rows == 0  # nothing published
    finally:
        for pid in [proc.pid, *(c.pid for c in children)]:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        proc.communicate()


def test_serve_times_carry_their_offset_from_utc(monkeypatch):
    """bfd serve's times say their offset from UTC: a zone's name may not (under the POSIX
    TZ=UTC-14 it was "UTC" 14 h ahead, trial 31)."""
    import time
    from datetime import UTC, datetime

    from bfd.flows.serve import _when

    moment = datetime(2026, 12, 5, 1, 4, 7, tzinfo=UTC)
    try:
        for tz, said in (("UTC-14", "2026-12-05 15:04:07 +1400"),
                         ("America/Adak", "2026-12-04 15:04:07 -1000"),
                         ("UTC", "2026-12-05 01:04:07 +0000")):
            monkeypatch.setenv("TZ", tz)
            time.tzset()
            assert _when(moment) == said
    finally:
        monkeypatch.undo()
        time.tzset()
