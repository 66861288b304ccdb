"""``bfd verify`` finds every damaged file of a run; ``bfd extract`` of the same request
recomputes damaged shards with the same bits as an undamaged run; ``decompose`` refuses a
damaged run naming the file and the command that repairs it."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from conftest import env_kept
from conftest import run_cli as cli

from bfd.cli import main
from bfd.flows.params import AuditConfig, DecomposeParams, decompose_kwargs
from bfd.storage import (
    Store,
    decompose_command,
    list_runs,
    read_audits,
    read_pointer,
    read_run_table,
    read_table,
    repair_command,
    verify_run,
    write_table,
)
from bfd.tasks.audits import computed_run
from bfd.tasks.options import DecomposeOptions

EXTRACT = ["extract", "--model", "test_vit", "--weights", "random", "--n-images", "8",
           "--img-size", "32", "--layers", "0,1", "--dtype", "float32",
           "--images-per-chunk", "4"]


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file of the activation store (chunks, metadata, markers excluded)."""
    zarr_root = root / "bfd.zarr"
    return {str(p.relative_to(zarr_root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(zarr_root.rglob("*"))
            if p.is_file() and not any(part.startswith("results") for part in p.parts)}


@pytest.fixture(scope="module")
def pristine(prefect_harness, tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("verify") / "store"
    with env_kept():
        assert main([*EXTRACT, "--store", str(root)]) == 0
        (rid,) = list_runs(Store(root))
        assert main(["decompose", rid, "--store", str(root)]) == 0
    return root, rid


@pytest.fixture
def damaged(pristine, tmp_path) -> tuple[Path, str]:
    root, rid = pristine
    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    return copy, rid


def chunk(root: Path, rid: str, site: str, layer: int, c: int) -> Path:
    return root / "bfd.zarr" / rid / site / "c" / str(layer) / str(c) / "0" / "0"


def test_an_intact_run_verifies_clean(pristine, capsys):
    root, rid = pristine
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 0 and out.strip() == f"run {rid}: intact" and not err


@pytest.mark.parametrize("damage", ["delete", "truncate", "empty", "marker"])
def test_damage_is_named_refused_by_decompose_and_repaired_bit_for_bit(pristine, damaged,
                                                                       capsys, damage):
    root, rid = damaged
    before = digest(pristine[0])
    target = {"delete": chunk(root, rid, "attn_in", 0, 1),
              "truncate": chunk(root, rid, "resid", 1, 0),
              "empty": chunk(root, rid, "attn_in", 1, 1),
              "marker": root / "runs" / rid / "shards" / "1.json"}[damage]
    if damage == "delete":
        target.unlink()
    else:
        data = target.read_bytes()
        target.write_bytes(data[: {"truncate": 500, "empty": 0, "marker": 40}[damage]])

    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and str(target) in out, out
    assert all(line.startswith("fault: ") for line in out.splitlines())

    code, out, err = cli(["decompose", rid, "--store", str(root)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(target) in err and "bfd extract" in err and "reshape" not in err

    # the command decompose names repairs the run: the damaged shard is extracted again
    command = err.split("repair it with: ")[1].strip()
    assert command == repair_command(Store(root), rid)
    code, _, err = cli(shlex.split(command)[1:], capsys)
    assert code == 0, err
    assert "damaged, extracted again" in err and str(target) in err
    (plan,) = [line for line in err.splitlines() if "to write" in line]
    assert f"run {rid}: 8 images in 2 shards; 1 shard (4 images) to extract" in plan
    assert digest(root) == before
    assert verify_run(Store(root), rid) == []
    code, _, err = cli(["decompose", rid, "--store", str(root)], capsys)
    assert code == 0, err


def test_non_finite_values_in_an_ok_image_are_named(damaged, capsys):
    root, rid = damaged
    array = zarr.open_array(str(root / "bfd.zarr"), path=f"{rid}/resid", mode="r+")
    block = array[1, 4:8]
    block[2, 3, 5] = np.nan
    array[1, 4:8] = block
    code, out, _ = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and out.count("\n") == 1
    assert str(chunk(root, rid, "resid", 1, 1)) in out and "images [6]" in out


@pytest.mark.parametrize("name", ["heads", "runs"])
def test_a_damaged_table_file_is_named(damaged, capsys, name):
    root, rid = damaged
    table = root / read_pointer(Store(root), rid)["tables"][name]
    table.write_bytes(b"PAR1 not really parquet")
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and out.count("\n") == 1 and str(table) in out and "unreadable" in out
    # the reader's reason whole, without the path again (it was cut mid-sentence)
    assert out.count(str(table)) == 1 and out.rstrip().endswith(".)"), out
    repair_by_hint(err, root, rid, capsys)
    assert verify_run(Store(root), rid) == []


def repair_by_hint(err: str, root: Path, rid: str, capsys) -> None:
    """Runs the command ``bfd verify``'s hint (``err``) gives for a damaged table file: the
    decompose that publishes it again (not extract), with the run's options."""
    assert "bfd extract" not in err and err.count("\n") == 1, err
    command = err.split("published again by: ")[1].strip()
    assert command == (f"bfd decompose {rid} --store {root} --prefix exclude --control-seed 0 "
                       "--compute-dtype float32 --jackknife-groups 16 --ci-target 0.02")
    code, _, err = cli(shlex.split(command)[1:], capsys)
    assert code == 0, err


def rewrite_with(path: Path, column: str, value) -> None:
    """Write a Parquet file again under its own name with the first value of ``column``
    replaced: it still reads, with every contract column (as a value changed inside a data
    page, or the file replaced by another Parquet file)."""
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    values = table.column(index).to_pylist()
    assert values[0] != value
    values[0] = value
    field = table.schema.field(index)
    pq.write_table(table.set_column(index, field, pa.array(values, field.type)), path)


@pytest.mark.parametrize("name", ["heads", "runs"])
def test_a_table_file_changed_since_published_is_named_and_repaired(pristine, damaged, capsys,
                                                                    name):
    """A published table file that reads, with other values than were published, is a fault
    (its bytes are not those whose sha256 the pointer records), repaired by the command verify
    prints for a damaged table file: the same figures again, runs.created_at included (a
    changed runs file is not where it is taken from)."""
    root, rid = damaged
    table = root / read_pointer(Store(root), rid)["tables"][name]
    column, value = {"heads": ("e_pp", 12345.0),
                     "runs": ("created_at", dt.datetime(2001, 1, 1, tzinfo=dt.UTC))}[name]
    rewrite_with(table, column, value)
    assert read_run_table(Store(root), name, rid).column(column)[0].as_py() == value
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and out.count("\n") == 1, out
    assert out.startswith(f"fault: {table}: changed since it was published (sha256 "), out
    repair_by_hint(err, root, rid, capsys)
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert (code, out.strip(), err) == (0, f"run {rid}: intact", "")
    assert figures(root, rid) == figures(pristine[0], rid)


def test_a_pointer_without_checksums_verifies_by_reading_and_a_table_replaced_records_one(
        damaged, capsys):
    """A pointer written before the sha256 of table files was kept: its files are only read (a
    changed one is not a fault: nothing says what it held). Replacing one table
    (``write_table``) records that file's sha256, and keeps those of the others."""
    root, rid = damaged
    store = Store(root)
    path = store.published_pointer(rid)
    old = json.loads(path.read_text())
    assert set(old.pop("sha256")) == set(old["tables"])
    path.write_text(json.dumps(old))
    rewrite_with(root / old["tables"]["heads"], "e_pp", 12345.0)
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    # not "intact" alone: what was not checked is said (trial 22), no fault (exit 0)
    assert (code, out.strip(), err) == (0, (
        f"run {rid}: intact (table bytes not checked: published by an older bfd without "
        f"checksums; {decompose_command(store, rid)} records checksums)"), "")

    write_table(store, "layers", "test_vit", rid, read_run_table(store, "layers", rid))
    pointer = read_pointer(store, rid)
    assert set(pointer["sha256"]) == {"layers"}
    assert verify_run(store, rid) == []
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert (code, err) == (0, "") and out.startswith(
        f"run {rid}: intact (bytes of its heads, images, modes, runs table files not checked: "
        "published by an older bfd without checksums; bfd decompose "), out
    layers = root / pointer["tables"]["layers"]
    rewrite_with(layers, "ss_total", -1.0)
    assert [str(f) for f in verify_run(store, rid)] == [
        f"{layers}: changed since it was published (sha256 "
        f"{hashlib.sha256(layers.read_bytes()).hexdigest()[:12]}..., published.json records "
        f"{pointer['sha256']['layers'][:12]}...)"]
    write_table(store, "heads", "test_vit", rid, read_run_table(store, "heads", rid))
    assert set(read_pointer(store, rid)["sha256"]) == {"layers", "heads"}
    assert [f.path for f in verify_run(store, rid)] == [str(layers)]  # kept, still changed


def as_an_older_bfd_published(root: Path, rid: str) -> dict[str, Path]:
    """The run's pointer and layers and heads files as an older bfd wrote them (trial 22:
    2026-11-29's published.json records no sha256, size, mtime_ns or created_at; its files
    lack every column added since bfd's first release); returns the table files."""
    from bfd.storage.tables import FIRST_COLUMNS

    path = Store(root).published_pointer(rid)
    pointer = json.loads(path.read_text())
    for key in ("sha256", "size", "mtime_ns", "created_at"):
        pointer.pop(key, None)
    path.write_text(json.dumps(pointer))
    files = {name: root / rel for name, rel in pointer["tables"].items()}
    for name in ("layers", "heads"):
        table = pq.read_table(files[name])
        pq.write_table(table.select([c for c in table.column_names
                                     if c in FIRST_COLUMNS[name]]), files[name])
    return files


def test_a_run_of_an_older_bfd_is_intact_saying_what_was_not_checked(damaged, capsys):
    """trial 22 (F5, F8): a run published by an older bfd, its table files lacking the columns
    added since and its pointer no sha256, is not damaged: one line, exit 0, saying that its
    table bytes were not checked and that the decompose command it names adds the columns
    and records checksums; after it, plain intact. A file that lacks a column every bfd wrote
    is damaged still (exit 1)."""
    root, rid = damaged
    store = Store(root)
    files = as_an_older_bfd_published(root, rid)
    command = decompose_command(store, rid)
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert (code, err) == (0, ""), err
    assert out == (f"run {rid}: intact (table bytes not checked: published by an older bfd "
                   "without checksums and without the columns added since in its heads and "
                   f"layers table files; {command} adds the columns and records checksums)\n")
    older = [f for f in verify_run(store, rid) if f.older]
    assert [(f.path, f.published) for f in older] == [
        (str(files["heads"]), True), (str(files["layers"]), True)]
    assert older[0].problem.startswith("published by an older bfd: lacks the 36 columns added "
                                       "since (bias_key_share, bias_key_pos_share, ")
    code, _, err = cli(shlex.split(command)[1:], capsys)
    assert code == 0, err
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert (code, out, err) == (0, f"run {rid}: intact\n", "")
    heads = root / read_pointer(store, rid)["tables"]["heads"]
    table = pq.read_table(heads)
    pq.write_table(table.drop_columns(["f_cc"]), heads)
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and out == f"fault: {heads}: missing contract columns ['f_cc']\n", out
    assert "damaged table files are published again by" in err


def test_an_audit_of_a_run_of_an_older_bfd_publishes_it_again_not_as_damaged(damaged,
                                                                             capsys):
    """trial 22 (F5): an audit of a run whose table files an older bfd wrote (without the
    columns added since) publishes it again from its activations, saying so in one line per
    file: not "damaged", no dump of the column names."""
    root, rid = damaged
    files = as_an_older_bfd_published(root, rid)
    code, out, err = cli(["audit", *EXTRACT[1:], "--store", str(root), "--no-dashboard"], capsys)
    assert code == 0, err
    assert "damaged" not in err and "contract columns" not in err, err
    for name in ("heads", "layers"):
        (line,) = [x for x in err.splitlines() if str(files[name]) in x]
        assert line.startswith(f"bfd: published again: {files[name]}: published by an older "
                               "bfd: lacks the "), line
        assert len(line) < len(str(files[name])) + 200, line
    assert (f"run {rid} published again (table files of an older bfd, without the columns "
            "added since), activations reused") in out, out
    assert verify_run(Store(root), rid) == []


@pytest.mark.parametrize(("name", "damage"), [("heads", "unreadable"), ("runs", "unreadable"),
                                            ("heads", "changed since it was published")])
def test_an_audit_of_a_run_with_a_damaged_table_file_publishes_it_again(pristine, damaged,
                                                                        capsys, name, damage):
    # the run was computed with the same request and decomposition options: the audit would
    # reuse it, but a damaged table file makes it not computed (it is decomposed again), as a
    # damaged shard of its activations is extracted again; so does one that reads but holds
    # other values than were published
    root, rid = damaged
    table = root / read_pointer(Store(root), rid)["tables"][name]
    if damage == "unreadable":
        data = table.read_bytes()
        table.write_bytes(data[: len(data) // 2])
    else:
        rewrite_with(table, "e_pp", 12345.0)
    options = DecomposeOptions(**decompose_kwargs(DecomposeParams(),
                                                  AuditConfig(model="test_vit"))).to_dict()
    assert computed_run(Store(root), rid, options) is None  # what bfd audit without Prefect asks
    code, out, err = cli(["audit", *EXTRACT[1:], "--store", str(root), "--no-dashboard"], capsys)
    assert code == 0, err
    assert f"bfd: damaged, published again: {table}: {damage}" in err
    assert f"run {rid} published again (damaged table files), activations reused" in out, out
    # the time of its first publication is kept (the pointer holds a copy of it)
    (first,) = read_table(Store(pristine[0]), "runs").to_pylist()
    (now,) = read_table(Store(root), "runs").to_pylist()
    assert now["created_at"] == first["created_at"]
    assert "Traceback" not in err and "SQL" not in err
    assert read_run_table(Store(root), "heads", rid).to_pylist() == \
        read_run_table(Store(pristine[0]), "heads", rid).to_pylist()  # the figures again
    assert verify_run(Store(root), rid) == [] and list_runs(Store(root)) == [rid]
    (audit,) = read_audits(Store(root))
    assert (audit["run_id"], audit["status"]) == (rid, "complete")
    assert computed_run(Store(root), rid, options) is not None


INCLUDED = ["--prefix", "include", "--control-seed", "3", "--compute-dtype", "float64",
            "--jackknife-groups", "8"]


@pytest.fixture(scope="module")
def included(pristine, tmp_path_factory) -> tuple[Path, str]:
    """The pristine run decomposed again with options other than the defaults."""
    root = tmp_path_factory.mktemp("verify-included") / "store"
    shutil.copytree(pristine[0], root)
    with env_kept():
        assert main(["decompose", pristine[1], "--store", str(root), *INCLUDED]) == 0
    return root, pristine[1]


def figures(root: Path, rid: str) -> dict[str, list[dict]]:
    return {t: read_run_table(Store(root), t, rid).to_pylist()
            for t in ("heads", "layers", "modes", "runs")}


@pytest.mark.parametrize("damage", ["heads", "runs", "pointer", "runs+pointer"])
def test_a_run_published_again_keeps_its_options_and_first_publication(included, tmp_path,
                                                                       capsys, damage):
    """The repair that verify prints carries the options the run was published with (not the
    defaults: its figures would change), and publishing again keeps runs.created_at."""
    root = tmp_path / "store"
    shutil.copytree(included[0], root)
    rid = included[1]
    before = figures(root, rid)
    store = Store(root)
    pointer = read_pointer(store, rid)
    targets = {"heads": [root / pointer["tables"]["heads"]],
               "runs": [root / pointer["tables"]["runs"]],
               "pointer": [store.published_pointer(rid)],
               "runs+pointer": [root / pointer["tables"]["runs"], store.published_pointer(rid)]}
    for target in targets[damage]:
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
    command = decompose_command(store, rid)
    assert command == (f"bfd decompose {rid} --store {root} --prefix include --control-seed 3 "
                       "--compute-dtype float64 --jackknife-groups 8 --ci-target 0.02")
    if damage == "heads":  # verify prints it
        code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
        assert code == 1 and err.split("published again by: ")[1].strip() == command, err
    republished = dt.datetime.now(dt.UTC)
    code, _, err = cli(shlex.split(command)[1:], capsys)
    assert code == 0, err
    assert verify_run(store, rid) == []
    after = figures(root, rid)
    (run_before,), (run_after,) = before.pop("runs"), after.pop("runs")
    assert after == before  # the same figures, exactly
    assert run_after["config_json"] == run_before["config_json"]
    if damage == "runs+pointer":  # no copy of the time reads: its version's is the nearest
        assert run_before["created_at"] <= run_after["created_at"] < republished
    else:
        assert run_after["created_at"] == run_before["created_at"]


def test_without_a_copy_of_the_options_the_repair_says_so(included, tmp_path):
    root = tmp_path / "store"
    shutil.copytree(included[0], root)
    rid = included[1]
    pointer = read_pointer(Store(root), rid)
    (root / pointer["tables"]["runs"]).write_bytes(b"PAR1 not really parquet")
    (root / "bfd.zarr" / pointer["results"] / "zarr.json").write_bytes(b"{")
    assert decompose_command(Store(root), rid) == (
        f"bfd decompose {rid} --store {root} (no copy of the decompose options the run was "
        "published with reads: give those it was published with, else its figures change)")


def test_an_unknown_run_is_a_request_error(pristine, capsys):
    root, _ = pristine
    code, out, err = cli(["verify", "no-such-run", "--store", str(root)], capsys)
    assert code == 2 and err.startswith("bfd: error: run no-such-run is not in store") and not out


@pytest.mark.parametrize("name", ["images.json", "request.json"])
def test_extract_rewrites_a_damaged_run_file(pristine, damaged, capsys, name):
    root, rid = damaged
    path = root / "runs" / rid / name
    path.write_bytes(path.read_bytes()[:30])
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and str(path) in out
    code, _, err = cli([*EXTRACT, "--store", str(root)], capsys)
    assert code == 0, err
    assert path.read_bytes() == (pristine[0] / "runs" / rid / name).read_bytes()
    assert verify_run(Store(root), rid) == []


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", ">f4"])
def test_the_bit_test_of_finiteness_equals_isfinite(dtype):
    """Against ``np.isfinite``: every float16 bit pattern; for the wider floats the signed
    zeros, subnormals, extremes, infinities and NaNs of either sign and any payload, and
    random bits, each alone in its row."""
    from bfd.storage.chunk_check import finite_rows

    n = np.dtype(dtype).itemsize
    if dtype == "float16":
        bits = np.arange(2**16, dtype=np.uint16)
    else:
        info, u = np.finfo(dtype), np.dtype(dtype).str[0] + f"u{n}"
        special = np.array([0.0, -0.0, info.tiny, -info.tiny, info.smallest_subnormal,
                            -info.smallest_subnormal, info.max, -info.max, np.inf, -np.inf,
                            np.nan, -np.nan], dtype=dtype).view(u)
        exponent = int(np.array(np.inf, dtype).view(u))
        payloads = np.array([exponent | 1, exponent | (exponent >> 1) | 3], dtype=u)
        rng = np.random.default_rng(n)
        bits = np.concatenate([special, payloads, payloads | (1 << (8 * n - 1)),
                               rng.integers(0, 2**63, 4096, dtype=np.uint64).astype(u)])
    rows = np.zeros((len(bits), 3), dtype=dtype)
    rows.view(bits.dtype)[:, 1] = bits
    got = finite_rows(rows)
    assert np.array_equal(got, np.isfinite(rows).all(-1))
    assert (~got).sum() == (~np.isfinite(bits.view(dtype))).sum() > 0


def test_verify_names_every_non_finite_image_of_a_float16_store(tmp_path):
    """+inf, -inf and NaNs of either sign planted in images marked ok, across chunks, layers and
    sites, are each named; a NaN in a skipped image is not a fault."""
    from storebuilder import build_run, random_run_arrays

    acts, qkv, H = random_run_arrays(7, L=3, N=12)
    store = Store(tmp_path / "store")
    rid = build_run(store, acts, qkv, H, images_per_chunk=4, skipped=(5,), dtype="float16")
    assert verify_run(store, rid) == []
    planted = {("attn_in", 0, 1): 0x7C00, ("resid", 2, 6): 0xFC00, ("attn_in", 1, 9): 0x7E01,
               ("attn_in", 1, 10): 0xFE00, ("resid", 0, 5): 0x7E00}
    for (site, layer, image), pattern in planted.items():
        array = zarr.open_array(str(store.zarr_path), path=f"{rid}/{site}", mode="r+")
        block = array[layer, image]
        block.view(np.uint16)[3, 7] = pattern
        array[layer, image] = block
    faults = sorted(str(f) for f in verify_run(store, rid))
    root = tmp_path / "store"
    assert faults == sorted([
        f"{chunk(root, rid, 'attn_in', 0, 0)}: non-finite values in images [1] of layer 0 "
        "(attn_in)",
        f"{chunk(root, rid, 'attn_in', 1, 2)}: non-finite values in images [9, 10] of layer 1 "
        "(attn_in)",
        f"{chunk(root, rid, 'resid', 2, 1)}: non-finite values in images [6] of layer 2 "
        "(resid)"])


@pytest.fixture(scope="module")
def stats_only(prefect_harness, tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("verify-stats") / "store"
    with env_kept():
        assert main(["audit", *EXTRACT[1:], "--no-store-activations", "--store", str(root)]) == 0
    (rid,) = list_runs(Store(root))
    return root, rid


def test_a_stats_only_run_verifies_intact_without_shards(stats_only, capsys):
    root, rid = stats_only
    assert not list(Store(root).shards_dir(rid).glob("*.json"))  # nothing to find there
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert (code, out.strip(), err) == (0, f"run {rid}: intact (stats-only: no activations "
                                           "kept)", "")


@pytest.mark.slow
def test_a_damaged_table_of_a_stats_only_run_is_repaired_by_its_hint(stats_only, tmp_path,
                                                                     capsys):
    root = tmp_path / "store"
    shutil.copytree(stats_only[0], root)
    rid = stats_only[1]
    table = root / read_pointer(Store(root), rid)["tables"]["layers"]
    table.write_bytes(b"PAR1 not really parquet")
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and out.startswith(f"fault: {table}: unreadable") and out.count("\n") == 1
    # no activations to extract or decompose again: the hint audits it again, stats-only
    assert "bfd extract" not in err and "bfd decompose" not in err and err.count("\n") == 1
    command = err.split("published again by: ")[1].split(" (with")[0]
    assert command.startswith("bfd audit --no-store-activations --model test_vit ")
    code, _, err = cli(shlex.split(command)[1:], capsys)
    assert code == 0, err
    assert list_runs(Store(root)) == [rid]  # the same run, not a new one
    # its audit beside the first, in its series and at its step (it was at the time it ran)
    first, again = read_audits(Store(root))
    assert (again["series"], again["step"], again["run_id"]) == (
        first["series"], first["step"], rid)
    assert verify_run(Store(root), rid) == []


def test_drop_activations_refuses_a_stats_only_run(stats_only, capsys):
    root, rid = stats_only
    code, _, err = cli(["drop-activations", rid, "--store", str(root)], capsys)
    assert code == 2 and f"run {rid} is stats-only (bfd audit --no-store-activations): it " \
        "kept no activations, nothing to free" in err, err


def test_an_unpublished_stats_only_run_is_a_fault(stats_only, tmp_path, capsys):
    root = tmp_path / "store"
    shutil.copytree(stats_only[0], root)
    rid = stats_only[1]
    pointer = Store(root).published_pointer(rid)
    pointer.unlink()  # as an audit killed before it published: the run has nothing else
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and out.strip() == f"fault: {pointer}: never published (a stats-only run " \
        "keeps nothing else)"
    assert "bfd audit --no-store-activations" in err and "bfd extract" not in err


@pytest.mark.slow
def test_a_repair_with_weights_changed_since_says_it_makes_another_run(prefect_harness,
                                                                      tmp_path, capsys):
    """The repair command names the run's weights file as it was given; once that file holds
    other bytes (a `last.pth` overwritten) or is gone, the command would extract another run
    and leave this one damaged: verify says so beside it."""
    from checkpoints import AUDIT, make_checkpoints

    paths = make_checkpoints(tmp_path / "ckpts")
    weights, root = paths[0], tmp_path / "store"
    with env_kept():
        assert main(["extract", "--model", AUDIT["model"], "--weights", str(weights),
                     "--n-images", "4", "--img-size", str(AUDIT["img_size"]), "--layers", "0",
                     "--dtype", "float32", "--images-per-chunk", "2", "--store",
                     str(root)]) == 0
    (rid,) = list_runs(Store(root))
    chunk(root, rid, "attn_in", 0, 1).unlink()
    code, _, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and f"--weights {weights} " in err and "bfd: but" not in err, err
    weights.write_bytes(paths[1].read_bytes())
    code, _, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and err.splitlines()[-1].startswith(
        f"bfd: but its weights file '{weights}' now holds other bytes (sha256 "), err
    weights.unlink()
    code, _, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and err.splitlines()[-1].startswith(
        f"bfd: but its weights file '{weights}' is not there"), err


def test_a_table_file_gone_is_named_missing(damaged, capsys):
    """A table file the pointer names that is gone is said missing, with nothing after it
    (it read 'unreadable ()': pyarrow's error names only the path, which is cut out)."""
    root, rid = damaged
    table = root / read_pointer(Store(root), rid)["tables"]["heads"]
    table.unlink()
    code, out, _ = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and out == f"fault: {table}: missing (the published version's file is gone)\n"


def test_model_arg_words_read_back_as_the_same_values():
    from bfd.requests import model_arg_words, parse_model_arg

    args = {"depth": 6, "class_token": False, "init_values": 1e-5, "fc_norm": None,
            "global_pool": "avg", "looks_like_int": "4", "spaced": "a b"}
    words = shlex.split(" ".join(model_arg_words(args)))
    assert words[::2] == ["--model-arg"] * len(args)
    back = dict(parse_model_arg(text) for text in words[1::2])
    assert back == args and all(type(back[k]) is type(v) for k, v in args.items())


@pytest.mark.parametrize("stats", [False, True], ids=["stored", "stats-only"])
def test_the_repair_command_rebuilds_the_runs_exact_request(tmp_path, stats):
    """A run made with model arguments and no option at its default: the repair command
    verify, decompose and bfd runs print, parsed as bfd parses it, plans the same run id
    (it dropped --model-arg: a new run of the model's default depth was started)."""
    from bfd.cli import _extract_config, build_parser
    from bfd.storage import NOT_STORED, read_request
    from bfd.tasks.extract import ExtractConfig, prepare_run

    config = {"model": "test_vit", "weights": "random", "images": "samples", "n_images": 6,
              "layers": "0,2", "sites": ("resid", "attn_in"), "img_size": 32,
              "dtype": "float32", "images_per_chunk": 2, "images_per_shard": 4, "seed": 3,
              "model_args": {"depth": 3, "global_pool": "avg"},
              "extra": dict(NOT_STORED) if stats else {}}
    root = tmp_path / "store"
    rid = prepare_run(str(root), ExtractConfig(**config)).run_id
    request = read_request(Store(root), rid)
    assert request.extra["model_args"] == {"depth": 3, "global_pool": "avg"}

    command = repair_command(Store(root), rid)
    words = shlex.split(command)
    assert words[:2] == ["bfd", "audit" if stats else "extract"]
    args = build_parser().parse_args(words[1:])
    given = _extract_config(args)
    if not args.__dict__.get("store_activations", True):
        given["extra"] = dict(NOT_STORED)  # what bfd.flows.stats_only adds
    assert given["model_args"] == config["model_args"] and given["seed"] == 3
    again = ExtractConfig(**given)
    if not stats:  # the chunks of the run's template (no shard marked yet: any shard size)
        assert again.images_per_chunk == 2
    assert prepare_run(args.store, again).run_id == rid


@pytest.mark.parametrize("repair", ["extract", "audit"])
def test_activation_arrays_deleted_by_hand_are_one_fault_each_and_repaired(
        pristine, damaged, capsys, repair):
    """``rm -rf bfd.zarr/RUN/{attn_in,resid}`` (to free space): verify names each array in
    one line, decompose refuses in one line, and extraction (or an audit of the request)
    makes the arrays again and extracts every shard, bit for bit (it was a KeyError
    traceback of all three, and a failed audit)."""
    root, rid = damaged
    before = digest(pristine[0])
    arrays = [root / "bfd.zarr" / rid / site for site in ("attn_in", "resid")]
    for array in arrays:
        shutil.rmtree(array)

    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1 and "Traceback" not in err
    assert out.splitlines() == [f"fault: {a}: activation array missing (its folder is gone)"
                                for a in arrays]
    assert f"bfd: run {rid} has 2 fault(s); damaged shards are extracted again by: " \
        f"{repair_command(Store(root), rid)}" in err
    code, _, err = cli(["decompose", rid, "--store", str(root)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{arrays[0]}: activation array missing" in err and "(and 1 more;" in err

    argv = shlex.split(err.split("repair it with: ")[1])[1:]
    if repair == "audit":
        argv = ["audit", *argv[1:], "--series", "s", "--no-dashboard"]
    code, out, err = cli(argv, capsys)
    assert code == 0, err
    assert err.count("damaged, extracted again: ") == 2, err
    assert "8 images in 2 shards; 2 shards (8 images) to extract" in err
    if repair == "audit":
        assert f"run {rid} repaired: damaged shards 0, 1 of its activations extracted again, " \
            "results reused" in out, out
        (audit,) = read_audits(Store(root), "s")
        assert audit["status"] == "complete"
    assert digest(root) == before
    assert verify_run(Store(root), rid) == []


def test_many_chunk_files_missing_are_counted_per_array(tmp_path, prefect_harness, capsys):
    """A folder of chunk files gone: verify and the extraction that repairs it say so in a
    line per array, not a line per chunk file (120 lines in the trial; tens of thousands on
    a large set)."""
    root = tmp_path / "store"
    argv = [*EXTRACT[:-1], "1", "--store", str(root)]  # a chunk per image: 16 per site
    assert cli(argv, capsys)[0] == 0
    (rid,) = list_runs(Store(root))
    array = root / "bfd.zarr" / rid / "attn_in"
    shutil.rmtree(array / "c")
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1
    assert out == f"fault: {array}: 16 chunk files missing (layers 0-1 of shards 0-7)\n"
    assert f"bfd: run {rid} has 16 fault(s); " in err
    code, _, err = cli(argv, capsys)
    assert code == 0, err
    assert f"damaged, extracted again: {array}: 16 chunk files missing (layers 0-1 of " \
        "shards 0-7)" in err and err.count("damaged, extracted again") == 1, err
    assert verify_run(Store(root), rid) == []


def test_drop_activations_keeps_results_and_an_audit_extracts_them_again(pristine, damaged,
                                                                         capsys):
    """``bfd drop-activations`` frees the arrays' bytes; the run reads as one without
    activations (verify intact, decompose refused with what to do), keeps its tables, and
    an audit of its request extracts them again, bit for bit."""
    root, rid = damaged
    before, runs = digest(pristine[0]), read_table(Store(root), "runs").to_pylist()
    arrays = [root / "bfd.zarr" / rid / site for site in ("attn_in", "resid")]
    size = sum(p.stat().st_size for a in arrays for p in a.rglob("*") if p.is_file())
    code, out, err = cli(["drop-activations", rid, "--store", str(root)], capsys)
    assert code == 0, err
    assert out == f"run {rid}: activations dropped, {size / 1024:.1f} KiB freed (results, " \
        "tables and audits kept)\n"
    assert not any(a.exists() for a in arrays) and not list(root.glob(f"runs/{rid}/shards/*"))
    assert read_table(Store(root), "runs").to_pylist() == runs

    code, out, err = cli(["runs", "--store", str(root), "--format", "csv"], capsys)
    assert code == 0 and [r["activations"] for r in csv.DictReader(io.StringIO(out))
                          if r["run_id"] == rid] == ["dropped"], out  # it said "stored"
    from bfd.report.dashboard import build_dashboard

    site = build_dashboard(root, root.parent / "site").index.parent
    page = (site / "runs" / f"{rid}.html").read_text(encoding="utf-8")
    assert '"activations": "dropped"' in page or '"activations":"dropped"' in page
    code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 0 and not err
    assert out == f"run {rid}: intact (activations dropped by bfd drop-activations: results, " \
        f"tables and audits kept; {repair_command(Store(root), rid)} extracts them again)\n"
    code, _, err = cli(["decompose", rid, "--store", str(root)], capsys)
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"run {rid}'s activations were dropped (bfd drop-activations); " \
        f"{repair_command(Store(root), rid)} extracts them again" in err
    code, out, err = cli(["drop-activations", rid, "--store", str(root)], capsys)
    assert code == 0 and out == f"run {rid}: activations dropped before, 0 B freed (results, " \
        "tables and audits kept)\n", err

    argv = shlex.split(repair_command(Store(root), rid))[1:]
    code, out, err = cli(["audit", *argv[1:], "--series", "s", "--no-dashboard"], capsys)
    assert code == 0, err
    assert "8 images in 2 shards; 2 shards (8 images) to extract" in err
    assert f"run {rid} repaired: shards 0, 1 of its activations extracted again, results " \
        "reused" in out, out
    assert digest(root) == before and verify_run(Store(root), rid) == []
    assert cli(["verify", rid, "--store", str(root)], capsys)[1] == f"run {rid}: intact\n"
    code, out, _ = cli(["runs", "--store", str(root), "--format", "csv"], capsys)
    assert [r["activations"] for r in csv.DictReader(io.StringIO(out))
            if r["run_id"] == rid] == ["stored"], out


def test_drop_activations_removes_a_link_not_what_it_points_to(damaged, tmp_path, capsys):
    """An array of the run that is a link to a folder elsewhere (activations moved to another
    disk, or shared): the drop removes the link and counts no bytes for it; the folder it
    pointed to is untouched (trial 25, F2: its zarr.json was deleted through the link, and
    its bytes reported freed)."""
    root, rid = damaged
    elsewhere = tmp_path / "elsewhere"
    site = root / "bfd.zarr" / rid / "attn_in"
    shutil.move(site, elsewhere)
    site.symlink_to(elsewhere, target_is_directory=True)
    kept = {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()}
    resid = root / "bfd.zarr" / rid / "resid"
    size = sum(p.stat().st_size for p in resid.rglob("*") if p.is_file())
    code, out, err = cli(["drop-activations", rid, "--store", str(root)], capsys)
    assert code == 0, err
    assert out.startswith(f"run {rid}: activations dropped, {size / 1024:.1f} KiB freed"), out
    assert not site.is_symlink() and not site.exists() and not resid.exists()
    assert {p: p.read_bytes() for p in elsewhere.rglob("*") if p.is_file()} == kept


def test_drop_activations_refuses_a_run_not_published_or_being_computed(damaged, tmp_path,
                                                                        capsys):
    from locks import held_by_another_thread

    from bfd.storage import run_lock
    from bfd.tasks.extract import ExtractConfig, prepare_run

    root, rid = damaged
    with held_by_another_thread(run_lock(Store(root), rid)):
        code, _, err = cli(["drop-activations", rid, "--store", str(root)], capsys)
    assert code == 1 and f"run {rid} is busy: another process is computing it" in err, err
    assert verify_run(Store(root), rid) == []  # nothing removed

    fresh = tmp_path / "fresh"
    planned = prepare_run(str(fresh), ExtractConfig(model="test_vit", weights="random",
                                                    n_images=4, img_size=32, layers="0"))
    code, _, err = cli(["drop-activations", planned.run_id, "--store", str(fresh)], capsys)
    assert code == 2 and f"run {planned.run_id} is not published: its activations are all " \
        "it has" in err, err
    # published before versioned publishing: no pointer, its files in model=/run_id= folders
    # (trial 29: said not published)
    old = Store(fresh).table_dir("layers") / "model=test_vit" / f"run_id={planned.run_id}"
    old.mkdir(parents=True)
    (old / "part-0.parquet").write_bytes(b"")
    code, _, err = cli(["drop-activations", planned.run_id, "--store", str(fresh)], capsys)
    assert code == 2 and f"run {planned.run_id}'s table files were published by an older bfd " \
        "(the layout before versioned publishing" in err and "not published" not in err, err
    assert (Path(fresh) / "bfd.zarr" / planned.run_id).is_dir()


@pytest.mark.parametrize(("done", "said"), [
    (6, "14 shards never completed: 6, 7, 8, 9, 10, 11, 12, 13, 14, 15 and 4 more"),
    (19, "1 shard never completed: 19")])
def test_the_shards_never_completed_are_counted_when_the_list_is_cut(tmp_path, done, said):
    """20 shards, the first ``done`` extracted: verify says how many never completed and
    that the list is cut; it said `shards [6, 7, ..., 15] never completed` of 14."""
    from storebuilder import build_run, random_run_arrays

    store = Store(tmp_path / "store")
    rid = build_run(store, *random_run_arrays(0, L=1, N=80, T=4, d=4, sites=("resid",)),
                    shards_done=done)
    assert [str(f) for f in verify_run(store, rid)] == [f"{store.shards_dir(rid)}: {said}"]


def test_verify_of_a_run_being_computed_exits_75_not_1(tmp_path, capsys):
    """A run another process is extracting: its shards not completed yet are faults to
    verify, but no damage; it exits 75 (try again later), not 1 (damaged), so that a
    monitor tells them apart (trial 19)."""
    from locks import held_by_another_thread

    from bfd.storage import run_lock
    from bfd.tasks.extract import ExtractConfig, prepare_run

    root = tmp_path / "store"
    planned = prepare_run(str(root), ExtractConfig(model="test_vit", weights="random",
                                                   n_images=4, img_size=32, layers="0"))
    rid = planned.run_id
    with held_by_another_thread(run_lock(Store(root), rid)):
        code, out, err = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 75 and "no shard completed" in out, out + err
    assert "being computed by another process now" in err, err
    code, _, _ = cli(["verify", rid, "--store", str(root)], capsys)
    assert code == 1  # no process at work: the shards never completed are faults
