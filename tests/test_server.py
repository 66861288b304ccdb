"""The temporary Prefect server of a command without a Prefect API (bfd/flows/server.py):
launched by the command itself where Prefect's settings come from the environment, by
Prefect's ``SubprocessASGIServer`` otherwise; the same flow and task runs recorded either
way, and no server process left behind."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A profiles file as Prefect's default profile, whose presence alone makes the command leave
# the server to Prefect.
PROFILES = ('active = "ephemeral"\n\n[profiles.ephemeral]\n'
            'PREFECT_SERVER_EPHEMERAL_ENABLED = "true"\n')


def extract_without_api(tmp_path: Path, profiles: bool) -> tuple[dict, list, list]:
    """``bfd extract`` of 2 images in a new process with a fresh Prefect home and no API;
    returns what the process says of itself, and the flow runs and task runs in its Prefect
    database."""
    home = tmp_path / "home"
    home.mkdir(parents=True)
    if profiles:
        (home / "profiles.toml").write_text(PROFILES)
    code = ("import json, os, sys\nfrom bfd.cli import main\n"
            "code = main(['extract', '--model', 'test_vit', '--weights', 'random', "
            f"'--n-images', '2', '--batch-size', '2', '--store', {str(tmp_path / 'store')!r}])\n"
            "print(json.dumps({'code': code, 'api': os.environ.get('PREFECT_API_URL'), "
            "'server_module': 'prefect.server.api.server' in sys.modules}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PYTHONPATH": str(REPO),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    said = json.loads(proc.stdout.splitlines()[-1])
    with sqlite3.connect(home / "prefect.db") as db:
        flows = sorted(db.execute("SELECT f.name, r.state_type FROM flow_run r "
                                  "JOIN flow f ON f.id = r.flow_id"))
        tasks = sorted(db.execute("SELECT state_type, count(*) FROM task_run "
                                  "GROUP BY state_type"))
    return said, flows, tasks


def server_processes(home: Path) -> list[str]:
    """Running uvicorn processes of Prefect's server app whose environment names ``home``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if "prefect.server.api.server:create_app" in cmdline and str(home).encode() in environ:
            found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_a_launched_server_records_what_prefects_records(tmp_path):
    launched = extract_without_api(tmp_path / "launched", profiles=False)
    prefects = extract_without_api(tmp_path / "prefects", profiles=True)
    said, flows, tasks = launched
    assert said["code"] == 0 and said["api"].startswith("http://127.0.0.1:")
    assert not said["server_module"]  # the command never imported the server's modules
    assert prefects[0] == {"code": 0, "api": None, "server_module": True}
    assert flows == prefects[1] == [("extract", "COMPLETED")]
    assert tasks == prefects[2] and tasks[0][0] == "COMPLETED" and len(tasks) == 1
    for case in ("launched", "prefects"):
        assert server_processes(tmp_path / case / "home") == []
