"""Session-wide test environment: offline hub, private Prefect home, one Prefect test server."""

import atexit
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Each process that loads this file (pytest, each xdist worker) makes its own Prefect home and
# removes it when it ends; the processes it starts inherit PREFECT_HOME but never remove it
# (only the process that made it: a forked child runs no atexit handlers, and the pid check
# guards the rest). Registered before Prefect is imported, it runs after Prefect's own exit
# handlers (last registered, first run), once any temporary server has stopped.
_home = tempfile.mkdtemp(prefix="bfd-test-prefect-")
_maker = os.getpid()


def _remove_home() -> None:
    if os.getpid() == _maker:
        shutil.rmtree(_home, ignore_errors=True)


atexit.register(_remove_home)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PREFECT_HOME"] = _home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "60"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# A suite started in the background of a shell without job control (`bash -c '... &'`, a CI
# step's `&`) inherits SIGINT ignored, and so would every process it starts: the tests that send
# a terminal's Ctrl-C to bfd (which keeps an ignored SIGINT ignored, as Python does) or to a bare
# python would wait for an exit that never comes. The suite's processes get the default handler.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary, SQLite) Prefect server for the tests that run flows.

    The flows run in this process send no heartbeats: a flow run's heartbeat thread sleeps in
    steps of a second and the flow waits for it when it ends, 0-1 s of idle wall time per flow
    run (about 2.4 s per audit: extract, decompose, audit), which no test looks at. As for the
    temporary server of a command (``bfd.flows.server.temporary_server_settings``); the CLI
    subprocesses, which read the settings from the environment, still send them."""
    import prefect.settings
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60), temporary_settings(
            updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        # worker processes and CLI subprocesses talk to the same test server
        os.environ["PREFECT_API_URL"] = prefect.settings.PREFECT_API_URL.value()
        yield
        os.environ.pop("PREFECT_API_URL", None)


def interrupted_at(at: str, argv: list[str], call: int = 1) -> str:
    """The code of a ``python -c`` process that runs ``bfd argv`` (its own Ctrl-C:
    ``bfd.cli_interrupt``) and sends itself SIGINT at the ``call``-th call of the function
    ``at`` (``module:name``, wrapped before the command starts), a moment before running it."""
    module, name = at.split(":")
    return ("import importlib, os, signal, sys, time\n"
            f"mod = importlib.import_module({module!r})\nreal = mod.{name}\ncalls = []\n"
            "def at(*a, **k):\n"
            "    calls.append(1)\n"
            f"    if len(calls) == {call}:\n"
            "        os.kill(os.getpid(), signal.SIGINT)\n"
            "        time.sleep(0.5)  # the handler runs meanwhile\n"
            "    return real(*a, **k)\n"
            f"mod.{name} = at\n"
            f"sys.argv = ['bfd', *{argv!r}]\n"
            "from bfd.cli import main\nsys.exit(main())\n")


@contextlib.contextmanager
def env_kept():
    """``bfd.cli.main`` sets Prefect defaults in os.environ; keep them out of other tests."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """``bfd argv`` in this process, its Prefect defaults kept out of os.environ: (exit code,
    stdout, stderr)."""
    from bfd.cli import main

    capsys.readouterr()
    with env_kept():
        code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def bfd_without_prefect_api(argv: list[str], tmp_path: Path,
                            cwd: Path | None = None) -> tuple[dict, str, str]:
    """``bfd argv`` in a new process that sees no Prefect API (a fresh Prefect home, no
    PREFECT_API_URL), as a user without a Prefect server runs it, in folder ``cwd``
    (``tmp_path`` when None); returns its exit code and the pipeline modules it imported, its
    stdout and its stderr."""
    code = ("import json, sys, time\nimport bfd.cli_reuse as reuse\nfrom bfd.cli import main\n"
            # when the reuse check began (an audit recorded without Prefect counts it)
            "checks, checked = reuse.computed_run_of, []\n"
            "reuse.computed_run_of = lambda *a, **k: checked.append(time.time()) or "
            "checks(*a, **k)\n"
            f"code = main({argv!r})\n"
            "print(json.dumps({'code': code, 'loaded': sorted(m for m in ('torch', 'timm', "
            "'prefect') if m in sys.modules), 'checked': checked}))\n")
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd or tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    *out, last = proc.stdout.splitlines()
    return json.loads(last), "\n".join(out), proc.stderr


# The test files that take longest (minutes on 2 cores) start first: the two test processes
# (pytest-xdist, --dist loadfile) take whole files in collection order (--no-loadscope-reorder
# in pyproject: xdist otherwise hands out the files with most tests first), so the short ones
# fill in beside them instead of one long file running alone at the end.
# Ranked by the seconds each file took in a whole run (pytest --durations=80, summed per file,
# 2026-12-03 23:20, a machine loaded by other work, the suite 2308 s): test_reuse 500,
# test_schedule 486 (its end-to-end test alone 415: started early, or it ends alone),
# test_audit 473, test_bench 400, test_pipeline_kills 281 (one test), test_extract 212,
# test_interrupt 174, test_verify 173, test_overlap 138, test_publish_faults 107,
# test_cluster 96, test_server 92 (one test), test_early_refusals 150 (about 90 since its
# commands share a process), test_dashboard 48, test_dashboard_browser 47, test_cli 42,
# test_model_args 40, test_readme 39, test_bad_inputs 36, test_spellings 35; the other files
# 30 s or less. A file of one or two tests makes xdist hand that process its next file at
# once (it refills a process left with 2 tests or fewer), so the one-test files come before
# the short files that fill in at the end.
LONGEST_FIRST = ("test_reuse.py", "test_schedule.py", "test_audit.py", "test_bench.py",
                 "test_pipeline_kills.py", "test_extract.py", "test_interrupt.py",
                 "test_verify.py", "test_overlap.py", "test_publish_faults.py",
                 "test_cluster.py", "test_server.py", "test_early_refusals.py",
                 "test_dashboard.py", "test_dashboard_browser.py", "test_cli.py",
                 "test_model_args.py", "test_readme.py", "test_bad_inputs.py",
                 "test_spellings.py")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file,
    # its order
