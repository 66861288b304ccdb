"""Prefect's temporary API server, started ahead of the flows that need it.

Without ``PREFECT_API_URL`` a flow starts a temporary server (a uvicorn process, several
seconds) on its first call, after the command has imported torch, timm and the flows.
``start_early`` starts the same server first, so that its start-up overlaps those imports.
Importing this module imports no Prefect.

Where Prefect's settings come from the environment alone (no settings file, no profile:
``settings_from_environment``) and Prefect is not imported yet, the command launches the
server process itself, as Prefect's ``SubprocessASGIServer`` does (the same uvicorn command
line and environment: the same server app, database and recorded runs), before it imports
Prefect, and points ``PREFECT_API_URL`` at it for the rest of the command. The server then
starts ~3 s sooner (it no longer waits for the command to import ``prefect`` and
``prefect.server.api.server``), and the command never imports the server's modules (~2 s).
What differs for a user: Prefect's client sees a configured API rather than its temporary
one (only Prefect Cloud checks tell them apart), ``bfd -v`` does not log Prefect's "Starting
temporary server" line, and child processes of the command (Dask workers) reach the same
server through the environment. Otherwise ``start_early`` starts Prefect's own
``SubprocessASGIServer`` in a background thread; the flows find it running, exactly as if
they had started it themselves.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

_starting: list[threading.Thread] = []
_launched: list[_Launched] = []  # the server this module launched
# Settings that say whether there may be a temporary server at all (and which profile).
_EPHEMERAL_ENV = ("PREFECT_SERVER_EPHEMERAL_ENABLED", "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE",
                  "PREFECT_PROFILE")
# Where a user sets the heartbeat interval (the second, Prefect's legacy name).
_HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


def _prefect_home() -> Path:
    """Prefect's home folder, as Prefect resolves it (read without importing Prefect)."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def _profiles_path() -> Path:
    """Prefect's profiles file (which may not exist)."""
    return Path(os.environ.get("PREFECT_PROFILES_PATH") or _prefect_home() / "profiles.toml")


def prefect_api_configured() -> bool:
    """Whether Prefect would send flow runs to an API server (``PREFECT_API_URL``), read
    without importing Prefect (seconds): the environment, then the settings files Prefect
    reads in the working directory, then the active profile. When unsure, True."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    dotenv = Path(".env")
    if dotenv.is_file() and "PREFECT_" in dotenv.read_text(errors="replace"):
        return True
    if Path("prefect.toml").is_file():
        return True
    pyproject = Path("pyproject.toml")
    if pyproject.is_file() and "tool.prefect" in pyproject.read_text(errors="replace"):
        return True
    profiles = _profiles_path()
    if not profiles.is_file():
        return False  # Prefect's own default profile: a temporary server, no API
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return True
    active = os.environ.get("PREFECT_PROFILE") or data.get("active")
    profile = (data.get("profiles") or {}).get(active) if active else None
    return isinstance(profile, dict) and bool(profile.get("PREFECT_API_URL"))


def settings_from_environment() -> bool:
    """Whether Prefect's settings all come from the environment, read without importing
    Prefect: no ``PREFECT_API_URL`` (``prefect_api_configured``), no profiles file, no
    setting of the temporary server's own in the environment."""
    return not (prefect_api_configured() or _profiles_path().exists()
                or any(k in os.environ for k in _EPHEMERAL_ENV))


# The server's launcher: it asks the kernel to SIGKILL it when the command that started it
# ends (Linux's PR_SET_PDEATHSIG, kept across exec), then becomes the server. A command
# killed with kill -9 (an OOM kill, a scheduler's hard limit) ran no exit handler and left
# the server running (~230 MB, for good, parent pid 1). Elsewhere: none such, as before.
_DIES_WITH_PARENT = """
import ctypes, os, signal, sys
parent = int(sys.argv[1])
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != parent:  # the command ended before the kernel was asked
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


# The same for a server started from a thread (Prefect's SubprocessASGIServer, started in
# the background: PR_SET_PDEATHSIG would fire when that thread ends): a thread of the server
# process polls its parent pid and SIGKILLs the server once the command is gone; then runs
# ``python -m <module> ARGS`` as given after the pid.
_WATCHES_PARENT = """
import os, runpy, signal, sys, threading, time
parent = int(sys.argv[1])
def watch():
    while os.getppid() == parent:
        time.sleep(0.5)
    os.kill(os.getpid(), signal.SIGKILL)
if os.getppid() != parent:
    sys.exit(0)
