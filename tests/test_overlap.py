"""Overlapping work on one store: two audits of one checkpoint folder, an audit of a run that
another process computes, and what the reading commands say of such a run (README,
"Concurrency"). Real processes and real locks; each step waits for an event (a file, a line
on stderr), never for a time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from checkpoints import AUDIT, make_checkpoints
from conftest import env_kept
from conftest import run_cli as cli
from locks import held_by_another_thread

from bfd.cli import main
from bfd.storage import (
    Store,
    earlier_audits,
    list_runs,
    read_audits,
    run_lock,
    series_lock,
    write_audit,
)

REPO = Path(__file__).resolve().parents[1]
# what the audits look at; the weights: each checkpoint, or random (REQUEST)
OPTIONS = ["--model", AUDIT["model"], "--images", AUDIT["images"], "--n-images",
           str(AUDIT["n_images"]), "--img-size", str(AUDIT["img_size"]), "--layers",
           AUDIT["layers"], "--dtype", AUDIT["dtype"], "--images-per-chunk",
           str(AUDIT["images_per_chunk"])]
REQUEST = [*OPTIONS, "--weights", "random"]
HANG = 600  # s: a guard against a hung process, not a timing of anything


class Bfd:
    """``bfd argv`` in a process of its own (the test's Prefect server), its stdout and stderr
    in files; with ``pause``, a folder: at its first extraction it makes ``pause/started`` and
    waits for ``pause/go`` (an audit caught mid-work)."""

    def __init__(self, argv: list[str], where: Path, name: str, pause: Path | None = None):
        code = ("import os, pathlib, sys, time\nfrom bfd.cli import main\n"
                "from bfd.flows import progress\n"
                f"pause = {str(pause) if pause else None!r}\n"
                "def hold(stage, done, total, detail):\n"
                "    if pause and stage == 'extract' and done == 0 and not "
                "os.path.exists(pause + '/started'):\n"
                "        pathlib.Path(pause, 'started').touch()\n"
                "        while not os.path.exists(pause + '/go'):\n"
                "            time.sleep(0.02)\n"
                "with progress.listening(hold):\n"
                f"    sys.exit(main({argv!r}))\n")
        self.out, self.err = where / f"{name}.out", where / f"{name}.err"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=where, env=env,
                                         stdout=out, stderr=err)

    def stderr(self) -> str:
        return self.err.read_text()

    def wait_for(self, ready) -> bool:
        """Waits until ``ready()`` or the process ends; whether ``ready()`` held first."""
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            if ready():
                return True
            if self.proc.poll() is not None:
                return ready()
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"hung: {self.stderr()}")

    def ended(self) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=HANG)
        return code, self.out.read_text(), self.stderr()


@pytest.fixture(scope="module")
def extracted(prefect_harness, tmp_path_factory) -> tuple[str, str]:
    """A store holding one run of ``REQUEST``, extracted, not decomposed, and its id."""
    store = str(tmp_path_factory.mktemp("overlap") / "store")
    with env_kept():
        assert main(["extract", *REQUEST, "--store", store]) == 0
    (rid,) = list_runs(Store(store))
    return store, rid


def test_two_overlapping_audit_checkpoints_audit_each_checkpoint_once(prefect_harness,
                                                                     tmp_path):
    """The second run over the folder, started while the first audits its first checkpoint,
    waits for it, then finds every checkpoint audited and records nothing; each audit compares
    with the audit of the step before it (it compared with a concurrent audit of its own
    checkpoint: same run, 0 flags)."""
    make_checkpoints(tmp_path / "ckpts")
    store = tmp_path / "store"
    argv = ["audit-checkpoints", str(tmp_path / "ckpts"), *OPTIONS, "--series", "s",
            "--store", str(store), "--no-dashboard"]
    pause = tmp_path / "pause"
    pause.mkdir()
    first = Bfd(argv, tmp_path, "first", pause)
    assert first.wait_for((pause / "started").exists), first.stderr()
    second = Bfd(argv, tmp_path, "second")
    waited = second.wait_for(lambda: "waiting for another audit of series s" in second.stderr())
    (pause / "go").touch()
    code1, out1, err1 = first.ended()
    code2, out2, err2 = second.ended()
    assert (code1, code2) == (0, 0), err1 + err2
    audits = [a for a in read_audits(Store(store), "s") if a["status"] == "complete"]
    assert [a["step"] for a in audits] == [100, 200, 300], audits
    by_id = {a["audit_id"]: a for a in audits}
    assert audits[0]["prev_audit_id"] is None
    for before, audit in zip(audits, audits[1:], strict=False):
        assert audit["prev_audit_id"] == before["audit_id"], audit
        assert by_id[audit["prev_audit_id"]]["run_id"] != audit["run_id"]
    assert audits[1]["n_flagged"] > 0  # the planted change of step 200, compared
    assert waited, err2
    assert out2.startswith("nothing to do") and "(3 of 3 files)" in out2, out2 + err2
    assert "3 checkpoint(s) audited" in out1, out1


def test_an_audit_waits_for_the_process_computing_its_run_then_reuses_it(extracted, tmp_path):
    """``bfd audit`` of a run whose lock this process holds says that it waits; this process
    decomposes the run meanwhile (bfd decompose enters the lock it holds), and once released
    the audit reuses the run: nothing extracted or decomposed twice."""
    store = str(tmp_path / "store")
    shutil.copytree(extracted[0], store)
    rid = extracted[1]
    audit = ["audit", *REQUEST, "--series", "t", "--step", "1",
             "--store", store, "--no-dashboard"]
    with run_lock(Store(store), rid):
        proc = Bfd(audit, tmp_path, "audit")
        line = f"waiting for another process computing run {rid}"
        waited = proc.wait_for(lambda: line in proc.stderr())
        assert waited, proc.stderr()
        with env_kept():
            assert main(["decompose", rid, "--store", store]) == 0
    code, out, err = proc.ended()
    assert code == 0, err
    assert f"run {rid} reused, nothing recomputed" in out, out + err
    assert err.count(line) == 1, err
    (row,) = read_audits(Store(store), "t")
    assert (row["run_id"], row["status"]) == (rid, "complete")


def test_runs_says_a_run_is_being_computed(extracted, capsys):
    """While another process holds its lock, ``bfd runs`` says the extracted run is being
    computed instead of advising a second ``bfd decompose``; once released the advice is
    back. It reads only: no lock is taken, nothing written."""
    store, rid = extracted
    with held_by_another_thread(run_lock(Store(store), rid)):
        code, _, err = cli(["runs", "--store", store], capsys)
    assert code == 0
    assert f"bfd: run {rid}: being computed by another process now" in err, err
    assert "bfd decompose" not in err, err
    code, _, err = cli(["runs", "--store", store], capsys)
    assert code == 0 and f"extracted, not decomposed: bfd decompose {rid}" in err, err


def test_a_series_lock_is_taken_again_by_its_thread_and_refused_to_another(tmp_path):
    """The locks are reentrant within a thread (audit-checkpoints around its audits), and a
    non-waiting taker elsewhere is refused at once, naming the lock file."""
    store = Store(tmp_path / "store")
    with series_lock(store, "s"), series_lock(store, "s"):
        with pytest.raises(RuntimeError, match=r"series s is busy.*\.series\.lock"):
            with held_by_another_thread(series_lock(store, "s")):
                pass
    with held_by_another_thread(series_lock(store, "s")):
        pass  # released by the blocks above: taken at once


def test_an_audit_compares_only_with_audits_before_it_in_series_order(tmp_path):
    """Of two audits of one step, the one started first never has the one started later as
    a previous audit, even when that one was recorded first: both may follow step 200."""
    store = Store(tmp_path / "store")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def recorded(step: int, started: datetime, audit_id: str) -> dict:
        row = {"audit_id": audit_id, "series": "s", "run_id": f"run-{step}", "step": step,
               "started_at": started, "finished_at": started + timedelta(minutes=5),
               "trigger": "cli", "status": "complete"}
        write_audit(store, row)
        return row

    at_200 = recorded(200, t0, "A200")
    later = recorded(300, t0 + timedelta(seconds=2), "B300")  # started 1 s after `first`,
    # recorded before it
    first = {"audit_id": "A300", "step": 300, "started_at": t0 + timedelta(seconds=1)}
    assert [r["audit_id"] for r in earlier_audits(store, "s", 300, first)] == ["A200"]
    assert [r["audit_id"] for r in earlier_audits(store, "s", 300)] == ["A200", "B300"]
    # an audit started after both follows both
    last = {"audit_id": "C300", "step": 300, "started_at": t0 + timedelta(seconds=3)}
    assert [r["audit_id"] for r in earlier_audits(store, "s", 300, last)] == [
        at_200["audit_id"], later["audit_id"]]


def decomposed_with_prefix_include(rid: str, store: str, api: str) -> None:
    """``bfd decompose RID --prefix include``, as another process runs it during an audit
    recorded without Prefect: the test's Prefect API set again for it (and left set)."""
    os.environ["PREFECT_API_URL"] = api
    with env_kept():
        assert main(["decompose", rid, "--prefix", "include", "--store", store]) == 0


def test_an_audit_of_a_run_decomposed_again_while_it_waited_computes_it(extracted, tmp_path,
                                                                        monkeypatch, capsys):
    """``bfd audit`` finds its run computed with its options, then waits for the run's lock
    while another process decomposes it again with ``--prefix include`` (played here at the
    lock's door): holding the lock, the audit sees that and computes the run with its own
    options, instead of recording the include figures as its audit (trial 19)."""
    import json

    import bfd.storage

    store = str(tmp_path / "store")
    shutil.copytree(extracted[0], store)
    rid = extracted[1]
    with env_kept():
        assert main(["decompose", rid, "--store", store]) == 0  # published: --prefix exclude
    api = os.environ["PREFECT_API_URL"]
    monkeypatch.delenv("PREFECT_API_URL")  # no API: the audit is recorded without the flow
    real, raced = bfd.storage.run_lock, []

    def racing(store_, run_id, *args, **kwargs):
        if not raced:  # the other process, done as the audit takes the lock
            raced.append(run_id)
            decomposed_with_prefix_include(rid, store, api)  # the API kept: the audit's flow
        return real(store_, run_id, *args, **kwargs)

    monkeypatch.setattr(bfd.storage, "run_lock", racing)
    capsys.readouterr()
    with env_kept():
        code = main(["audit", *REQUEST, "--series", "t", "--step", "1", "--store", store,
                     "--no-dashboard"])
    err = capsys.readouterr().err
    assert code == 0 and raced == [rid], err
    assert "is already computed" in err and "was decomposed again" in err, err
    (row,) = read_audits(Store(store), "t")
    assert (row["run_id"], row["status"]) == (rid, "complete")
    assert json.loads(row["decompose_json"])["prefix"] == "exclude", row["decompose_json"]
    from bfd.tasks.audits import computed_run

    assert computed_run(Store(store), rid, json.loads(row["decompose_json"])) is not None


def test_drift_is_not_read_from_a_previous_run_decomposed_again_while_compared(
        extracted, tmp_path, monkeypatch, capsys):
    """An audit compares with the previous audit of its series while another process
    decomposes that audit's run again (``--prefix include``, played at the moment drift reads
    it): the audit does not take the new figures for those the previous audit saw; it finds
    the run decomposed again since and compares nothing, saying why (trial 19: 16 values were
    flagged against the include figures)."""
    import bfd.tasks.drift

    store = str(tmp_path / "store")
    shutil.copytree(extracted[0], store)
    rid_a = extracted[1]
    other = [*REQUEST, "--seed", "5"]
    with env_kept():
        assert main(["audit", *REQUEST, "--series", "d", "--step", "1", "--store", store,
                     "--no-dashboard"]) == 0
        assert main(["audit", *other, "--series", "b", "--store", store,
                     "--no-dashboard"]) == 0  # computed: the audit below reuses it
    api = os.environ["PREFECT_API_URL"]
    monkeypatch.delenv("PREFECT_API_URL")
    real, raced = bfd.tasks.drift.run_metrics, []

    def racing(store_, run_id, *args, **kwargs):
        if run_id == rid_a and not raced:  # the other process, as drift reads run A
            raced.append(run_id)
            decomposed_with_prefix_include(rid_a, store, api)
            del os.environ["PREFECT_API_URL"]
        return real(store_, run_id, *args, **kwargs)

    monkeypatch.setattr(bfd.tasks.drift, "run_metrics", racing)
    capsys.readouterr()
    with env_kept():
        code = main(["audit", *other, "--series", "d", "--step", "2", "--store", store,
                     "--no-dashboard"])
    err = capsys.readouterr().err
    assert code == 0 and raced == [rid_a], err
    first, second = sorted(read_audits(Store(store), "d"), key=lambda a: a["step"])
    assert second["status"] == "complete" and second["prev_audit_id"] == first["audit_id"]
    assert second["n_flagged"] == 0, second
    assert "decomposed again" in (second["drift_note"] or ""), second["drift_note"]


def test_an_audit_that_waited_for_its_series_starts_when_it_takes_the_lock(tmp_path):
    """Series order is (step, start): an audit that waited for another audit of its series
    starts when it takes the lock, after the one it waited for, not when its command began
    (trial 19: a hand audit that waited was listed before the checkpoint audit of its step it
    waited for, and compared with neither); one that did not wait keeps its command's start."""
    import threading

    from bfd.tasks.audits import audit_row

    store = Store(tmp_path / "store")
    began = datetime.now(UTC) - timedelta(minutes=5)  # when each command began
    asked, rows = threading.Event(), []

    def audit(step: int) -> None:
        with audit_row(store, "s", step, "cli", None, started=began,
                       waiting=lambda line: asked.set()) as row:
            rows.append(row)

    with held_by_another_thread(series_lock(store, "s")):
        waiting = threading.Thread(target=audit, args=(1,))
        waiting.start()
        asked.wait(timeout=HANG)
        released = datetime.now(UTC)
    waiting.join(timeout=HANG)
    audit(2)  # no other audit at work: no wait
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["started_at"] >= released and rows[1]["started_at"] == began
    stored = {a["step"]: a for a in read_audits(store, "s")}
    assert stored[1]["audit_id"] == rows[0]["audit_id"] and stored[1]["started_at"] >= released
