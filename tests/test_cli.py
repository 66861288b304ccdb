"""The ``bfd`` command: every expected failure is one ``bfd: error:`` line with code 2, and a
failed command leaves what a store already holds as it was."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from conftest import env_kept
from conftest import run_cli as run

from bfd.cli import main
from bfd.queries import list_queries
from bfd.storage import (
    Store,
    list_runs,
    open_activations,
    read_image_manifest,
    read_model_tensors,
    read_request,
)

TINY = "test_vit"
REPO = Path(__file__).resolve().parents[1]
EXTRACT = ["extract", "--model", TINY, "--weights", "random", "--n-images", "8",
           "--img-size", "32", "--layers", "0,1", "--dtype", "float32",
           "--images-per-chunk", "4"]


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    assert err.startswith("bfd: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """No cached weights and the hub offline, whatever this machine holds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.fixture(scope="module")
def extracted(prefect_harness, tmp_path_factory) -> tuple[Store, str]:
    store = Store(tmp_path_factory.mktemp("cli") / "store")
    with env_kept():
        assert main([*EXTRACT, "--store", str(store.root)]) == 0
    (rid,) = list_runs(store)
    return store, rid


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "vit_no_such_model", "--weights", "random"], ["unknown to timm"]),
        (["--model", "resnet18", "--weights", "random"], ["not supported", "ResNet"]),
        (["--model", "eva02_tiny_patch14_224", "--weights", "random"], ["rotary"]),
        (["--weights", "random"], ["--model is required"]),
        ([*EXTRACT[1:], "--layers", "0,x"], ["comma-separated ints", "'0,x'"]),
        ([*EXTRACT[1:], "--layers", "1,6"], ["--layers: must be in [0, 6)", "[6]"]),
        ([*EXTRACT[1:], "--images", "{tmp}/no_such_folder"], ["does not exist"]),
        ([*EXTRACT[1:], "--images-per-shard", "6"], ["multiple of images_per_chunk=4"]),
    ],
    ids=["unknown-model", "resnet", "eva", "no-model", "layers-not-ints", "layers-out-of-range",
         "no-images-folder", "shard-not-whole-chunks"],
)
def test_extract_errors_are_one_line(prefect_harness, tmp_path, capsys, args, needles):
    store = tmp_path / "store"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, out, err = run(["extract", *args, "--store", str(store)], capsys)
    assert_one_line_error(code, err, *needles)
    assert out == "" and not store.exists()


# a value of each decompose option that changes results, other than its default
OTHER_RESULT_OPTIONS = {"prefix": "include", "seed": 3, "compute_dtype": "float64",
                        "jackknife_groups": 8, "ci_target": 0.05}


@pytest.mark.parametrize("command", [["audit"], ["audit-checkpoints", "ckpts"]])
def test_audits_take_the_decompose_options_that_change_results(command, capsys):
    """bfd audit and bfd audit-checkpoints take bfd decompose's options that change results
    (``RESULT_FLAGS``), as bfd decompose takes them (the same defaults, choices and help),
    each read back by its name (they took none: the flows' decompose_options were the
    defaults, whatever a user wanted)."""
    import argparse

    from bfd.cli import build_parser, decompose_options
    from bfd.storage.republish import RESULT_FLAGS

    commands = next(a for a in build_parser()._actions
                    if isinstance(a, argparse._SubParsersAction)).choices

    def described(name: str) -> dict:
        return {o: (a.default, a.choices, a.type, a.help)
                for a in commands[name]._actions for o in a.option_strings
                if o in RESULT_FLAGS.values()}

    assert set(described("decompose")) == set(RESULT_FLAGS.values())
    assert described(command[0]) == described("decompose")
    flags = [w for key, flag in RESULT_FLAGS.items()
             for w in (flag, str(OTHER_RESULT_OPTIONS[key]))]
    args = build_parser().parse_args([*command, "--model", "test_vit", *flags])
    assert decompose_options(args) == OTHER_RESULT_OPTIONS
    with pytest.raises(SystemExit):
        run([command[0], "--help"], capsys)
    out = " ".join(capsys.readouterr().out.split())
    assert "--prefix {exclude,include} prefix tokens (CLS, registers)" in out
    assert "--jackknife-groups JACKKNIFE_GROUPS image groups of the 95 % intervals" in out


def test_audit_checkpoints_offers_only_its_own_options(tmp_path, capsys):
    """Its weights are each checkpoint's: no --weights in its help or argv; no --demo either."""
    with pytest.raises(SystemExit) as exited:
        run(["audit-checkpoints", "--help"], capsys)
    out = capsys.readouterr().out
    assert exited.value.code == 0 and "--model" in out
    assert "--weights" not in out and "--demo" not in out
    # its --series default is the folder's (checkpoints_series), not bfd audit's
    words = " ".join(out.split())
    assert "weights' source" not in words and "random-seed-0" not in words
    assert "the model and the checkpoints' folder or glob, as an absolute path" in words
    with pytest.raises(SystemExit) as exited:  # argparse's refusal: one line
        run(["audit-checkpoints", str(tmp_path), "--weights", "random"], capsys)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err == ("bfd audit-checkpoints: error: unrecognized arguments: --weights random; "
                   "bfd audit-checkpoints --help lists its options\n"), err
    code, _, err = run(["audit-checkpoints", str(tmp_path), "--store", str(tmp_path / "s")],
                       capsys)
    assert_one_line_error(code, err, "--model is required; e.g. --model")
    assert "--demo" not in err and not (tmp_path / "s").exists()


def test_pretrained_weights_offline_and_not_cached(prefect_harness, tmp_path, capsys,
                                                   empty_hf_cache):
    store = tmp_path / "store"
    code, _, err = run(["extract", "--model", TINY, "--img-size", "32", "--store", str(store)],
                       capsys)
    assert_one_line_error(code, err, "not in the Hugging Face cache", "offline",
                          "--weights random")
    assert not store.exists()


def test_sql_refuses_writes_in_one_line(extracted, capsys):
    store, _ = extracted
    code, _, err = run(["sql", "UPDATE runs SET status = 'x'", "--store", str(store.root)],
                       capsys)
    assert_one_line_error(code, err, "read-only", "UPDATE")
    code, _, err = run(["sql", "INSTALL httpfs", "--store", str(store.root)], capsys)
    assert_one_line_error(code, err, "read-only; refused INSTALL, a statement of kind LOAD")


