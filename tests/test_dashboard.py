"""The dashboard's build (pages, escaping, incremental refresh), its data, and ``bfd plot``.
The browser tests are in test_dashboard_browser.py."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dashstore import catalog_with_audits, write_synthetic_run
from PIL import Image
from test_queries import build_store

from bfd.cli import main
from bfd.queries import connect, run_query, run_sql
from bfd.report import data as D
from bfd.report.dashboard import MANIFEST, build_dashboard, embed_json, make_server
from bfd.report.plots import VIEWS, plot_run
from bfd.storage import SEEN_FIGURES, Store, read_pointer

XSS = "<script>alert(1)</script>"


def embedded(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    match = re.search(r"<script type='application/json' id='bfd-data'>(.*?)</script>", text, re.S)
    assert match is not None
    return json.loads(match.group(1))


def test_embedded_json_cannot_leave_its_script_element():
    value = {"name": f"</script>{XSS}<!-- & \u2028", "x": [1.5, None]}
    text = embed_json(value)
    assert not set("<>&") & set(text)
    assert json.loads(text) == value


def test_an_empty_store_s_page_says_what_the_demo_audits_as_readme_and_help_do(tmp_path,
                                                                             capsys):
    """The overview of a store with no runs names bfd audit --demo and what it audits: the
    embedded sample images (scikit-image's photographs, README), not "generated images"."""
    (tmp_path / "empty").mkdir()
    build_dashboard(tmp_path / "empty", tmp_path / "site")
    js = (tmp_path / "site" / "assets" / "dashboard.js").read_text(encoding="utf-8")
    start = js.index('"No runs yet')
    said = re.sub(r'"\s*\+\s*"', "", js[start:js.index('"no-runs"', start)])
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    demo = re.search(r"--demo\s+offline demo: (.*?)\n\s+--", capsys.readouterr().out, re.S)
    assert demo and " ".join(demo.group(1).split()) in said, said
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert "on 64 embedded sample images (deterministic crops of scikit-image's" in readme
    assert "scikit-image's photographs" in said and "generated" not in said, said


def test_pages_of_a_store_and_an_incremental_rebuild(tmp_path):
    root = tmp_path / "store"
    runs = build_store(root)
    out = tmp_path / "site"
    first = build_dashboard(root, out)
    pages = {"index.html", "series.html", "compare.html"} | {f"runs/{r}.html" for r in runs}
    assets = {"assets/plotly.min.js", "assets/dashboard.js", "assets/dashboard.css"}
    assert set(first.written) == pages | assets and not first.unchanged
    # The overview lists every run, the unfinished one included, from the catalog.
    overview = embedded(out / "index.html")
    assert sorted(overview["runs"]["run_id"]) == sorted(runs)
    assert overview["has_audits"] is False
    # Layer rows only for complete runs; their frac_pos is what was planted.
    assert set(overview["layers"]["run_id"]) == {"a-old", "a-new", "b-1"}
    rows = [i for i, r in enumerate(overview["layers"]["run_id"]) if r == "a-new"]
    np.testing.assert_allclose(
        [overview["layers"]["frac_pos"][i] for i in rows], runs["a-new"].frac_pos, rtol=1e-12
    )
    page = (out / "index.html").read_text(encoding="utf-8")
    # Nothing is loaded from outside the output folder.
    assert not re.search(r"""(src|href)=["'](https?:|//)""", page)
    assert "plotly.min.js" in page and (out / "assets/plotly.min.js").stat().st_size > 1e6

    # A run without published results has a kept page too: it was built again at every
    # build (its key None), and counted written when the build's minute had changed.
    assert all(json.loads((out / MANIFEST).read_text())["pages"][rel] for rel in pages)
    second = build_dashboard(root, out)
    assert second.written == [] and set(second.unchanged) == pages

    created = dt.datetime(2025, 4, 1, tzinfo=dt.UTC)
    write_synthetic_run(root, "c-1", model="vit_c", created_at=created)
    third = build_dashboard(root, out)
    assert set(third.written) == {"index.html", "series.html", "compare.html", "runs/c-1.html"}
    assert "c-1" in embedded(out / "compare.html")["runs"]["run_id"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert "runs/c-1.html" in manifest["pages"]

    # The run leaves the store: every table file holding only its rows goes.
    gone = [
        path for path in (root / "tables").rglob("*.parquet")
        if set(pq.read_table(path, columns=["run_id"]).column("run_id").to_pylist()) == {"c-1"}
    ]
    assert len(gone) == 4
    for path in gone:
        path.unlink()
    fourth = build_dashboard(root, out)
    assert fourth.removed == ["runs/c-1.html"] and not (out / "runs/c-1.html").exists()


def test_a_run_decomposed_again_with_other_options_shows_no_layers_or_head_changes(tmp_path):
    """An audit whose run was decomposed since with other options that change figures (a
    later --prefix include, --control-seed 3): the Series page's heatmap showed the run's
    current layer rows in its column (a layer-0 frac_pos "change" of 0.2 that was one of the
    positions counted) and head-type changes from its current heads. Its point is marked
    ``redecomposed``; no head-type change is listed against it or across it."""
    from bfd.storage import Store, write_audit, write_drift

    root, out = tmp_path / "store", tmp_path / "site"
    saw = {"prefix": "exclude", "seed": 0, "compute_dtype": "float32"}
    write_synthetic_run(root, "k1", model="vit_b", seed=1, decompose=saw)
    write_synthetic_run(root, "k2", model="vit_b", seed=2, decompose={**saw, "seed": 3})
    for k, (audit_id, run_id) in enumerate((("K1", "k1"), ("K2", "k2"), ("K3", "k1"))):
        at = dt.datetime(2025, 3, 1 + k, tzinfo=dt.UTC)
        write_audit(Store(root), {
            "audit_id": audit_id, "series": "s", "run_id": run_id, "step": k + 1,
            "started_at": at, "finished_at": at, "trigger": "cli", "flow_run_id": None,
            "status": "complete", "prev_audit_id": f"K{k}" if k else None, "n_flagged": 0,
            "decompose_json": json.dumps(saw)})
    build_dashboard(root, out)
    data = embedded(out / "series.html")
    points = {a: r for a, r in zip(data["metrics"]["audit_id"], data["metrics"]["redecomposed"],
                                   strict=True)}
    assert points == {"K1": False, "K2": True, "K3": False}
    # the two runs' heads differ in type (the changes the page listed before), one model and
    # one prefix option (run_pairs has no note for them): none is listed now
    with connect(root) as con:
        differ = run_sql(con, "SELECT count(*) AS n FROM heads AS a JOIN heads AS b USING "
                              "(layer, head) WHERE a.run_id = 'k1' AND b.run_id = 'k2' AND "
                              "a.head_type IS DISTINCT FROM b.head_type").column("n")[0].as_py()
        note = run_sql(con, "SELECT note FROM run_pairs WHERE run_a = 'k1' AND run_b = 'k2'")
    assert differ > 0 and note.column("note").to_pylist() == [None]
    assert data["head_type_changes"]["audit_id"] == []
    # the types K2's audit kept in its drift rows are its record: listed whatever its run's
    # heads hold now
    kept = ("position-position", "content-content")
    write_drift(Store(root), "s", "K2", [{
        "audit_id": "K2", "prev_audit_id": "K1", "layer": 0, "head": 1, "metric": "head_type",
        "before": None, "after": None, "delta": 1.0, "threshold": 0.5, "flagged": True,
        "type_before": kept[0], "type_after": kept[1]}])
    build_dashboard(root, out)
    changes = embedded(out / "series.html")["head_type_changes"]
    keys = ("audit_id", "prev_audit_id", "prev_run_id", "run_id", "layer", "head", "before",
            "after")
    assert [tuple(changes[k][i] for k in keys) for i in range(len(changes["audit_id"]))] == [
        ("K2", "K1", "k1", "k2", 0, 1, *kept)]


def test_a_rebuild_removes_only_run_pages_whatever_its_manifest_lists(tmp_path):
    """A page of the old manifest that is no page now is removed: a run page it names, never
    another path (trial 25, F1: a crafted runs/../../precious.txt in the store's manifest,
    which anyone who writes to the store can edit, deleted any file the rebuilder could)."""
    from dashstore import write_synthetic_run

    root, out = tmp_path / "store", tmp_path / "site"
    write_synthetic_run(root, "r-1", depth=2)
    build_dashboard(root, out)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (out / "runs" / "gone.html").write_text("a run no longer in the store")
    manifest = json.loads((out / MANIFEST).read_text())
    for rel in ("runs/../../precious.txt", f"runs/{precious}", "runs/gone.html", "index2.html"):
        manifest["pages"][rel] = "x"
    (out / MANIFEST).write_text(json.dumps(manifest))
    build = build_dashboard(root, out)
    assert precious.read_text() == "keep me"
    assert build.removed == ["runs/gone.html"] and not (out / "runs" / "gone.html").exists()


def test_a_forced_rebuild_counts_every_page_written_or_unchanged(tmp_path, capsys):
    """--force rewrites every page; one rebuilt byte for byte the same is left as it was and
    counted unchanged (it was counted nowhere: "6 files written, 0 pages unchanged" of 13)."""
    root, out = tmp_path / "store", tmp_path / "site"
    build_store(root)
    first = build_dashboard(root, out)
    pages = sorted(str(p.relative_to(out)) for p in out.rglob("*.html"))
    assert sorted(first.pages_written) == pages and not first.unchanged
    for _ in range(2):  # a page written again differs only in its build time (to the minute)
        again = build_dashboard(root, out, force=True)
        written = [rel for rel in again.written if not rel.startswith("assets/")]
        assert sorted(written + again.unchanged) == pages
    # the command's line: the pages, written and unchanged, add up
    assert main(["dashboard", "--store", str(root), "--out", str(out), "--force"]) == 0
    said = capsys.readouterr().out.splitlines()[-1]
    counts = re.fullmatch(rf"dashboard: {re.escape(str(out / 'index.html'))} \((\d+) pages: "
                          r"(\d+) written, (\d+) unchanged; 0 removed; (\d+) asset files "
                          r"written\)", said)
    assert counts, said
    total, written, unchanged, assets = map(int, counts.groups())
    assert total == written + unchanged == len(pages) and assets == 0, said


def test_a_run_with_a_damaged_table_file_is_said_damaged_not_dropped(tmp_path):
    """The catalog leaves the run out (a warning of the command); its page and the overview
    say so in one line naming the file, until it is published again."""
    root, out = tmp_path / "store", tmp_path / "site"
    write_synthetic_run(root, "a-1")
    write_synthetic_run(root, "b-1", model="vit_b")
    build_dashboard(root, out)
    table = root / read_pointer(Store(root), "b-1")["tables"]["heads"]
    table.write_bytes(table.read_bytes()[:100])
    build = build_dashboard(root, out)
    assert build.removed == [] and embedded(out / "index.html")["runs"]["run_id"] == ["a-1"]
    for rel in ("index.html", "series.html", "compare.html", "runs/b-1.html"):
        (line,) = re.findall(r"<p class='damaged' role='alert'>([^<]*)</p>",
                             (out / rel).read_text(encoding="utf-8"))
        assert line.startswith(f"run b-1 is damaged, left out of this dashboard and of SQL: "
                               f"{table}: unreadable (") and "bfd verify b-1 --store" in line
    assert "bfd-data" not in (out / "runs/b-1.html").read_text(encoding="utf-8")
    assert "class='damaged'" not in (out / "runs/a-1.html").read_text(encoding="utf-8")
    # published again (here: planted again), the run has its page back
    write_synthetic_run(root, "b-1", model="vit_b")
    build_dashboard(root, out)
    assert embedded(out / "runs/b-1.html")["run"]["run_id"] == "b-1"
    assert "class='damaged'" not in (out / "index.html").read_text(encoding="utf-8")


def test_run_keys_follow_each_runs_rows(tmp_path):
    root = tmp_path / "store"
    for i, run_id in enumerate(("r-1", "r-2")):
        write_synthetic_run(root, run_id, seed=i)
    with connect(root) as con:
        before = D.run_keys(con)
    write_synthetic_run(root, "r-2", seed=5)  # same shape, other numbers
    with connect(root) as con:
        after = D.run_keys(con)
    assert before["r-1"] == after["r-1"] and before["r-2"] != after["r-2"]


def test_positional_components_recover_the_planted_grid(tmp_path):
    root = tmp_path / "store"
    write_synthetic_run(root, "p-1", depth=2, grid=(4, 5), with_pos=True)
    pcs = D.positional_components(root, "p-1", (4, 5))
    assert pcs["layers"] == [0, 1] and pcs["grid"] == [4, 5]
    rows, cols = np.mgrid[0:4, 0:5]
    for layer in range(2):
        pc1, pc2 = (np.array(pcs["pcs"][layer][j]) for j in range(2))
        # Planted: rows carry 9x the variance of columns; the prefix token is off the grid.
        assert abs(np.corrcoef(pc1.ravel(), rows.ravel())[0, 1]) > 0.999999
        assert abs(np.corrcoef(pc2.ravel(), cols.ravel())[0, 1]) > 0.999999
        np.testing.assert_allclose(pcs["explained"][layer][:2], [0.9, 0.1], atol=1e-9)
        assert pc1.max() == np.abs(pc1).max()  # sign fixed
    assert D.positional_components(root, "p-1", (5, 5)) is None  # tokens do not fill it
    assert D.positional_components(root, "missing", (4, 5)) is None


def test_series_data_lists_head_type_changes_of_consecutive_runs(tmp_path):
    root = tmp_path / "store"
    for i in range(3):
        write_synthetic_run(root, f"s-{i}", weights="w", seed=i,
                            created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC))
    with connect(root) as con:
        changes = D.series_data(con)["head_type_changes"].to_pylist()
        heads = {
            (r["run_id"], r["layer"], r["head"]): r["head_type"]
            for r in run_sql(con, "SELECT run_id, layer, head, head_type FROM heads").to_pylist()
        }
    expected = {
        (f"s-{i}", layer, head)
        for i in (1, 2)
        for (run, layer, head), kind in heads.items()
        if run == f"s-{i}" and heads[(f"s-{i - 1}", layer, head)] != kind
    }
    assert expected  # the seeds give some changes to find
    assert {(c["run_id"], c["layer"], c["head"]) for c in changes} == expected
    assert all(c["prev_run_id"] == f"s-{int(c['run_id'][-1]) - 1}" for c in changes)


def test_head_type_changes_are_never_between_two_models_of_one_series(tmp_path):
    """One series given audits of two models (s-1 of another name between runs of toy_vit):
    their heads l, h are no head changing; a pretrained tag (other weights) is one model. Nor
    are the types of one model's heads over other images (s-4) or at another img_size (s-5):
    run_pairs has a note for each such pair; s-6 repeats s-5's inputs."""
    root = tmp_path / "store"
    models = ("toy_vit", "other_vit", "toy_vit", "toy_vit.tag", "toy_vit", "toy_vit", "toy_vit")
    inputs = [{}] * 4 + [{"images": "/data/noise", "images_sha256": "n" * 64},
                         {"img_size": 160}, {"img_size": 160}]
    for i, (model, seen) in enumerate(zip(models, inputs, strict=True)):
        write_synthetic_run(root, f"s-{i}", model=model, seed=i,
                            created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC), **seen)
    audits = [(f"audit-{i}", "mixed", f"s-{i}", i + 1, dt.datetime(2025, 2, 1 + i, tzinfo=dt.UTC),
               dt.datetime(2025, 2, 1 + i, 1, tzinfo=dt.UTC), "cli", None, "complete",
               f"audit-{i - 1}" if i else None, 0) for i in range(len(models))]
    with catalog_with_audits(root, tmp_path / "catalog.duckdb", audits, []) as con:
        changes = D.series_data(con)["head_type_changes"].to_pylist()
        heads = {(r["run_id"], r["layer"], r["head"]): r["head_type"] for r in run_sql(
            con, "SELECT run_id, layer, head, head_type FROM heads").to_pylist()}

    def differ(a: str, b: str) -> set[tuple[str, int, int]]:
        return {(b, layer, head) for (run, layer, head), kind in heads.items()
                if run == b and heads[(a, layer, head)] != kind}

    assert all(differ(f"s-{i}", f"s-{i + 1}") for i in range(len(models) - 1))
    assert {(c["run_id"], c["layer"], c["head"]) for c in changes} == (
        differ("s-2", "s-3") | differ("s-5", "s-6"))