threading.Thread(target=watch, daemon=True).start()
sys.argv = [sys.argv[3], *sys.argv[4:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


# What the temporary server's process is given besides os.environ, as Prefect's
# SubprocessASGIServer gives it (no UI; the server app's ephemeral mode).
_SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1"}


def _server_command(launcher: str, app_dir: Path, port: int) -> list[str]:
    """The temporary server's command line, SubprocessASGIServer's uvicorn command, run
    through ``launcher`` (``_DIES_WITH_PARENT`` or ``_WATCHES_PARENT``), which ends it with
    this process."""
    return [sys.executable, "-c", launcher, str(os.getpid()), "-m", "uvicorn", "--app-dir",
            str(app_dir), "--factory", "prefect.server.api.server:create_app", "--host",
            "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]


def _spared_by_ctrl_c() -> dict[str, bool]:
    """``subprocess.Popen`` options of the temporary server: its own session where this
    command was started with SIGINT ignored (a shell script's ``bfd audit ... &``), so that
    the Ctrl-C that the command ignores, sent to its whole process group, spares the server
    too. uvicorn takes SIGINT back whatever it inherits: the server stopped while the command
    ran on, its Prefect clients retrying it for ~5 min, then exit 1 with an
    ``httpx.ConnectError`` traceback, the run's lock held all along (trial 19). It still ends
    with the command (its launcher, the exit handler, ``bfd.cli_interrupt``'s end), which
    find it by parent, not by group. Otherwise (SIGINT at its default or handled) the server
    stays in the command's group, as before."""
    return {"start_new_session": True} if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else {}


class _Launched:
    """A temporary server process launched as ``SubprocessASGIServer`` launches it."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.port = 0
        self.answered = False  # seen answering (wait)
        self.stopped = False
        self.spawn()
        atexit.register(self.stop)

    def spawn(self) -> None:
        with socket.socket() as sock:  # a free port, as the server binds it
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        spec = importlib.util.find_spec("prefect")
        app_dir = Path(spec.origin).parent.parent if spec and spec.origin else Path()
        # Its output goes to a log file, not the command's terminal: a Ctrl-C reaches the
        # whole process group, and a server still starting then printed click's "Aborted!"
        # after the command's one line.
        home = _prefect_home()
        home.mkdir(parents=True, exist_ok=True)
        self.log = home / "bfd-temporary-server.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                _server_command(_DIES_WITH_PARENT, app_dir, self.port),
                env={**os.environ, **_SERVER_ENV}, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, **_spared_by_ctrl_c())

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def wait(self, timeout: float) -> None:
        """Waits until the server answers.

        Raises:
            RuntimeError: If it does not answer within ``timeout`` seconds or exits (Prefect,
                imported by now, has read ``PREFECT_API_URL``: no second port is tried).
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {code}"
                                   + (" (its port was taken)" if code == 3 else "")
                                   + f"; its log: {self.log}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        self.answered = True
                        return
            time.sleep(0.1)
        raise RuntimeError(f"the temporary Prefect server did not answer within {timeout:g} s "
                           "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")

    def stop(self) -> None:
        """Stops the server: one that answered is waited for (5 s, then killed); one never
        waited for (a command refused before its first flow: an unknown model, layers out
        of range) is told to stop and left to do so once started: its start-up, seconds,
        held the command's exit back after its one line (2-7 s, 2 busy cores)."""
        if self.process is None or self.stopped:
            return
        self.stopped = True
        self.process.terminate()
        if not self.answered:
            return
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _dying_server():
    """Prefect's ``SubprocessASGIServer``, whose uvicorn process is started through
    ``_WATCHES_PARENT`` (killed with the command, as the server ``_Launched`` starts), its
    command line and environment otherwise Prefect's own. It is the instance the flows get
    from ``SubprocessASGIServer()`` (one per port: Prefect's ``_instances``). Where Prefect's
    settings come from a profile, a command killed with kill -9 left Prefect's own server
    running for good (the README's ``prefect config set`` writes one)."""
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class DiesWithCommand(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen:  # Prefect 3's, launched through
            return subprocess.Popen(  # the launcher
                _server_command(_WATCHES_PARENT, prefect.__module_path__.parent, self.port),
                env={**os.environ, **_SERVER_ENV,
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
                **_spared_by_ctrl_c())

    return DiesWithCommand()


def start_early() -> None:
    """Starts the temporary server in the background, when the flows will need one."""
    if "prefect" not in sys.modules and settings_from_environment():
        launched = _Launched()
        _launched.append(launched)
        os.environ["PREFECT_API_URL"] = launched.api_url  # before Prefect reads its settings
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    # A start that fails here is retried, and its error reported, by the flow's own start.
    thread = threading.Thread(target=_dying_server().start, name="bfd-prefect-server",
                              daemon=True)
    thread.start()
    _starting.append(thread)


def wait_started() -> None:
    """Waits for ``start_early``'s server to answer; call it before the first flow runs (a
    flow that found the server starting would not wait for it)."""
    while _starting:
        _starting.pop().join()
    for launched in _launched:
        launched.wait(float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
                                           90)))


@contextlib.contextmanager
def temporary_server_settings() -> Iterator[None]:
    """Prefect settings of flows run against the temporary server: no flow-run heartbeats,
    unless the user set their interval.

    A flow run's heartbeat thread sleeps in steps of a second, and the flow waits for it when
    it ends: 0-1 s of idle wall time per flow run, three of them in an audit (extract,
    decompose, audit). Heartbeats let a long-running server tell a crashed flow run from a
    live one; the temporary server ends with the command, so it can tell nothing from them.
    Where ``PREFECT_API_URL`` names a server, the flows send them as always.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    if ((PREFECT_API_URL.value() and not _launched)
            or not PREFECT_SERVER_EPHEMERAL_ENABLED.value()
            or any(name in os.environ for name in _HEARTBEAT_ENV)):
        yield
        return
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
