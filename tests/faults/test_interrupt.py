"""Ctrl-C of a real ``bfd extract`` process mid-run, sent as a terminal sends it (SIGINT to its
whole process group, its own temporary Prefect server included): one line, exit 130, no
process left behind, the completed shards kept, and a rerun that computes only the others
and ends bit for bit equal to an uninterrupted run. (How fast it ends: bench/interrupt.py.)"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import env_kept, interrupted_at

from bfd.cli import main
from bfd.cli_interrupt import MESSAGE
from bfd.storage import Store, open_activations

REPO = Path(__file__).resolve().parents[2]
N_SHARDS = 48  # enough that the extraction is still running when the signal lands
EXTRACT = ["extract", "--model", "test_vit", "--weights", "random", "--n-images",
           str(4 * N_SHARDS), "--img-size", "32", "--layers", "0,2", "--dtype", "float32",
           "--images-per-chunk", "4", "--images-per-shard", "4"]


def markers(store: Store) -> set[str]:
    return {p.name for p in store.runs_dir.glob("*/shards/*.json")}


def wait_for_shards(proc: subprocess.Popen, store: Store, n: int, poll: float = 0.01) -> None:
    """Until ``n`` shards of the store are marked done, or the process ends (at most 300 s:
    a guard against a hang, no timing of anything)."""
    deadline = time.monotonic() + 300
    while proc.poll() is None and len(markers(store)) < n and time.monotonic() < deadline:
        time.sleep(poll)


def live_members(pgid: int) -> list[psutil.Process]:
    """The processes of group ``pgid`` that still run (zombies waiting for a reaper aside)."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def end_group(proc: subprocess.Popen) -> None:
    """The command, if still running, and every process left in its group, killed: a failed
    test leaves nothing behind."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for left in live_members(proc.pid):
        left.kill()


@pytest.mark.slow
def test_ctrl_c_ends_extract_in_one_line_and_a_rerun_resumes(prefect_harness, tmp_path, capsys):
    whole, store = Store(tmp_path / "whole"), Store(tmp_path / "interrupted")
    with env_kept():
        assert main([*EXTRACT, "--store", str(whole.root)]) == 0
    (rid,) = [p.name for p in whole.runs_dir.iterdir()]

    # its own temporary server, in its process group, as a command typed in a terminal
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen([sys.executable, "-m", "bfd.cli", *EXTRACT, "--store",
                             str(store.root)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_shards(proc, store, 2, poll=0.002)
        os.killpg(proc.pid, signal.SIGINT)
        kept = markers(store)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    assert proc.returncode == 130, err
    assert out == ""
    lines = err.splitlines()
    assert lines[-1] == MESSAGE
    assert [line for line in lines if "interrupted" in line] == [MESSAGE]
    assert "Traceback" not in err and "Error" not in err, err
    # no temporary server or worker left running (SIGKILLed processes may take a moment)
    deadline = time.monotonic() + 30
    while live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert live_members(proc.pid) == []

    done = markers(store)
    assert kept <= done and 2 <= len(done) < N_SHARDS
    capsys.readouterr()
    with env_kept():
        assert main([*EXTRACT, "--store", str(store.root)]) == 0
    plan = re.search(r"(\d+) shards \(\d+ images\) to extract", capsys.readouterr().err)
    assert plan and int(plan.group(1)) == N_SHARDS - len(done)
    assert len(markers(store)) == N_SHARDS
    got, want = open_activations(store, rid), open_activations(whole, rid)
    assert sorted(got.data_vars) == sorted(want.data_vars)
    for site in want.data_vars:
        assert np.array_equal(got[site].values, want[site].values), site


def _server_of(pid: int, timeout: float = 120) -> psutil.Process:
    """The temporary Prefect server a ``bfd`` process started (once it runs uvicorn)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(pid).children(recursive=True):
                if "uvicorn" in " ".join(child.cmdline()):
                    return child
        time.sleep(0.05)
    raise AssertionError(f"no temporary server of process {pid} within {timeout} s")