def test_store_wide_pages_embed_a_run_as_often_whatever_the_number_of_runs(tmp_path):
    """A scheduled audit gives hundreds of runs: the Series and Compare pages show a pair of
    runs' run_pairs note and same_model, derived in the page from one run_shapes row a run
    (test_dashboard_browser checks them against run_pairs), so what they embed of a run does
    not grow with the other runs (a row a pair would name each run 2 (n - 1) times)."""
    root, out = tmp_path / "store", tmp_path / "site"

    def add_runs(first: int, last: int) -> None:  # every run of its own model: pairs have notes
        for i in range(first, last):
            write_synthetic_run(root, f"q{i:02d}", model=f"vit_{i:02d}", depth=1, n_heads=1,
                                n_modes=1, seed=i,
                                created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC))

    def times_named(page: str, run_id: str) -> int:  # the run id as a whole JSON string
        return json.dumps(embedded(out / page)).count(json.dumps(run_id))

    add_runs(0, 3)
    build_dashboard(root, out)
    few = {page: times_named(page, "q00") for page in ("series.html", "compare.html")}
    add_runs(3, 8)
    build_dashboard(root, out)
    assert {page: times_named(page, "q00") for page in few} == few
    for page in few:
        shapes = embedded(out / page)["shapes"]
        assert shapes["run_id"] == [f"q{i:02d}" for i in range(8)] and shapes["depth"] == [1] * 8


