"""Session-wide test environment: offline hub, private Prefect home, one Prefect test server."""

import atexit
import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

_home = tempfile.mkdtemp(prefix="bfd-test-prefect-")
# A folder of the whole session: made by its first process (xdist's controller, or the only
# process), whose environment the test processes inherit.
if "BFD_TEST_SHARED" not in os.environ:
    os.environ["BFD_TEST_SHARED"] = tempfile.mkdtemp(prefix="bfd-test-shared-")
    atexit.register(shutil.rmtree, os.environ["BFD_TEST_SHARED"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PREFECT_HOME"] = _home
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "60"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary, SQLite) Prefect server for the tests that run flows."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        # worker processes and CLI subprocesses talk to the same test server
        os.environ["PREFECT_API_URL"] = prefect.settings.PREFECT_API_URL.value()
        yield
        os.environ.pop("PREFECT_API_URL", None)


# What a Prefect server does to the database of its home at start-up (Prefect 3: the migrations
# to the current schema, then its block types registered), done once in a home of its own.
_SET_UP = ("import asyncio\n"
           "from prefect.server.database import provide_database_interface\n"
           "from prefect.server.models.block_registration import run_block_auto_registration\n"
           "async def main():\n"
           "    db = provide_database_interface()\n"
           "    await db.create_db()\n"
           "    async with await db.session() as session:\n"
           "        await run_block_auto_registration(session=session)\n"
           "asyncio.run(main())\n")


def prefect_home(home: Path) -> Path:
    """``home`` made a Prefect home whose database (``prefect.db``, Prefect's default
    ``PREFECT_HOME/prefect.db``) is already set up, as after a user's first Prefect command: a
    server started there finds its schema current and runs no migrations (10-25 s on 2 busy
    cores, for each new home). The set-up database is made once per session (by the first
    test process that asks, the others waiting on its lock) and copied; it holds no runs."""
    shared = Path(os.environ["BFD_TEST_SHARED"])
    template = shared / "prefect-home" / "prefect.db"
    with open(shared / "prefect-home.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not template.exists():
            folder = Path(tempfile.mkdtemp(prefix="prefect-home-", dir=shared))
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
            env |= {"PREFECT_HOME": str(folder), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            done = subprocess.run([sys.executable, "-c", _SET_UP], env=env, text=True,
                                  capture_output=True, timeout=300)
            assert done.returncode == 0, done.stderr[-3000:]
            folder.rename(template.parent)
    home.mkdir(parents=True, exist_ok=True)
    # SQLite's backup: one consistent file, whatever the template's journal holds
    with contextlib.closing(sqlite3.connect(template)) as src, \
            contextlib.closing(sqlite3.connect(home / "prefect.db")) as dst:
        src.backup(dst)
    return home


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


# The test files that take longest (minutes on 2 cores) start first: the two test processes
# (pytest-xdist, --dist loadfile) take whole files in collection order (--no-loadscope-reorder
# in pyproject: xdist otherwise hands out the files with most tests first), so the short ones
# fill in beside them instead of one long file running alone at the end.
# Ranked by the seconds each file took in a whole run (pytest --durations=0, summed per file,
# 2026-12-03: test_audit 349, test_bad_inputs 251, test_cli 248, test_bench 244 (its quick runs
# two at a time), ... test_cluster 55; the other files 45 s or less).
LONGEST_FIRST = ("test_audit.py", "test_bad_inputs.py", "test_cli.py", "test_bench.py",
                 "test_schedule.py", "test_verify.py", "test_reuse.py", "test_extract.py",
                 "test_pipeline_kills.py", "test_publish_faults.py", "test_early_refusals.py",
                 "test_dashboard_browser.py", "test_cluster.py")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file,
    # its order