def test_query_list_and_missing_parameter(tmp_path, capsys):
    code, out, err = run(["query", "--list"], capsys)
    assert (code, err) == (0, "")
    lines = [line for line in out.splitlines() if not line.startswith(" ")]
    listed = [line.split()[0] for line in lines]
    assert listed == list_queries() and "layer_profile" in listed
    assert "[model (required unless run_id), run_id (optional)]" in out
    # one column of names as wide as the longest, its description not repeating the name
    start = max(map(len, listed)) + 2
    for name, line in zip(listed, lines, strict=True):
        assert line[:start].rstrip() == name and line[start] != " ", line
        assert not line[start:].startswith(f"{name}:"), line
    for bad, needle in ((["--param", "=vit"], "--param must be key=value; got '=vit'"),
                        (["--param", "model=a", "--param", "model=b"],
                         "--param model is given twice")):
        code, _, err = run(["query", "layer_profile", *bad, "--store", str(tmp_path)], capsys)
        assert_one_line_error(code, err, needle)
    code, _, err = run(["query", "layer_profile", "--store", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "layer_profile", "model")


def _snapshot(store: Store, rid: str) -> dict:
    ds = open_activations(store, rid)
    return {
        "acts": {site: ds[site].values for site in ds.data_vars},
        "files": {str(p.relative_to(store.run_dir(rid))): (p.read_bytes(), p.stat().st_mtime_ns)
                  for p in store.run_dir(rid).rglob("*") if p.is_file()},
        "qkv": read_model_tensors(store, rid).qkv_weight.values,
        "images": read_image_manifest(store, rid),
    }


@pytest.mark.slow
def test_failed_commands_lose_nothing(extracted, capsys):
    store, rid = extracted
    before = _snapshot(store, rid)
    # request, image manifest, two shard markers, and the run's lock file (empty)
    assert sorted(before["files"])[0] == ".compute.lock" and len(before["files"]) == 5
    assert all(np.isfinite(a).all() for a in before["acts"].values())

    # a real process, to see all it writes to stderr (Prefect's own logs included): the same
    # run with a shard size that disagrees with its completed shards
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"}
    argv = [*EXTRACT, "--images-per-shard", "8", "--store", str(store.root)]
    proc = subprocess.run([sys.executable, "-m", "bfd.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "marker of shard", "the plan has")
    assert proc.stdout == ""

    for argv, needles in [
        ([*EXTRACT, "--images-per-chunk", "2", "--images-per-shard", "4"],
         ["differs in", "images_per_chunk"]),
        ([*EXTRACT, "--layers", "0,9"], ["--layers: must be in [0, 6)"]),
        (["sql", "DELETE FROM runs"], ["read-only"]),
        (["sql", "DROP TABLE heads"], ["read-only"]),
    ]:
        code, _, err = run([*argv, "--store", str(store.root)], capsys)
        assert_one_line_error(code, err, *needles)

    after = _snapshot(store, rid)
    assert list_runs(store) == [rid] and read_request(store, rid).layers == (0, 1)
    assert after["files"] == before["files"]
    assert after["images"] == before["images"]
    assert np.array_equal(after["qkv"], before["qkv"])
    for site, a in before["acts"].items():
        assert np.array_equal(after["acts"][site], a), site
    assert json.loads((store.run_dir(rid) / "request.json").read_text())["run_id"] == rid


@pytest.mark.slow
def test_decompose_publishes_and_caches_the_catalog(extracted, tmp_path, capsys):
    store, rid = extracted
    root = tmp_path / "store"
    shutil.copytree(store.root, root)  # the module's store stays as test_failed_* expects it
    code, out, err = run(["decompose", rid, "--store", str(root), "--device", "cpu"], capsys)
    assert code == 0, err
    assert f"run {rid} decomposed" in out and "warning" not in err
    snapshots = [p for p in (root / "catalog").glob("*.duckdb") if p.name != "current.duckdb"]
    assert len(snapshots) == 1
    before = snapshots[0].stat()
    code, out, _ = run(["runs", "--store", str(root)], capsys)
    assert code == 0 and rid in out
    after = snapshots[0].stat()  # the query attached the cached snapshot, it built nothing
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    code, _, err = run(["decompose", rid, "--store", str(root), "--device", "tpu"], capsys)
    assert_one_line_error(code, err, "device must be auto, cpu, cuda or cuda:K")



def _table_store(root: Path) -> Path:
    """A store holding only result tables (no activations): one complete run whose undefined
    values are stored both ways an older and a newer writer store them, NaN and NULL."""
    import datetime as dt

    from bfd.storage import TABLE_SCHEMAS, write_table

    store = Store(root)
    store.root.mkdir(parents=True, exist_ok=True)
    n_rows = {"runs": 1, "layers": 4, "heads": 6, "modes": 6, "images": 3}
    for table, schema in TABLE_SCHEMAS.items():
        rows = []
        for i in range(n_rows[table]):
            row = {}
            for field in schema:
                kind = field.type
                if str(kind).startswith("timestamp"):
                    row[field.name] = dt.datetime(2025, 1, 2, 3, 4, 5, 500000, tzinfo=dt.UTC)
                elif str(kind).startswith("int"):
                    row[field.name] = i
                elif str(kind) == "double":
                    row[field.name] = [float("nan"), None, float("inf"), 0.25][i % 4]
                else:
                    row[field.name] = f"{field.name}-{i}"
            rows.append({k: v for k, v in row.items() if k not in ("model", "run_id")})
        if table == "runs":
            # a request as bfd writes it: JSON (the run_pairs view reads its prefix option)
            rows[0].update(status="complete", config_json="{}")
        write_table(store, table, "toy", "toy-run", rows)
    return store.root


def _bfd(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bfd.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120, **kwargs)


def test_reading_commands_import_no_torch_timm_prefect(tmp_path):
    """sql, query, runs and --help load none of the pipeline's heavy modules, nor pandas; the
    dashboard (which reads results with xarray) none of torch, timm, Prefect."""
    root = _table_store(tmp_path / "store")
    code = (
        "import sys, contextlib, io\n"
        "from bfd.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    codes = [main(['sql', 'SELECT 1', '--store', {str(root)!r}]),\n"
        f"             main(['query', 'model_summary', '--store', {str(root)!r}]),\n"
        "             main(['query', '--list']),\n"
        f"             main(['runs', '--store', {str(root)!r}])]\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit as exit:\n"
        "        codes.append(exit.code)\n"
        "print(codes, 'toy-run' in out.getvalue(),\n"
        "      sorted(m for m in ('torch', 'timm', 'prefect', 'xarray', 'zarr', 'dask',\n"
        "                           'pandas')\n"
        "             if m in sys.modules))\n"
        f"code = main(['dashboard', '--store', {str(root)!r}, '--out', {str(tmp_path / 'd')!r}])\n"
        "print(code, sorted(m for m in ('torch', 'timm', 'prefect') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-3] == "[0, 0, 0, 0, 0] True []"
    assert lines[-2].startswith(f"dashboard: {tmp_path / 'd' / 'index.html'}")
    assert lines[-1] == "0 []"


def test_query_list_imports_neither_duckdb_nor_pyarrow():
    """The list of named queries is read from their headers alone; it prints what the
    checked specs (``query_spec``, which parses the SQL with DuckDB) say."""
    from bfd.queries import query_spec

    code = (
        "import sys, contextlib, io\n"
        "from bfd.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    code = main(['query', '--list'])\n"
        "print(out.getvalue(), end='')\n"
        "print(code, sorted(m for m in ('duckdb', 'pyarrow', 'numpy', 'torch', 'prefect')\n"
        "                   if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    *listing, last = proc.stdout.splitlines()
    assert last == "0 []"
    entries: dict[str, list[str]] = {}  # a query's line and its indented continuation lines
    for line in listing:
        if line.startswith(" "):
            entries[list(entries)[-1]].append(line.strip())
        else:
            entries[line.split()[0]] = [line.split(maxsplit=1)[1]]
    assert list(entries) == list_queries()
    for name, lines in entries.items():
        spec = query_spec(name)
        params = (", ".join(str(p) for p in spec.params) or "no parameters") + spec.steps_line
        description = [line.strip() for line in
                       spec.description.removeprefix(f"{name}: ").splitlines()]
        assert lines[:-1] == description[:-1], name
        assert lines[-1] == f"{description[-1]}  [{params}]", name


@pytest.fixture(scope="module")
def table_store(tmp_path_factory) -> Path:
    return _table_store(tmp_path_factory.mktemp("tables") / "store")


def test_json_and_csv_fit_pipes(table_store, tmp_path):
    """Strict JSON (NaN, infinities and NULL all null), one timestamp form in every text format,
    and Parquet with the result's own values."""
    strict = ("import json, sys\n"
              "def refuse(token): raise ValueError(token)\n"
              "rows = json.load(sys.stdin, parse_constant=refuse)\n"
              "print(json.dumps(rows))\n")
    proc = subprocess.run(
        f"{sys.executable} -m bfd.cli query model_summary --format json --store {table_store}"
        f" | {sys.executable} -c {shlex.quote(strict)}", shell=True, cwd=REPO, capture_output=True,
        text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (summary,) = json.loads(proc.stdout)
    assert summary["run_id"] == "toy-run" and summary["frac_pos_mean"] is None

    sql = "SELECT layer, frac_pos, created_at FROM layers JOIN runs USING (run_id) ORDER BY layer"
    as_json = json.loads(_bfd("sql", sql, "--format", "json", "--store", str(table_store)).stdout)
    lines = _bfd("sql", sql, "--format", "jsonl", "--store", str(table_store)).stdout
    assert [json.loads(line) for line in lines.splitlines()] == as_json
    # layer i holds [nan, None, inf, 0.25][i]: only the finite value survives
    assert [row["frac_pos"] for row in as_json] == [None, None, None, 0.25]
    stamp = "2025-01-02T03:04:05.500000Z"
    assert {row["created_at"] for row in as_json} == {stamp}
    csv = _bfd("sql", sql, "--format", "csv", "--store", str(table_store)).stdout.splitlines()
    assert csv[0] == '"layer","frac_pos","created_at"' and len(csv) == 5
    assert all(line.endswith(f',"{stamp}"') for line in csv[1:])

    out = tmp_path / "layers.parquet"
    proc = _bfd("sql", sql, "--format", "parquet", "--output", str(out), "--store",
                str(table_store))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    import pyarrow.parquet as pq

    from bfd.queries import run_sql

    # Parquet keeps the result's own types and values (NaN stays NaN where the store has one)
    assert pq.read_table(out).equals(run_sql(str(table_store), sql))
    proc = _bfd("sql", sql, "--format", "parquet", "--store", str(table_store))
    assert_one_line_error(proc.returncode, proc.stderr, "--output FILE")
    # a folder given as the file: the user's own path named, nothing left beside it
    folder = tmp_path / "results"
    folder.mkdir()
    proc = _bfd("sql", sql, "--format", "csv", "--output", str(folder), "--store",
                str(table_store))
    assert_one_line_error(proc.returncode, proc.stderr, f"--output {str(folder)!r} is a folder")
    assert not list(folder.iterdir()) and not list(tmp_path.glob(".results*"))


def test_the_table_format_shows_control_characters_as_escapes(table_store):
    """A name holding a terminal's escapes (a weights file's name, an image's) is printed as
    text: the terminal acted on them (trial 25, F6: cleared the screen, retitled the window)."""
    sql = ("SELECT 'w' || chr(27) || ']0;T' || chr(7) || chr(27) || '[2J' || chr(8238) || 'x'"
           " || chr(10) || 'é' AS weights, 1.5 AS v")
    proc = _bfd("sql", sql, "--store", str(table_store))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1] == "w\\x1b]0;T\\x07\\x1b[2J\\u202ex\\né  1.5"
    # the data formats keep the values themselves
    proc = _bfd("sql", sql, "--format", "json", "--store", str(table_store))
    assert json.loads(proc.stdout)[0]["weights"] == "w\x1b]0;T\x07\x1b[2J\u202ex\né"


def test_an_error_line_shows_control_characters_as_escapes(tmp_path, capsys):
    """A path typed with a terminal's escape (a --store pasted from a log) is printed in the
    error line as text, not acted on (trial 31: it cleared the screen)."""
    store = str(tmp_path / "st\x1b[2J\u202eore")
    code, out, err = run(["runs", "--store", store], capsys)
    assert code == 2 and out == "", err
    assert err.startswith(f"bfd: error: no store at {tmp_path}/st\\x1b[2J\\u202eore (--store)")
    assert "\x1b" not in err and "\u202e" not in err and err.count("\n") == 1


def test_sql_dates_and_the_dashboard_s_times_are_utc_whatever_tz_says(tmp_path):
    """An instant's date and hour in SQL, and its time on the dashboard, are UTC's, as the
    instants print, under any TZ: under TZ=America/Adak, created_at::DATE was the day before
    the printed one (and SET TimeZone refused), and the dashboard showed the builder's wall
    time beside the steps' UTC times (trial 31). created_at: 2025-01-02 03:04:05.5 UTC."""
    root = _table_store(tmp_path / "store")
    adak = {**os.environ, "TZ": "America/Adak"}  # UTC-10 in January
    proc = _bfd("sql", "SELECT created_at, created_at::DATE::VARCHAR AS d, hour(created_at) AS h"
                " FROM runs", "--format", "json", "--store", str(root), env=adak)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"created_at": "2025-01-02T03:04:05.500000Z",
                                        "d": "2025-01-02", "h": 3}]
    proc = _bfd("dashboard", "--store", str(root), "--out", str(tmp_path / "dash"), env=adak)
    assert proc.returncode == 0, proc.stderr
    pages = "".join(p.read_text(encoding="utf-8") for p in (tmp_path / "dash").rglob("*.html"))
    assert "2025-01-02T03:04:05.500000+00:00" in pages
    assert "2025-01-01T17:04" not in pages


def test_a_store_path_with_a_backslash_says_why_it_has_no_stable_catalog(tmp_path, capsys):
    """DuckDB reads a backslash of a path as '/': the stable catalog file cannot be made in
    such a store, which bfd catalog --path said as a store that cannot be written (trial 31);
    its queries still answer, from a private catalog."""
    root = _table_store(tmp_path / "back\\slash")
    code, out, err = run(["catalog", "--path", "--store", str(root)], capsys)
    assert code == 1 and out == "", err
    assert err.startswith(f"bfd: error: store {str(root)!r} has a backslash in its path, which "
                          "DuckDB reads as '/', so its stable catalog file cannot be made "
                          "there"), err
    code, out, err = run(["sql", "SELECT count(*) AS n FROM runs", "--store", str(root)], capsys)
    assert code == 0 and out.split() == ["n", "1"], err


def _latin5_locale(tmp_path: Path) -> dict[str, str]:
    """The environment of a Turkish ISO-8859-9 locale (a locale whose encoding is not UTF-8),
    compiled into ``tmp_path`` (skipped where the system's locale sources are missing)."""
    folder = tmp_path / "locales"
    folder.mkdir()
    subprocess.run(["localedef", "-i", "tr_TR", "-f", "ISO-8859-9",
                    str(folder / "tr_TR.ISO-8859-9")], capture_output=True, check=False)
    if not (folder / "tr_TR.ISO-8859-9").is_dir():
        pytest.skip("localedef cannot compile tr_TR.ISO-8859-9 here (no locale sources)")
    return {**os.environ, "LOCPATH": str(folder), "LC_ALL": "tr_TR.ISO-8859-9"}


def test_a_locale_of_another_encoding_reads_names_as_utf8(tmp_path):
    """Under a locale whose encoding is not UTF-8, file names were read in that encoding: an
    image é.png was the id Ã©.png, so the same files and model made another run (and drift
    was not compared), and a store at a non-ASCII path read as damaged (trial 31). The command
    runs in Python's UTF-8 mode there: the same run id as in a UTF-8 locale, the store read,
    and no libgomp line about OMP_WAIT_POLICY (Turkish case folding)."""
    from PIL import Image

    latin5 = _latin5_locale(tmp_path)
    utf8 = {**os.environ, "LC_ALL": "C.UTF-8"}
    images = tmp_path / "imgs é"
    images.mkdir()
    for i, name in enumerate(("a.png", "é.png", "中文.png")):
        Image.new("RGB", (8, 8), (i, 2 * i, 3 * i)).save(images / name)
    argv = ["audit", "--model", TINY, "--weights", "random", "--images", str(images),
            "--img-size", "32", "--layers", "0", "--store", str(tmp_path / "new ü"), "--dry-run"]
    planned = {}
    for name, env in (("utf8", utf8), ("latin5", latin5)):
        proc = subprocess.run([sys.executable, "-m", "bfd", *argv], cwd=REPO, env=env,
                              capture_output=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert b"libgomp" not in proc.stderr, proc.stderr
        (planned[name],) = [line.split(b":")[0] for line in proc.stdout.splitlines()
                            if line.startswith(b"run ")]
    assert planned["utf8"] == planned["latin5"], planned
    # a notebook or a Prefect worker under that locale: refused, with the remedy, not another id
    code = f"from bfd.images import list_images; list_images({str(images)!r})"
    proc = subprocess.run([sys.executable, "-c", code], env=latin5, capture_output=True,
                          timeout=120)
    assert b"not UTF-8, so its id (and the run's) would differ" in proc.stderr, proc.stderr
    assert b"PYTHONUTF8=1" in proc.stderr
    proc = subprocess.run([sys.executable, "-X", "utf8", "-c", code], env=latin5,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    root = _table_store(tmp_path / "störe é")
    proc = subprocess.run([sys.executable, "-m", "bfd", "runs", "--store", str(root)], cwd=REPO,
                          env=latin5, capture_output=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == b"", proc.stderr
    assert len(proc.stdout.splitlines()) == 2  # its header and its one run


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_closed_pipe_ends_quietly(table_store, fmt):
    proc = subprocess.Popen(
        [sys.executable, "-m", "bfd.cli", "sql", "SELECT range AS i FROM range(10000000)",
         "--format", fmt, "--store", str(table_store)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does once it has its line
    code = proc.wait(timeout=120)
    assert first.split() in (["i"], ["["])
    assert proc.stderr.read() == "" and code == 141  # 128 + SIGPIPE, as a shell reports it


SLOW_SQL = "SELECT count(*) FROM range(1000000000) AS a, range(1000000) AS b"  # hours


def test_sql_timeout_stops_a_slow_query_in_one_line(tmp_path):
    proc = _bfd("sql", SLOW_SQL, "--timeout", "0.5", "--store", str(tmp_path))
    assert_one_line_error(proc.returncode, proc.stderr, "--timeout 0.5 s")
    assert proc.stdout == ""
    proc = _bfd("sql", "SELECT 1", "--timeout", "0", "--store", str(tmp_path))
    assert_one_line_error(proc.returncode, proc.stderr, "--timeout must be a positive")


def test_ctrl_c_stops_a_running_query(tmp_path):
    """DuckDB does not look at Python's signals while it computes; the command interrupts it."""
    out = tmp_path / "rows.jsonl"
    # a store with tables, so that its catalog snapshot is built (an empty folder gets none,
    # and the wait below ran to its deadline, 100 s, before the Ctrl-C)
    store = _table_store(tmp_path / "store")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bfd.cli", "sql", SLOW_SQL.replace("count(*)", "a.range"),
         "--format", "jsonl", "--output", str(out), "--store", str(store)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the catalog snapshot appears just before the query starts
    deadline = time.monotonic() + 100
    while not list((store / "catalog").glob("*.duckdb")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert time.monotonic() < deadline, "no catalog snapshot in 100 s"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # without the fix: hours
    assert (proc.returncode, err) == (130, "bfd: interrupted\n")
    assert not out.exists() and not list(tmp_path.glob(".rows.jsonl*"))


@pytest.mark.slow
def test_a_pipeline_command_process_ends_with_its_work_done(prefect_harness, tmp_path):
    """``bfd`` as a process ends without the interpreter's teardown: what it printed and
    wrote must all be there."""
    proc = _bfd(*EXTRACT, "--store", str(tmp_path / "store"), env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    (rid,) = list_runs(Store(tmp_path / "store"))
    assert proc.stdout == f"run {rid} extracted into {tmp_path / 'store'}\n"
    assert sorted(p.name for p in Store(tmp_path / "store").shards_dir(rid).iterdir()) == [
        "0.json", "1.json"]


def test_json_rows_equal_pythons_json_of_the_same_values():
    """Arrow-built JSON text against Python's json of the same rows (NaN and inf as None)."""
    import io

    import duckdb

    from bfd.output import write_result

    sql = ("SELECT range AS i, range * 0.5 AS dec, [3.0, -0.0, 1e20, 1.5e-7, 'nan', 'inf']"
           "[range % 6 + 1]::DOUBLE AS f, ['plain', 'q\"uote', 'back\\slash', chr(10) || 'nl',"
           " 'é', NULL][range % 6 + 1] AS s, range % 2 = 0 AS b, [range, NULL] AS l, "
           "DATE '2025-01-01' + range::INT AS d FROM range(12)")
    con = duckdb.connect()
    expected = con.sql(sql).to_arrow_table().to_pylist()
    for row in expected:
        row["dec"] = float(row["dec"])
        row["f"] = row["f"] if np.isfinite(row["f"]) else None
        row["d"] = str(row["d"])
    for fmt in ("json", "jsonl"):
        out = io.BytesIO()
        write_result(con.sql(sql).to_arrow_reader(5), fmt, out)  # several batches
        text = out.getvalue().decode()
        rows = (json.loads(text) if fmt == "json"
                else [json.loads(line) for line in text.splitlines()])
        assert rows == expected
        assert all(type(r["f"]) is float for r in rows if r["f"] is not None)


def test_no_store_activations_refuses_workers_in_one_line(prefect_harness, tmp_path, capsys):
    store = tmp_path / "store"
    for extra in (["--workers", "2"], ["--dask-address", "tcp://127.0.0.1:1"]):
        code, out, err = run(["audit", *EXTRACT[1:], "--no-store-activations", *extra,
                              "--store", str(store)], capsys)
        assert_one_line_error(code, err, "--no-store-activations", "--workers")
        assert out == "" and not store.exists()


def test_decompose_refuses_an_unknown_run_or_bad_option_before_any_work(tmp_path):
    """Checked before the temporary server, torch or Prefect start (it took 11-30 s)."""
    code = (
        "import sys\n"
        "from bfd.cli import main\n"
        f"store = {str(tmp_path / 'store')!r}\n"
        "codes = [main(['decompose', 'no-such-run', '--store', store]),\n"
        "         main(['decompose', 'no-such-run', '--jackknife-groups', '6',\n"
        "               '--store', store])]\n"
        "print(codes, sorted(m for m in ('torch', 'timm', 'prefect') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.stdout.splitlines()[-1] == "[2, 2] []", proc.stderr
    first, second = proc.stderr.splitlines()
    assert first.startswith("bfd: error: no run request at ") and "no-such-run" in first
    assert second == ("bfd: error: jackknife groups must be 0 (no intervals) or a multiple of "
                      "4 that is >= 8; got 6")


def test_decompose_of_an_unknown_run_names_the_closest_runs_not_all(tmp_path, capsys):
    """A typo'd run id among many: the error names the three closest run ids and how to list
    them all (it listed every run id of the store in one line)."""
    runs = [f"vit_a-{i:016x}" for i in range(20)] + ["vit_b-00000000000000aa"]
    for rid in runs:
        (tmp_path / "store" / "runs" / rid).mkdir(parents=True)
        (tmp_path / "store" / "runs" / rid / "request.json").write_text("{}")
    store = tmp_path / "store"
    code, out, err = run(["decompose", "vit_b-00000000000000ab", "--store", str(store)],
                         capsys)
    assert (code, out) == (2, "")
    assert err == (
        f"bfd: error: no run request at {store}/runs/vit_b-00000000000000ab/request.json; "
        "closest of the 21 runs with requests: vit_b-00000000000000aa, vit_a-000000000000000b, "
        f"vit_a-000000000000000a (bfd runs --store {store} lists them all)\n")


def test_every_command_and_option_has_a_help_line():
    """`bfd CMD --help` starts with what the command does, and names what each argument is."""
    import argparse

    from bfd.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    missing = []
    for name, parser in sub.choices.items():
        if not parser.description:
            missing.append(f"{name}: description")
        missing += [f"{name} {action.option_strings or action.dest}" for action in parser._actions
                    if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []


@pytest.mark.parametrize("argv, command, extras", [
    (["runs", "--foo"], "runs", "--foo"),
    (["runs", "extra"], "runs", "extra"),
    (["query", "model_summary", "--for", "csv"], "query", "--for csv"),
    (["audit", "--demo", "--wei", "random"], "audit", "--wei random"),
    (["audit", "--demo", "--no-dash"], "audit", "--no-dash"),
    (["extract", "--mod", "test_vit"], "extract", "--mod test_vit"),
    (["decompose", "some-run", "--control", "3"], "decompose", "--control 3"),
    (["-v", "sql", "SELECT 1", "--form", "csv"], "sql", "--form csv")],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_an_unknown_or_abbreviated_option_is_refused_by_the_commands_parser(
        tmp_path, capsys, argv, command, extras):
    """argparse's refusal, exit 2: one line naming the command (whose --help lists its
    options), not bfd; an abbreviation of an option (``--wei`` for ``--weights``) is no option
    (a scheduled command line would change meaning when an option is added); nothing is run
    or written."""
    with pytest.raises(SystemExit) as exited:
        run([*argv, "--store", str(tmp_path / "store")], capsys)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err == (f"bfd {command}: error: unrecognized arguments: {extras}; bfd {command} "
                   "--help lists its options\n"), err
    assert not (tmp_path / "store").exists()


def test_an_invalid_choice_is_one_line(tmp_path, capsys):
    """argparse printed 9-13 lines of usage before the line that says what is wrong."""
    with pytest.raises(SystemExit) as exited:
        run(["decompose", "r", "--prefix", "none", "--store", str(tmp_path)], capsys)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("bfd decompose: error: argument --prefix: invalid choice: 'none'"), err


def test_verbose_is_taken_before_or_after_every_command():
    """``-v``/``--verbose`` is the option of every command: ``bfd runs -v`` as ``bfd -v runs``."""
    import argparse

    from bfd.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(sub.choices) >= 10
    for name, command in sub.choices.items():
        positionals = ["x" for a in command._actions
                       if not a.option_strings and a.nargs != "?"]
        argv = [name, *positionals]
        assert parser.parse_args(argv).verbose is False, name
        for flags in (["-v", *argv], [*argv, "-v"], [*argv, "--verbose"],
                      ["-v", *argv, "-v"]):
            assert parser.parse_args(flags).verbose is True, flags


NESTED_SQL = (
    "SELECT range AS i, CASE WHEN range % 3 = 0 THEN NULL ELSE [range, NULL, 2] END AS l, "
    "{'a': range * 0.5, 'b': [1.5, 'nan'::DOUBLE, 'inf'::DOUBLE], 's': 'q\"é' || range} AS st, "
    "MAP {'k': range} AS m, [[range], [], [1, 2]] AS ll, [range, 7]::INT[2] AS fixed, "
    "[TIMESTAMPTZ '2025-01-02 03:04:05.25+00' + to_days(range::INT)] AS t FROM range(7)")


def _plain(value: object) -> object:
    """A Python value of an Arrow result as JSON text of it reads back: decimals numbers, NaN
    and infinities null, (key, value) pairs lists, timestamps ISO 8601 in UTC with a Z."""
    import datetime as dt
    import decimal
    import math

    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(
            timespec="microseconds") + "Z"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def test_nested_values_in_every_format(tmp_path, capsys):
    """Lists, structs, maps and fixed-size lists: JSON values in JSON, JSON text in CSV and
    the table (NULL an empty CSV cell), Parquet's own; CSV used to refuse them."""
    import csv
    import io

    import duckdb
    import pyarrow.parquet as pq

    from bfd.output import write_result

    con = duckdb.connect()
    table = con.sql(NESTED_SQL).to_arrow_table()
    expected = [{k: _plain(v) for k, v in row.items()} for row in table.to_pylist()]
    assert expected[0]["l"] is None and expected[1]["st"]["b"] == [1.5, None, None]
    texts = {}
    for fmt in ("csv", "json", "jsonl", "table"):
        out = io.BytesIO()
        write_result(con.sql(NESTED_SQL).to_arrow_reader(3), fmt, out)  # several batches
        texts[fmt] = out.getvalue().decode()
    assert json.loads(texts["json"]) == expected
    assert [json.loads(line) for line in texts["jsonl"].splitlines()] == expected
    header, *cells = list(csv.reader(io.StringIO(texts["csv"])))
    assert '""q\\""é1""' in texts["csv"]  # text as it is, quotes escaped for JSON then CSV
    assert header == list(expected[0])
    assert [[int(c[0]), *(json.loads(v) if v else None for v in c[1:])] for c in cells] == [
        list(row.values()) for row in expected]
    lines = texts["table"].splitlines()
    assert lines[0].split() == list(expected[0]) and len(lines) == 1 + len(expected)
    for line, row in zip(lines[1:], expected, strict=True):
        for value in list(row.values())[1:]:
            text = "NULL" if value is None else json.dumps(value, ensure_ascii=False)
            assert text in line, (line, value)
    out = tmp_path / "nested.parquet"
    write_result(con.sql(NESTED_SQL).to_arrow_reader(3), "parquet", io.BytesIO(), str(out))
    back = pq.read_table(out)  # Parquet's own types (its list items are named "element")
    assert back.schema.names == table.schema.names
    assert [{k: _plain(v) for k, v in row.items()} for row in back.to_pylist()] == expected
    # the command a user ran, on a new store
    (tmp_path / "store").mkdir()
    code, out, err = run(["sql", "SELECT [1, 2] AS x", "--format", "csv",
                          "--store", str(tmp_path / "store")], capsys)
    assert (code, out, err) == (0, '"x"\n"[1, 2]"\n', "")


def test_intervals_are_iso_durations_in_every_text_format(tmp_path, capsys):
    """An interval (``finished_at - started_at FROM audits``) as an ISO 8601 duration, alone
    or inside a list; CSV used to refuse it."""
    sql = ("SELECT INTERVAL 3 DAY AS a, INTERVAL '83.456 seconds' AS b, "
           "[INTERVAL '1 month 2 days'] AS c, NULL::INTERVAL AS d, INTERVAL '-5 seconds' AS e,"
           " INTERVAL 0 SECOND AS z")
    expected = {"a": "P3D", "b": "PT83.456S", "c": ["P1M2D"], "d": None, "e": "PT-5S",
                "z": "P0D"}
    (tmp_path / "store").mkdir()
    texts = {}
    for fmt in ("csv", "json", "jsonl", "table"):
        code, texts[fmt], err = run(["sql", sql, "--format", fmt,
                                     "--store", str(tmp_path / "store")], capsys)
        assert (code, err) == (0, ""), fmt
    assert json.loads(texts["json"]) == [expected] == [json.loads(texts["jsonl"])]
    assert texts["csv"].splitlines()[1] == '"P3D","PT83.456S","[""P1M2D""]",,"PT-5S","P0D"'
    assert texts["table"].splitlines()[1].split() == [
        "P3D", "PT83.456S", '["P1M2D"]', "NULL", "PT-5S", "P0D"]


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv", [
    ["runs"], ["sql", "SELECT 1"], ["catalog"], ["query", "model_summary"], ["dashboard"],
    ["verify", "some-run"], ["plot", "some-run"], ["runs", "--format", "json"]],
    ids=lambda argv: " ".join(argv))
def test_reading_commands_refuse_a_folder_that_is_no_store(tmp_path, capsys, argv):
    """A typo'd --store that exists, or a home folder: refused in one line, nothing written
    into it (the SQL catalog was); a catalog an earlier bfd left there is named."""
    folder = tmp_path / "Documents"
    (folder / "notes").mkdir(parents=True)
    (folder / "letter.txt").write_text("dear")
    (folder / "notes" / "a.md").write_text("a")
    before = _tree(folder)
    code, out, err = run([*argv, "--store", str(folder)], capsys)
    assert_one_line_error(code, err, f"{folder} is not a BFD store", "letter.txt, notes",
                          "runs/")
    assert out == "" and _tree(folder) == before and "earlier bfd" not in err
    (folder / "catalog").mkdir()
    (folder / "catalog" / "current.duckdb").write_bytes(b"left by an earlier bfd")
    before = _tree(folder)
    code, _, err = run([*argv, "--store", str(folder)], capsys)
    assert_one_line_error(code, err, "its catalog/ was written by an earlier bfd")
    assert _tree(folder) == before


def test_the_store_help_the_refusal_and_layout_md_name_the_same_store_folders(tmp_path):
    """What makes a folder a store is said from one list (``STORE_ENTRIES``): the reading
    commands' --store help (it left out request_keys/), the refusal of a folder of other files
    and docs/layout.md."""
    import argparse

    from bfd.cli import _READING_COMMANDS, build_parser
    from bfd.storage import NotAStoreError, check_store
    from bfd.storage.paths import STORE_ENTRIES

    named = ", ".join(f"{name}/" for name in STORE_ENTRIES[:-1]) + f" or {STORE_ENTRIES[-1]}/"
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command in _READING_COMMANDS:
        (store,) = [a for a in sub.choices[command]._actions if a.dest == "store"]
        assert f"a folder holding {named}, or an empty one" in store.help, command
    (tmp_path / "letter.txt").write_text("dear")
    with pytest.raises(NotAStoreError, match=f"but no {named}\\)"):
        check_store(tmp_path)
    layout = (Path(__file__).parents[1] / "docs" / "layout.md").read_text()
    assert f"it holds `{named.replace('/, ', '/`, `').replace('/ or ', '/` or `')}`" in layout


def test_the_library_readers_refuse_a_folder_that_is_no_store_before_writing(tmp_path):
    """The CLI leaves the check to what reads the store first: the dashboard builder connects
    before it makes its folder (by default inside the store), verify says the folder is no
    store rather than that it holds no such run."""
    from bfd.report.dashboard import build_dashboard
    from bfd.storage import NotAStoreError, Store, verify_run

    folder = tmp_path / "Documents"
    folder.mkdir()
    (folder / "letter.txt").write_text("dear")
    with pytest.raises(NotAStoreError, match="is not a BFD store"):
        build_dashboard(folder, folder / "dashboard")
    with pytest.raises(NotAStoreError, match="is not a BFD store"):
        verify_run(Store(folder), "some-run")
    assert sorted(p.name for p in folder.iterdir()) == ["letter.txt"]


def test_a_store_is_an_empty_folder_or_one_holding_what_bfd_writes(tmp_path, capsys):
    """An empty folder is a new store (empty answers); a folder holding any of runs/, tables/,
    bfd.zarr/ or request_keys/ is a store, whatever else it holds (stores of every version);
    --attach of a folder that is no store is refused too."""
    from bfd.storage.paths import STORE_ENTRIES

    def no_runs(store: Path) -> tuple[int, str, str]:
        return (0, "(no rows)\n", "bfd: the store holds no runs yet; make a first run: bfd "
                f"audit --demo --store {store}\n")

    empty = tmp_path / "new"
    empty.mkdir()
    (empty / ".hidden").write_text("x")
    assert run(["runs", "--store", str(empty)], capsys) == no_runs(empty)
    assert run(["sql", "SELECT count(*) AS n FROM runs", "--format", "csv", "--store",
                str(empty)], capsys)[:2] == (0, '"n"\n0\n')
    # reading writes nothing into it (an empty folder named by mistake stays as it was)
    assert sorted(p.name for p in empty.iterdir()) == [".hidden"]
    # the dashboard writes its pages, and leaves it a new store
    assert run(["dashboard", "--store", str(empty)], capsys)[0] == 0
    assert run(["runs", "--store", str(empty)], capsys) == no_runs(empty)
    assert sorted(p.name for p in empty.iterdir()) == [".hidden", "dashboard"]
    for name in STORE_ENTRIES:
        store = tmp_path / name
        (store / name).mkdir(parents=True)
        (store / "README.txt").write_text("my store")
        assert run(["runs", "--store", str(store)], capsys) == no_runs(store), name
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "x.csv").write_text("1")
    code, _, err = run(["sql", "SELECT 1", "--store", str(empty), "--attach",
                        f"other={folder}"], capsys)
    assert_one_line_error(code, err, f"{folder} is not a BFD store")
    assert sorted(p.name for p in folder.iterdir()) == ["x.csv"]


def test_reading_a_run_not_published_says_so_and_what_to_run(tmp_path, capsys):
    """``plot`` of a run extracted but not decomposed, or whose extraction stopped, says that
    the run is there and what takes it further (not "no run"); a named query refuses its run
    parameters the same way (not "names no run")."""
    from storebuilder import build_run, random_run_arrays

    root = _table_store(tmp_path / "store")
    store = Store(root)
    extracted = build_run(store, *random_run_arrays(0, N=10), model="toy_a")
    stopped = build_run(store, *random_run_arrays(1, N=10), model="toy_b", shards_done=1)
    out = tmp_path / "figures"
    code, _, err = run(["plot", extracted, "--out", str(out), "--store", str(root)], capsys)
    assert_one_line_error(code, err, f"run {extracted!r} has no published results to draw "
                          f"(extracted): extracted, not decomposed: bfd decompose {extracted} "
                          f"--store {root}\n")
    code, _, err = run(["plot", stopped, "--out", str(out), "--store", str(root)], capsys)
    assert_one_line_error(code, err, f"run {stopped!r} has no published results to draw "
                          "(incomplete): extraction incomplete (4 of 10 images;",
                          f"bfd verify {stopped} --store {root}")
    code, _, err = run(["plot", "toy_c-0", "--out", str(out), "--store", str(root)], capsys)
    assert_one_line_error(code, err, "no run 'toy_c-0' in store", "runs: toy-run")
    assert not out.exists()
    # refused as plot refuses it, and as a run id naming nothing is (exit 2): it exited 0
    code, stdout, err = run(["query", "compare_runs", "--param", f"run_a={extracted}",
                             "--param", "run_b=toy-run", "--store", str(root)], capsys)
    assert (code, stdout) == (2, "(no rows)\n")
    assert err == (f"bfd: error: no rows: run_a {extracted!r} names a run that is not "
                   f"published (extracted): extracted, not decomposed: bfd decompose "
                   f"{extracted} --store {root}\n")
    code, stdout, err = run(["query", "head_map", "--param", "model=toy", "--param",
                             f"run_id={stopped}", "--store", str(root)], capsys)
    assert (code, stdout) == (2, "(no rows)\n")
    assert err.startswith(f"bfd: error: no rows: run_id {stopped!r} names a run that is not "
                          "published (incomplete): extraction incomplete (4 of 10 images;"), err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc here")
@pytest.mark.parametrize("out", ["/proc/bfd-dash", "/proc/self/bfd/dash"])
def test_a_dashboard_out_where_no_folder_can_be_made_is_a_fault_of_the_environment(
        tmp_path, capsys, out):
    """/proc answers "No such file or directory" to a new folder in it: said as the folder
    that cannot be written (exit 1), as a read-only one is, not as a request's typo (exit 2,
    "[Errno 2] No such file or directory: '/proc/dash'")."""
    store = tmp_path / "store"
    store.mkdir()
    code, out_, err = run(["dashboard", "--store", str(store), "--out", out], capsys)
    top = "/proc" if out.count("/") == 2 else "/proc/self"
    assert (code, out_, err) == (1, "", (
        f"bfd: error: cannot write {out}: {top} takes no new files (No such file or "
        "directory); make it writable or choose another --store (or --out)\n"))
    assert not os.path.exists(out) and list(store.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["runs"], ["dashboard"], ["sql", "SELECT 1"], ["catalog"], ["query", "model_summary"],
    ["verify", "some-run"], ["plot", "some-run"]], ids=lambda argv: " ".join(argv))
def test_reading_in_a_fresh_folder_says_how_to_make_a_first_run(tmp_path, capsys, monkeypatch,
                                                                 argv):
    """No store yet (a first try of bfd, or a typo): one line naming the store looked for and
    the offline demo that makes a first run there; nothing is written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BFD_STORE", raising=False)
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err, f"no store at {tmp_path / 'bfd-store'} (the default "
                          "./bfd-store; --store or $BFD_STORE name another); check it, or make "
                          "a first run there: bfd audit --demo\n")
    missing = tmp_path / "my store"
    code, out, err = run([*argv, "--store", str(missing)], capsys)
    assert_one_line_error(code, err, f"no store at {missing} (--store); check it, or make a "
                          f"first run there: bfd audit --demo --store '{missing}'\n")
    monkeypatch.setenv("BFD_STORE", str(missing))
    code, out, err = run(argv, capsys)
    assert_one_line_error(code, err, f"no store at {missing} ($BFD_STORE); check it, or make "
                          "a first run there: bfd audit --demo\n")
    assert out == "" and list(tmp_path.iterdir()) == []


def test_runs_lists_runs_not_published_with_what_to_do(tmp_path):
    """A run extracted but not decomposed, one whose extraction stopped, a stats-only audit that
    did not publish and an unreadable request are listed after the published runs (one of them
    published before pointers existed), from the run files alone: no Zarr, no torch. Each
    shows its images (run_shapes' short form: name@12 hex digits), img_size and (a published
    run) the decomposition's prefix option, so runs of one model on other images, at another
    size or over other positions are told apart."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from storebuilder import build_run, random_run_arrays

    from bfd.storage import NOT_STORED, RunRequest, read_request, write_request

    root = _table_store(tmp_path / "store")  # toy-run: published, with no request
    store = Store(root)
    extracted = build_run(store, *random_run_arrays(0, N=10), model="toy_a", skipped=(3, 8))
    stopped = build_run(store, *random_run_arrays(1, N=10), model="toy_b", shards_done=1)
    legacy = build_run(store, *random_run_arrays(2, N=10), model="toy_l")
    folder = root / "tables" / "runs" / "model=toy_l" / f"run_id={legacy}"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"run_id": [legacy], "model": ["toy_l"], "status": ["complete"],
                             "created_at": pa.array([0], pa.timestamp("us", tz="UTC")),
                             # decomposed with its prefix tokens included
                             "config_json": ['{"decompose": {"prefix": "include"}}']}),
                   folder / "part-0.parquet")
    stats_only = write_request(store, RunRequest(
        model="toy_c", weights="random", weights_sha256="x", images="/data/noise/",
        images_sha256="9" * 64, n_images=5, preprocessing={}, img_size=(32, 48), sites=("resid",),
        layers=(0,), dtype="float32", code_version="t", extra=NOT_STORED))
    (root / "runs" / "broken-0").mkdir()
    (root / "runs" / "broken-0" / "request.json").write_text("{")
    (root / "runs" / "not a run").mkdir()
    before = _tree(root / "runs")
    code = ("import sys\n"
            "from bfd.cli import main\n"
            f"code = main(['runs', '--format', 'json', '--store', {str(root)!r}])\n"
            "print(code, sorted(m for m in ('torch', 'timm', 'prefect', 'zarr', 'xarray')\n"
            "                   if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    *rows, last = proc.stdout.splitlines()
    assert last == "0 []", proc.stderr
    listed = [(r["run_id"], r["model"], r["status"], r["n_images"], r["n_skipped"], r["layers"],
               r["created_at"] is None, r["images"], r["img_size"], r["prefix"],
               r["activations"])
              for r in json.loads("\n".join(rows))]
    size = read_request(store, extracted).img_size  # an int: the grid's height
    assert listed == [
        (legacy, "toy_l", "complete", None, None, None, False, None, None, "include", "stored"),
        ("toy-run", "toy", "complete", 0, 0, "layers-0", False, "images-0@images_sha25", None,
         "exclude", "stored"),
        ("broken-0", None, "damaged", None, None, None, True, None, None, None, None),
        (extracted, "toy_a", "extracted", 10, 2, "0,1,2", True, "planted@planted", size, None,
         "stored"),
        (stopped, "toy_b", "incomplete", 10, None, "0,1,2", True, "planted@planted", size, None,
         "stored"),
        # a stats-only run says so: it has no activations to decompose again
        (stats_only, "toy_c", "incomplete", 5, None, "0", True, "noise@999999999999", 32, None,
         "not stored"),
    ]
    # a published run's images, img_size and prefix are its run_shapes row's (one rule)
    from bfd.queries import connect, run_sql

    with connect(root) as con:
        shapes = run_sql(con, "SELECT run_id, images, img_size, prefix FROM run_shapes "
                              "WHERE run_id IN ('toy-run', $legacy) ORDER BY run_id <> $legacy",
                         {"legacy": legacy})
    assert shapes.to_pylist() == [
        {"run_id": legacy, "images": None, "img_size": None, "prefix": "include"},
        {"run_id": "toy-run", "images": "images-0@images_sha25", "img_size": None,
         "prefix": "exclude"}]
    notes = proc.stderr.splitlines()
    assert [":".join(line.split(":")[:2]) for line in notes] == [
        f"bfd: run {rid}" for rid in ("broken-0", extracted, stopped, stats_only)]
    assert f"bfd verify broken-0 --store {root}" in notes[0]
    assert notes[1].endswith(f"extracted, not decomposed: bfd decompose {extracted} "
                             f"--store {root}")
    assert "(4 of 10 images;" in notes[2] and f"bfd verify {stopped}" in notes[2]
    assert "bfd audit --no-store-activations" in notes[3]
    # the weights' sha256, 12 hex digits, so that weights rewritten at one path (a weekly
    # checkpoint) are told apart (trial 23): a published run's (its runs row), a pending
    # run's (its request)
    # (whole where it is no digest: random weights' random-seed-0, whose first 12
    # characters every seed shares; trial 24)
    sha = {r["run_id"]: r["weights_sha256"] for r in json.loads("\n".join(rows))}
    assert (sha["toy-run"], sha[stats_only], sha["broken-0"]) == ("weights_sha256-0", "x", None)
    assert sha[extracted] == read_request(store, extracted).weights_sha256 == "random-seed-0"
    import duckdb

    from bfd.cli_read import SHORT_WEIGHTS_SHA

    digest = "0123456789abcdef" * 4
    assert duckdb.sql(f"SELECT {SHORT_WEIGHTS_SHA} FROM (VALUES ('{digest}'), "
                      "('random-seed-12'), (''), (NULL)) AS t(weights_sha256)").fetchall() == [
        ("0123456789ab",), ("random-seed-12",), (None,), (None,)]
    assert _tree(root / "runs") == before


@pytest.mark.parametrize("damage", ["table", "pointer"])
def test_runs_lists_a_published_run_whose_table_file_does_not_read_as_damaged(tmp_path, capsys,
                                                                               damage):
    """SQL leaves such a run out (with a warning); `bfd runs` still lists it, status
    `damaged`, with the columns of its `runs` file when that reads, and exits 1 with the last
    line of `bfd query` naming `bfd verify` (one line for the run). It blanked the columns and
    exited 0."""
    from bfd.storage import read_pointer

    root = _table_store(tmp_path / "store")
    store = Store(root)
    target = (root / read_pointer(store, "toy-run")["tables"]["heads"] if damage == "table"
              else store.published_pointer("toy-run"))
    target.write_bytes(target.read_bytes()[:40])
    code, out, err = run(["runs", "--format", "json", "--store", str(root)], capsys)
    assert code == 1, err
    known = ({"model": "toy", "weights": "weights-0", "weights_sha256": "weights_sha256-0",
              "images": "images-0@images_sha25",
              "img_size": None, "prefix": None, "activations": "stored", "n_images": 0,
              "n_skipped": 0, "layers": "layers-0", "sites": "sites-0", "method": None,
              "created_at": "2025-01-02T03:04:05.500000Z"} if damage == "table"
             else dict.fromkeys(("model", "weights", "weights_sha256", "images", "img_size",
                                 "prefix",
                                 "activations", "n_images", "n_skipped", "layers", "sites",
                                 "method", "created_at")))
    assert json.loads(out) == [{"run_id": "toy-run", **known, "status": "damaged"}]
    assert not [line for line in err.splitlines() if line.startswith("bfd: run toy-run")], err
    assert err.splitlines()[-1] == (
        "bfd: error: the output leaves out what 1 damaged or missing store file(s) held (named "
        f"above): bfd verify toy-run --store {root} says how to repair run toy-run")


def test_a_reading_command_that_left_out_a_damaged_file_writes_its_output_and_exits_1(
        tmp_path, capsys, caplog):
    """The layers file of a model's latest run truncated: `bfd query`, `bfd sql` and `bfd
    dashboard` still answer from what reads, but exit 1 (a damaged store file), the file named
    and `bfd verify` said; they exited 0 with the older run shown as the model's latest. The
    run told is the one the catalog left out, not one its note's path happens to spell (a
    folder "(run x)": the run ids were read back out of the note's text)."""
    import datetime as dt

    from dashstore import write_synthetic_run

    from bfd.storage import read_pointer

    root = tmp_path / "(run x)" / "store"
    write_synthetic_run(root, "old-1", created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    write_synthetic_run(root, "new-1", created_at=dt.datetime(2026, 2, 1, tzinfo=dt.UTC),
                        seed=1)
    query = ["query", "model_summary", "--format", "csv", "--store", str(root)]
    code, out, err = run(query, capsys)
    assert code == 0 and "new-1" in out and "old-1" not in out, err
    layers = root / read_pointer(Store(root), "new-1")["tables"]["layers"]
    layers.write_bytes(layers.read_bytes()[:300])
    for warning in _readers_leave_out_new_1(root, capsys, caplog, (
            (query, "old-1"),
            (["sql", "SELECT run_id FROM runs", "--store", str(root)], "old-1"),
            (query, "old-1"),  # from the cached snapshot, as the first time
            (["dashboard", "--store", str(root)], "dashboard: "))):
        assert str(layers) in warning and "new-1 is left out" in warning
    # bfd runs lists the run as damaged (test above), and exits 1 as they do
    code, out, err = run(["runs", "--store", str(root)], capsys)
    assert code == 1 and "new-1" in out and err.splitlines()[-1] == _told_new_1(root), err


def test_dashboard_serve_of_a_damaged_store_warns_and_exits_as_the_build(tmp_path, capsys):
    """`bfd dashboard --serve` on a store whose run is damaged: the pages are built (the run
    said damaged), so the line after the catalog's warning is a warning too, not `bfd:
    error:` (it said error, then served anyway), and once stopped it exits 1 as `bfd
    dashboard` of the store does."""
    import datetime as dt

    from dashstore import write_synthetic_run

    from bfd.storage import read_pointer

    root = tmp_path / "store"
    write_synthetic_run(root, "new-1", created_at=dt.datetime(2026, 2, 1, tzinfo=dt.UTC))
    layers = root / read_pointer(Store(root), "new-1")["tables"]["layers"]
    layers.write_bytes(layers.read_bytes()[:300])
    code, _, err = run(["dashboard", "--store", str(root)], capsys)
    assert code == 1 and err.splitlines()[-1] == _told_new_1(root, "dashboard"), err
    proc = subprocess.Popen([sys.executable, "-m", "bfd.cli", "dashboard", "--serve", "--port",
                             "0", "--store", str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not (lines and lines[-1].startswith("dashboard: serving ")):
            line = proc.stdout.readline()
            assert line, (lines, proc.poll())
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "bfd: error:" not in err and _told_new_1(root, "dashboard") in err.splitlines(), err


def _told_new_1(root: Path, command: str = "runs") -> str:
    """The last line of a reading command whose catalog left out run new-1: an error, but of
    ``bfd dashboard``, whose pages are built from what reads: a warning (exit 1 all the same)."""
    said = ("warning: the dashboard" if command == "dashboard" else "error: the output")
    return (f"bfd: {said} leaves out what 1 damaged or missing store file(s) held "
            f"(named above): bfd verify new-1 --store {root} says how to repair run new-1")


def _readers_leave_out_new_1(root: Path, capsys, caplog, commands) -> list[str]:
    """Runs each reading command ``(argv, wanted)``: its output holds ``wanted`` and not run
    new-1, its last stderr line names ``bfd verify new-1``, it exits 1. Returns the catalog's
    warning of each."""
    warnings = []
    for argv, wanted in commands:
        caplog.clear()
        code, out, err = run(argv, capsys)
        assert code == 1 and wanted in out and "new-1" not in out, (argv, out, err)
        assert err.splitlines()[-1] == _told_new_1(root, argv[0]), err
        (warning,) = [r.getMessage() for r in caplog.records if r.name == "bfd.catalog"]
        warnings.append(warning)
    return warnings


def test_a_table_file_changed_after_publishing_is_left_out_as_a_damaged_one(
        tmp_path, capsys, caplog):
    """The layers file of a model's latest run rewritten with other values (still Parquet):
    `bfd query`, `bfd sql` and `bfd dashboard` leave the run out and exit 1 after their
    output, as for a file that does not read (the pointer's size and mtime differ, then its
    sha256); they answered from the changed values with exit 0. The same bytes with another
    mtime (a copy, a touch) are no change; a pointer that recorded no size and mtime (written
    before they were kept) is not checked, as for the sha256."""
    import datetime as dt

    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from dashstore import write_synthetic_run

    from bfd.storage import read_pointer

    root = tmp_path / "store"
    write_synthetic_run(root, "old-1", created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    write_synthetic_run(root, "new-1", created_at=dt.datetime(2026, 2, 1, tzinfo=dt.UTC),
                        seed=1)
    pointer = read_pointer(Store(root), "new-1")
    layers = root / pointer["tables"]["layers"]
    st = layers.stat()
    query = ["query", "model_summary", "--format", "csv", "--store", str(root)]
    os.utime(layers, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the same bytes
    code, out, err = run(query, capsys)
    assert code == 0 and "new-1" in out and "warning" not in err, err
    table = pq.read_table(layers)
    pq.write_table(table.set_column(table.schema.get_field_index("frac_pos"), "frac_pos",
                                    pc.multiply(table["frac_pos"], 0.5)), layers)
    for warning in _readers_leave_out_new_1(root, capsys, caplog, (
            (query, "old-1"),
            (["sql", "SELECT run_id FROM runs", "--store", str(root)], "old-1"),
            (["dashboard", "--store", str(root)], "dashboard: "))):
        assert warning.startswith(f"bfd: warning: table file {layers} (run new-1) changed "
                                  "after it was published (sha256 ")
        assert warning.endswith("run new-1 is left out of the SQL catalog")
    # the dashboard's pages and `bfd runs` say the run is damaged, and why
    assert (f"run new-1 is damaged, left out of this dashboard and of SQL: {layers}: changed "
            "since it was published") in (root / "dashboard" / "index.html").read_text()
    caplog.clear()
    code, out, err = run(["runs", "--format", "json", "--store", str(root)], capsys)
    assert code == 1 and err.splitlines()[-1] == _told_new_1(root), err
    assert {r["run_id"]: r["status"] for r in json.loads(out)}["new-1"] == "damaged"
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "bfd.catalog"]
    assert f"table file {layers} (run new-1) changed after it was published" in warning
    # what the publish recorded; a pointer of before they were kept: no check (bfd verify
    # compares the sha256)
    assert (pointer["size"]["layers"], pointer["mtime_ns"]["layers"]) == (
        st.st_size, st.st_mtime_ns)
    old = json.loads((root / "runs" / "new-1" / "published.json").read_text())
    del old["size"], old["mtime_ns"]
    (root / "runs" / "new-1" / "published.json").write_text(json.dumps(old))
    code, out, err = run(query, capsys)
    assert code == 0 and "new-1" in out and "warning" not in err, err


def test_prefects_usage_telemetry_is_off_unless_the_user_turns_it_on(tmp_path):
    """Prefect 3.9's client telemetry printed its first-run notice into a command's output
    (PREFECT_SERVER_ANALYTICS_ENABLED=false turns off the server's only)."""
    code = ("import sys; from bfd.cli import _prefect_defaults; _prefect_defaults(False); "
            "from prefect._internal.analytics.enabled import is_telemetry_enabled; "
            "print(is_telemetry_enabled())")
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path),
            "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # no CI variables
    told = {}
    for given in (None, "0"):
        env = base if given is None else {**base, "DO_NOT_TRACK": given}
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        told[given] = proc.stdout.strip()
    assert told == {None: "False", "0": "True"}, told


def test_dir_of_bfd_offers_analyze_without_importing_torch():
    """Trial 29: a notebook's ``bfd.<TAB>`` offered nothing (``dir(bfd)`` was empty of the
    names served on first use)."""
    code = ("import sys, bfd\n"
            "print('analyze' in dir(bfd), '__version__' in dir(bfd), 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.split() == ["True", "True", "False"], proc.stderr


def test_flows_imported_from_python_set_the_offline_defaults_the_command_sets():
    """Trial 29: ``bfd.flows.audit.audit(...)`` from a notebook ran its temporary Prefect
    server with usage telemetry on, which logged an error offline; the bfd command sets it
    off before Prefect loads, and so does importing the flows now, unless the user set it."""
    code = ("import os\n"
            "os.environ['DO_NOT_TRACK'] = '0'\n"
            "import bfd.flows\n"
            "print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'], os.environ['DO_NOT_TRACK'],"
            " os.environ['HF_HUB_DISABLE_TELEMETRY'])\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK",
                        "HF_HUB_DISABLE_TELEMETRY")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.stdout.split() == ["false", "0", "1"], proc.stderr


def test_an_image_above_pillows_warning_size_is_used_without_its_raw_warning(
        prefect_harness, tmp_path, capsys, monkeypatch, recwarn):
    """Pillow warns (DecompressionBombWarning) of an image above MAX_IMAGE_PIXELS and refuses
    one above twice that: the first is decoded and used without the raw warning amid the bars
    (trial 30), the second skipped with its reason."""
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, side in (("a.png", 20), ("b.png", 30), ("big.png", 50), ("bomb.png", 70)):
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / name)
    code, _, err = run([*EXTRACT[:5], "--n-images", "4", "--images", str(folder), *EXTRACT[7:],
                        "--store", str(tmp_path / "store")], capsys)
    assert code == 0, err
    assert "decompression bomb" not in err
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    rows = read_image_manifest(Store(tmp_path / "store"), list_runs(Store(tmp_path / "store"))[0])
    status = {r.id: r.status for r in rows}
    assert status == {"a.png": "ok", "b.png": "ok", "big.png": "ok", "bomb.png": "skipped"}
