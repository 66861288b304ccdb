"""A store shared by several users (trial 30, "Shared store, two users"): what one user may
not read (another's runs, made private by a umask of 077) is left out of the others' reading
commands, which say "cannot read", not "cannot write"; the lock files honour the umask; a
shared file replaced by one user keeps what the others could do with it.

Permission checks need a user other than root (root reads everything): as root the block runs
with the effective uid of ``nobody`` (``os.seteuid``, given back at its end); as any other
user, a folder of mode 000 is unreadable to its owner too."""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli
from storebuilder import build_run, random_run_arrays
from test_readers import publish_run

from bfd.faults import StoreWriteError, describe, store_fault
from bfd.queries import run_sql
from bfd.queries.listing import list_files
from bfd.queries.snapshot import publish_current
from bfd.storage import Store
from bfd.storage.paths import atomic_write, run_lock


@contextlib.contextmanager
def other_user():
    """The block runs as a user to whom permission bits apply: ``nobody`` when this process is
    root (its effective uid and gid, no supplementary groups), else this user itself."""
    if os.geteuid() != 0:
        yield
        return
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' to run as, and root reads every file")
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@contextlib.contextmanager
def private(*paths: Path):
    """``paths`` of mode 000 for the block: unreadable to ``other_user``."""
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
    for p in paths:
        p.chmod(0)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


@pytest.fixture(scope="module")
def two_runs():
    """A store of two published runs in a folder every user may enter (pytest's tmp_path,
    under root's private /tmp/pytest-of-root, is not), removed at the end."""
    top = Path(tempfile.mkdtemp(prefix="bfd-shared-"))
    top.chmod(0o755)
    store = Store(top / "store")
    rids = []
    for k, (model, L, T) in enumerate((("toy_a", 2, 10), ("toy_b", 2, 7))):
        acts, qkv, H = random_run_arrays(k, L=L, N=8, T=T, d=12)
        rid = build_run(store, acts, qkv, H, model=model)
        publish_run(store, rid, L)
        rids.append(rid)
    run_sql(str(store.root), "SELECT 1")  # its catalog built, as the other user cannot
    yield store, rids
    shutil.rmtree(top)


def test_a_run_another_user_made_private_is_left_out_and_said_unreadable(two_runs, capsys,
                                                                         caplog):
    """Trial 30 (1a, 1b): one run folder the user may not read made every reading command
    fail for the whole store, saying "cannot write"."""
    store, (mine, theirs) = two_runs
    folders = [store.run_dir(theirs), store.root / "bfd.zarr" / theirs,
               *(store.root / "tables" / t / theirs for t in ("runs", "layers", "heads",
                                                               "modes", "images"))]
    where = ["--store", str(store.root)]
    run_cli(["runs", *where], capsys)  # its modules imported while they can be read
    run_cli(["verify", mine, *where], capsys)
    with private(*folders), other_user():
        code, out, err = run_cli(["sql", "SELECT DISTINCT run_id FROM heads", "--format",
                                  "csv", *where], capsys)
        assert (code, out.replace('"', "").split()) == (1, ["run_id", mine]), err
        assert err.splitlines()[-1] == (
            "bfd: error: the output leaves out what 1 damaged, missing or unreadable store "
            f"file(s) held (named above): run {theirs} cannot be read by this user: its owner "
            "can make it readable (chmod -R g+rX)")
        (warned,) = {r.getMessage() for r in caplog.records}
        assert warned.startswith(f"bfd: warning: run {theirs}: its publication pointer ")
        assert warned.endswith("Permission denied: "
                               f"'{store.published_pointer(theirs)}'); the run is left out")
        code, out, err = run_cli(["runs", "--format", "csv", *where], capsys)
        rows = {line.split(",")[0]: line for line in out.replace('"', "").splitlines()}
        assert code == 1 and "complete" in rows[mine], err
        assert rows[theirs] == f"{theirs},,,,,,,,,,,,unreadable,,"
        code, _, err = run_cli(["verify", theirs, *where], capsys)
        assert code == 1 and "bfd: error: cannot read " in err and "cannot write" not in err
        assert run_cli(["verify", mine, *where], capsys)[0] == 0


def test_unreadable_folders_of_old_runs_and_audit_events_are_noted_not_raised(tmp_path):
    """A folder of the layout before versioned publishing, or of a series' audit events, that
    the user may not read: noted, the rest listed."""
    top = Path(tempfile.mkdtemp(prefix="bfd-shared-"))
    try:
        top.chmod(0o755)
        old = top / "tables" / "heads" / "model=m" / "run_id=r1"
        events = top / "tables" / "audits" / "s%401"
        for folder in (old, events, top / "runs"):
            folder.mkdir(parents=True)
        (old / "part-0.parquet").write_bytes(b"")
        (events / "a.parquet").write_bytes(b"")
        with private(old, events), other_user():
            listing, notes = list_files(str(top), ("heads", "audits"))
        assert listing == {"heads": [], "audits": []}
        said = {n.run_id: n.text for n in notes}
        assert len(notes) == 2 and said[None] == (
            f"audit event files in {events} cannot be read (Permission denied); they are left "
            "out of the SQL catalog")
        assert said["r1"] == (f"table folder {old} (run r1) cannot be read (Permission "
                              "denied); run r1 is left out of the SQL catalog")
    finally:
        shutil.rmtree(top)