def _gone(proc: psutil.Process, timeout: float = 30) -> bool:
    """Whether ``proc`` ended (or is a zombie) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


# Prefect's own profiles file, as `prefect config set`/`unset` leaves it: the temporary
# server is then Prefect's SubprocessASGIServer (bfd.flows.server.start_early), not bfd's own
PROFILE = ('active = "ephemeral"\n\n[profiles.ephemeral]\n'
           'PREFECT_SERVER_ALLOW_EPHEMERAL_MODE = "true"\n')


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "profile"), [(signal.SIGTERM, False), (signal.SIGKILL, False),
                                                 (signal.SIGKILL, True)],
                         ids=["TERM", "KILL", "KILL-with-a-profile"])
def test_sigterm_or_kill_of_the_command_alone_leaves_no_server(prefect_harness, tmp_path, signum,
                                                               profile):
    """A scheduler's time limit (SIGTERM to the command's pid) ended it with no line and left
    its temporary server running, as kill -9 did (an OOM kill): ~230 MB each, for good; with
    a Prefect profiles file it still did after kill -9 (Prefect's own server)."""
    store = Store(tmp_path / "s")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if profile:
        home = tmp_path / "prefect-home"
        home.mkdir()
        (home / "profiles.toml").write_text(PROFILE, encoding="utf-8")
        env["PREFECT_HOME"] = str(home)
    proc = subprocess.Popen([sys.executable, "-m", "bfd.cli", *EXTRACT, "--store",
                             str(store.root)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        server = _server_of(proc.pid)
        wait_for_shards(proc, store, 1)
        proc.send_signal(signum)  # the command alone, not its process group
        _, err = proc.communicate(timeout=120)
        assert _gone(server), server.cmdline()
    finally:
        end_group(proc)
    if signum == signal.SIGTERM:
        assert proc.returncode == 143, err
        assert err.splitlines()[-1] == MESSAGE.replace("bfd: interrupted",
                                                       "bfd: terminated (SIGTERM)"), err
    else:
        assert proc.returncode == -signal.SIGKILL


def test_an_ignored_sigint_stays_ignored_and_sigterm_still_ends():
    """A process started with SIGINT ignored (a shell script's `bfd audit ... &`, which a
    Ctrl-C meant for the script must spare) keeps it so, as Python itself does; SIGTERM still
    ends it with its line. bfd's handler used to take SIGINT back."""
    code = ("import os, signal, time\n"
            "from bfd.cli_interrupt import end_on_interrupt\n"
            "end_on_interrupt()\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "time.sleep(0.3)\n"
            "print('alive', flush=True)\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "time.sleep(30)\n")

    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, preexec_fn=ignore_sigint)
    assert (proc.returncode, proc.stdout) == (143, "alive\n"), proc.stderr
    assert proc.stderr.startswith("bfd: terminated (SIGTERM)"), proc.stderr
    # started with the default SIGINT, the same process ends at the first signal
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (130, ""), proc.stderr


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
def test_a_ctrl_c_that_the_audit_ignores_spares_its_temporary_server(tmp_path):
    """`bfd audit ... &` in a shell script (started with SIGINT ignored), and a Ctrl-C for the
    script (SIGINT to its whole process group): the audit ran on, but its temporary server,
    in the same group, stopped (uvicorn takes SIGINT back); the audit then hung ~5 min on its
    Prefect clients, holding the run's lock, and died with a traceback, exit 1 (trial 19).
    Now it completes and records its audit, and its server still ends with it."""
    from bfd.storage.audits import read_audits

    store = Store(tmp_path / "s")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    n_shards = 12  # still running when the first is done
    audit = ["audit", *EXTRACT[1:], "--n-images", str(4 * n_shards), "--store", str(store.root),
             "--no-dashboard", "--format", "json"]
    proc = subprocess.Popen([sys.executable, "-m", "bfd.cli", *audit], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_ignore_sigint)
    try:
        server = _server_of(proc.pid)
        wait_for_shards(proc, store, 1)
        assert proc.poll() is None, "the audit ended before the Ctrl-C"
        os.killpg(proc.pid, signal.SIGINT)  # the script's Ctrl-C, to the command's group
        out, err = proc.communicate(timeout=400)
        assert _gone(server), server.cmdline()  # no server left behind once it ended
    finally:
        end_group(proc)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "interrupted" not in err, err
    assert len(markers(store)) == n_shards
    (row,) = read_audits(store)
    assert row["status"] == "complete"
    assert json.loads(out)["audit_id"] == row["audit_id"]


@pytest.mark.slow
def test_ctrl_c_leaves_the_flow_runs_crashed_in_the_prefect_api(prefect_harness, tmp_path):
    """Ctrl-C of `bfd audit` against a Prefect server (PREFECT_API_URL: a scheduled team's
    setup): its flow runs are `Crashed` there, with the command's line, as Prefect's engine
    leaves a run a Ctrl-C ends. The command ends by os._exit, past that engine: its runs
    stayed `Running` in the UI for good; then the extract subflow alone was Crashed and the
    audit around it stayed `Running` (trial 17)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    store = tmp_path / "store"
    # SIGINT as the second shard is marked done (the flow runs well under way)
    audit = ["audit", *EXTRACT[1:], "--store", str(store), "--no-dashboard"]
    code = interrupted_at("bfd.tasks.extract:mark_shard_done", audit, call=2)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 130, proc.stderr
    line = proc.stderr.splitlines()[-1]
    assert line.startswith("bfd: interrupted"), proc.stderr
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(
            any_=["audit", "extract"])))
    ours = {r.flow_id: r for r in runs if r.parameters.get("store") == str(store)
            or (r.parameters.get("config") or {}).get("store") == str(store)}
    assert len(ours) == 2, [(r.name, r.parameters) for r in runs]
    for run in ours.values():
        assert run.state.type.value == "CRASHED", (run.name, run.state)
        assert run.state.message == line.removeprefix("bfd: ")
