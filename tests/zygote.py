"""``bfd`` command processes forked from one process that has imported what the commands
import (torch, timm, Prefect, the flows), for the tests that kill such processes at random
moments: each is a real process of its own (its own session and process group, SIGKILLed as
the tests kill it), started without the 10-20 s of imports a new interpreter pays.

The forking process only imports: it runs no flow, makes no Prefect client and starts none
of Prefect's threads, so a child starts as a fresh interpreter would after its imports. The
child runs ``bfd.cli.main()`` as ``python -m bfd.cli ARGV`` runs it (``sys.argv``, its own
exit through ``os._exit``), its stdin, stdout and stderr on /dev/null.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_CODE = """
import json, os, sys
import bfd.cli, bfd.flows.decompose, bfd.flows.extract  # imports only
from bfd.cli import main
print("ready", flush=True)
for line in sys.stdin:
    op, arg = json.loads(line)
    if op == "wait":
        print(os.waitstatus_to_exitcode(os.waitpid(arg, 0)[1]), flush=True)
        continue
    started, child_started = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(started)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(child_started)  # its own session and process group now
            sys.argv = ["bfd", *arg]
            code = main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            os._exit(code)
    os.close(child_started)
    os.read(started, 1)  # b"" once the child has its own process group (or has ended)
    os.close(started)
    print(pid, flush=True)
os._exit(0)  # stdin closed: no interpreter teardown of torch (seconds)
"""


class Forked:
    """A ``bfd`` process forked by a ``Zygote``: ``pid`` (its process group too), ``poll()``,
    ``send_signal()`` and ``wait()`` as ``subprocess.Popen``'s, ``returncode`` -N when killed
    by signal N."""

    def __init__(self, zygote: Zygote, pid: int):
        self.zygote, self.pid, self.returncode = zygote, pid, None

    def poll(self) -> int | None:
        if self.returncode is None and _ended(self.pid):
            self.returncode = self.zygote.ask(["wait", self.pid])
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = self.zygote.ask(["wait", self.pid])
        return self.returncode


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie until its parent, the zygote, reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


class Zygote:
    """A process that forks ``bfd`` command processes (module docstring); a context manager
    that ends it. ``env`` and ``cwd``: those of every command it starts."""

    def __init__(self, env: dict[str, str], cwd: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", _CODE], cwd=cwd, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line == "ready\n", f"the zygote did not start: {line!r}"

    def ask(self, request: list) -> int:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def start(self, argv: list[str]) -> Forked:
        """``bfd argv`` in a process of its own, started now."""
        return Forked(self, self.ask(["start", argv]))

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def zygote_env() -> dict[str, str]:
    """The environment of the commands: this process's, offline."""
    return {**os.environ, "HF_HUB_OFFLINE": "1"}