def test_a_denied_read_says_cannot_read_and_a_denied_write_cannot_write(two_runs):
    store, (mine, theirs) = two_runs
    folder = store.run_dir(theirs)
    with private(folder), other_user():
        with pytest.raises(PermissionError) as read:
            os.listdir(folder)
        with pytest.raises(PermissionError) as write:
            open(store.run_dir(mine) / "new.json", "w")  # noqa: SIM115 - refused
        assert describe(read.value)[1].startswith(f"cannot read {folder}: Permission denied")
        assert describe(write.value)[1].startswith(
            f"cannot write {store.run_dir(mine)}/new.json: Permission denied")
        # a flow's error (bfd.faults.store_fault): a denied read is no unwritable store
        assert store_fault(read.value, str(store.root)) is None
        assert isinstance(store_fault(write.value, str(store.root)), StoreWriteError)
    rofs = OSError(errno.EROFS, "Read-only file system", str(folder))
    assert describe(rofs)[1].startswith(f"cannot write {folder}")


def test_lock_files_honour_the_umask(tmp_path):
    """Trial 30 (1d): .compute.lock was made 0644 whatever the umask, so that a teammate of a
    group-writable store (umask 002) could not decompose or drop a run another one made."""
    store = Store(tmp_path / "store")
    before = os.umask(0o002)
    try:
        with run_lock(store, "r-1"):
            pass
    finally:
        os.umask(before)
    assert stat.S_IMODE((store.run_dir("r-1") / ".compute.lock").stat().st_mode) == 0o664


@pytest.mark.parametrize("how", ["atomic_write", "current.duckdb"])
def test_a_replaced_shared_file_keeps_the_mode_of_the_file_it_replaces(tmp_path, how):
    """Trial 30 (1b): a user whose umask is 077 replaced the team's catalog/current.duckdb and
    dashboard pages by files of mode 0600. A new file keeps every permission bit of the one it
    replaces, and its own: 0664 replaced under umask 077 stays 0664; 0600 replaced under umask
    002 becomes 0664."""
    path = tmp_path / ("current.duckdb" if how == "current.duckdb" else "index.html")
    source = tmp_path / "snapshot"
    source.write_bytes(b"new")

    def replace() -> None:
        if how == "atomic_write":
            atomic_write(path, lambda f: f.write(b"new"), durable=False)
        else:
            publish_current(tmp_path, source)

    for old_mode, umask in ((0o664, 0o077), (0o600, 0o002)):
        path.write_bytes(b"old")
        path.chmod(old_mode)
        before = os.umask(umask)
        try:
            replace()
        finally:
            os.umask(before)
        assert (path.read_bytes(), stat.S_IMODE(path.stat().st_mode)) == (b"new", 0o664)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, "snapshot"])


def test_a_cached_snapshot_another_user_left_unreadable_is_not_used(two_runs, capsys):
    """A snapshot built by a user whose umask is 077 (mode 0600) failed every query of the
    others with the same listing: they build one of their own."""
    store, (mine, theirs) = two_runs
    (cached,) = [p for p in (store.root / "catalog").glob("*.duckdb")
                 if p.name != "current.duckdb"]
    where = ["--store", str(store.root)]
    run_cli(["sql", "SELECT 1", *where], capsys)
    with private(cached), other_user():
        code, out, err = run_cli(["sql", "SELECT count(DISTINCT run_id) FROM heads", "--format",
                                  "csv", *where], capsys)
    assert (code, out.split()[-1]) == (0, "2"), err


def test_an_image_this_user_may_not_read_is_skipped_not_refusing_the_run():
    """Trial 30 (4a): one image of mode 000 refused the whole audit ("cannot write" the image,
    a failed audit recorded): it is skipped at decode time with its reason, as a missing one."""
    from PIL import Image

    from bfd.images import ImageDecodeError, list_images, load_image

    top = Path(tempfile.mkdtemp(prefix="bfd-shared-"))
    try:
        top.chmod(0o755)
        for k in range(3):
            Image.new("RGB", (8, 8), (k * 80, 0, 0)).save(top / f"{k}.png")
        with private(top / "1.png"), other_user():
            records = list_images(str(top))
            assert [(r.id, bool(r.sha256)) for r in records] == [
                ("0.png", True), ("1.png", False), ("2.png", True)]
            with pytest.raises(ImageDecodeError, match=r"cannot read .*1.png'?: Permission"):
                load_image(records[1])
            assert load_image(records[2]).size == (8, 8)
    finally:
        shutil.rmtree(top)


def test_a_dashboard_page_another_user_made_private_is_replaced(tmp_path):
    """A run page written by a user whose umask is 077 (0600) failed the others' `bfd
    dashboard` ("cannot read" the page it compared with): it is written again."""
    from bfd.report.dashboard import DashboardBuild, _write_if_changed

    top = Path(tempfile.mkdtemp(prefix="bfd-shared-"))
    try:
        top.chmod(0o777)  # a store's dashboard folder that the team may write
        page = top / "run.html"
        page.write_text("theirs")
        build = DashboardBuild(index=top / "index.html")
        with private(page), other_user():
            _write_if_changed(top, "run.html", "mine", build)
        assert (page.read_text(), build.written) == ("mine", ["run.html"])
    finally:
        shutil.rmtree(top)