def test_dashboard_imports_neither_torch_nor_matplotlib(tmp_path):
    root = tmp_path / "store"
    write_synthetic_run(root, "r-1")
    code = (
        "import sys; from bfd.report.dashboard import build_dashboard; "
        f"build_dashboard({str(root)!r}, {str(tmp_path / 'site')!r}); "
        "print(sorted(m for m in ('torch', 'timm', 'prefect', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_server_binds_loopback_only(tmp_path):
    server = make_server(tmp_path, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()


def test_server_serves_the_dashboards_files_only(tmp_path):
    """Its files, on the loopback names; no folder listing, no file a link inside reaches,
    no page to a request naming another host (a web page rebinding its own name to
    127.0.0.1), a NUL in the path not found rather than a traceback (trial 25, F8)."""
    import http.client

    site = tmp_path / "site"
    (site / "runs").mkdir(parents=True)
    (site / "index.html").write_text("the overview")
    (tmp_path / "outside.txt").write_text("not the dashboard's")
    (site / "runs" / "out").symlink_to(tmp_path, target_is_directory=True)
    server = make_server(site, 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]

    def get(path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
        con = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        con.putrequest("GET", path, skip_host=True)
        con.putheader("Host", f"{host}:{port}")
        con.endheaders()
        reply = con.getresponse()
        body = reply.read()
        con.close()
        return reply.status, body

    try:
        assert get("/index.html") == (200, b"the overview")
        assert get("/index.html", "localhost")[0] == 200
        assert get("/index.html", "evil.example")[0] == 403
        for path in ("/runs/", "/runs/out/outside.txt", "/runs/%00", "/../outside.txt"):
            assert get(path)[0] == 404, path
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def two_layer_store(tmp_path) -> Path:
    root = tmp_path / "store"
    write_synthetic_run(root, "two-1", model="vit_$x^2$_model", depth=2, with_pos=True)
    return root


def test_bfd_plot_writes_each_view_of_a_two_layer_run(two_layer_store, tmp_path, capsys):
    out = tmp_path / "figs"
    args = ["plot", "two-1", "--store", str(two_layer_store), "--out", str(out), "--format", "svg"]
    assert main(args) == 0
    files = sorted(out.iterdir())
    assert [p.name for p in files] == sorted(f"two-1-{view}.svg" for view in VIEWS)
    assert capsys.readouterr().out.split() == [str(out / f"two-1-{v}.svg") for v in VIEWS]
    for path in files:
        # The $ of the name is printed as it is, not parsed as mathtext.
        assert "vit_$x^2$_model" in path.read_text(encoding="utf-8")


def test_plot_png_at_print_resolution_and_no_pos_without_results(tmp_path):
    root = tmp_path / "store"
    write_synthetic_run(root, "r-1", depth=2)  # no results Dataset: no positional factor
    written, skipped = plot_run(root, "r-1", tmp_path / "figs", "png")
    assert skipped == ["pos_factor"]
    assert [p.name for p in written] == [f"r-1-{v}.png" for v in VIEWS if v != "pos_factor"]
    for path in written:
        image = Image.open(io.BytesIO(path.read_bytes())).convert("RGB")
        assert image.width >= 1000  # 3.5 in or more at 300 dpi
        assert len(set(image.getdata())) > 50


def test_bfd_plot_refuses_an_unknown_run(tmp_path, capsys):
    root = tmp_path / "store"
    write_synthetic_run(root, "r-1")
    assert main(["plot", "nope", "--store", str(root), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bfd: error: no run 'nope'") and "r-1" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "f").exists()
    (tmp_path / "f").write_text("mine")  # --out names a file: a mistake of the request
    assert main(["plot", "r-1", "--store", str(root), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert err == (f"bfd: error: --out {str(tmp_path / 'f')!r} is a file; expected a folder "
                   "for the figures\n")
    assert (tmp_path / "f").read_text() == "mine"


# The third audit of audited_store: an id as bfd.storage.new_audit_id makes them.
LONG_AUDIT_ID = "20250203T000000000000Z-0a1b2c3d"


def audited_store(tmp_path: Path):
    """Three audits of one series (steps 100, 200, 300); the third (``LONG_AUDIT_ID``)
    flagged f_pp drift."""
    root = tmp_path / "store"
    utc = dt.UTC
    for i in range(3):
        write_synthetic_run(root, f"s-{i}", weights="w", seed=i,
                            created_at=dt.datetime(2025, 1, 3 - i, tzinfo=utc))
    ids = ["audit-0", "audit-1", LONG_AUDIT_ID]
    audits = [
        (ids[i], f"nightly {XSS}", f"s-{i}", 100 * (i + 1),
         dt.datetime(2025, 2, 1 + i, tzinfo=utc), dt.datetime(2025, 2, 1 + i, 1, tzinfo=utc),
         "schedule", f"flow-{i}", "complete", ids[i - 1] if i else None, 1 if i == 2 else 0)
        for i in range(3)
    ]
    drift = [(ids[2], f"nightly {XSS}", ids[1], 1, 0, "f_pp", 0.2, 0.5, 0.3, 0.1, True),
             (ids[2], f"nightly {XSS}", ids[1], 1, 1, "f_cc", 0.2, 0.21, 0.01, 0.1, False)]
    return root, catalog_with_audits(root, tmp_path / "catalog.duckdb", audits, drift)


def test_series_follow_the_audits_table_when_it_exists(tmp_path):
    root, con = audited_store(tmp_path)
    with con:
        assert D.audits_present(con)
        runs = D.run_list(con).to_pylist()
        assert {r["series"] for r in runs} == {f"nightly {XSS}"}
        # Ordered by audit step, not by creation time (created_at runs backwards here).
        assert [r["run_id"] for r in runs] == ["s-0", "s-1", "s-2"]
        assert [r["flow_run_id"] for r in runs] == ["flow-0", "flow-1", "flow-2"]
        data = D.series_data(con)
        assert [r["run_id"] for r in data["metrics"].to_pylist()] == ["s-0", "s-1", "s-2"]
        # an audits table without the kept columns: every figure the run's current one
        assert {r["figures"] for r in data["metrics"].to_pylist()} == {"run"}
        flagged = data["drift"].to_pylist()
        assert [(d["run_id"], d["metric"], d["layer"]) for d in flagged] == [("s-2", "f_pp", 1)]
        changes = data["head_type_changes"].to_pylist()
        assert all(c["prev_run_id"] == f"s-{int(c['run_id'][-1]) - 1}" for c in changes)


def test_series_page_without_audits_says_so(tmp_path):
    root = tmp_path / "store"
    write_synthetic_run(root, "r-1")
    build_dashboard(root, tmp_path / "site")
    payload = embedded(tmp_path / "site" / "series.html")
    assert payload["has_audits"] is False and "drift" not in payload
    assert payload["metrics"]["series"] == ["toy_vit · random"]


def test_series_page_embeds_its_runs_layer_rows_once(tmp_path):
    # c-100 is a point of three series, c-200 and c-500 of two audits each (REUSED_AUDITS):
    # the heatmap's rows are each run's layer rows once (not a copy per audit or series),
    # its columns only
    from dashstore import write_reused_audits

    from bfd.report.dashboard import SERIES_LAYER_METRICS

    root = tmp_path / "store"
    write_reused_audits(root)
    build_dashboard(root, tmp_path / "site")
    payload = embedded(tmp_path / "site" / "series.html")
    with connect(root) as con:
        rows = D.layer_rows(con).to_pylist()
    points = set(payload["metrics"]["run_id"])
    assert points >= {"c-100", "c-200", "c-500"}
    names = ["run_id", "layer", *(m for m in SERIES_LAYER_METRICS if m in rows[0])]
    assert names[2:] == list(SERIES_LAYER_METRICS)
    assert list(payload["layers"]) == names
    want = [[r[n] for n in names] for r in rows if r["run_id"] in points]
    assert [list(t) for t in zip(*payload["layers"].values(), strict=True)] == want


def test_dashboard_refuses_a_bad_port_before_building(tmp_path, capsys):
    root = tmp_path / "store"
    write_synthetic_run(root, "r-1")
    out = tmp_path / "site"
    assert main(["dashboard", "--store", str(root), "--out", str(out), "--port", "70000"]) == 2
    assert capsys.readouterr().err.strip() == "bfd: error: --port must be 0-65535; got 70000"
    assert not out.exists()


def test_an_audit_rewrites_its_run_page_with_the_positional_factor_kept(tmp_path):
    """Each audit rewrites its run's page (the run's latest audit); while the run's published
    results are the same its positional components come from the dashboard's own copy, not
    from reading the results again (here moved away, so only the copy can give them); new
    results are read, and the copy of a run no longer listed is removed."""
    import datetime as dt
    import shutil

    import xarray as xr
    from dashstore import planted_pos

    from bfd.report.dashboard import POSITIONAL
    from bfd.storage import Store, results_path, write_audit, write_results

    root, out = tmp_path / "store", tmp_path / "site"
    write_synthetic_run(root, "p-1", depth=2, with_pos=True)
    write_synthetic_run(root, "p-2", depth=2)
    build_dashboard(root, out)
    page = out / "runs" / "p-1.html"
    pos = embedded(page)["pos"]
    assert pos["layers"] == [0, 1] and pos == D.positional_components(root, "p-1", (4, 5))

    results = Path(results_path(Store(root), "p-1"))
    results.rename(results.with_name("moved"))
    now = dt.datetime.now(dt.UTC)
    write_audit(Store(root), {
        "audit_id": "a-1", "series": "s", "run_id": "p-1", "step": 1, "started_at": now,
        "finished_at": now, "trigger": "cli", "flow_run_id": None, "status": "complete",
        "prev_audit_id": None, "n_flagged": 0})
    assert "runs/p-1.html" in build_dashboard(root, out).written
    assert embedded(page)["run"]["audit_id"] == "a-1" and embedded(page)["pos"] == pos

    # new results: the grid's columns carry the larger variance now
    pos_cols = planted_pos((4, 5), 8, 2)[..., [1, 0, *range(2, 8)]]
    write_results(Store(root), "p-1", xr.Dataset(
        {"pos": (("layer", "position", "dim"), pos_cols)},
        coords={"layer": [0, 1], "position": np.arange(21), "dim": np.arange(8)}))
    assert "runs/p-1.html" in build_dashboard(root, out).written
    new = embedded(page)["pos"]
    assert new == D.positional_components(root, "p-1", (4, 5)) and new != pos

    # results not readable at a build (a store being copied): that page is built again by
    # the next one, which finds them (it said "not found" until a --force before)
    (out / POSITIONAL / "p-1.json").unlink()
    where = Path(results_path(Store(root), "p-1"))
    where.rename(where.with_name("away"))
    build_dashboard(root, out, force=True)
    assert embedded(page)["pos"] is None
    where.with_name("away").rename(where)
    assert "runs/p-1.html" in build_dashboard(root, out).written
    assert embedded(page)["pos"] == new

    shutil.rmtree(root / "tables")  # no run listed any more
    build_dashboard(root, out)
    assert not list((out / POSITIONAL).iterdir())


def test_series_have_one_point_per_complete_audit_with_what_it_saw(tmp_path):
    """A run audited several times and in several series is a point of every series that
    audited it, once per complete audit, at that audit's step, with the figures that audit
    kept (an old audit: its run's run_summary figures); a run never audited is its own
    ``model · weights`` series with no step; flagged drift names its audit."""
    from dashstore import REUSED_AUDITS, REUSED_RESID, write_reused_audits


    root = tmp_path / "store"
    planted = write_reused_audits(root)
    with connect(root) as con:
        data = D.series_data(con)
        summary = {r["run_id"]: r for r in run_sql(con, "SELECT * FROM run_summary").to_pylist()}
        history = run_query(con, "audit_history").to_pylist()
        not_kept = D.figures_not_kept(con)
    points = data["metrics"].to_pylist()
    # the reference for the per-audit figures: audit_history, audit by audit
    seen = [name for name, _ in SEEN_FIGURES]
    assert {(p["audit_id"], *(p[k] for k in seen)) for p in points if p["audit_id"]} == {
        (h["audit_id"], *(h[k] for k in seen)) for h in history}
    done = [a for a in REUSED_AUDITS if a[5] == "complete"]
    expected = sorted([(s, step, day, a, run) for a, s, run, step, day, _, _ in done]
                      + [("toy_vit · plain", None, None, None, "u-1")],
                      key=lambda e: (e[0], e[1] or 0, e[2]))
    assert [(p["series"], p["step"], p["audit_id"], p["run_id"]) for p in points] == [
        (s, step, a, run) for s, step, _, a, run in expected]
    for p in points:
        kept = next((a[6] for a in REUSED_AUDITS if a[0] == p["audit_id"]), None)
        run = summary[p["run_id"]]
        if kept is None:  # never audited, or an audit that kept no figures: the run's own
            assert (p["f_pp"], p["f_pc"], p["n_layers"]) == (run["f_pp"], run["f_pc"], 3)
        else:
            assert (p["f_pp"], p["f_pc"], p["n_layers"], p["n_heads"]) == (kept, 1 - kept, 3, 6)
            assert p["f_cc"] is None and p["frac_pos_mean"] is None
            assert [p[f"n_heads_{t}"] for t in ("pp", "cp", "cc", "undefined")] == [
                run[f"n_heads_{t}"] for t in ("pp", "cp", "cc", "undefined")]
        # audits keep every run_summary figure now; those an older audit did not keep
        # (frac_pos_resid_mean, the chance-corrected shares, the model check) are missing for
        # it (its run's current ones may come from a later decomposition than the figures it
        # kept), but for an audit that kept none (its run's, filled); a run never audited:
        # its own, from its layers (resid = 0.8 x)
        assert p["figures"] == ("audit" if p["audit_id"] else "run")
        assert not_kept == []
        later = ("frac_pos_adj_mean", "f_pp_adj", "f_cc_adj", "model_logit_residual_max")
        if p["audit_id"]:
            assert [p[k] for k in later] == ([None] * 4 if kept is not None
                                             else [run[k] for k in later])
            assert p["frac_pos_resid_mean"] == (  # A4 kept none: its run's, filled
                REUSED_RESID.get(p["audit_id"]) if kept is not None
                else summary[p["run_id"]]["frac_pos_resid_mean"])
        else:
            assert p["frac_pos_resid_mean"] == pytest.approx(
                0.8 * planted[p["run_id"]]["frac_pos"].mean(), rel=1e-12)
    flagged = data["drift"].to_pylist()
    assert sorted((d["audit_id"], d["metric"], d["step"]) for d in flagged) == [
        ("A1", "head_type", 200), ("A2", "frac_pos_resid", 500), ("A5", "f_pp", 250)]
    assert D.DRIFT_OF_PLOT["frac_pos_mean"] == ("frac_pos",)
    changes = data["head_type_changes"].to_pylist()
    assert {(c["prev_audit_id"], c["audit_id"]) for c in changes} <= {
        ("A4", "A1"), ("A5", "A2")}  # ck: c-100 -> c-200 (A4, A1), c-200 -> c-500 (A5, A2)
    assert changes and all(c["run_id"] != c["prev_run_id"] for c in changes)
    # each cross marks only the plots whose figure its drift concerns: A1's head_type drift
    # (layer 0 head 1: position-position -> content-content) the pp and cc counts, not the
    # cp or undefined counts, which did not change
    assert [(c["before"], c["after"]) for c in changes
            if (c["audit_id"], c["layer"], c["head"]) == ("A1", 0, 1)] == [
        ("position-position", "content-content")]
    marks = {(m["audit_id"], m["plot"]): m for m in data["drift_marks"].to_pylist()}
    assert sorted(marks) == [("A1", "n_heads_cc"), ("A1", "n_heads_pp"),
                             ("A2", "frac_pos_resid_mean"), ("A5", "f_pp"), ("A5", "mean_f_pp")]
    assert marks["A1", "n_heads_pp"] | {"plot": None} == {
        "series": "ck", "audit_id": "A1", "plot": None, "metrics": ["head_type"], "n_rows": 1,
        "layers": [0], "max_abs_delta": 1.0, "heads": ["0.1"],
        "largest": "head_type of layer 0 head 1",
        "types": ["position-position -> content-content: 1"]}
    assert (marks["A5", "f_pp"]["metrics"], marks["A5", "f_pp"]["max_abs_delta"]) == (
        ["f_pp"], pytest.approx(0.2))
    # a head_type row whose change is not listed (run_pairs has a note for the two runs):
    # its types unknown, one mark on n_heads, no count plot
    alone = D.drift_marks(data["drift"].filter(pc.equal(data["drift"]["audit_id"], "A1")),
                          data["head_type_changes"].slice(0, 0)).to_pylist()
    assert [(m["plot"], m["types"]) for m in alone] == [("n_heads", [])]


def test_compare_offers_every_audit_of_a_run_each_as_its_run(tmp_path):
    """Trial 13 (F19): Compare offered a run under its latest audit only (c-100 as th · step
    1), so ck's step 100 (A4), other's step 100 (A6) and ck's step 200 (A1; c-200 was audited
    again at 250) could not be picked. Its choices are the Series page's points, each with its
    run; a re-audit of one run at one step of one series (A2, A3 at 500) is one choice, the
    latest; a failed audit (A8) none; a run never audited (u-1) in its model · weights series."""
    from dashstore import write_reused_audits

    root, out = tmp_path / "store", tmp_path / "site"
    write_reused_audits(root)
    with connect(root) as con:
        rows = D.compare_choices(con).to_pylist()
    want = [("ck", 100, "c-100", "A4"), ("ck", 200, "c-200", "A1"), ("ck", 250, "c-200", "A5"),
            ("ck", 500, "c-500", "A3"), ("other", 100, "c-100", "A6"), ("th", 1, "c-100", "A7"),
            ("toy_vit · plain", None, "u-1", None)]
    assert [(r["series"], r["step"], r["run_id"], r["audit_id"]) for r in rows] == want
    build_dashboard(root, out)
    page = embedded(out / "compare.html")["choices"]
    assert list(zip(page["series"], page["step"], page["run_id"], page["audit_id"],
                    strict=True)) == want


def test_each_run_s_head_figures_are_written_beside_its_page_for_compare(tmp_path):
    """Trial 13 (F5): Compare had no head level. The page compares two runs' heads as
    compare_runs and head_type_changes do, from each run's head shares, types and intervals
    written once beside its page (runs/<run>.heads.js), which it loads for the two runs
    chosen: compare.html embeds no head rows, so it does not grow with every run's heads. A
    file gone is written again (with its page); a run unchanged keeps its file as it was."""
    from bfd.report.dashboard import heads_name

    root, out = tmp_path / "store", tmp_path / "site"
    for i, n in enumerate((8, 16)):
        write_synthetic_run(root, f"h{n}", seed=i, n_images=n, intervals=True,
                            adjusted_heads=True, head_intervals=True)
    build_dashboard(root, out)
    shares = [f"{s}{b}{e}" for s in ("f_pp", "f_pc", "f_cp", "f_cc") for b in ("", "_adj")
              for e in ("", "_lo", "_hi")]
    with connect(root) as con:
        sql = {run_id: run_sql(con, f"SELECT layer, head, head_type, {', '.join(shares)} FROM heads"
                                    " WHERE run_id = $r ORDER BY layer, head",
                               {"r": run_id}).to_pydict() for run_id in ("h8", "h16")}
    prefix = "(window.BFD_HEADS = window.BFD_HEADS || {})"
    for run_id, want in sql.items():
        path = out / "runs" / heads_name(run_id)
        text = path.read_text(encoding="utf-8")
        head = f'{prefix}["{run_id}"] = '
        assert text.startswith(head) and text.endswith(";\n")
        got = json.loads(text[len(head):-2])
        assert got == want and all(v is not None for v in got["f_pp_adj_lo"])
    # compare.html embeds the runs' per-layer rows, none of their heads
    assert "head_type" not in json.dumps(embedded(out / "compare.html"))
    heads_file = out / "runs" / heads_name("h8")
    heads_file.unlink()
    stamp = (out / "runs" / heads_name("h16")).stat().st_mtime_ns
    again = build_dashboard(root, out)
    assert heads_file.is_file() and "runs/h16.html" in again.unchanged
    assert (out / "runs" / heads_name("h16")).stat().st_mtime_ns == stamp


def test_series_list_counts_a_run_in_every_series_that_audited_it(tmp_path):
    from dashstore import REUSED_AUDITS, write_reused_audits

    root = tmp_path / "store"
    write_reused_audits(root)
    with connect(root) as con:
        rows = D.series_list(con).to_pylist()
    expected = []
    for series in sorted({a[1] for a in REUSED_AUDITS}):
        mine = [a for a in REUSED_AUDITS if a[1] == series]
        last = max(mine, key=lambda a: (a[3], a[4]))  # every run here is complete
        expected.append((series, len({a[2] for a in mine}), len(mine), last[2], last[0], last[5]))
    expected.append(("toy_vit · plain", 1, 0, "u-1", None, None))
    assert [(r["series"], r["n_runs"], r["n_audits"], r["latest_run"], r["audit_id"],
             r["audit_status"]) for r in rows] == expected
    build_dashboard(root, tmp_path / "site")
    assert embedded(tmp_path / "site" / "index.html")["series_list"]["series"] == [
        e[0] for e in expected]


def test_series_list_keeps_a_flag_in_sight_after_the_next_audit_passes(tmp_path):
    """A rollback that flagged drift, then a week that passed: the Overview's flag count is
    the latest audit's, 0, so it also counts the audits that flagged and names the last one
    (trial 23: a missed alert left the Overview after one more audit)."""
    root, con = audited_store(tmp_path)
    with con:
        con.execute("UPDATE audits SET n_flagged = CASE audit_id WHEN 'audit-1' THEN 2"
                    " ELSE 0 END")
        (row,) = D.series_list(con).to_pylist()
        assert (row["audit_id"], row["n_flagged"]) == (LONG_AUDIT_ID, 0)
        assert (row["n_audits_flagged"], row["last_flagged_audit"], row["last_flagged_step"],
                row["last_flagged_at"]) == (1, "audit-1", 200,
                                            dt.datetime(2025, 2, 2, tzinfo=dt.UTC))
        # a failed audit's count is no flag of the series; two flagged: the one started last
        con.execute("UPDATE audits SET n_flagged = 5 WHERE audit_id = 'audit-0'")
        con.execute(f"UPDATE audits SET n_flagged = 4, status = 'failed'"
                    f" WHERE audit_id = '{LONG_AUDIT_ID}'")
        (row,) = D.series_list(con).to_pylist()
        assert (row["n_audits_flagged"], row["last_flagged_audit"]) == (2, "audit-1")


def test_series_list_the_audits_of_a_damaged_run_as_audit_history_does(tmp_path):
    """c-200's heads file truncated: the catalog leaves the run out, but its audits (A1, A5)
    are still points of their series, as audit_history lists them: the figures each kept, its
    run's columns NULL; no head-type change is listed against it, nor across it (c-100 to
    c-500); the Series page embeds the points and says the run is damaged. They were hidden."""
    from dashstore import REUSED_AUDITS, write_reused_audits

    root, out = tmp_path / "store", tmp_path / "site"
    write_reused_audits(root)
    heads = root / read_pointer(Store(root), "c-200")["tables"]["heads"]
    heads.write_bytes(heads.read_bytes()[:100])
    with connect(root) as con:
        data = D.series_data(con)
        history = run_query(con, "audit_history").to_pylist()
    points = [p for p in data["metrics"].to_pylist() if p["series"] == "ck"]
    listed = [h for h in history if h["series"] == "ck"]
    assert [(p["audit_id"], p["run_id"]) for p in points] == [
        (h["audit_id"], h["run_id"]) for h in listed] == [
        ("A4", "c-100"), ("A1", "c-200"), ("A5", "c-200"), ("A2", "c-500"), ("A3", "c-500")]
    kept = {a[0]: a[6] for a in REUSED_AUDITS}
    for p in points:
        if p["run_id"] == "c-200":
            assert [p[c] for c in ("model", "created_at", "n_images")] == [None] * 3
            assert (p["f_pp"], p["f_pc"], p["n_layers"]) == (kept[p["audit_id"]],
                                                             1 - kept[p["audit_id"]], 3)
            assert p["figures"] == "audit" and p["frac_pos_resid_mean"] is None
        else:
            assert p["model"] == "toy_vit" and p["n_images"] == 16
    assert [c for c in data["head_type_changes"].to_pylist() if c["series"] == "ck"] == []
    build_dashboard(root, out)
    page = embedded(out / "series.html")["metrics"]
    assert [a for s, a in zip(page["series"], page["audit_id"], strict=True) if s == "ck"] == [
        p["audit_id"] for p in points]
    (line,) = re.findall(r"<p class='damaged' role='alert'>([^<]*)</p>",
                         (out / "series.html").read_text(encoding="utf-8"))
    assert line.startswith("run c-200 is damaged, left out of this dashboard and of SQL: ")


def test_a_series_whose_runs_are_all_damaged_is_listed_and_its_points_say_damaged(tmp_path):
    """c-100's and c-200's heads files truncated: the catalog leaves both runs out. Series
    other and th hold one audit each, of c-100 only: the overview's series list still lists
    them (it joined runs, so they were gone without a trace), with the audits of damaged runs
    counted and their runs named (ck: 3 of its 6 audits); each damaged run's audit is a
    Series point marked ``damaged`` (the page breaks its line there)."""
    from dashstore import write_reused_audits

    root, out = tmp_path / "store", tmp_path / "site"
    write_reused_audits(root)
    for run_id in ("c-100", "c-200"):
        heads = root / read_pointer(Store(root), run_id)["tables"]["heads"]
        heads.write_bytes(heads.read_bytes()[:100])
    with connect(root) as con:
        rows = D.series_list(con).to_pylist()
        points = D.series_data(con)["metrics"].to_pylist()
    assert [(r["series"], r["n_runs"], r["n_audits"], r["n_damaged"], r["damaged_runs"],
             r["latest_run"], r["audit_id"], r["audit_status"]) for r in rows] == [
        ("ck", 3, 6, 3, ["c-100", "c-200"], "c-500", "A8", "failed"),
        ("other", 1, 1, 1, ["c-100"], "c-100", "A6", "complete"),
        ("th", 1, 1, 1, ["c-100"], "c-100", "A7", "complete"),
        ("toy_vit · plain", 1, 0, 0, None, "u-1", None, None)]
    assert [(p["series"], p["audit_id"], p["damaged"]) for p in points] == [
        ("ck", "A4", True), ("ck", "A1", True), ("ck", "A5", True), ("ck", "A2", False),
        ("ck", "A3", False), ("other", "A6", True), ("th", "A7", True),
        ("toy_vit · plain", None, False)]
    build_dashboard(root, out)
    listed = embedded(out / "index.html")["series_list"]
    assert listed["series"] == [r["series"] for r in rows]
    assert listed["damaged_runs"] == [r["damaged_runs"] for r in rows]
    # the latest run's page: a damaged run's says so
    assert listed["latest_page"] == ["c-500.html", "c-100.html", "c-100.html", "u-1.html"]
    assert "c-100 is damaged" in (out / "runs/c-100.html").read_text(encoding="utf-8")
    assert embedded(out / "series.html")["metrics"]["damaged"] == [p["damaged"] for p in points]


def test_series_points_say_which_audits_drift_was_not_compared(tmp_path):
    """The trial's series (tests/dashstore.py TRIAL_AUDITS): T2-T4's drift checks refused to
    compare each with the one before (other images, another N), 0 flagged; T5's was compared but
    its figures average other layers than T4's. Each point carries the audit's comparable and
    drift_note as audit_history gives them, so the page can break the line and say "not
    checked" instead of a pass; a re-audit of the last run (T6) is comparable. The page opens
    on the series of the latest audit ("trial"), not the alphabetically first ("a-old");
    without audits, on the series of the latest run."""
    from dashstore import TRIAL_AUDITS, write_trial_series

    from bfd.storage import write_audit

    root = tmp_path / "store"
    start = dt.datetime(2026, 12, 1, 7, 16, tzinfo=dt.UTC)
    written = write_trial_series(root, "trial", start)
    began = start + dt.timedelta(days=len(written))
    write_audit(Store(root), {**written[-1], "audit_id": "T6", "prev_audit_id": "T5",
                              "drift_note": None, "started_at": began,
                              "finished_at": began + dt.timedelta(minutes=1),
                              "step": int(began.timestamp())})
    old = start - dt.timedelta(days=30)
    write_audit(Store(root), {**written[0], "audit_id": "O1", "series": "a-old",
                              "prev_audit_id": None, "drift_note": None, "started_at": old,
                              "finished_at": old, "step": 1})
    with connect(root) as con:
        points = [p for p in D.series_data(con)["metrics"].to_pylist()
                  if p["series"] == "trial"]
        history = [h for h in run_query(con, "audit_history", {"series": "trial"}).to_pylist()]
        latest = D.latest_series(con)
        runs = {r["run_id"]: r["drift_note"] for r in D.run_list(con).to_pylist()}
        listed = {r["series"]: r["drift_note"] for r in D.series_list(con).to_pylist()}
    # the runs' latest audits, and the series' (T6: compared)
    assert runs == {a[1]: None for a in TRIAL_AUDITS} | {
        a[1]: h["drift_note"] for a, h in zip(TRIAL_AUDITS[1:4], history[1:4], strict=True)}
    assert runs["t-7"].startswith("previous audit used another decoded N")
    assert listed == {"trial": None, "a-old": None}
    assert [p["audit_id"] for p in points] == [h["audit_id"] for h in history] == [
        *(a[0] for a in TRIAL_AUDITS), "T6"]
    assert [(p["comparable"], p["drift_note"]) for p in points] == [
        (h["comparable"], h["drift_note"]) for h in history]
    assert [p["comparable"] for p in points] == [None, False, False, False, False, True]
    notes = [p["drift_note"] for p in points]
    assert notes[0] is None and notes[-2:] == [None, None]
    assert all(n.startswith("previous audit used another decoded N") for n in notes[1:-2])
    assert [p["n_flagged"] for p in points] == [0] * 6
    assert [p["f_cc"] for p in points] == [a[5] for a in TRIAL_AUDITS] + [TRIAL_AUDITS[-1][5]]
    assert latest == "trial"
    build_dashboard(root, tmp_path / "site")
    page = embedded(tmp_path / "site" / "series.html")
    assert page["latest_series"] == "trial"
    by_audit = dict(zip(page["metrics"]["audit_id"], page["metrics"]["drift_note"], strict=True))
    assert [by_audit[p["audit_id"]] for p in points] == notes
    # no audits: the series of the run created last
    bare = tmp_path / "bare"
    for day, run_id in ((2, "r-b"), (1, "r-a")):
        write_synthetic_run(bare, run_id, weights=run_id,
                            created_at=dt.datetime(2025, 1, day, tzinfo=dt.UTC))
    with connect(bare) as con:
        assert D.latest_series(con) == "toy_vit · r-b"
        assert {p["comparable"] for p in D.series_data(con)["metrics"].to_pylist()} == {None}


def test_the_overview_names_runs_not_published(tmp_path):
    """An interrupted extraction or a run extracted and not decomposed is on no page: the
    overview says how many there are and where to look (bfd runs), until they are gone."""
    from storebuilder import build_run, random_run_arrays

    from bfd.storage import Store

    root, out = tmp_path / "store", tmp_path / "site"
    write_synthetic_run(root, "r-1", depth=2)
    build_dashboard(root, out)
    assert "not published" not in (out / "index.html").read_text()
    store = Store(root)
    build_run(store, *random_run_arrays(0, N=8), model="toy_a")
    stopped = build_run(store, *random_run_arrays(1, N=8), model="toy_b", shards_done=1)
    built = build_dashboard(root, out)
    assert "index.html" in built.written
    page = (out / "index.html").read_text()
    assert (f"2 run(s) of this store are not published and on no page (1 extracted, 1 "
            f"incomplete): bfd runs --store {root} says what to do with each") in page
    assert "not published" not in (out / "series.html").read_text()
    import shutil

    shutil.rmtree(root / "runs" / stopped)
    build_dashboard(root, out)
    assert "1 run(s) of this store are not published and on no page (1 extracted)" in (
        out / "index.html").read_text()


def test_two_builds_writing_one_file_at_once_each_rename_their_own(tmp_path, monkeypatch):
    """Another build's write of the same file, finished between this build's write and its
    rename (two `bfd dashboard` at once: trial 19), leaves this build's rename intact: each
    writes a temporary file of its own (a shared `.<name>.tmp` was renamed away under it)."""
    from bfd.report import dashboard

    real, others = dashboard.os.replace, []

    def replace_after_another_build(src, dst):
        if not others:
            others.append(dst)
            dashboard._write_if_changed(tmp_path, "assets/x.js", "other build", None)
        real(src, dst)

    monkeypatch.setattr(dashboard.os, "replace", replace_after_another_build)
    dashboard._write_if_changed(tmp_path, "assets/x.js", "this build", None)
    assert (tmp_path / "assets" / "x.js").read_text() == "this build"
    assert [p.name for p in (tmp_path / "assets").iterdir()] == ["x.js"]  # no temporary left


def test_drift_an_earlier_bfd_compared_across_n_is_no_flag_anywhere(tmp_path):
    """trial 22: an earlier bfd compared an audit of N 8 with one of N 32 (other images: the
    raw shares' chance level moves with N, flags on an unchanged model) and recorded its
    flags. The drift check refuses that pair today (bfd.tasks.drift.not_comparable), so the
    catalog shows it as not compared: its drift rows say comparable false and flag nothing,
    audit_history counts 0 and says why in drift_note, and the dashboard's flagged counts and
    tables follow. Drift of a comparable pair (O3 against O2: the same 8 images) stays
    flagged."""
    from bfd.storage import write_audit, write_drift

    root, series = tmp_path / "store", "old"
    for i, (run_id, n, sha) in enumerate((("o-32", 32, "sha-thirty2"), ("o-8", 8, "sha-eight"),
                                          ("o-8b", 8, "sha-eight"))):
        write_synthetic_run(root, run_id, weights="same", seed=30 + i, n_images=n,
                            images_sha256=sha,
                            created_at=dt.datetime(2025, 3, 1 + i, tzinfo=dt.UTC))
    store = Store(root)
    for i, (audit_id, run_id, prev, deltas) in enumerate((
            ("O1", "o-32", None, []), ("O2", "o-8", "O1", [0.15, 0.12, 0.01]),
            ("O3", "o-8b", "O2", [0.15, 0.01]))):
        flags = sum(d > 0.05 for d in deltas)
        began = dt.datetime(2025, 3, 1 + i, 1, tzinfo=dt.UTC)
        # as the earlier bfd wrote them: no drift_note, no figures kept, its flag count
        write_audit(store, {"audit_id": audit_id, "series": series, "run_id": run_id,
                            "step": i + 1, "started_at": began,
                            "finished_at": began + dt.timedelta(minutes=1), "trigger": "cli",
                            "flow_run_id": None, "status": "complete", "prev_audit_id": prev,
                            "n_flagged": flags})
        if prev is not None:
            write_drift(store, series, audit_id, [
                {"audit_id": audit_id, "prev_audit_id": prev, "layer": layer, "head": 0,
                 "metric": "f_cc", "before": 0.93, "after": 0.93 - delta, "delta": -delta,
                 "threshold": 0.05, "flagged": delta > 0.05}
                for layer, delta in enumerate(deltas)])
    with connect(root) as con:
        o2 = run_query(con, "drift", {"series": series, "audit_id": "O2"}).to_pylist()
        o3 = run_query(con, "drift", {"series": series, "audit_id": "O3"}).to_pylist()
        history = {h["audit_id"]: h for h in
                   run_query(con, "audit_history", {"series": series}).to_pylist()}
        listed = {r["series"]: r for r in D.series_list(con).to_pylist()}
    assert [r["flagged"] for r in o2] == [False] * 3  # the earlier bfd flagged 2 of them
    assert [(r["flagged"], r["comparable"]) for r in o2] == [(False, False)] * 3
    assert [r["delta"] for r in o2] == pytest.approx([-0.15, -0.12, -0.01])  # kept
    assert [(r["flagged"], r["comparable"]) for r in o3] == [(True, True), (False, True)]
    assert history["O2"]["n_flagged"] == 0 and history["O2"]["comparable"] is False
    assert history["O2"]["drift_note"] == (
        "compared by an earlier bfd across other images (images sha-thirty2 -> sha-eight, N 32 "
        "-> 8): not comparable (raw shares change with the images and N, not only with the "
        "model); its 2 flagged value(s) are no drift, its drift rows say comparable false")
    assert (history["O3"]["n_flagged"], history["O3"]["drift_note"],
            history["O3"]["comparable"]) == (1, None, True)
    assert listed[series]["audit_id"] == "O3" and listed[series]["n_flagged"] == 1
    out = tmp_path / "site"
    build_dashboard(root, out)
    page = embedded(out / "series.html")
    assert page["drift"]["audit_id"] == ["O3"]  # the "Drift flags" table and its CSV
    assert page["drift"]["comparable"] == [True]
    points = {a: (n, note) for a, n, note in zip(
        page["metrics"]["audit_id"], page["metrics"]["n_flagged"], page["metrics"]["drift_note"],
        strict=True)}
    assert points["O2"] == (0, history["O2"]["drift_note"]) and points["O3"] == (1, None)
    assert set(page["drift_marks"]["audit_id"]) == {"O3"}  # the plots' drift crosses
    audits = dict(zip(page["audits"]["audit_id"], page["audits"]["n_flagged"], strict=True))
    assert audits == {"O1": 0, "O2": 0, "O3": 1}
    overview = embedded(out / "index.html")
    runs = dict(zip(overview["runs"]["run_id"], overview["runs"]["n_flagged"], strict=True))
    assert runs == {"o-32": 0, "o-8": 0, "o-8b": 1}
    assert overview["series_list"]["n_flagged"] == [1]
