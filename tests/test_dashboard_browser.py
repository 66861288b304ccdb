"""The dashboard in a real headless Chromium (tests/browser.py): offline, every run listed,
interactive, and a series named ``<script>alert(1)</script>`` shown as text."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

import duckdb
import numpy as np
import pytest
from browser import available, chromium
from dashstore import write_synthetic_run
from PIL import Image

from bfd.report.dashboard import build_dashboard, make_server

pytestmark = pytest.mark.skipif(
    not available(), reason="needs Debian's chromium and chromium-driver (.ci/run installs them)"
)

XSS = "<script>alert(1)</script>"
# Two series (a model with its weights) of two runs each; the second series' model is hostile.
# a-2 requested 18 images and decoded 16 (SKIPPED: 2 did not decode).
SKIPPED = {"a-2": 2}
RUNS = (
    ("a-1", "vit_a", "w1", 1),
    ("a-2", "vit_a", "w1", 2),
    ("x-1", XSS, XSS, 3),
    ("x-2", XSS, XSS, 4),
)


STORE: dict[str, Path] = {}  # the site fixture's store


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("store")
    for i, (run_id, model, weights, day) in enumerate(RUNS):
        write_synthetic_run(
            root, run_id, model=model, weights=weights, seed=i, depth=4, n_heads=3,
            created_at=dt.datetime(2025, 1, day, tzinfo=dt.UTC), with_pos=run_id == "a-2",
            intervals=model == "vit_a", n_skipped=SKIPPED.get(run_id, 0),
            # a-2's intervals wider than their target (interval-note)
            # and its check against the model failed at layer 1 (model-check-note)
            layer_values={"ci_halfwidth": [0.1, 0.3, 0.2, 0.15], "ci_target": [0.02] * 4,
                          "n_images_for_target": [400.0, 3600.0, 1600.0, 900.0],
                          "model_logit_residual": [1e-6, 0.4, 2e-6, 1e-6],
                          "model_attn_residual": [1e-7] * 4}
            if run_id == "a-2" else None,
        )
    out = tmp_path_factory.mktemp("site")
    build_dashboard(root, out)
    STORE["root"] = root
    return out


@pytest.fixture(scope="module")
def browser():
    with chromium() as driver:
        yield driver


def wait_for(driver, script: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def open_page(driver, url: str) -> None:
    # From a blank page, so that the logs hold only what this page does (a fresh browser's
    # first tab loads chrome:// pages of its own).
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get_log("performance")
    driver.get(url)
    # dashboard.js appends the "generated" note last, after every figure is drawn.
    wait_for(driver, "return document.body.innerText.includes('generated ')")


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for: the DevTools network log and the resource timings."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    urls += driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    return urls


def assert_clean(driver, allowed_prefix: str) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
    urls = requested_urls(driver)
    assert urls, "the network log recorded nothing"
    outside = [u for u in urls if not u.startswith((allowed_prefix, "data:", "blob:"))]
    assert outside == []


def no_dialog(driver) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert  # noqa: B018 - the lookup raises when there is none
    except NoAlertPresentException:
        return True
    return False


def column(driver, table: str, label: str, key: str | None = None) -> dict[str, str]:
    """The cells of the column headed ``label`` of a table, by row key (``data-key``) or by
    the text of the column headed ``key``."""
    return dict(driver.execute_script(
        "const [id, label, key] = arguments; const t = document.getElementById(id);"
        "const heads = [...t.querySelectorAll('thead th')].map(th => th.textContent);"
        "const i = heads.indexOf(label), k = heads.indexOf(key);"
        "return [...t.querySelectorAll('tbody tr')].map(r =>"
        " [key ? r.cells[k].textContent : r.dataset.key, i < 0 ? null : r.cells[i].textContent]);",
        table, label, key))


def depth_traces(driver) -> dict[str, list]:
    return driver.execute_script(
        "const d = document.getElementById('depth-plot').data;"
        "const out = {}; for (const t of d) if (t.yaxis !== 'y2' && t.meta !== 'chance')"
        " out[t.legendgroup] = Array.from(t.y); return out;"
    )


def test_overview_offline_every_run_and_selection(site, browser, tmp_path):
    open_page(browser, (site / "index.html").as_uri())
    assert_clean(browser, "file://")
    listed = browser.execute_script(
        "return [...document.querySelectorAll('#runs-table tbody tr')].map(r => r.dataset.key)"
    )
    assert sorted(listed) == sorted(run[0] for run in RUNS)
    # Images: the ones decoded (the N of the shares), not the ones requested; and skipped.
    assert column(browser, "runs-table", "images decoded") == {
        r[0]: "16" for r in RUNS}
    assert column(browser, "runs-table", "skipped") == {
        r[0]: str(SKIPPED.get(r[0], 0)) for r in RUNS}
    assert column(browser, "series-table", "images decoded", "series") == {
        "vit_a · w1": "16", f"{XSS} · {XSS}": "16"}
    # The latest run of each series is drawn; ticking the other run of a series adds its data.
    before = depth_traces(browser)
    assert set(before) == {"a-2", "x-2"}
    browser.find_element("css selector", "input.run-toggle[data-run='a-1']").click()
    after = wait_for(browser, "const d = document.getElementById('depth-plot').data;"
                     "return d.some(t => t.legendgroup === 'a-1') && d.length")
    assert after > 0
    traces = depth_traces(browser)
    assert set(traces) == {"a-1", "a-2", "x-2"} and traces["a-1"] != traces["a-2"]
    browser.find_element("css selector", "input.run-toggle[data-run='a-2']").click()
    assert set(depth_traces(browser)) == {"a-1", "x-2"}
    # The runs table downloads as CSV: a header and one line per run.
    browser.execute_script(
        "const make = URL.createObjectURL; window.__blobs = [];"
        "URL.createObjectURL = (b) => { window.__blobs.push(b); return make(b); };"
    )
    browser.find_element("xpath", "//button[starts-with(., 'Download runs as CSV')]").click()
    csv = browser.execute_async_script(
        "const done = arguments[0]; window.__blobs[0].text().then(done);"
    )
    lines = csv.strip().split("\n")
    assert lines[0].startswith("run_id,series,model,weights")
    assert sorted(line.split(",")[0] for line in lines[1:]) == sorted(run[0] for run in RUNS)
    assert sum(XSS in line for line in lines) == 2
    # Not blank: the figure area holds many colours.
    png = browser.get_screenshot_as_png()
    (tmp_path / "overview.png").write_bytes(png)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.width > 800 and len(set(image.getdata())) > 200
    plot = browser.find_element("id", "depth-plot")
    crop = Image.open(io.BytesIO(plot.screenshot_as_png)).convert("RGB")
    assert len(set(crop.getdata())) > 50
    assert plot.get_attribute("role") == "img" and "frac_pos" in plot.get_attribute("aria-label")


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted(tmp_path, browser):
    """A name beginning with = + - @ is a formula to a spreadsheet that opens the CSV
    (trial 25, F5): such a text cell gets a leading ', a negative number stays a number."""
    formula = '=HYPERLINK("http://evil.example","x")'
    root = tmp_path / "store"
    write_synthetic_run(root, "f-1", model=formula, weights="@SUM(1+1)", seed=0, depth=2,
                        n_heads=2, created_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    site = tmp_path / "site"
    build_dashboard(root, site)
    open_page(browser, (site / "index.html").as_uri())
    browser.execute_script(
        "const make = URL.createObjectURL; window.__blobs = [];"
        "URL.createObjectURL = (b) => { window.__blobs.push(b); return make(b); };")
    browser.find_element("xpath", "//button[starts-with(., 'Download runs as CSV')]").click()
    text = browser.execute_async_script(
        "const done = arguments[0]; window.__blobs[0].text().then(done);")
    import csv

    header, row = list(csv.reader(io.StringIO(text)))
    cells = dict(zip(header, row, strict=True))
    assert cells["model"] == "'" + formula and cells["weights"] == "'@SUM(1+1)"
    assert cells["run_id"] == "f-1"
    assert not any(c.startswith(("=", "+", "@")) for c in row)


def downloaded_names(driver) -> list[str]:
    """The file name of each "Download ... as CSV" button of the page, clicked in turn (the
    anchor's click caught: nothing is saved)."""
    return driver.execute_script(
        "const names = []; const click = HTMLAnchorElement.prototype.click;"
        " HTMLAnchorElement.prototype.click = function () { names.push(this.download); };"
        " try { for (const b of document.querySelectorAll('button.download')) b.click(); }"
        " finally { HTMLAnchorElement.prototype.click = click; }"
        " return names;")


def test_csv_downloads_are_named_by_series_and_run(site, browser):
    """The Series page's CSV files carry the series' name, made safe for a file name (they
    were drift-table.csv, changes-table.csv, series-runs.csv whatever the series); a run
    page's keep the run id."""
    series = f"{XSS} · {XSS}"
    open_page(browser, (site / "series.html").as_uri() + "?" + urlencode({"series": series}))
    stem = "script_alert_1_script_script_alert_1_script"
    assert downloaded_names(browser) == [f"{stem}-head-type-changes.csv", f"{stem}-audits.csv"]
    choose_series(browser, "vit_a · w1")
    assert downloaded_names(browser) == ["vit_a_w1-head-type-changes.csv", "vit_a_w1-audits.csv"]
    open_page(browser, (site / "runs" / "a-1.html").as_uri())
    assert downloaded_names(browser) == ["a-1-layers.csv", "a-1-heads.csv", "a-1-modes.csv"]


@pytest.mark.parametrize("page", ["index.html", "runs/x-1.html", "series.html", "compare.html"])
def test_hostile_names_render_as_text(site, browser, page):
    open_page(browser, (site / page).as_uri())
    assert no_dialog(browser)
    assert_clean(browser, "file://")
    # Three script elements of our own (data, plotly.js, dashboard.js), and on Compare the
    # head figures the dashboard wrote for the runs chosen; none from the store.
    srcs = ("return Array.from(document.scripts, s => s.getAttribute('src'))"
            ".filter(s => s && s.endsWith('.heads.js'))")
    if page == "compare.html":
        wait_for(browser, "return document.getElementById('compare-heads').dataset.ready")
    heads = browser.execute_script(srcs)
    assert browser.execute_script("return document.scripts.length") == 3 + len(heads)
    assert len(heads) == (2 if page == "compare.html" else 0)
    assert all(re.fullmatch(r"runs/[ax]-[12]\.heads\.js", src) for src in heads), heads
    text = browser.execute_script("return document.body.innerText")
    if page != "compare.html":  # compare shows names only inside its <select>s
        assert XSS in text
    else:
        options = browser.execute_script(
            "return [...document.querySelectorAll('#run-a option')].map(o => o.textContent)"
        )
        assert any(XSS in o for o in options)
        # and in the run_pairs note of a pair of two models, as text
        compare(browser, "a-1", "x-1")
        assert no_dialog(browser)
        note = browser.find_element("id", "compare-pair-note").text
        assert note.startswith(f"run_a is of vit_a, run_b of {XSS}: two models")
        heads_drawn(browser, "a-1", "x-1")
        assert no_dialog(browser)
        heads = browser.execute_script(srcs)
        assert browser.execute_script("return document.scripts.length") == 3 + len(heads)
        assert {"runs/a-1.heads.js", "runs/x-1.heads.js"} <= set(heads)
        assert XSS in browser.find_element("id", "compare-names").text


def test_run_page_views_are_linked(site, browser):
    open_page(browser, (site / "runs/a-2.html").as_uri())
    assert_clean(browser, "file://")
    meta = dict(browser.execute_script(
        "return [...document.querySelectorAll('#run-meta tr')].map(r =>"
        " [r.cells[0].textContent, r.cells[1].textContent])"))
    assert (meta["images requested"], meta["skipped"], meta["images decoded"]) == (
        "18", "2", "16")
    assert meta["prefix option"] == "exclude"  # the positions its shares are over
    # which tokens that is about (a zoo trial had to find runs.prefix_tokens)
    assert meta["prefix tokens"] == "1 (class, distillation or register): left out of the positions"
    assert meta["activations"] == "stored"  # not a stats-only run (--no-store-activations)
    # N too small for the intervals' target: said as bfd audit says it (the page said nothing)
    assert browser.execute_script("return document.getElementById('interval-note')"
                                  ".textContent") == (
        "With N=16 images the 95 % intervals of the main shares reach ±0.300, wider than the "
        "target ±0.02; about 3600 images would reach it: read the shares and head types below "
        "as estimates within about that.")
    # its failed check against the model: said as bfd audit says it, and drawn with its limit
    assert browser.execute_script("return document.getElementById('model-check-note')"
                                  ".textContent") == (
        "This run fails the check against the model: model_logit_residual 0.400 at attn_in "
        "layer 1 (1 layer(s) above 0.001). A correct decomposition gives about 1e-6, so its "
        "logits are not the model's x M xᵀ and its shares may be wrong (docs/checks.md).")
    names = browser.execute_script(
        "return document.getElementById('residual-plot').data.map(t => t.name)")
    assert {"model_logit_residual", "model_attn_residual", "check limit 0.001"} <= set(names)
    for plot in ("shares-plot", "headmap-plot", "spectrum-plot", "alphabeta-plot", "pos-plot",
                 "preservation-plot", "residual-plot", "splithalf-plot", "shuffle-plot"):
        assert browser.execute_script(f"return document.getElementById('{plot}').data.length") > 0
    title = "return document.getElementById('alphabeta-plot').layout.title.text"
    assert browser.execute_script(title).startswith("layer 0:")
    # Choosing a layer redraws the mode views for it.
    browser.execute_script(
        "const s = document.getElementById('layer-select'); s.value = '2';"
        "s.dispatchEvent(new Event('change'));"
    )
    assert browser.execute_script(title).startswith("layer 2:")
    # One marker symbol a mode type on every layer (as bfd plot), not one by the order of the
    # types a layer holds: a circle is pp on each layer.
    symbols = {"pp": "circle", "pc": "diamond", "cp": "triangle-up", "cc": "square"}
    seen = set()
    for layer in range(4):
        browser.execute_script(
            f"const s = document.getElementById('layer-select'); s.value = '{layer}';"
            "s.dispatchEvent(new Event('change'));"
        )
        drawn = browser.execute_script(
            "return document.getElementById('alphabeta-plot').data"
            ".filter(t => t.name.startsWith('mode type ')).map(t => [t.name, t.marker.symbol])")
        assert {name.removeprefix("mode type "): s for name, s in drawn} == {
            name.removeprefix("mode type "): symbols[name.removeprefix("mode type ")]
            for name, _ in drawn}
        seen |= {name for name, _ in drawn}
    assert len(seen) > 1  # the planted modes hold several types
    browser.execute_script(
        "const s = document.getElementById('layer-select'); s.value = '2';"
        "s.dispatchEvent(new Event('change'));"
    )
    assert browser.execute_script(
        "return document.getElementById('spectrum-plot').layout.title.text"
    ).startswith("layer 2, head 0")
    # The shuffle control's chance level, per layer: (1 - frac_img) / N, N the images kept.
    chance = browser.execute_script(
        "return document.getElementById('shuffle-plot').data.find(t => t.name.startsWith("
        "'chance')).y")
    con = duckdb.connect()
    tables = STORE["root"] / "tables"
    n_kept = con.execute(
        f"SELECT n_images - coalesce(n_skipped, 0) FROM read_parquet('{tables}/runs/**/*.parquet',"
        " union_by_name = true) WHERE run_id = 'a-2'").fetchone()[0]
    frac_img = [r[0] for r in con.execute(
        f"SELECT frac_img FROM read_parquet('{tables}/layers/**/*.parquet', union_by_name = true)"
        " WHERE run_id = 'a-2' AND site = 'attn_in' ORDER BY layer").fetchall()]
    assert n_kept > 1 and len(chance) == len(frac_img) == 4
    np.testing.assert_allclose(chance, [(1 - f) / n_kept for f in frac_img], rtol=1e-12)
    # The planted positional factor: PC1 of a 4 x 5 grid.
    z = browser.execute_script("return document.getElementById('pos-plot').data[0].z")
    assert len(z) == 4 and len(z[0]) == 5


def test_served_from_loopback_with_no_outside_request(site, browser):
    server = make_server(site, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        base = f"http://{host}:{port}/"
        open_page(browser, base + "compare.html")
        assert_clean(browser, base)
        # a-1 against a-2, both with frac_pos intervals [v - 0.01, v + 0.02] (half-width
        # 0.015) and the same N: the delta's interval delta ± sqrt(hw_A² + hw_B²), as
        # compare_runs, reaches 0.015·√2 either side of it.
        browser.execute_script(
            "for (const [id, v] of [['run-a', 'a-1'], ['run-b', 'a-2']]) {"
            " const s = document.getElementById(id); s.value = v;"
            " s.dispatchEvent(new Event('change')); }"
        )
        bar = browser.execute_script(
            "const t = document.getElementById('delta-plot').data[0];"
            "return [Array.from(t.y), Array.from(t.error_y.array),"
            " Array.from(t.error_y.arrayminus)]"
        )
        delta, up, down = bar
        assert len(delta) == 4
        assert up == pytest.approx([0.015 * 2**0.5] * 4)
        assert down == pytest.approx([0.015 * 2**0.5] * 4)
        # served over http, the results folder is its path as text: a file:// link there is
        # one the browser refuses to open (it was a dead link and a console error on click)
        open_page(browser, base + "runs/a-2.html")
        cell = browser.execute_script(
            "const c = document.getElementById('results-cell');"
            " return [c.querySelector('a') === null, c.textContent, JSON.parse(document"
            ".getElementById('bfd-data').textContent).run.results_path]")
        assert cell[0] and cell[1] == cell[2] and "bfd.zarr" in cell[2], cell
    finally:
        server.shutdown()
        server.server_close()


def test_series_page_marks_drift_of_audits(tmp_path, browser, monkeypatch):
    from test_dashboard import LONG_AUDIT_ID, audited_store

    root, con = audited_store(tmp_path)
    series = con.execute("SELECT DISTINCT series FROM audits").fetchone()[0]
    # the third audit's flags besides its f_pp (layer 1 head 0, delta 0.3): a head_type
    # change (delta 1), frac_img -0.2 and f_pc 0.12, listed in bfd query drift's order, the
    # largest |delta| first (they were by metric, then layer: f_pc first); the second audit
    # flags frac_img and frac_int_resid only, which no plot shows: said under the plots
    more = [(LONG_AUDIT_ID, "audit-1", 0, 1, "head_type", None, None, 1.0, 0.5),
            (LONG_AUDIT_ID, "audit-1", 3, None, "frac_img", 0.3, 0.1, -0.2, 0.05),
            (LONG_AUDIT_ID, "audit-1", 2, 0, "f_pc", 0.2, 0.32, 0.12, 0.1),
            ("audit-1", "audit-0", 1, None, "frac_img", 0.3, 0.41, 0.11, 0.05),
            ("audit-1", "audit-0", 2, None, "frac_img", 0.3, 0.45, 0.15, 0.05),
            ("audit-1", "audit-0", 2, None, "frac_int_resid", 0.3, 0.18, -0.12, 0.05)]
    con.executemany("INSERT INTO drift VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, true)",
                    [(a, series, *rest) for a, *rest in more])
    # the head types a head_type row compared (bfd.storage.audits keeps them): shown as its
    # before and after (trial 15, F9: they read "–")
    con.execute("ALTER TABLE drift ADD COLUMN type_before VARCHAR")
    con.execute("ALTER TABLE drift ADD COLUMN type_after VARCHAR")
    con.execute("UPDATE drift SET type_before = 'position-position', type_after = 'content-content'"
                " WHERE metric = 'head_type'")
    con.execute("UPDATE audits SET n_flagged = 3 WHERE audit_id = 'audit-1'")
    # a share that moves by 2e-6 over the series (trial 23: drawn across the plot's height
    # as a large swing): on an axis 0.01 wide around its middle; one that moves more, plotly's
    con.execute("UPDATE layers SET frac_pos = 0.3 + 1e-6 * CAST(right(run_id, 1) AS INTEGER)")
    monkeypatch.setenv("PREFECT_UI_URL", "http://127.0.0.1:4200")
    with con:
        build_dashboard(root, tmp_path / "site", catalog=con)
    open_page(browser, (tmp_path / "site" / "series.html").as_uri())
    assert_clean(browser, "file://")
    assert browser.execute_script("return document.getElementById('no-audits')") is None
    assert browser.execute_script("return document.getElementById('x-select').value") == "step"
    line, flags = browser.execute_script(
        "return document.getElementById('metric-f_pp').data.map(t => Array.from(t.x))"
    )
    assert line == [100, 200, 300] and flags == [300]
    assert browser.execute_script(
        "return document.getElementById('metric-f_cc').data[1].x.length"
    ) == 0
    ys, narrow, wide = browser.execute_script(
        "const d = (k) => document.getElementById('metric-' + k);"
        " return [Array.from(d('frac_pos_mean').data[0].y), d('frac_pos_mean').layout.yaxis.range,"
        " d('f_pp').layout.yaxis.autorange];")
    assert ys == pytest.approx([0.3, 0.300001, 0.300002], abs=1e-12) and wide is True
    assert narrow == pytest.approx([0.300001 - 0.005, 0.300001 + 0.005])
    # against audit time: each audit at its start, not at its run's creation (Jan 3, 2, 1
    # here): a flag is marked at the audit that flagged it (trial 23: a rollback's audit,
    # whose run an earlier week had computed, was drawn and flagged on that week's point)
    browser.execute_script("const s = document.getElementById('x-select'); s.value = 'time';"
                           " s.dispatchEvent(new Event('change'));")
    line, flags = browser.execute_script(
        "return document.getElementById('metric-f_pp').data.map(t => Array.from(t.x))")
    assert [x[:10] for x in line] == ["2025-02-01", "2025-02-02", "2025-02-03"], line
    assert [x[:10] for x in flags] == ["2025-02-03"], flags
    browser.execute_script("const s = document.getElementById('x-select'); s.value = 'step';"
                           " s.dispatchEvent(new Event('change'));")
    rows = table_rows(browser, "drift-table")
    assert [(r["metric"], r["layer"], r["delta"], r["audit"]) for r in rows] == [
        ("head_type", "0", "1", "20250203T…b2c3d"), ("f_pp", "1", "0.3000", "20250203T…b2c3d"),
        ("frac_img", "3", "-0.2000", "20250203T…b2c3d"), ("f_pc", "2", "0.1200", "20250203T…b2c3d"),
        ("frac_img", "2", "0.1500", "audit-1"), ("frac_int_resid", "2", "-0.1200", "audit-1"),
        ("frac_img", "1", "0.1100", "audit-1")]
    assert (rows[0]["before"], rows[0]["after"]) == ("position-position", "content-content")
    assert (rows[1]["before"], rows[1]["after"]) == ("0.2000", "0.5000")
    row = rows[1]
    # a long audit id is shown short, whole on hover
    assert (row["metric"], row["audit"], row["previous audit"], row["run"]) == (
        "f_pp", "20250203T…b2c3d", "audit-1", "s-2")
    # audit-1's flags mark no plot: a line under the plots says so; so does the third
    # audit's frac_img flag, beside its f_pp and f_pc marks (trial 32: a mark on one plot
    # stood for every flag of its audit)
    assert browser.find_element("id", "unmarked-drift").text == (
        f"audit {LONG_AUDIT_ID} at step 300: 1 flagged value on metrics not plotted here "
        "(frac_img): see the flagged drift table.\n"
        "audit audit-1 at step 200: 3 flagged values on metrics not plotted here (frac_img, "
        "frac_int_resid): see the flagged drift table.")
    assert browser.execute_script(
        "return document.querySelector('#drift-table tbody td:nth-child(9)').title") == (
        LONG_AUDIT_ID)
    # and the table fits the page at 1400 px: no horizontal scrolling to reach its columns
    assert browser.execute_script(
        "const t = document.getElementById('drift-table');"
        " return t.scrollWidth <= t.closest('.table-wrap').clientWidth")
    # the Overview counts the audits that flagged and names the last, beside the latest's count
    open_page(browser, (tmp_path / "site" / "index.html").as_uri())
    (row,) = table_rows(browser, "series-table")
    assert (row["flagged"], row["audits flagged"]) == ("1", "2 of 3 · last step 300"), row
    open_page(browser, (tmp_path / "site" / "runs" / "s-0.html").as_uri())
    link = browser.find_element("link text", "flow-0")
    assert link.get_attribute("href") == "http://127.0.0.1:4200/runs/flow-run/flow-0"
    assert browser.find_element("id", "results-link").get_attribute("href").startswith("file://")


def test_a_week_audited_again_later_keeps_the_line_to_the_next_week(tmp_path, browser):
    """Week 1 (run w-1), week 2 compared with it, then week 1 audited again (its run reused):
    in series order week 1, its re-audit, week 2. Week 2 was compared with the first audit of
    week 1, not the re-audit, which holds the same run's figures: the line runs on from the
    re-audit to week 2, solid, where it broke there and drew a dashed 'compared with' line
    as though an audit had been skipped (trial 23 F9). An audit skipped between them as not
    comparable still breaks it (tests above)."""
    from dashstore import catalog_with_audits

    root = tmp_path / "store"
    for i in (1, 2):
        write_synthetic_run(root, f"w-{i}", weights="w", seed=i,
                            created_at=dt.datetime(2025, 1, i, tzinfo=dt.UTC))
    day = lambda d, h=0: dt.datetime(2025, 2, d, h, tzinfo=dt.UTC)  # noqa: E731
    audits = [("a1", "weekly", "w-1", 1, day(1), day(1, 1), "schedule", None, "complete", None, 0),
              ("a2", "weekly", "w-2", 2, day(8), day(8, 1), "schedule", None, "complete", "a1", 0),
              ("a1b", "weekly", "w-1", 1, day(9), day(9, 1), "cli", None, "complete", "a1", 0)]
    con = catalog_with_audits(root, tmp_path / "catalog.duckdb", audits, [])
    with con:
        build_dashboard(root, tmp_path / "site", catalog=con)
    open_page(browser, (tmp_path / "site" / "series.html").as_uri())
    assert_clean(browser, "file://")
    x, y, *_ = series_plot(browser, "metric-f_pp")
    assert x == [1, 1, 2] and None not in y, (x, y)
    names = browser.execute_script(
        "return document.getElementById('metric-f_pp').data.map(t => t.name)")
    assert "compared with" not in names, names


def test_the_alpha_beta_plot_draws_only_modes_with_alpha_beta_and_energy(tmp_path, browser):
    """Modes of sigma 0 (a pruned head's, or past a head's rank: no alpha, beta or energy)
    were drawn at meaningless places and stretched the colour scale to log10 energy -300
    (bfd plot has its own test: test_plot_layout.py). Head 1 here has two such modes."""
    write_synthetic_run(tmp_path / "store", "p-1", depth=2, n_heads=2, n_modes=4,
                        sigmas={1: [2.0, 1.0, 0.0, 0.0]})
    build_dashboard(tmp_path / "store", tmp_path / "site")
    open_page(browser, (tmp_path / "site" / "runs" / "p-1.html").as_uri())
    assert_clean(browser, "file://")
    drawn = browser.execute_script(
        "return document.getElementById('alphabeta-plot').data"
        ".filter(t => t.name.startsWith('mode type '))"
        ".map(t => [t.name, Array.from(t.x), Array.from(t.marker.color)])")
    alphas = [a for _, xs, _ in drawn for a in xs]
    colours = [c for *_, cs in drawn for c in cs]
    # layer 0: head 0's 4 modes and head 1's 2 real ones, none undefined
    assert len(alphas) == 6 and all(0 <= a <= 1 for a in alphas), drawn
    assert "mode type undefined" not in [name for name, *_ in drawn]
    assert min(colours) > -50, colours  # log10 of real energies, not of 0


def test_log_axes_of_a_zero_or_denormal_value_stop_at_the_floor(tmp_path, browser):
    # as in bfd plot (test_plot_layout.py): a residual of 0 and denormal ones (1e-314) are
    # drawn at LOG_FLOOR, the axis stops there instead of at 1e-314, the hover keeps the
    # stored value, and a dotted line at the floor says so
    from bfd.report.layout import LOG_FLOOR

    values = {"ss_identity_residual": [0.0, 1e-14, 1e-14],
              "ortho_residual": [1e-15, 1e-314, 1e-15],
              "shuffle_frac_pos": [4e-3, 1e-314, 4e-3]}
    # and the mode spectra's log sigma axis: head 0's sigmas span under a decade (as a
    # random-init vit_tiny's, 0.0026 to 0.018: plotly labelled every digit, "0.01" over
    # "2 3 ... 9"), head 1's ten decades, head 2's a few percent
    sigmas = {0: np.geomspace(0.0179, 0.0026, 12), 1: np.geomspace(10.0, 1e-9, 12),
              2: np.geomspace(0.33, 0.31, 12)}
    write_synthetic_run(tmp_path / "store", "z-1", depth=3, layer_values=values, n_heads=3,
                        n_modes=12, sigmas=sigmas)
    build_dashboard(tmp_path / "store", tmp_path / "site")
    open_page(browser, (tmp_path / "site" / "runs" / "z-1.html").as_uri())
    assert_clean(browser, "file://")
    for head, sigma in sigmas.items():
        browser.execute_script(
            "const s = document.getElementById('head-select'); s.value = arguments[0];"
            " s.dispatchEvent(new Event('change'));", str(head))
        labels = browser.execute_script(
            "return Array.from(document.querySelectorAll('#spectrum-plot .ytick text'), t => {"
            " const b = t.getBoundingClientRect(); return [t.textContent, b.top, b.bottom]; })"
            ".filter(([s, top, bottom]) => s && bottom > top)")
        low, high = browser.execute_script(
            "return document.getElementById('spectrum-plot')._fullLayout.yaxis.range")
        # readable: at least two labels, each a number in the axis range, none overlapping
        # another, and every sigma inside the range
        assert len(labels) >= 2, (head, labels)
        values_shown = [float(text) for text, _, _ in labels]
        assert all(low <= np.log10(v) <= high for v in values_shown), (head, labels)
        assert low <= np.log10(min(sigma)) and np.log10(max(sigma)) <= high
        spans = sorted((top, bottom) for _, top, bottom in labels)
        assert all(b0 <= t1 for (_, b0), (t1, _) in zip(spans, spans[1:], strict=False)), (
            head, labels)
    for plot, keys in (("residual-plot", ["ss_identity_residual", "ortho_residual"]),
                       ("shuffle-plot", ["shuffle_frac_pos"])):
        low, high = browser.execute_script(
            f"return document.getElementById('{plot}')._fullLayout.yaxis.range")
        traces = browser.execute_script(
            f"return document.getElementById('{plot}').data.map(t => [t.name,"
            " Array.from(t.y), t.customdata ? Array.from(t.customdata) : null])")
        drawn = {name: (y, stored) for name, y, stored in traces}
        # plotly pads the range for the markers: within two decades of the drawn values
        top = np.log10(max(max(y) for y, _ in drawn.values()))
        assert np.log10(LOG_FLOOR) - 2 <= low <= np.log10(LOG_FLOOR) and high <= top + 2
        for key in keys:
            name = next(n for n in drawn if key in n or (key == "shuffle_frac_pos"
                                                         and n.endswith("after shuffling")))
            y, stored = drawn[name]
            assert y == list(np.maximum(values[key], LOG_FLOOR)) and stored == values[key]
        assert [y for name, (y, _) in drawn.items() if "drawn at 1e-17" in name] == [
            [LOG_FLOOR, LOG_FLOOR]]


@pytest.fixture(scope="module")
def reused_site(tmp_path_factory) -> Path:
    from dashstore import write_reused_audits

    root = tmp_path_factory.mktemp("reused")
    write_reused_audits(root)
    out = tmp_path_factory.mktemp("reused-site")
    build_dashboard(root, out)
    return out


def test_a_run_page_lists_every_audit_of_its_run(reused_site, browser):
    """c-200 was audited at step 200 and reused at 250 (an unchanged model, or a rollback),
    c-100 in three series: each page lists all of them, the first started first, where its
    table names the latest only (trial 23); a failed audit (c-500's A8) too."""
    from dashstore import REUSED_AUDITS

    for run_id in ("c-200", "c-100", "c-500"):
        open_page(browser, (reused_site / "runs" / f"{run_id}.html").as_uri())
        assert_clean(browser, "file://")
        rows = table_rows(browser, "run-audits")
        mine = sorted((a for a in REUSED_AUDITS if a[2] == run_id), key=lambda a: a[4])
        assert [(r["audit"], r["series"], r["step"], r["status"]) for r in rows] == [
            (a[0], a[1], str(a[3]), a[5]) for a in mine], rows
    link = browser.execute_script(
        "return document.querySelector('#run-audits tbody a').getAttribute('href')")
    assert link == "../series.html?series=ck"


def test_compare_offers_each_audit_and_reads_series_and_step_from_the_address(reused_site,
                                                                              browser):
    # trial 13 (F19): a run audited several times was offered under its latest audit only:
    # c-100 as th · step 1, so ck's step 100 could not be picked. Each audit is a choice (a
    # run's latest one valued by its run id, as compare.html?a=RUN_ID); the address names
    # audits by series and step (step=S: B, against the point before it of another run),
    # and choosing writes them there.
    page = (reused_site / "compare.html").as_uri()
    chosen = ("return ['run-a', 'run-b'].map(i => document.getElementById(i)"
              ".selectedOptions[0].textContent)")
    open_page(browser, page)
    assert_clean(browser, "file://")
    options = browser.execute_script(
        "return Array.from(document.querySelectorAll('#run-a option'),"
        " o => [o.value, o.textContent])")
    assert options == [
        ["audit:A4", "ck · step 100 · c-100 · c-100"],
        ["audit:A1", "ck · step 200 · c-200 · c-200"],
        ["c-200", "ck · step 250 · c-200 · c-200"], ["c-500", "ck · step 500 · c-500 · c-500"],
        ["audit:A6", "other · step 100 · c-100 · c-100"],
        ["c-100", "th · step 1 · c-100 · c-100"],
        ["u-1", "toy_vit · plain · plain · u-1"]]
    for query, want in (
            ("?series=ck&step=250", ["ck · step 100 · c-100 · c-100",
                                     "ck · step 250 · c-200 · c-200"]),
            ("?series=ck&step_a=200&step_b=500", ["ck · step 200 · c-200 · c-200",
                                                  "ck · step 500 · c-500 · c-500"]),
            ("?series_a=other&series_b=ck&step_b=200", ["other · step 100 · c-100 · c-100",
                                                        "ck · step 200 · c-200 · c-200"])):
        open_page(browser, page + query)
        assert browser.execute_script(chosen) == want, query
        assert browser.find_elements("id", "compare-url-note") == []
        assert browser.find_element("id", "compare-names").text.splitlines() == [
            f"{side} {name} · N 16" for side, name in zip("AB", want, strict=True)]
    open_page(browser, page + "?series=ck&step=7")
    assert browser.find_element("id", "compare-url-note").text == (
        "the step of the address (step=7) is no audit of series ck: showing c-200 as A and "
        "c-500 as B instead.")
    # choosing an audit writes it into the address, which opens on it again
    browser.execute_script(
        "const s = document.getElementById('run-a'); s.value = 'audit:A4';"
        " s.dispatchEvent(new Event('change'));")
    address = browser.execute_script("return location.href")
    assert address.endswith("compare.html?series=ck&step_a=100&step_b=500")
    open_page(browser, address)
    assert browser.execute_script(chosen) == ["ck · step 100 · c-100 · c-100",
                                              "ck · step 500 · c-500 · c-500"]


def choose_series(driver, name: str) -> None:
    driver.execute_script(
        "const s = document.getElementById('series-select'); s.value = arguments[0];"
        " s.dispatchEvent(new Event('change'));", name)


def plot_x(driver, plot: str) -> list[list]:
    """The x of each trace of a plot: the line, then the drift crosses."""
    return driver.execute_script(
        f"return document.getElementById('{plot}').data.map(t => Array.from(t.x))")


def test_series_page_plots_every_audit_and_crosses_its_flagged_metrics(reused_site, browser):
    # tests/dashstore.py REUSED_AUDITS: c-100 audited in ck (step 100, backfilled), other and
    # th; c-200 at steps 200 and 250; c-500 twice at 500 (and a failed audit at 600)
    open_page(browser, (reused_site / "series.html").as_uri())
    assert_clean(browser, "file://")
    options = browser.execute_script(
        "return Array.from(document.querySelectorAll('#series-select option'), o => o.value)")
    assert options == ["ck", "other", "th", "toy_vit · plain"]
    # opened on th, the series of the latest complete audit (A7; A8 of ck failed)
    assert browser.execute_script("return document.getElementById('series-select').value") == (
        "th")
    choose_series(browser, "ck")
    # the address follows the choice (series.html?series=NAME links to it)
    assert browser.execute_script("return location.search") == "?series=ck"
    line, crosses = plot_x(browser, "metric-f_pp")
    assert line == [100, 200, 250, 500, 500] and crosses == [250]
    # the cross has a hover saying what was flagged, which head, and where the largest
    # change is (trial 23: it named layers only; the heads were in a table far below)
    assert browser.execute_script(
        "return Array.from(document.getElementById('metric-f_pp').data[1].text)") == [
        "drift flagged at audit A5 (step 250): f_pp in 1 row, layer 0; head 0.0 (layer.head)"
        "<br>largest |delta| 0.2000: f_pp of layer 0 head 0"]
    # a click on it opens Compare on the audit and the one it was compared with (A1 at 200)
    assert browser.execute_script(
        "return Array.from(document.getElementById('metric-f_pp').data[1].customdata)") == [
        "compare.html?series=ck&step_a=200&step_b=250"]
    # A1's head_type drift (layer 0 head 1, position-position -> content-content) crosses
    # the pp and cc counts only: the cp and undefined counts did not change
    for plot, crosses in (("n_heads_pp", [200]), ("n_heads_cc", [200]), ("n_heads_cp", []),
                          ("n_heads_undefined", []), ("n_heads", [])):
        assert plot_x(browser, f"metric-{plot}")[1] == crosses, plot
    assert browser.execute_script(
        "return Array.from(document.getElementById('metric-n_heads_cc').data[1].text)") == [
        "drift flagged at audit A1 (step 200): head_type in 1 row, layer 0; head 0.1 "
        "(layer.head)<br>largest |delta| 1: head_type of layer 0 head 1"
        "<br>position-position -&gt; content-content: 1"]
    # frac_pos_resid_mean is kept by A3 only (A4 kept no figure: its run's; A1, A2, A5 are
    # older rows): A2's flagged frac_pos_resid drift has no point, so the plot says it
    resid = browser.execute_script(
        "const d = document.getElementById('metric-frac_pos_resid_mean');"
        " return [Array.from(d.data[0].y), Array.from(d.data[1].x),"
        " (d.layout.annotations || []).map(a => a.text)]")
    assert resid[0][1:] == [None, None, None, 0.61] and 0 < resid[0][0] < 1
    assert resid[1:] == [
        [], ["drift of frac_pos_resid flagged at audit A2 (step 500): no value kept"]]
    # audits keep the chance-corrected shares now (none is "not kept by the audits"), but
    # these audits are older and these runs hold none: no plot of them
    assert browser.execute_script("return document.getElementById('metric-f_pp_adj')") is None
    assert "not kept" not in browser.find_element("id", "empty-plots").text
    # the drift table: what was flagged first, the series (the page's) not repeated, ids
    # short with the whole id on hover, the run linked to its page
    drift = table_rows(browser, "drift-table")
    head = browser.execute_script(
        "return Array.from(document.querySelectorAll('#drift-table th'), c => c.textContent)")
    assert head[:6] == ["metric", "layer", "head", "before", "after", "delta"]
    assert "series" not in head and "flagged" not in head
    # newest audit first (series order reversed: A2 at 500, A5 at 250, A1 at 200), so that a
    # table cut at 500 rows leaves out the oldest flags, not the latest audit's
    assert [(r["metric"], r["audit"], r["run"], r["step"]) for r in drift] == [
        ("frac_pos_resid", "A2", "c-500", "500"), ("f_pp", "A5", "c-200", "250"),
        ("head_type", "A1", "c-200", "200")]
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#drift-table tbody a[href*=\"runs/\"]'),"
        " a => a.href)") == [
        (reused_site / "runs" / f"{run}.html").as_uri() for run in ("c-500", "c-200", "c-200")]
    changes = table_rows(browser, "changes-table")
    head = browser.execute_script(
        "return Array.from(document.querySelectorAll('#changes-table th'), c => c.textContent)")
    assert head[:5] == ["layer", "head", "type before", "type after", "step"]
    assert "series" not in head
    # in the drift table's order, each with its audit's step
    audits = [r["audit"] for r in changes]
    n_new, n_old = audits.count("A2"), audits.count("A1")
    assert n_old and audits == ["A2"] * n_new + ["A1"] * n_old
    assert {(r["audit"], r["step"], r["previous run"], r["run"]) for r in changes} == {
        ("A1", "200", "c-100", "c-200"), ("A2", "500", "c-200", "c-500")}
    table = browser.execute_script(
        "const t = document.getElementById('series-runs');"
        " const head = Array.from(t.querySelectorAll('th'), c => c.textContent);"
        " return Array.from(t.querySelectorAll('tbody tr'), tr => Object.fromEntries("
        " Array.from(tr.cells, (c, i) => [head[i], c.textContent])))")
    assert [(r["audit_id"], r["figures"], r["frac_pos_resid_mean"], r["f_pp_adj"])
            for r in table] == [(a, "audit", kept, "–") for a, kept in (
                ("A4", f"{resid[0][0]:.4f}"), ("A1", "–"), ("A5", "–"), ("A2", "–"),
                ("A3", "0.6100"))]
    assert plot_x(browser, "metric-frac_pos_mean")[1] == []  # frac_pos was not flagged
    assert plot_x(browser, "metric-mean_f_pp")[1] == [250]
    ys = browser.execute_script(
        "return Array.from(document.getElementById('metric-f_pp').data[0].y)")
    assert ys[1:] == [0.21, 0.25, 0.51, 0.52]  # the f_pp each audit kept
    for name, steps in (("other", [100]), ("th", [1]), ("toy_vit · plain", [])):
        choose_series(browser, name)
        line, crosses = plot_x(browser, "metric-f_pp")
        assert crosses == [] and (line == steps or (not steps and line == [None]))
        if steps:  # one audit: a step either side of it, whole steps ticked
            assert browser.execute_script(
                "const a = document.getElementById('metric-f_pp')._fullLayout.xaxis;"
                " return [a.range, Array.from(a._vals || [], v => v.text)]") == [
                [steps[0] - 1, steps[0] + 1], [str(v) for v in range(steps[0] - 1, steps[0] + 2)]]
    assert browser.execute_script("return new URLSearchParams(location.search).get('series')") == (
        "toy_vit · plain")
    # series.html?series=NAME opens on that series, as compare.html?a=&b= on two runs; a name
    # that is no series of the store is said above the plots, the default shown
    for asked, shown in (("toy_vit · plain", "toy_vit · plain"), ("ck", "ck"), ("nope", "th")):
        open_page(browser, (reused_site / "series.html").as_uri() + "?" + urlencode(
            {"series": asked}))
        assert browser.execute_script(
            "return document.getElementById('series-select').value") == shown
        notes = [e.text for e in browser.find_elements("id", "series-url-note")]
        assert notes == ([] if asked == shown else [
            "the series of the address (series=nope) is not a series of this store: showing th "
            "instead."])
    assert plot_x(browser, "metric-f_pp") == [[1], []]


@pytest.mark.parametrize("width", [1300, 1600])
def test_series_plots_fit_their_grid_cells(reused_site, browser, width):
    browser.set_window_size(width, 1000)
    try:
        open_page(browser, (reused_site / "series.html").as_uri())
        fits = (
            "return Array.from(document.querySelectorAll('#metric-grid .plot'), d =>"
            " [d.id, d.querySelector('.main-svg').getBoundingClientRect().width,"
            " d.getBoundingClientRect().width])")
        for name in ("ck", "other", "ck"):
            choose_series(browser, name)
            cells = browser.execute_script(fits)
            assert len(cells) > 10
            assert [c for c in cells if c[1] > c[2] + 0.5] == []
            # more than one plot a row: a plot wider than its cell is cut off by the next
            assert len({round(c[2]) for c in cells}) == 1 and cells[0][2] < width / 1.5
    finally:
        browser.set_window_size(1400, 1000)


@pytest.mark.parametrize("page", ["index.html", "series.html", "compare.html"])
def test_pages_reflow_at_a_phone_s_width(reused_site, browser, page):
    """At 360 CSS px nothing makes the page scroll sideways (trial 32: Compare's run selects
    made it 508 px wide, the Series heatmap's 385 px: a select's max-width of 40em)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": 360, "height": 800, "deviceScaleFactor": 1, "mobile": True})
    try:
        open_page(browser, (reused_site / page).as_uri())
        wide = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
            " Array.from(document.querySelectorAll('select'), s => s.getBoundingClientRect().right)"
            ".filter(r => r > document.documentElement.clientWidth).length]")
        assert wide[0] <= wide[1] and wide[2] == 0, wide
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


@pytest.mark.parametrize("page", ["series.html", "compare.html"])
def test_every_image_a_screen_reader_meets_has_a_name(reused_site, browser, page):
    """Chromium's accessibility tree of a page holds no image without a name: each figure is
    one labelled image, and the mode bars' icons and plotly's text-measuring svg are hidden
    (trial 32: 54 unnamed images on the Series page, 19 on Compare)."""
    open_page(browser, (reused_site / page).as_uri())
    browser.execute_cdp_cmd("Accessibility.enable", {})
    nodes = browser.execute_cdp_cmd("Accessibility.getFullAXTree", {})["nodes"]
    images = [n for n in nodes if not n.get("ignored")
              and n.get("role", {}).get("value") in ("image", "img", "graphics-document")]
    assert images and all(n.get("name", {}).get("value") for n in images), [
        n.get("name") for n in images if not n.get("name", {}).get("value")]


def test_the_series_page_leads_a_keyboard_to_its_drift_flags(reused_site, browser):
    """The stop after the Series page's selects leads past the plots' mode bars to the
    drift flags (trial 32: about 165 Tabs to the first flag)."""
    from selenium.webdriver.common.keys import Keys

    open_page(browser, (reused_site / "series.html").as_uri())
    link = browser.find_element("id", "to-drift-flags")
    order = browser.execute_script(
        "return Array.from(document.querySelectorAll('a[href], select, button, input'))"
        ".filter(e => e.offsetParent !== null).slice(0, 8).map(e => e.id || e.className)")
    assert order.index("to-drift-flags") == order.index("x-select") + 1, order
    link.send_keys(Keys.ENTER)
    reached = wait_for(browser, "const a = document.activeElement; return a"
                                " && a.id === 'drift-flags' && a.querySelector('h2').textContent")
    assert reached == "Drift flags"


def test_overview_lists_every_series_of_a_reused_run(reused_site, browser):
    # c-100's latest audit is in th; it was audited in ck and other too
    open_page(browser, (reused_site / "index.html").as_uri())
    assert_clean(browser, "file://")
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#series-table tbody tr'),"
        " tr => Array.from(tr.cells, c => c.textContent))")
    head = browser.execute_script(
        "return Array.from(document.querySelectorAll('#series-table th'), c => c.textContent)")
    col = {name: i for i, name in enumerate(head)}
    assert [(r[col["series"]], r[col["runs"]], r[col["audits"]], r[col["latest run"]])
            for r in rows] == [("ck", "3", "6", "c-500"), ("other", "1", "1", "c-100"),
                               ("th", "1", "1", "c-100"), ("toy_vit · plain", "1", "0", "u-1")]


# Runs for the Compare page: (run id, model depth, the layers it stored).
COMPARED = (
    ("d6-all", 6, (0, 1, 2, 3, 4, 5)),
    ("d6-even", 6, (0, 2, 4)),  # same depth, other layers (--layers)
    ("d6-low", 6, (0, 1, 2)),  # as many rows as d3-all, twice its depth
    ("d3-all", 3, (0, 1, 2)),
    ("d4-low", 4, (0, 1)),  # ends a third of the way down its model
)


def compare(driver, a: str, b: str) -> tuple[list, list]:
    """Chooses runs A and B on the Compare page; returns the B − A bars (layer, delta) and
    the per-layer table's rows (cells as shown)."""
    driver.execute_script(
        "for (const [id, v] of [['run-a', arguments[0]], ['run-b', arguments[1]]]) {"
        " const s = document.getElementById(id); s.value = v;"
        " s.dispatchEvent(new Event('change')); }", a, b)
    bars = driver.execute_script(
        "const t = document.getElementById('delta-plot').data[0];"
        " return [Array.from(t.x), Array.from(t.y)];")
    table = driver.execute_script(
        "return Array.from(document.querySelectorAll('#delta-table tbody tr'),"
        " tr => Array.from(tr.cells, c => c.textContent))")
    return list(zip(*bars, strict=True)), table


def test_compare_matches_layers_by_model_depth_and_never_extrapolates(tmp_path, browser):
    root = tmp_path / "store"
    planted = {
        run_id: write_synthetic_run(root, run_id, depth=depth, layers=layers, seed=i,
                                    intervals=True)["frac_pos"]
        for i, (run_id, depth, layers) in enumerate(COMPARED)}
    build_dashboard(root, tmp_path / "site")
    stored = {run_id: layers for run_id, _, layers in COMPARED}
    depth = {run_id: d for run_id, d, _ in COMPARED}
    # frac_pos of each stored layer as the catalog's SQL reads it from the Parquet tables
    from bfd.queries import connect, run_sql

    with connect(root) as con:
        sql = run_sql(con, "SELECT run_id, layer, frac_pos FROM layer_summary").to_pylist()
    frac = {(r["run_id"], r["layer"]): r["frac_pos"] for r in sql}
    assert frac == {(r, layer): planted[r][layer] for r, _, ls in COMPARED for layer in ls}

    def at(b: str, layer_a: int, a: str) -> float | None:
        """B's frac_pos at A's layer: the same layer when the models' depths agree, else
        linear in layer / (depth - 1) between B's stored layers around it, None outside."""
        if depth[a] == depth[b]:
            return frac.get((b, layer_a))
        x = layer_a / (depth[a] - 1)
        xs = [(layer / (depth[b] - 1), frac[(b, layer)]) for layer in stored[b]]
        for (x0, y0), (x1, y1) in zip(xs, xs[1:], strict=False):
            if x0 <= x <= x1:
                return y0 if x == x0 else y1 if x == x1 else y0 + (x - x0) / (x1 - x0) * (y1 - y0)
        return None

    open_page(browser, (tmp_path / "site" / "compare.html").as_uri())
    assert_clean(browser, "file://")
    assert browser.execute_script("return document.getElementById('metric-select').value") == (
        "frac_pos")
    for a, b in (("d6-all", "d6-even"), ("d6-all", "d4-low"), ("d6-low", "d3-all"),
                 ("d4-low", "d6-all")):
        bars, table = compare(browser, a, b)
        expected = [(layer, None if at(b, layer, a) is None else at(b, layer, a) - frac[(a, layer)])
                    for layer in stored[a]]
        assert [layer for layer, _ in bars] == list(stored[a])
        for (layer, got), (_, want) in zip(bars, expected, strict=True):
            assert (got is None) == (want is None), (a, b, layer, got, want)
            if want is not None:
                assert got == pytest.approx(want, rel=1e-12, abs=1e-15), (a, b, layer)
        # the table: B and the delta shown as missing exactly where B has no figure
        assert [(row[0], row[3] == "–", row[4] == "–") for row in table] == [
            (str(layer), want is None, want is None) for layer, want in expected]
        if depth[a] == depth[b]:  # intervals only where both runs stored the layer
            assert [(row[5] == "–", row[6] == "–") for row in table] == [
                (want is None, want is None) for _, want in expected]
    # a run whose stored layers stop a third of the way down its model has no B past them
    bars, _ = compare(browser, "d6-all", "d4-low")
    assert [layer for layer, d in bars if d is not None] == [0, 1]


@pytest.fixture(scope="module")
def other_n(tmp_path_factory) -> tuple[Path, Path, dict]:
    """n8 and n16: one model, 8 and 16 decoded images; vit_b: another model, 16 images. The
    raw frac_pos of n8 and n16 differ widely (planted by seed) while their chance-corrected
    frac_pos_adj differ little. w2: n16's model with other weights, created last: a series of
    one run (as each model of a zoo audited once), decomposed before the chance-corrected
    shares were stored (none). Each head's shares have intervals (w2's raw ones only). The
    store, its site and each run's planted raw frac_pos."""
    root = tmp_path_factory.mktemp("other-n")
    adj = {"n8": [0.10, 0.20, 0.30], "n16": [0.101, 0.195, 0.36], "vit_b": [0.12, 0.18, 0.3]}
    raw = {}
    adj["inc"] = [0.3, 0.4, 0.5]  # inc: n16's request decomposed with --prefix include, first
    for i, (run_id, model, n) in enumerate((("n8", "toy_vit", 8), ("n16", "toy_vit", 16),
                                            ("vit_b", "vit_b", 16), ("w2", "toy_vit", 16),
                                            ("inc", "toy_vit", 16))):
        hw = 0.02 if n == 8 else 0.01
        raw[run_id] = write_synthetic_run(
            root, run_id, model=model, seed=i, intervals=True, n_images=n,
            weights="w2" if run_id == "w2" else "random",
            prefix="include" if run_id == "inc" else None,
            created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC) if run_id != "inc" else
            dt.datetime(2024, 12, 1, tzinfo=dt.UTC), adjusted_heads=run_id in adj,
            head_intervals=True,
            layer_values=None if run_id not in adj else {
                "frac_pos_adj": adj[run_id], "frac_pos_adj_lo": [v - hw for v in adj[run_id]],
                "frac_pos_adj_hi": [v + hw for v in adj[run_id]]},
        )["frac_pos"]
    site = root.parent / f"{root.name}-site"
    build_dashboard(root, site)
    return root, site, raw


def test_compare_of_runs_of_other_n_uses_the_adjusted_basis_as_compare_runs(other_n, browser):
    # the page must agree with `compare_runs` on every figure; a series of one run (w2) still
    # opens on two runs
    root, site, raw = other_n
    from bfd.queries import run_query

    def expected(a: str, b: str, metric: str) -> list[dict]:
        """compare_runs' rows of a metric at the attn_in site (the page's)."""
        rows = run_query(root, "compare_runs", {"run_a": a, "run_b": b}).to_pylist()
        return [r for r in rows if r["site"] == "attn_in" and r["metric"] == metric]

    page = (site / "compare.html").as_uri()
    chosen = "return ['run-a', 'run-b'].map(id => document.getElementById(id).value)"
    notes = ("return Array.from(document.querySelectorAll('#app p.note'),"
             " p => [p.id, p.textContent]).filter(([id]) => id)")
    # the default: the latest run (w2, alone in its series) as B against the newest run of
    # its model with no run_pairs note (n16; vit_b is newer but another model), not itself
    open_page(browser, page)
    assert_clean(browser, "file://")
    assert browser.execute_script(chosen) == ["n16", "w2"]
    assert "compare-same" not in dict(browser.execute_script(notes))
    assert len(browser.execute_script("return document.getElementById('delta-plot').data")) == 1
    # runs chosen by the address: both, one (the other side the default pair's other run),
    # and an unknown id, said above the plots, the page drawn on the default
    for query, want in (("?a=vit_b&b=n8", ["vit_b", "n8"]), ("?b=n8", ["n16", "n8"]),
                        ("?a=w2", ["w2", "n16"])):
        open_page(browser, page + query)
        assert browser.execute_script(chosen) == want
        assert "compare-url-note" not in dict(browser.execute_script(notes))
    open_page(browser, page + "?a=nope&b=n8")
    assert browser.execute_script(chosen) == ["n16", "n8"]
    assert dict(browser.execute_script(notes))["compare-url-note"] == (
        "run A of the address (a=nope) is not a complete run of this store: showing n16 as A "
        "and n8 as B instead.")
    assert len(browser.execute_script("return document.getElementById('delta-plot').data")) == 1
    assert_clean(browser, "file://")
    # compare_runs' basis: the chance-corrected shares whenever both runs hold them, at equal
    # N too (the chance level moves with the image/interaction split, trial 20 F0: n16 and
    # vit_b were compared raw); raw when one run holds none (w2)
    for a, b, basis in (("n8", "n16", "adjusted"), ("n16", "vit_b", "adjusted"),
                        ("vit_b", "n16", "adjusted"), ("n16", "w2", "raw")):
        bars, table = compare(browser, a, b)
        want = expected(a, b, "frac_pos")
        assert {r["basis"] for r in want} == {basis}
        errors = browser.execute_script(
            "const e = document.getElementById('delta-plot').data[0].error_y;"
            " return e ? [Array.from(e.array), Array.from(e.arrayminus)] : null;")
        assert [layer for layer, _ in bars] == [r["layer"] for r in want]
        for (_, got), plus, minus, r in zip(bars, *errors, want, strict=True):
            assert got == pytest.approx(r["delta"], rel=1e-9, abs=1e-12)
            assert got + plus == pytest.approx(r["delta_hi"], rel=1e-9, abs=1e-12)
            assert got - minus == pytest.approx(r["delta_lo"], rel=1e-9, abs=1e-12)
        assert [row[7] for row in table] == ["yes" if r["significant"] else "no" for r in want]
        shown = browser.execute_script(
            "return Array.from(document.querySelectorAll('#compare-notes p'),"
            " p => [p.id, p.textContent])")
        notes = dict(shown)
        if basis == "adjusted":
            assert "frac_pos_adj" in notes["compare-basis"]
            assert "frac_int/(N − 1)" in notes["compare-basis"]
            assert ("N = 8 and 16" if "n8" in (a, b) else "N = 16 images each"
                    ) in notes["compare-basis"]
        else:
            assert notes["compare-basis"].startswith(
                "Run B holds no chance-corrected shares (decomposed before they were stored): "
                "compared on the raw frac_pos, as compare_runs does")
        assert notes.get("compare-pair-note") == want[0]["note"]
        assert (want[0]["note"] is None) == (want[0]["same_model"] is True)
    # the planted case: at layer 0 raw frac_pos of n16 less n8's is beyond its intervals
    # (frac_pos ± (0.01, 0.02): half-width 0.015 each), the adjusted one is not; the page
    # showed the adjusted verdict above
    assert abs(raw["n16"][0] - raw["n8"][0]) > 0.015 * 2**0.5 + 0.03
    assert expected("n8", "n16", "frac_pos")[0]["significant"] is False
    # a metric without a chance-corrected twin: deltas, no intervals, no verdict, a note
    compare(browser, "n8", "n16")
    browser.execute_script(
        "const s = document.getElementById('metric-select'); s.value = 'pos_split_half_r';"
        " s.dispatchEvent(new Event('change'));")
    bars = browser.execute_script(
        "const t = document.getElementById('delta-plot').data[0];"
        " return [Array.from(t.y), t.error_y ? true : false];")
    assert bars[0] == pytest.approx([0.0, 0.0, 0.0], abs=1e-12) and bars[1] is False
    table = browser.execute_script(
        "return Array.from(document.querySelectorAll('#delta-table tbody tr'),"
        " tr => Array.from(tr.cells, c => c.textContent))")
    assert [(row[5], row[6], row[7]) for row in table] == [("–", "–", "–")] * 3
    note = browser.find_element("id", "compare-basis").text
    assert "chance level's change with N" in note and "N = 8 and 16" in note
    # raw shares of other N (w2 holds no corrected ones): deltas without intervals or
    # verdict, as compare_runs' rows (NULL intervals), and a note
    want = expected("n8", "w2", "frac_pos")
    assert {r["basis"] for r in want} == {"raw"}
    assert {(r["delta_lo"], r["delta_hi"], r["significant"]) for r in want} == {
        (None, None, None)}
    compare(browser, "n8", "w2")
    browser.execute_script(
        "const s = document.getElementById('metric-select'); s.value = 'frac_pos';"
        " s.dispatchEvent(new Event('change'));")
    bars, table = compare(browser, "n8", "w2")
    assert [d for _, d in bars] == pytest.approx([r["delta"] for r in want], rel=1e-9)
    assert browser.execute_script(
        "return document.getElementById('delta-plot').data[0].error_y === undefined")
    assert [(row[5], row[6], row[7]) for row in table] == [("–", "–", "–")] * 3
    note = browser.find_element("id", "compare-basis").text
    assert "run B holds no chance-corrected shares" in note and "N = 8 and 16" in note


def heads_drawn(driver, a: str, b: str) -> None:
    """Waits until the Compare page has drawn the Heads section of runs a and b (read from
    their runs/<run>.heads.js)."""
    wait_for(driver, "const e = document.getElementById('compare-heads');"
                     f" return e && e.dataset.ready === {json.dumps(a + ' ' + b)};")


def downloaded_csvs(driver) -> dict[str, str]:
    """Each "Download ... as CSV" button of the page clicked in turn: its file's name and
    text (the anchor's click caught: nothing is saved)."""
    return dict(driver.execute_async_script(
        "const done = arguments[0]; const got = [];"
        " const click = HTMLAnchorElement.prototype.click, make = URL.createObjectURL;"
        " let blob = null; URL.createObjectURL = (b) => { blob = b; return make(b); };"
        " HTMLAnchorElement.prototype.click = function () { got.push([this.download, blob]); };"
        " try { for (const b of document.querySelectorAll('button.download')) b.click(); }"
        " finally { HTMLAnchorElement.prototype.click = click; URL.createObjectURL = make; }"
        " Promise.all(got.map(([n, b]) => b.text().then(t => [n, t]))).then(done);"))


def test_compare_csvs_are_named_by_the_pair_and_carry_compare_runs_identity(other_n, browser):
    # trial 15 (F1): the Compare CSVs were compare-frac_pos_adj.csv, compare-heads-f_pp_adj.csv,
    # compare-head-type-changes.csv whichever runs, with no run, N or basis inside.
    root, site, _ = other_n
    from bfd.queries import run_query

    open_page(browser, (site / "compare.html").as_uri() + "?a=n8&b=n16")
    heads_drawn(browser, "n8", "n16")
    csvs = downloaded_csvs(browser)
    assert {"n8-vs-n16-frac_pos_adj.csv", "n8-vs-n16-heads-f_pp_adj.csv"} <= set(csvs)
    assert set(csvs) <= {"n8-vs-n16-frac_pos_adj.csv", "n8-vs-n16-heads-f_pp_adj.csv",
                         "n8-vs-n16-head-type-changes.csv"}
    want = run_query(root, "compare_runs", {"run_a": "n8", "run_b": "n16"}).to_pylist()[0]
    ident = [want[k] for k in ("run_a", "run_b", "basis", "n_images_a", "n_images_b")]
    assert ident == ["n8", "n16", "adjusted", 8, 16]
    for name, text in csvs.items():
        lines = text.strip().split("\n")
        assert lines[0].startswith("run_a,run_b,basis,n_images_a,n_images_b,"), name
        assert len(lines) > 1, name
        for line in lines[1:]:
            basis = "raw" if name.endswith("head-type-changes.csv") else "adjusted"
            assert line.split(",")[:5] == ["n8", "n16", basis, "8", "16"], name
    assert csvs["n8-vs-n16-frac_pos_adj.csv"].split("\n")[0].split(",")[5] == "metric"


def test_compare_heads_of_two_models_say_layers_are_paired_by_index(other_n, browser):
    # trial 15 (F7): for two models the per-layer plot aligns relative depth while the Heads
    # section pairs layer indices (as compare_runs); the Heads text did not say so.
    _, site, _ = other_n
    text = "layer l of A against layer l of B, not aligned by depth, as compare_runs"
    for a, b, two_models in (("n16", "vit_b", True), ("n8", "n16", False)):
        open_page(browser, (site / "compare.html").as_uri() + f"?a={a}&b={b}")
        heads_drawn(browser, a, b)
        notes = browser.execute_script(
            "return Array.from(document.querySelectorAll('#compare-heads p.note'),"
            " p => p.textContent).join(' ')")
        assert (text in notes) == two_models, (a, b, notes)


def test_compare_heads_of_runs_of_other_methods_have_no_intervals(tmp_path, browser):
    # a run published before methods were recorded (method 1: its head shares' standard
    # errors off by up to 28 %) against one of method 2: as compare_runs, the Heads section
    # gives the per-head deltas no interval nor significance and says why, the pair's
    # method_note is shown above the plots, and the per-layer deltas keep their intervals
    from bfd.queries import run_query

    root = tmp_path / "store"
    for i, (run_id, method) in enumerate((("old", None), ("new", 2))):
        write_synthetic_run(root, run_id, seed=i, intervals=True, adjusted_heads=True,
                            head_intervals=True, method=method,
                            created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC))
    build_dashboard(root, tmp_path / "site")
    rows = run_query(root, "compare_runs", {"run_a": "old", "run_b": "new"}).to_pylist()
    heads = [r for r in rows if r["level"] == "head"]
    assert heads and {(r["delta_lo"], r["delta_hi"], r["significant"]) for r in heads} == {
        (None, None, None)}
    (note,) = {r["note"] for r in rows}
    assert note.startswith("run_a was decomposed by method 1, run_b by method 2: ")
    open_page(browser, (tmp_path / "site" / "compare.html").as_uri() + "?a=old&b=new")
    heads_drawn(browser, "old", "new")
    assert_clean(browser, "file://")
    assert browser.find_element("id", "compare-method-note").text == note
    assert browser.find_elements("id", "compare-pair-note") == []  # one model, same inputs
    assert "decomposed by other methods" in browser.find_element("id", "heads-methods").text
    table = table_rows(browser, "head-delta-table")
    assert table and {(t["delta_lo"], t["delta_hi"], t["significant"]) for t in table} == {
        ("–", "–", "–")}
    want = {(r["layer"], r["head"]): r["delta"] for r in heads if r["metric"] == "f_pp"}
    for t in table:
        assert float(t["delta"]) == pytest.approx(want[(int(t["layer"]), int(t["head"]))],
                                                  abs=1e-4)
    # the layer rows keep their intervals (exact replicates under both methods)
    layer = [r for r in rows if r["level"] == "layer" and r["site"] == "attn_in"
             and r["metric"] == "frac_pos"]
    assert all(r["significant"] is not None for r in layer)
    assert [row["significant"] for row in table_rows(browser, "delta-table")] == [
        "yes" if r["significant"] else "no" for r in layer]
    # one method: the heads keep their intervals, no method note
    write_synthetic_run(root, "old", seed=0, intervals=True, adjusted_heads=True,
                        head_intervals=True, method=2,
                        created_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    build_dashboard(root, tmp_path / "site")
    open_page(browser, (tmp_path / "site" / "compare.html").as_uri() + "?a=old&b=new")
    heads_drawn(browser, "old", "new")
    assert browser.find_elements("id", "compare-method-note") == []
    assert browser.find_elements("id", "heads-methods") == []
    assert "–" not in {t["significant"] for t in table_rows(browser, "head-delta-table")}


def test_compare_heads_agree_with_compare_runs_and_head_type_changes(other_n, browser):
    # trial 13 (F5): Compare showed per-layer figures only. Its Heads section: per head, B − A
    # of the chosen share on compare_runs' basis (the chance-corrected twin where both runs
    # hold it, whatever N; raw for n16 against w2, which holds none) with its interval and
    # verdict, a layer x head heatmap, a table largest |delta| first; the heads whose type
    # changed as head_type_changes lists them, circled on the map. Only the two runs' head
    # files are read.
    root, site, _ = other_n
    from bfd.queries import run_query

    for a, b, basis in (("n8", "n16", "adjusted"), ("n16", "vit_b", "adjusted"),
                        ("n16", "w2", "raw")):
        open_page(browser, (site / "compare.html").as_uri() + f"?a={a}&b={b}")
        heads_drawn(browser, a, b)
        assert_clean(browser, "file://")
        assert sorted(browser.execute_script("return Object.keys(window.BFD_HEADS)")) == sorted(
            [a, b])
        rows = [r for r in run_query(root, "compare_runs", {"run_a": a, "run_b": b}).to_pylist()
                if r["level"] == "head"]
        assert {r["basis"] for r in rows} == {basis} and len(rows) == 4 * 6
        for share in ("f_pp", "f_cc"):
            browser.execute_script(
                "const s = document.getElementById('head-share-select'); s.value = arguments[0];"
                " s.dispatchEvent(new Event('change'));", share)
            want = {(r["layer"], r["head"]): r for r in rows if r["metric"] == share}
            heat = browser.execute_script(
                "const t = document.getElementById('head-delta-plot').data[0];"
                " return [Array.from(t.x), Array.from(t.y), t.z.map(r => Array.from(r))];")
            assert heat[0] == [0, 1] and heat[1] == [0, 1, 2]
            for layer, zs in zip(heat[1], heat[2], strict=True):
                for head, z in zip(heat[0], zs, strict=True):
                    assert z == pytest.approx(want[(layer, head)]["delta"], rel=1e-9, abs=1e-12)
            table = table_rows(browser, "head-delta-table")
            assert [abs(float(t["delta"])) for t in table] == sorted(
                (abs(float(t["delta"])) for t in table), reverse=True)
            for t in table:
                r = want[(int(t["layer"]), int(t["head"]))]
                for col, key in (("A", "value_a"), ("B", "value_b"), ("delta", "delta"),
                                 ("delta_lo", "delta_lo"), ("delta_hi", "delta_hi")):
                    assert float(t[col]) == pytest.approx(r[key], abs=1e-4), (a, b, share, col)
                assert t["significant"] == ("yes" if r["significant"] else "no")
            caption = browser.find_element("css selector", "#head-delta-table caption").text
            assert caption.startswith(share + ("_adj" if basis == "adjusted" else "") + ": B − A")
        changes = run_query(root, "head_type_changes", {"run_a": a, "run_b": b}).to_pylist()
        assert changes, "the planted runs' heads must differ in type somewhere"
        shown = table_rows(browser, "head-type-table")
        assert [(int(t["layer"]), int(t["head"]), t["head_type_a"], t["head_type_b"])
                for t in shown] == [(c["layer"], c["head"], c["head_type_a"], c["head_type_b"])
                                    for c in changes]
        circled = browser.execute_script(
            "const t = document.getElementById('head-delta-plot').data[1];"
            " return Array.from(t.x, (x, i) => [t.y[i], x]);")
        assert circled == [[c["layer"], c["head"]] for c in changes]


def test_compare_marks_the_heads_one_run_has_and_the_other_not(tmp_path, browser):
    """Two models of 2 and 3 heads a layer: compare_runs has a row for each head of either,
    the third head's with no delta. The page counted '4 head(s) with a delta' beside 6 rows
    and left the third column blank, unmarked (trial 23)."""
    root = tmp_path / "store"
    write_synthetic_run(root, "h2", depth=2, n_heads=2, seed=0,
                        created_at=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    write_synthetic_run(root, "h3", depth=2, n_heads=3, seed=1,
                        created_at=dt.datetime(2025, 1, 2, tzinfo=dt.UTC))
    build_dashboard(root, tmp_path / "site")
    open_page(browser, (tmp_path / "site" / "compare.html").as_uri() + "?a=h2&b=h3")
    heads_drawn(browser, "h2", "h3")
    assert_clean(browser, "file://")
    summary = browser.find_element("id", "heads-summary").text
    assert "4 of 6 head(s) with a delta of" in summary, summary
    assert "(0 head(s) of run A only, 2 of run B only: no delta, marked ×)" in summary, summary
    marked = browser.execute_script(
        "const t = document.getElementById('head-delta-plot').data"
        ".find(t => t.name === 'head of one run only');"
        " return [Array.from(t.y, (y, i) => [y, t.x[i]]), t.customdata[0]];")
    assert marked[0] == [[0, 2], [1, 2]]
    assert marked[1].endswith("a head of run B only: run A has no head 2 in layer 0, so no delta")


def test_compare_names_its_runs_in_full_and_every_hover_says_run_n_and_interval(other_n,
                                                                                browser):
    # trial 13 (F13): the legend held each run's whole name, cut at the figure's edge with
    # the run id; (F15) hovers said "layer 3.00" and a value, no run, N or interval. The
    # legend says A and B, the names above the plots in full (run id and N); a point's hover
    # its run, N, layer and value [lo, hi]; a bar's the delta [lo, hi], its verdict and both
    # runs' values and N.
    root, site, _ = other_n
    from bfd.queries import run_query

    open_page(browser, (site / "compare.html").as_uri() + "?a=n8&b=n16")
    assert_clean(browser, "file://")
    assert browser.execute_script(
        "return document.getElementById('compare-plot').data.map(t => t.name)") == ["A", "B"]
    names = browser.execute_script(
        "return Array.from(document.querySelectorAll('#compare-names p'), p => p.textContent)")
    assert names == ["A toy_vit · random · random · n8 · N 8",
                     "B toy_vit · random · random · n16 · N 16"]
    row = next(r for r in run_query(root, "compare_runs", {"run_a": "n8", "run_b": "n16"})
               .to_pylist() if r["level"] == "layer" and r["site"] == "attn_in"
               and r["metric"] == "frac_pos" and r["layer"] == 1)
    from bfd.queries import connect, run_sql

    with connect(root) as con:
        lo, v, hi = run_sql(con, "SELECT frac_pos_adj_lo, frac_pos_adj, frac_pos_adj_hi"
                                 " FROM layer_summary WHERE run_id = 'n16' AND layer = 1"
                            ).to_pylist()[0].values()

    def num(x: float) -> str:  # the page's four significant digits
        return repr(float(f"{x:.4g}")).removesuffix(".0")

    def hover(plot: str, curve: int, point: int) -> str:
        browser.execute_script(
            f"Plotly.Fx.hover(document.getElementById('{plot}'),"
            f" [{{curveNumber: {curve}, pointNumber: {point}}}]);")
        return wait_for(browser, f"const t = document.querySelector('#{plot} .hovertext');"
                                 " return t && t.textContent;")

    assert hover("compare-plot", 1, 1) == (
        "B: toy_vit · random · n16 (n16)N 16 · layer 1"
        f"frac_pos_adj {num(v)} [{num(lo)}, {num(hi)}]")
    assert hover("delta-plot", 0, 1) == (
        f"layer 1Δ frac_pos_adj (B − A) {num(row['delta'])} [{num(row['delta_lo'])}, "
        f"{num(row['delta_hi'])}]significant: {'yes' if row['significant'] else 'no'}"
        f"A: toy_vit · random · n8 (n8), N 8: {num(row['value_a'])}"
        f"B: toy_vit · random · n16 (n16), N 16: {num(row['value_b'])}")
    assert browser.execute_script(
        "return document.getElementById('compare-plot').layout.xaxis.dtick") == 1


def test_overview_legend_of_many_runs_stays_under_the_axis_title(tmp_path, browser):
    # trial 13 (F10): 20 runs of long names ticked at 1366 x 768: plotly's bottom legend ran
    # over the x axis title and squeezed the two panels to ~100 px each; the figure now grows
    # with its legend (which scrolls in its own box past LEGEND_MAX px)
    for i in range(22):
        write_synthetic_run(
            tmp_path / "store", f"r-{i:02d}", seed=i, depth=4,
            weights=f"team-vision/experiments/2026-q4/ablation-no-dropout-lr3e-4-long-name-{i}",
            created_at=dt.datetime(2025, 1, 1, i, tzinfo=dt.UTC))
    build_dashboard(tmp_path / "store", tmp_path / "site")
    geometry = (
        "const p = document.getElementById('depth-plot'); const fl = p._fullLayout;"
        " const box = (e) => { const b = e.getBoundingClientRect(); return [b.top, b.bottom]; };"
        " return {legend: box(p.querySelector('.legend .bg')),"
        " title: box(p.querySelector('.xtitle')),"
        " ticks: Math.max(...Array.from(p.querySelectorAll('.xaxislayer-above .xtick text'),"
        " t => box(t)[1])), figure: box(p.querySelector('.main-svg')), plot: fl._size.h,"
        " height: fl.height, entries: p.querySelectorAll('.legend .traces').length}")
    browser.set_window_size(1366, 768)
    try:
        open_page(browser, (tmp_path / "site" / "index.html").as_uri())
        assert_clean(browser, "file://")
        browser.execute_script(
            "for (const b of document.querySelectorAll('input.run-toggle'))"
            " if (!b.checked) b.click();")
        many = browser.execute_script(geometry)
        assert many["entries"] == 22
        # under the axis title and its tick labels, inside the figure, the panels kept
        assert many["legend"][0] >= max(many["title"][1], many["ticks"]), many
        assert many["legend"][1] <= many["figure"][1] + 0.5, many
        assert many["plot"] >= 460, many
        for box in browser.find_elements("css selector", "input.run-toggle")[2:]:
            box.click()
        few = browser.execute_script(geometry)
        assert few["entries"] == 2 and few["height"] < many["height"], few
        assert few["legend"][0] >= max(few["title"][1], few["ticks"]), few
        assert few["legend"][1] <= few["figure"][1] + 0.5 and few["plot"] >= 460, few
    finally:
        browser.set_window_size(1400, 1000)


def test_overview_depth_profiles_are_chance_corrected_and_name_each_runs_n(other_n, browser):
    # raw shares fall with N (a run at N=48 looked the least positional model of a zoo at
    # N=16): the overview opens on the chance-corrected shares where the runs have them,
    # names N in the legend and hover, leaves out (and names) a run without them, and
    # switches to the raw shares, saying when the runs ticked differ in N
    from bfd.queries import connect, run_sql

    root, site, _ = other_n
    with connect(root) as con:
        sql = run_sql(con, "SELECT run_id, layer, frac_pos, f_pp, frac_pos_adj, f_pp_adj"
                           " FROM layer_summary ORDER BY run_id, layer").to_pylist()
    want = {(r["run_id"], k): [] for r in sql for k in r}
    for r in sql:
        for k, v in r.items():
            want[(r["run_id"], k)].append(v)
    assert all(v is not None for r in sql if r["run_id"] != "w2" for v in r.values())
    open_page(browser, (site / "index.html").as_uri())
    assert_clean(browser, "file://")
    traces = ("return document.getElementById('depth-plot').data.filter(t => t.meta !== 'chance')"
              ".map(t => [t.legendgroup, t.yaxis || 'y', t.name, Array.from(t.y), t.text[0]])")
    note = "return document.getElementById('depth-basis-note').textContent"

    def drawn() -> dict[tuple[str, str], list]:
        return {(g, axis): y for g, axis, _, y, _ in browser.execute_script(traces)}

    assert browser.execute_script(
        "return document.getElementById('depth-basis').value") == "adj"
    # the latest run of each series ticked: n16, vit_b, w2; w2 has no corrected shares
    assert drawn() == {(run, axis): want[(run, key)] for run in ("n16", "vit_b")
                       for axis, key in (("y", "frac_pos_adj"), ("y2", "f_pp_adj"))}
    assert browser.execute_script(note) == (
        "Not drawn, no chance-corrected shares (decomposed before they were stored; choose raw "
        "to see them): w2.")
    browser.find_element("css selector", "input.run-toggle[data-run='n8']").click()
    shown = {g: (name, text) for g, axis, name, _, text in browser.execute_script(traces)
             if axis == "y"}
    assert {g: name.rsplit(" · ", 1)[1] for g, (name, _) in shown.items()} == {
        "n8": "N 8", "n16": "N 16", "vit_b": "N 16"}
    assert shown["n8"][1].endswith("layer 0, N 8")
    assert drawn()[("n8", "y")] == want[("n8", "frac_pos_adj")]
    browser.execute_script(
        "const s = document.getElementById('depth-basis'); s.value = 'raw';"
        " s.dispatchEvent(new Event('change'));")
    assert drawn() == {(run, axis): want[(run, key)] for run in ("n8", "n16", "vit_b", "w2")
                       for axis, key in (("y", "frac_pos"), ("y2", "f_pp"))}
    assert browser.execute_script(note).startswith(
        "The ticked runs decoded different numbers of images (N = 8, 16): raw shares fall with N")
    assert browser.execute_script(
        "return document.getElementById('depth-plot').layout.yaxis.title.text") == (
        "frac_pos (attn_in)")
    # a run decomposed with --prefix include ticked beside them: its shares are over other
    # positions, named in its legend entry and said (the overview said nothing)
    browser.find_element("css selector", "input.run-toggle[data-run='inc']").click()
    names = {g: name for g, axis, name, _, _ in browser.execute_script(traces) if axis == "y"}
    assert names["inc"].endswith(" · prefix include · N 16") and "prefix" not in names["n16"]
    assert browser.execute_script(note).endswith(
        "have shares over other positions, their prefix tokens counted: their heights do not "
        "compare with the others'.")
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


MIXED_START = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def mixed_site(tmp_path_factory) -> Path:
    """Series mix: m1 (toy_vit) then m2, m3 (vit_b), at default steps (the audits' start in
    Unix seconds); ints: m2, m3 at steps 100 and 200; solo: one audit of m1; trial: the
    new-user trial (tests/dashstore.py TRIAL_AUDITS: one model, each audit's drift not
    compared with the one before; t-7 stored layers 0 and 5 of 6), its audits the latest;
    sub: one audit of t-7 alone (its layers 0 and 5 of 6), earlier than the trial's."""
    from dashstore import write_trial_series

    from bfd.storage import Store, write_audit

    root = tmp_path_factory.mktemp("mixed")
    for i, (run_id, model) in enumerate((("m1", "toy_vit"), ("m2", "vit_b"), ("m3", "vit_b"))):
        write_synthetic_run(root, run_id, model=model, seed=i,
                            created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC))
    audits = [("M1", "mix", "m1", 0, 0.11), ("M2", "mix", "m2", 1, 0.22),
              ("M3", "mix", "m3", 2, 0.33), ("I1", "ints", "m2", 0, 0.44),
              ("I2", "ints", "m3", 1, 0.55), ("S1", "solo", "m1", 3, 0.66)]
    for audit_id, series, run_id, day, f_pp in audits:
        began = MIXED_START + dt.timedelta(days=day)
        step = 100 * (day + 1) if series == "ints" else int(began.timestamp())
        write_audit(Store(root), {
            "audit_id": audit_id, "series": series, "run_id": run_id, "step": step,
            "started_at": began, "finished_at": began + dt.timedelta(hours=1),
            "trigger": "schedule", "flow_run_id": None, "status": "complete",
            "prev_audit_id": None, "n_flagged": 0, "n_layers": 3, "n_heads": 6, "f_pp": f_pp,
            "f_pc": 1 - f_pp, "mean_f_pp": f_pp})
    write_trial_series(root, "trial", MIXED_START + dt.timedelta(days=4))
    began = MIXED_START + dt.timedelta(days=3, hours=2)
    write_audit(Store(root), {
        "audit_id": "U1", "series": "sub", "run_id": "t-7", "step": 100, "started_at": began,
        "finished_at": began + dt.timedelta(hours=1), "trigger": "manual", "flow_run_id": None,
        "status": "complete", "prev_audit_id": None, "n_flagged": 0})
    build_dashboard(root, root.parent / f"{root.name}-site")
    STORE["mixed"] = root
    return root.parent / f"{root.name}-site"


def series_plot(driver, plot: str) -> list:
    """x, y, x axis type and tickformat, tick labels and marker symbols of a series plot's
    line, and its x axis' drawn range."""
    return driver.execute_script(
        "const d = document.getElementById(arguments[0]);"
        " return [Array.from(d.data[0].x), Array.from(d.data[0].y),"
        " d.layout.xaxis.type || null, d.layout.xaxis.tickformat || null,"
        " Array.from(d.querySelectorAll('.xtick text'), t => t.textContent),"
        " Array.from(d.data[0].marker.symbol), d._fullLayout.xaxis.range];", plot)


def crossed_tick_labels(driver) -> list[str]:
    """The Series plots where a y tick label and an x tick label overlap (trial 13, F17: the
    lowest y label on the first date label)."""
    return driver.execute_script(
        "const box = (e) => { const b = e.getBoundingClientRect();"
        " return [b.left, b.top, b.right, b.bottom]; };"
        " const labels = (d, a) => Array.from(d.querySelectorAll(`.${a}axislayer-above"
        " .${a}tick text`), box).filter(b => b[3] > b[1]);"
        " return Array.from(document.querySelectorAll('#metric-grid .plot')).filter(d =>"
        " labels(d, 'y').some(a => labels(d, 'x').some(b => a[0] < b[2] && b[0] < a[2]"
        " && a[1] < b[3] && b[1] < a[3]))).map(d => d.id)")


def table_rows(driver, table: str) -> list[dict[str, str]]:
    return driver.execute_script(
        "const t = document.getElementById(arguments[0]);"
        " const head = Array.from(t.querySelectorAll('th'), c => c.textContent);"
        " return Array.from(t.querySelectorAll('tbody tr'), tr => Object.fromEntries("
        " Array.from(tr.cells, (c, i) => [head[i], c.textContent])))", table)


def test_series_line_breaks_between_two_models_and_unix_steps_read_as_dates(mixed_site, browser):
    from bfd.queries import connect, run_sql

    with connect(STORE["mixed"]) as con:
        same = {(r["run_a"], r["run_b"]): r["same_model"] for r in run_sql(
            con, "SELECT run_a, run_b, same_model FROM run_pairs").to_pylist()}
    assert same[("m1", "m2")] is False and same[("m2", "m3")] is True
    open_page(browser, (mixed_site / "series.html").as_uri())
    assert_clean(browser, "file://")
    # the page opens on the series of the latest audit, not on the first by name
    assert browser.execute_script("return document.getElementById('series-select').value") == (
        "trial")
    got = {}
    for name in ("mix", "ints", "solo", "trial"):
        choose_series(browser, name)
        got[name] = series_plot(browser, "metric-f_pp")
        # no tick label on another (dates, whose first label reaches left of the plot)
        assert crossed_tick_labels(browser) == [], name
    x, y, kind, _, ticks, _, _ = got["mix"]
    # a gap (no figure) between m1 and m2 only: two models; m2 and m3 are one model
    points = [("m1", 0.11), ("m2", 0.22), ("m3", 0.33)]
    want_y = []
    for i, (run_id, f_pp) in enumerate(points):
        if i and not same[(points[i - 1][0], run_id)]:
            want_y.append(None)
        want_y.append(f_pp)
    assert y == want_y == [0.11, None, 0.22, 0.33]
    days = [(MIXED_START + dt.timedelta(days=d)) for d in (0, 1, 1, 2)]
    assert [dt.datetime.fromisoformat(v.replace("Z", "+00:00")) for v in x] == days
    assert kind == "date" and ticks and not any("B" in t or "e+" in t for t in ticks)
    x, y, kind, fmt, ticks, _, _ = got["ints"]
    assert (x, y, kind, fmt) == ([100, 200], [0.44, 0.55], "linear", "d")
    assert ticks and all(t.isdigit() for t in ticks)
    # the layer x step heatmap of mix: a column per audit (m1, m2, m3), each its run's layer
    # rows; the change against the previous audit, none across the break of the lines (m1 and
    # m2 are two models), m3 - m2 where the two are one model
    from bfd.report.data import layer_rows

    with connect(STORE["mixed"]) as con:
        rows = layer_rows(con).to_pylist()
    of = {(r["run_id"], r["layer"]): r for r in rows}
    layers = sorted({r["layer"] for r in rows if r["run_id"] in ("m1", "m2", "m3")})
    choose_series(browser, "mix")
    from bfd.report.dashboard import SERIES_LAYER_METRICS

    offered = browser.execute_script("return Array.from(document.getElementById("
                                     "'layer-metric-select').options, o => o.value)")
    assert offered == [m for m in SERIES_LAYER_METRICS if m in rows[0]]  # the one list
    for metric in ("frac_pos", "f_pp"):
        want = [[of.get((run, layer), {}).get(metric) for run in ("m1", "m2", "m3")]
                for layer in layers]
        assert all(v is not None for row in want for v in row[1:])
        for mode in ("value", "delta"):
            browser.execute_script(
                "for (const [id, v] of [['layer-metric-select', arguments[0]],"
                " ['layer-mode-select', arguments[1]]]) { const s = document.getElementById(id);"
                " s.value = v; s.dispatchEvent(new Event('change')); }", metric, mode)
            got = browser.execute_script(
                "const d = document.getElementById('layer-heatmap').data[0];"
                " return [Array.from(d.y), d.z.map(r => Array.from(r)), d.zmid ?? null,"
                " d.customdata[0].map(String)];")
            assert got[0] == layers and got[3] == [
                (MIXED_START + dt.timedelta(days=d)).strftime("%Y-%m-%d %H:%M") for d in (0, 1, 2)]
            if mode == "value":
                assert got[1] == want and got[2] is None  # the stored values, exactly
            else:
                assert got[1] == [[None, None, r[2] - r[1]] for r in want]
                assert got[2] == 0 and any(r[2] != r[1] for r in want)
                # an increase red, a decrease blue, as Compare's heatmap (trial 23: blue here)
                scale = browser.execute_script(
                    "const d = document.getElementById('layer-heatmap')._fullData[0];"
                    " return [d.colorscale[0][1], d.colorscale.at(-1)[1], d.reversescale];")
                assert scale == ["rgb(5,10,172)", "rgb(178,10,28)", False], scale
    hover = browser.execute_script(
        "return document.getElementById('layer-heatmap').data[0].hovertemplate")
    assert "layer %{y}" in hover and "step %{customdata}" in hover and "Δ f_pp %{z" in hover
    # the trial: every audit after the first is not comparable with its previous one (or its
    # drift not compared): values in every column, no delta at all
    choose_series(browser, "trial")
    z = browser.execute_script(
        "return document.getElementById('layer-heatmap').data[0].z.map(r => Array.from(r))")
    assert len(z[0]) == 5 and all(v is None for row in z for v in row)
    browser.execute_script(
        "const s = document.getElementById('layer-mode-select'); s.value = 'value';"
        " s.dispatchEvent(new Event('change'));")
    z = browser.execute_script(
        "return document.getElementById('layer-heatmap').data[0].z.map(r => Array.from(r))")
    assert all(any(row[i] is not None for row in z) for i in range(5))


def test_compare_shows_every_pairs_run_pairs_note(tmp_path, browser):
    # the page embeds one run_shapes row a run and derives a pair's note from the two rows
    # (dashboard.js pairOf): for every ordered pair, the note shown is run_pairs' own. Runs:
    # one model twice (its prefix option said or not: a pair with no note), the same
    # architecture at another depth, with a pretrained tag, no width recorded and another
    # prefix option, and another architecture; t-1's model on other images (a folder of
    # noise), and at another img_size with no images hash recorded; and t-1 published before
    # methods were recorded (method 1; the others of method 2), whose pairs' method_note is
    # shown beside the note
    from bfd.queries import connect, run_sql

    root = tmp_path / "store"
    planted = {"images": "planted", "images_sha256": "img-sha", "img_size": None}
    for i, (run_id, model, depth, width, prefix, images) in enumerate((
            ("t-1", "toy_vit", 2, 8, None, planted), ("t-2", "toy_vit", 2, 8, "exclude", planted),
            ("t-d3", "toy_vit", 3, 8, None, planted),
            ("t-tag3", "toy_vit.tag", 3, None, "include", planted),
            ("b-1", "vit_b", 2, 8, None, planted),
            ("t-noise", "toy_vit", 2, 8, None, {**planted, "images": "/data/noise/",
                                                "images_sha256": "f00d" * 16}),
            ("t-160", "toy_vit", 2, 8, None, {**planted, "images_sha256": None,
                                              "img_size": 160}),
            ("t-old", "toy_vit", 2, 8, None, planted))):
        write_synthetic_run(root, run_id, model=model, depth=depth, width=width, prefix=prefix,
                            seed=i, created_at=dt.datetime(2025, 1, 1 + i, tzinfo=dt.UTC),
                            method=None if run_id == "t-old" else 2, **images)
    build_dashboard(root, tmp_path / "site")
    with connect(root) as con:
        pairs = run_sql(con, "SELECT run_a, run_b, note, method_note FROM run_pairs").to_pylist()
    want = {(r["run_a"], r["run_b"]): r["note"] for r in pairs}
    want_method = {(r["run_a"], r["run_b"]): r["method_note"] for r in pairs}
    # no note: each run with itself, and t-1, t-2 and t-old (one model, the same prefix
    # option) with each other
    assert len(want) == 64 and sum(note is None for note in want.values()) == 8 + 6
    # a method note: t-old with every other run, both ways
    assert sum(note is not None for note in want_method.values()) == 2 * 7
    assert want_method[("t-1", "t-old")] == (
        "run_a was decomposed by method 2, run_b by method 1: head shares' intervals of two "
        "estimators (method 1's standard errors off by up to 28 %), not compared; "
        "bfd decompose t-old decomposes run_b again by the installed method")
    # other images; another img_size (t-160 holds no images hash: no images reason with it)
    assert want[("t-1", "t-noise")] == (
        "run_a saw images planted@img-sha, run_b noise@f00df00df00d: other images, whose "
        "shares change with the images, not only with the model")
    assert want[("t-160", "t-noise")] == (
        "run_a was at img_size 160, run_b at 64: another patch grid, shares over other positions")
    # each branch of the rule: two names, one name of two shapes (a shape not recorded
    # said '?'), other prefix options, and both at once
    assert want[("t-1", "b-1")].startswith("run_a is of toy_vit, run_b of vit_b: two models")
    assert want[("t-tag3", "t-1")] == (
        "run_a is of toy_vit.tag of depth 3, 2 heads and width ?, run_b of depth 2, 2 heads and "
        "width 8: two models, so layer l of one is not layer l of the other (compare_models"
        " aligns relative depth); run_a was decomposed with prefix include, run_b with prefix "
        "exclude: shares over other positions")
    assert want[("t-d3", "t-tag3")] == ("run_a was decomposed with prefix exclude, run_b with "
                                        "prefix include: shares over other positions")
    open_page(browser, (tmp_path / "site" / "compare.html").as_uri())
    assert_clean(browser, "file://")
    # every pair chosen as a user does (run A, then each run B), in one call
    shown = browser.execute_script(
        "const ids = arguments[0], shown = [];"
        " const choose = (id, v) => { const s = document.getElementById(id); s.value = v;"
        " s.dispatchEvent(new Event('change')); };"
        " for (const a of ids) { choose('run-a', a); for (const b of ids) { choose('run-b', b);"
        " const p = document.getElementById('compare-pair-note');"
        " const m = document.getElementById('compare-method-note');"
        " shown.push([a, b, p ? p.textContent : null, m ? m.textContent : null]); } }"
        " return shown;", sorted({a for a, _ in want}))
    assert {(a, b): note for a, b, note, _ in shown} == want
    assert {(a, b): note for a, b, _, note in shown} == want_method
    assert [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")] == []


def test_series_line_breaks_before_an_audit_not_compared_and_says_so(mixed_site, browser):
    # the trial: one model, but each audit saw other images than the one before, so its drift
    # was not compared (drift_note) and its 0 flagged is no pass: no line into it, an open
    # circle, "not compared" in the table beside comparable and the drift_note; T5's drift
    # was compared, but its figures average other layers than T4's: no line, its 0 shown
    from dashstore import TRIAL_AUDITS

    open_page(browser, (mixed_site / "series.html").as_uri())
    assert_clean(browser, "file://")
    choose_series(browser, "trial")
    _, y, _, _, _, symbols, _ = series_plot(browser, "metric-f_cc")
    kept = [a[5] for a in TRIAL_AUDITS]
    assert y == [kept[0], None, kept[1], None, kept[2], None, kept[3], None, kept[4]]
    assert [s for s, v in zip(symbols, y, strict=True) if v is not None] == [
        "circle", "circle-open", "circle-open", "circle-open", "circle"]
    rows = table_rows(browser, "series-runs")
    # T1, the first audit of the series, compared nothing: said so, not "0" flagged
    assert [(r["audit_id"], r["n_flagged"], r["comparable"]) for r in rows] == [
        ("T1", "— (first audit)", "–"), ("T2", "not compared", "no"),
        ("T3", "not compared", "no"), ("T4", "not compared", "no"), ("T5", "0", "no")]
    # time steps read as their dates, as on every page (not 1796...)
    assert [r["step"] for r in rows] == [
        (MIXED_START + dt.timedelta(days=4 + i)).strftime("%Y-%m-%d %H:%M") for i in range(5)]
    assert [r["drift_note"] == "–" for r in rows] == [True, False, False, False, True]
    assert all(r["drift_note"].startswith("previous audit used another decoded N")
               for r in rows[1:4])
    # one audit: a day either side of it, no sub-second ticks (07:16:28.999 / 07:16:29.0005)
    choose_series(browser, "solo")
    x, y, kind, _, ticks, _, shown = series_plot(browser, "metric-f_pp")
    assert y == [0.66] and kind == "date" and len(ticks) >= 2
    low, high = (dt.datetime.fromisoformat(v) for v in shown)
    assert high - low >= dt.timedelta(days=1)
    assert not any(re.search(r"\d:\d\d\.\d", t) for t in ticks)


def test_layers_not_stored_are_no_line_and_no_wide_bar(mixed_site, browser):
    # t-7 stored layers 0 and 5 of its 6 (--layers 0,5): its bars are a layer wide, on an
    # axis of its layers; its profiles are points, with no line across layers 1-4; its page
    # says which layers it stored; its heatmaps have empty rows for the layers not stored
    from bfd.queries import connect
    from bfd.report.data import layer_rows

    def gapped(y: list) -> bool:
        return len(y) == 3 and y[1] is None and None not in (y[0], y[2])

    open_page(browser, (mixed_site / "runs" / "t-7.html").as_uri())
    assert_clean(browser, "file://")
    # its audit (T4) compared no drift: its 0 flagged is said not compared, with the note
    meta = dict(browser.execute_script(
        "return [...document.querySelectorAll('#run-meta tr')].map(r =>"
        " [r.cells[0].textContent, r.cells[1].textContent])"))
    assert meta["flagged drift"] == "not compared"
    assert meta["drift note"].startswith("previous audit used another decoded N (N 21 -> 7)")
    assert meta["layers stored"] == "0, 5 of 6 (the others not stored: --layers)"
    # its head map: a row a layer 0-5, the layers not stored empty and said so on hover
    maps = browser.execute_script(
        "return document.getElementById('headmap-plot').data.filter(t => t.type === 'heatmap')"
        ".map(t => [t.z.map(r => Array.from(r)), t.customdata.map(r => Array.from(r))])")
    for z, hover in maps:
        assert len(z) == 6 and all(v is None for row in z[1:5] for v in row)
        assert None not in z[0] + z[5]
        assert hover[2][0] == "layer 2: not stored by this run"
    low, high = browser.execute_script(
        "return document.getElementById('shares-plot')._fullLayout.xaxis.range")
    assert -1 < low < 0 and 5 < high < 6
    # each bar under a layer's share of the axis (6 layers wide), not 5 layers wide
    widths, axis = browser.execute_script(
        "const d = document.getElementById('shares-plot');"
        " return [Array.from(d.querySelectorAll('.bars .point path'), p => p.getBBox().width),"
        " d._fullLayout.xaxis._length]")
    assert len(widths) == 8 and 0 < max(widths) < axis / 6
    for plot in ("preservation-plot", "splithalf-plot", "shuffle-plot"):
        x, y = browser.execute_script(
            "const t = document.getElementById(arguments[0]).data[0];"
            " return [Array.from(t.x), Array.from(t.y)]", plot)
        assert x == [0, 2.5, 5] and gapped(y), plot
    open_page(browser, (mixed_site / "index.html").as_uri())
    flags = column(browser, "runs-table", "flagged")
    assert (flags["t-7"], flags["t-7all"], flags["t-64"]) == (
        "not compared", "0", "— (first audit)")
    toggle = browser.find_element("css selector", "input.run-toggle[data-run='t-7']")
    if not toggle.is_selected():  # ticked already as the latest run of series sub
        toggle.click()
    assert gapped(depth_traces(browser)["t-7"]) and None not in depth_traces(browser)["t-7all"]
    # the Series heatmap of a series whose runs stored layers 0 and 5 of 6: a row a layer,
    # 1-4 empty (not stored), never two bands stretched over a numeric axis from -2 to 7
    open_page(browser, (mixed_site / "series.html").as_uri())
    choose_series(browser, "sub")
    with connect(STORE["mixed"]) as con:
        of = {r["layer"]: r["frac_pos"] for r in layer_rows(con, "t-7").to_pylist()}
    y, z, text, title, span = browser.execute_script(
        "const d = document.getElementById('layer-heatmap');"
        " return [Array.from(d.data[0].y), d.data[0].z.map(r => Array.from(r)),"
        " d.data[0].text.map(r => Array.from(r)), d.layout.yaxis.title.text,"
        " d._fullLayout.yaxis.range]")
    assert sorted(of) == [0, 5] and y == [0, 1, 2, 3, 4, 5]
    assert z == [[of[0]], [None], [None], [None], [None], [of[5]]]
    assert text[3] == ["t-7 · audit U1 · layer not stored by any run of this series"]
    assert title == "layer (stored: 0, 5)" and sorted(span) == [-0.5, 5.5]
    open_page(browser, (mixed_site / "compare.html").as_uri())
    compare(browser, "t-7", "t-64")
    a, b = browser.execute_script(
        "return document.getElementById('compare-plot').data.map(t => Array.from(t.y))")
    assert gapped(a) and len(b) == 6 and None not in b


def test_damaged_runs_series_are_listed_and_their_points_break_the_line(tmp_path, browser):
    # tests/dashstore.py REUSED_AUDITS with c-100's and c-200's heads truncated: the catalog
    # leaves both runs out. Overview: other and th, whose only audit is of c-100, are still
    # listed, their damage said (naming bfd verify); ck counts 3 damaged audits of its 6.
    # Series: ck's audits of the damaged runs (A4, A1, A5) are open red circles labelled
    # damaged, with no line into or out of them (A1 and A5 kept f_pp 0.21 and 0.25; A4 none)
    from dashstore import write_reused_audits

    from bfd.storage import Store, read_pointer

    root, out = tmp_path / "store", tmp_path / "site"
    write_reused_audits(root)
    for run_id in ("c-100", "c-200"):
        heads = root / read_pointer(Store(root), run_id)["tables"]["heads"]
        heads.write_bytes(heads.read_bytes()[:100])
    build_dashboard(root, out)
    open_page(browser, (out / "index.html").as_uri())
    assert_clean(browser, "file://")
    rows = table_rows(browser, "series-table")
    assert [(r["series"], r["runs"], r["audits"], r["latest run"]) for r in rows] == [
        ("ck", "3", "6", "c-500"), ("other", "1", "1", "c-100"), ("th", "1", "1", "c-100"),
        ("toy_vit · plain", "1", "0", "u-1")]
    damage = [r["damaged"] for r in rows]
    assert damage[0].startswith("3 of 6 audits of runs c-100, c-200, damaged (table files fail")
    assert damage[0].endswith("bfd verify RUN names the repair")
    assert damage[1] == damage[2] and damage[1].startswith(
        "1 of 1 audits of run c-100, damaged (a table file fails its check): left out of SQL")
    assert damage[1].endswith("bfd verify c-100 names the repair") and damage[3] == "–"
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#series-table tbody tr'),"
        " tr => tr.className)") == ["damaged-run"] * 3 + [""]
    assert browser.execute_script(
        "const t = document.getElementById('series-table'); const i = [...t.querySelectorAll("
        "'thead th')].findIndex(th => th.textContent === 'damaged');"
        " return [...t.querySelectorAll('tbody tr')].map(r => r.cells[i].title)") == damage  # hover
    # the latest run's link of a series of damaged runs opens that run's page, which says so
    link = browser.execute_script(
        "return document.querySelectorAll('#series-table tbody tr')[1]"
        ".querySelector('a[href^=\"runs/\"]').getAttribute('href')")
    assert link == "runs/c-100.html"
    open_page(browser, (out / "series.html").as_uri())
    assert_clean(browser, "file://")
    choose_series(browser, "ck")
    x, y, _, _, _, symbols, _ = series_plot(browser, "metric-f_pp")
    assert x == [100, 200, 200, 250, 250, 500, 500, 500]
    assert y == [None, None, 0.21, None, 0.25, None, 0.51, 0.52]
    assert [s for s, v in zip(symbols, x, strict=True)] == [
        "circle-open", "circle", "circle-open", "circle", "circle-open", "circle", "circle",
        "circle"]
    text, colors, pages = browser.execute_script(
        "const t = document.getElementById('metric-f_pp').data[0];"
        " return [Array.from(t.text), Array.from(t.marker.color), Array.from(t.customdata)]")
    for i, audit in ((0, "A4"), (2, "A1"), (4, "A5")):
        run = f"c-{'1' if audit == 'A4' else '2'}00"
        # after its place line (step, weights' file, N, flags)
        assert text[i].split("<br>")[-1].startswith(
            f"{run} · audit {audit} · run damaged (a table file fails its check; bfd verify ")
        assert colors[i] == "#b00020"
        # a click opens its run's page, which says it is damaged (it led nowhere)
        assert pages[i] == f"{run}.html" and (out / "runs" / pages[i]).is_file()
    assert "damaged" not in text[6] + text[7] and colors[6] == "#0072B2"
    table = table_rows(browser, "series-runs")
    assert [(r["audit_id"], r["damaged"]) for r in table] == [
        ("A4", "yes"), ("A1", "yes"), ("A5", "yes"), ("A2", "no"), ("A3", "no")]
    # the layer heatmap: no layer rows of a damaged run (its columns empty, said on hover),
    # no change out of one (A2); A3 against A2, both of c-500: 0 in every layer
    heat = browser.execute_script(
        "const d = document.getElementById('layer-heatmap').data[0];"
        " return [d.z.map(r => Array.from(r)), d.text.map(r => Array.from(r))]")
    assert heat[0] and all(r[:3] == [None] * 3 and None not in r[3:] for r in heat[0])
    assert all(t.endswith("run damaged: no layer rows") for r in heat[1] for t in r[:3])
    browser.execute_script(
        "const s = document.getElementById('layer-mode-select'); s.value = 'delta';"
        " s.dispatchEvent(new Event('change'));")
    z = browser.execute_script(
        "return document.getElementById('layer-heatmap').data[0].z.map(r => Array.from(r))")
    assert z == [[None] * 4 + [0.0]] * len(heat[0])
    choose_series(browser, "other")  # one audit, of a damaged run: its point, said damaged
    _, y, _, _, _, symbols, _ = series_plot(browser, "metric-f_pp")
    assert (y, symbols) == ([0.11], ["circle-open"])


def test_a_checkpoint_trial_reads_by_step_type_and_colour(tmp_path, browser):
    # A user's trial: checkpoints of one model at steps 300, 400, 500 (series ck, each
    # checkpoint's step a number, each audit compared with the one before, c-500's flagging
    # 3 values) and a daily audit at its default step (its start in Unix seconds,
    # bfd.tasks.audits.time_step: read as its date), whose frac_pos is tiny; then the step-300
    # checkpoint audited again (A4, compared with A1), after every other audit.
    from bfd.storage import Store, write_audit, write_left_out

    root = tmp_path / "store"
    day = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
    runs = [("d-1", "daily", None), ("c-300", "ck", 300), ("c-400", "ck", 400),
            ("c-500", "ck", 500)]
    for i, (run_id, series, step) in enumerate(runs):
        began = day + dt.timedelta(days=i)
        write_synthetic_run(
            root, run_id, model="vit_tiny", seed=40 + i, depth=4, n_heads=3, created_at=began,
            weights=f"/ckpts/step_{step}.safetensors" if step else "random",
            layer_values={"frac_pos_chance": [0.02] * 4,
                          **({} if step else {"frac_pos": [6e-4, 7e-4, 8e-4, 9e-4]})})
        write_audit(Store(root), {
            "audit_id": f"A{i}", "series": series, "run_id": run_id,
            "step": step if step else int(began.timestamp()), "started_at": began,
            "finished_at": began + dt.timedelta(minutes=5), "trigger": "checkpoints",
            "flow_run_id": None, "status": "complete",
            "prev_audit_id": f"A{i - 1}" if i > 1 else None, "n_flagged": 3 if i == 3 else 0})
    again = day + dt.timedelta(days=5)
    write_audit(Store(root), {
        "audit_id": "A4", "series": "ck", "run_id": "c-300", "step": 300, "started_at": again,
        "finished_at": again + dt.timedelta(minutes=5), "trigger": "checkpoints",
        "flow_run_id": None, "status": "complete", "prev_audit_id": "A1", "n_flagged": 0})
    # a checkpoint between steps 300 and 400 that audit-checkpoints left out (no run, no
    # audit): recorded in the store (bfd.storage.left_out), said on the Series page
    reason = ("weights file '/ckpts/step_350.pth' is not a readable torch checkpoint: a "
              "damaged or truncated zip file (File is not a zip file)")
    write_left_out(Store(root), "ck", [{
        "checkpoint": "/ckpts/step_350.pth", "weights": "/ckpts/step_350.pth",
        "file": "step_350.pth", "step": 350, "status": "left out", "reason": reason}])
    site = tmp_path / "site"
    build_dashboard(root, site)
    date = "2025-03-01 12:00"
    named = {"d-1": f"daily · step {date}", "c-300": "ck · step 300", "c-400": "ck · step 400",
             "c-500": "ck · step 500"}

    # Overview: one format of step (a number, or a time_step's date) in the runs table
    open_page(browser, (site / "index.html").as_uri())
    assert_clean(browser, "file://")
    assert column(browser, "runs-table", "step") == {
        "d-1": date, "c-300": "300", "c-400": "400", "c-500": "500"}
    # what a person scans first on the left (series, step, flagged), in view at 1400 px;
    # a first audit compared nothing: said so, not "0"; a row with flags tinted
    first = "— (first audit)"
    for table, lead in (("runs-table", ["show", "run", "series", "step", "flagged"]),
                        ("series-table", ["series", "latest step", "flagged"])):
        head = browser.execute_script(
            "return Array.from(document.querySelectorAll(`#${arguments[0]} th`),"
            " c => c.textContent)", table)
        assert head[:len(lead)] == lead
        assert browser.execute_script(
            "const t = document.getElementById(arguments[0]);"
            " const th = [...t.querySelectorAll('th')].find(c => c.textContent === 'flagged');"
            " return th.getBoundingClientRect().right <="
            " t.closest('.table-wrap').getBoundingClientRect().right", table)
    assert column(browser, "runs-table", "flagged") == {
        "d-1": first, "c-300": "0", "c-400": "0", "c-500": "3"}
    assert column(browser, "series-table", "flagged", "series") == {"daily": first, "ck": "3"}
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#runs-table tbody tr'),"
        " tr => [tr.dataset.key, tr.className])") == [
        ["c-300", ""], ["c-400", ""], ["c-500", "flagged"], ["d-1", ""]]
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#series-table tbody tr'),"
        " tr => tr.className)") == ["flagged", ""]
    # the head counts by type of each run, and of each series' latest run, without a click
    # (F1: the overview had none)
    counts = duckdb.connect().execute(
        f"SELECT run_id, head_type, count(*) FROM read_parquet('{root}/tables/heads/**/*.parquet',"
        " union_by_name = true) GROUP BY ALL").fetchall()
    for short, kind in (("pp", "position-position"), ("cp", "content-position"),
                        ("cc", "content-content")):
        want = {r: str(sum(n for run, k, n in counts if run == r and k == kind)) for r in named}
        assert column(browser, "runs-table", f"{short} heads") == want, (short, counts)
        assert column(browser, "series-table", f"{short} heads", "series") == {
            "daily": want["d-1"], "ck": want["c-500"]}, short
    assert column(browser, "runs-table", "undefined heads") == dict.fromkeys(named, "0")
    # a hash shown short, whole on hover
    sha = browser.execute_script(
        "const t = document.getElementById('runs-table');"
        " const i = [...t.querySelectorAll('th')]"
        ".findIndex(c => c.textContent === 'weights sha256');"
        " const c = t.querySelector('tbody tr[data-key=\"c-300\"]').cells[i];"
        " return [c.textContent, c.title]")
    assert sha == ["sha-/ckpts/s…", "sha-/ckpts/step_300.safetensors"]
    # d-1 alone: a share of 0.0006 ticked as a plain decimal, not "600µ"
    browser.find_element("css selector", "input.run-toggle[data-run='c-500']").click()
    ticks = browser.execute_script(
        "return Array.from(document.querySelectorAll('#depth-plot .yaxislayer-above .ytick text'),"
        " t => t.textContent)")
    assert ticks and all(re.fullmatch(r"[0-9.]+", t) for t in ticks), ticks
    for run_id in ("c-300", "c-400", "c-500"):
        browser.find_element("css selector", f"input.run-toggle[data-run='{run_id}']").click()
    traces = browser.execute_script(
        "return document.getElementById('depth-plot').data.map(t => [t.meta || null,"
        " t.legendgroup, t.name, t.line.color, t.line.dash, t.line.width, t.showlegend !== false,"
        " t.yaxis || 'y'])")
    lines = [t for t in traces if t[0] is None and t[7] == "y"]
    chance = [t for t in traces if t[0] == "chance"]
    # a run a colour, every run's line solid, named by series, step and N
    named = {run_id: f"{name} · N 16" for run_id, name in named.items()}
    assert {t[1]: t[2] for t in lines} == named
    assert len({t[3] for t in lines}) == 4 and {t[4] for t in lines} == {"solid"}
    # the chance levels: thin grey dots, one legend entry that says what they are
    assert len(chance) == 4 and {(t[3], t[4], t[5]) for t in chance} == {("#888", "dot", 1)}
    assert [t[2] for t in chance if t[6]] == ["chance level frac_pos_chance"]
    legend = browser.execute_script(
        "return Array.from(document.querySelectorAll('#depth-plot .legendtext'),"
        " t => t.textContent)")
    assert set(legend) == {*named.values(), "chance level frac_pos_chance"}

    # Compare: the latest run of the series audited last in series order (c-500, at the
    # last step, though c-300 was audited again after it) against the one before it (c-400),
    # choices with the step and the weights' file name; a run against itself says so, with
    # no delta; the metrics are per-layer figures (not the images or the heads per layer)
    open_page(browser, (site / "compare.html").as_uri())
    assert_clean(browser, "file://")
    assert browser.execute_script(
        "return ['run-a', 'run-b'].map(i => document.getElementById(i).value)") == [
        "c-400", "c-500"]
    offered = browser.execute_script(
        "return Array.from(document.getElementById('metric-select').options, o => o.value)")
    assert "frac_pos" in offered and "f_pp" in offered
    assert not {"n_images", "n_heads", "ci_target", "layer", "depth"} & set(offered)
    options = dict(browser.execute_script(
        "return Array.from(document.querySelectorAll('#run-a option'),"
        " o => [o.value, o.textContent])"))
    assert options["c-300"] == "ck · step 300 · step_300.safetensors · c-300"
    assert options["d-1"] == f"daily · step {date} · random · d-1"
    assert browser.find_elements("id", "compare-same") == []
    browser.execute_script(
        "for (const id of ['run-a', 'run-b']) { const s = document.getElementById(id);"
        " s.value = 'c-300'; s.dispatchEvent(new Event('change')); }")
    assert browser.find_element("id", "compare-same").text.startswith(
        "Runs A and B are one run, ck · step 300 (c-300): nothing to compare")
    assert browser.execute_script("return document.getElementById('delta-plot').data.length") == 0
    assert browser.find_elements("id", "delta-table") == []
    # trial 15 (F2): a step that is no audit of the series named falls back inside that
    # series (B its latest point, A the point before B), not to the runs of another series;
    # a step whose checkpoint audit-checkpoints left out is said to be that file
    chosen = "return ['run-a', 'run-b'].map(i => document.getElementById(i).value)"
    for query, want, note in (
            ("?series=ck&step=350", ["c-400", "c-500"],
             "step 350 of the address (step=350) is step_350.pth, left out by audit-checkpoints: "
             "not a readable torch checkpoint: a damaged or truncated zip file (File is not a "
             "zip file); no audit of series ck there: showing c-400 as A and c-500 as B instead."),
            # daily has one run: A the default pair's A, B daily's point (it was ck's c-500)
            ("?series=daily&step=7", ["c-400", "d-1"],
             "the step of the address (step=7) is no audit of series daily: showing c-400 as A "
             "and d-1 as B instead."),
            ("?series=ck&step=300", ["c-400", "c-300"],
             "series ck has no audit of another run before step 300: showing c-400 as A and "
             "c-300 as B instead.")):
        open_page(browser, (site / "compare.html").as_uri() + query)
        assert browser.execute_script(chosen) == want, query
        assert browser.find_element("id", "compare-url-note").text == note, query

    # Run page: the step as the Series page reads it; a head-type panel, then the blocks in
    # the tables' order, and the stacked shares' legend in that order too
    open_page(browser, (site / "runs" / "d-1.html").as_uri())
    assert_clean(browser, "file://")
    meta = dict(browser.execute_script(
        "return [...document.querySelectorAll('#run-meta tr')].map(r =>"
        " [r.cells[0].textContent, r.cells[1].textContent])"))
    assert meta["audit step"] == date
    assert meta["flagged drift"] == first and meta["layers stored"] == "all 4"
    maps = browser.execute_script(
        "return document.getElementById('headmap-plot').data.filter(t => t.type === 'heatmap')"
        ".map(t => [t.name, t.z.map(r => Array.from(r))])")
    assert [name for name, _ in maps] == ["head_type", "f_pp", "f_pc", "f_cp", "f_cc"]
    con = duckdb.connect()
    heads = con.execute(
        f"SELECT layer, head, head_type, f_cp FROM read_parquet('{root}/tables/heads/**/*.parquet',"
        " union_by_name = true) WHERE run_id = 'd-1'").fetchall()
    kinds = ["position-position", "content-position", "content-content"]
    def cells(z: list) -> dict:
        return {(layer, h): v for layer, row in enumerate(z) for h, v in enumerate(row)}

    assert {k: kinds[z] for k, z in cells(maps[0][1]).items()} == {
        (layer, h): kind for layer, h, kind, _ in heads}
    assert cells(maps[3][1]) == {(layer, h): f for layer, h, _, f in heads}
    assert browser.execute_script(
        "return Array.from(document.querySelectorAll('#headmap-plot .legendtext'),"
        " t => t.textContent)") == [
        "pp: position-position", "pc+cp: content-position", "cc: content-content"]
    # the head types' legend clear of the panels' "head" axis titles (it sat on the first)
    legend, titles = browser.execute_script(
        "const d = document.getElementById('headmap-plot'); const box = (e) => {"
        " const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };"
        " return [box(d.querySelector('.legend')),"
        " Array.from(d.querySelectorAll('.infolayer text'))"
        ".filter(t => /^x\\d*title$/.test(t.getAttribute('class'))).map(box)]")
    clear = [t[3] <= legend[1] or t[2] <= legend[0] or t[0] >= legend[2] for t in titles]
    assert len(titles) == 5 and all(clear), (legend, titles)
    order = browser.execute_script(
        "return Array.from(document.querySelectorAll('#shares-plot .legendtext'),"
        " t => t.textContent.slice(0, 2))")
    assert order == ["pp", "pc", "cp", "cc"]

    # Series page: c-400's audit was compared with A1, not with the re-audit A4 drawn before
    # it (made after it): its hover says so; A4 holds A1's run, so the line runs on from A4,
    # solid, with no dashed 'compared with' line (nothing was skipped; trial 23 F9)
    open_page(browser, (site / "series.html").as_uri())
    assert browser.execute_script("return document.getElementById('series-select').value") == "ck"
    text, link = browser.execute_script(
        "const d = document.getElementById('metric-f_pp').data;"
        " return [Array.from(d[0].text), d.length > 2 ? [d[2].name, Array.from(d[2].x)] : null]")
    assert [t.split("<br>")[-1] for t in text if "<br>c-400" in t] == [
        "c-400 · audit A2 · compared with audit A1 (step 300); A4 (step 300) was audited after "
        "it (not there to compare with)"]
    assert link is None
    assert "audited after it" in browser.find_element("id", "app").text
    # the checkpoint left out: named with its step and why, and a dotted line at its step
    assert browser.find_element("id", "left-out").text.startswith(
        "1 checkpoint left out: step_350.pth (step 350): not a readable torch checkpoint: a "
        "damaged or truncated zip file (File is not a zip file). Not audited (no run, no "
        "point): the line joins the audits either side; a dotted red line marks its step")
    assert browser.execute_script(
        "return (document.getElementById('metric-f_pp').layout.shapes || [])"
        ".map(s => [s.x0, s.x1, s.line.dash])") == [[350, 350, "dot"]]
    # and on the layers heatmap (a column per audit, in step order: 300, 300 again, 400,
    # 500), between the columns of steps 300 and 400, named on hover of its label
    assert browser.execute_script(
        "const l = document.getElementById('layer-heatmap').layout;"
        " return [(l.shapes || []).map(s => [s.x0, s.x1, s.line.dash]),"
        " (l.annotations || []).map(a => [a.x, a.text, a.hovertext])]") == [
        [[1.5, 1.5, "dot"]],
        [[1.5, "left out", "step_350.pth (step 350) left out by audit-checkpoints: not a "
          "readable torch checkpoint: a damaged or truncated zip file (File is not a zip file)"]]]
    choose_series(browser, "daily")
    assert not browser.find_element("id", "left-out").is_displayed()
    assert browser.execute_script(
        "return document.getElementById('metric-f_pp').layout.shapes || []") == []
    # counts on whole-number ticks, an all-zero count from 0 (not -1..1)
    for plot in ("metric-n_layers", "metric-n_heads_undefined"):
        ticks, low = browser.execute_script(
            "const d = document.getElementById(arguments[0]);"
            " return [Array.from(d.querySelectorAll('.ytick text'), t => t.textContent),"
            " d._fullLayout.yaxis.range[0]]", plot)
        assert ticks and all(t.isdigit() for t in ticks) and low > -0.5, (plot, ticks, low)

    # An empty store's overview names the command that makes a first run
    (tmp_path / "empty").mkdir()
    build_dashboard(tmp_path / "empty", tmp_path / "empty-site")
    open_page(browser, (tmp_path / "empty-site" / "index.html").as_uri())
    assert "bfd audit --demo" in browser.find_element("id", "no-runs").text


def test_an_audit_compared_past_an_ad_hoc_one_is_joined_to_the_audit_it_compared_with(
        tmp_path, browser):
    # tests/dashstore.py NIGHTLY_AUDITS: C compared with A (B skipped: another N), E with B
    # (C and D skipped), F with C (D and E skipped); B and D compared nothing. No solid line
    # joins consecutive points here (each is another N than the one before, or skipped it);
    # a dashed line joins each audit to the audit it compared with, its hover names that
    # audit and the ones skipped; the layer heatmap's change is against that audit too
    from dashstore import write_nightly_series

    from bfd.queries import connect
    from bfd.report.data import layer_rows

    root = tmp_path / "store"
    rows = write_nightly_series(root)
    build_dashboard(root, tmp_path / "site")
    open_page(browser, (tmp_path / "site" / "series.html").as_uri())
    assert_clean(browser, "file://")
    choose_series(browser, "nightly")
    names = "ABCDEF"
    x, y, _, _, _, symbols, _ = series_plot(browser, "metric-f_pp")
    kept = [rows[k]["f_pp"] for k in names]
    assert y == [v for k in kept for v in (k, None)][:-1] and x[::2] == [1, 2, 3, 4, 5, 6]
    assert [s for s, v in zip(symbols, y, strict=True) if v is not None] == [
        "circle", "circle-open", "circle", "circle-open", "circle", "circle"]
    links = browser.execute_script(
        "const t = document.getElementById('metric-f_pp').data[2];"
        " return [t.name, Array.from(t.x), Array.from(t.y), t.line.dash]")
    pairs = [("A", "C"), ("B", "E"), ("C", "F")]
    assert links == ["compared with", [v for a, b in pairs for v in (
        names.index(a) + 1, names.index(b) + 1, None)], [v for a, b in pairs for v in (
            rows[a]["f_pp"], rows[b]["f_pp"], None)], "dash"]
    text = browser.execute_script(
        "return Array.from(document.getElementById('metric-f_pp').data[0].text)")[::2]
    ids = {k: rows[k]["audit_id"] for k in names}
    place, said = text[2].split("<br>")
    assert said == (f"r-c · audit {ids['C']} · compared with audit {ids['A']} (step 1), "
                    f"skipping 1 audit not comparable: {ids['B']}")
    # each point's hover opens with its step, weights' file, N and flags (it named the run)
    from bfd.queries import run_sql

    with connect(root) as con:
        (c,) = run_sql(con, "SELECT a.step, r.weights, r.n_images - coalesce(r.n_skipped, 0)"
                            " AS n, a.n_flagged FROM audits AS a JOIN runs AS r USING (run_id)"
                            " WHERE a.audit_id = $id", {"id": ids["C"]}).to_pylist()
    assert place == (f"step {c['step']} · {c['weights'].split('/')[-1]} · N {c['n']} · "
                     f"{c['n_flagged']} flagged")
    assert text[5].endswith(f"compared with audit {ids['C']} (step 3), skipping 2 audits not "
                            f"comparable: {ids['D']}, {ids['E']}")
    assert "compared with" not in text[0] + text[1] + text[3]
    # C's drift cross (its planted frac_pos of layer 0) says which audit it was flagged
    # against, as F's (another model state) does
    cross = browser.execute_script(
        "return Array.from(document.getElementById('metric-frac_pos_mean').data[1].text)")
    assert len(cross) == 2 and cross[0].startswith(
        f"drift flagged at audit {ids['C']} (step 3): frac_pos in 1 row, layer 0<br>largest "
        "|delta| 0.2000: frac_pos of layer 0")
    assert cross[0].endswith(f"compared with audit {ids['A']} (step 1), skipping 1 audit not "
                             f"comparable: {ids['B']}")
    assert cross[1].startswith(f"drift flagged at audit {ids['F']} (step 6)")
    assert cross[1].endswith(f"compared with audit {ids['C']} (step 3), skipping 2 audits not "
                             f"comparable: {ids['D']}, {ids['E']}")
    # the heatmap's change: each audit less the audit it was compared with
    with connect(root) as con:
        of = {(r["run_id"], r["layer"]): r["frac_pos"] for r in layer_rows(con).to_pylist()}
    browser.execute_script(
        "for (const [id, v] of [['layer-metric-select', 'frac_pos'],"
        " ['layer-mode-select', 'delta']]) { const s = document.getElementById(id);"
        " s.value = v; s.dispatchEvent(new Event('change')); }")
    z = browser.execute_script(
        "return document.getElementById('layer-heatmap').data[0].z.map(r => Array.from(r))")
    runs = [rows[k]["run_id"] for k in names]
    against = {2: 0, 4: 1, 5: 2}  # C - A, E - B, F - C
    assert z == [[of[runs[i], layer] - of[runs[against[i]], layer] if i in against else None
                  for i in range(6)] for layer in range(3)]
    assert any(z[layer][5] != of[runs[5], layer] - of[runs[4], layer] for layer in range(3))
    # since the first audit of the same model and inputs (trial 23: a slow drift, each week
    # below the threshold, shows summed): C and F since A, E since B (its own run: 0); A, B
    # and D are the first of their N (C's layer rows are A's here: F's hover names A)
    browser.execute_script(
        "const s = document.getElementById('layer-mode-select'); s.value = 'since';"
        " s.dispatchEvent(new Event('change'));")
    z = browser.execute_script(
        "return document.getElementById('layer-heatmap').data[0].z.map(r => Array.from(r))")
    since = {2: 0, 4: 1, 5: 0}
    assert z == [[of[runs[i], layer] - of[runs[since[i]], layer] if i in since else None
                  for i in range(6)] for layer in range(3)]
    hover = browser.execute_script(
        "return document.getElementById('layer-heatmap').data[0].text[0][5]")
    assert f"since audit {ids['A']} (step 1)" in hover, hover


def test_pages_print_whole_and_read_out_once(reused_site, browser):
    """Trial 28: printing cut every figure at the window's width and every table at its
    scroll box; a "Share chart..." button offered to upload a figure to Plotly Cloud; the
    whole page was an aria-live region (a choice re-read it); the Series page's drift flags
    opened Compare by mouse only; the Overview did not link a series to its page."""
    open_page(browser, (reused_site / "series.html").as_uri() + "?series=ck")
    assert browser.execute_script("return document.querySelector('[aria-live]')") is None
    assert browser.execute_script("return document.title") == "ck · Series · BFD dashboard"
    assert browser.execute_script(
        "return document.querySelectorAll('[data-title^=\"Share\"], "
        "[data-val=\"sendChartToCloud\"]').length") == 0
    assert browser.execute_script("return document.querySelectorAll('.modebar-btn').length") > 0
    # every flagged drift row links to Compare on its audit and the one it was compared with
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('#drift-table tbody tr'), r => {"
        " const a = Array.from(r.querySelectorAll('a')).find(x => x.textContent === 'compare');"
        " return a ? a.getAttribute('href') : null; })")
    assert links and all(link and link.startswith("compare.html?") for link in links), links
    assert "compare.html?series=ck&step_a=200&step_b=250" in links
    # printed: the figures at the paper's width, one under another, the tables whole
    browser.set_window_size(1400, 900)
    wide = browser.execute_script(
        "return Math.max(...Array.from(document.querySelectorAll('.js-plotly-plot .main-svg'),"
        " s => s.getBoundingClientRect().width))")
    assert wide > 700
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
    try:
        widths = wait_for(browser, "const w = Array.from(document.querySelectorAll("
                          "'.js-plotly-plot'), d => d._fullLayout.width);"
                          " return w.every(x => x <= 680) && w")
        assert len(widths) > 3
        wrap = browser.execute_script(
            "const s = getComputedStyle(document.querySelector('.table-wrap'));"
            " return [s.overflowY, s.maxHeight]")
        assert wrap == ["visible", "none"]
    finally:
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
    wait_for(browser, "return Array.from(document.querySelectorAll('.js-plotly-plot'),"
                      " d => d._fullLayout.width).some(x => x > 700)")
    # the Overview names each series with a link to its page
    open_page(browser, (reused_site / "index.html").as_uri())
    hrefs = browser.execute_script(
        "return Array.from(document.querySelectorAll('#series-table tbody a'),"
        " a => a.getAttribute('href'))")
    assert "series.html?series=ck" in hrefs


def _luminance(rgb) -> float:
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4
           for c in (u / 255 for u in rgb)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _contrast(a, b) -> float:
    hi, lo = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def _rgb(colour: str) -> tuple[float, ...]:
    from plotly.colors import hex_to_rgb, unlabel_rgb

    return tuple(hex_to_rgb(colour) if colour.startswith("#") else unlabel_rgb(colour))


def _viridis(v: float) -> tuple[float, ...]:
    """plotly's Viridis at v, from the plotly package (not the page's copy of the scale)."""
    from plotly.colors import PLOTLY_SCALES, find_intermediate_color

    scale = PLOTLY_SCALES["Viridis"]
    for (s0, c0), (s1, c1) in zip(scale, scale[1:], strict=False):
        if s0 <= v <= s1:
            return find_intermediate_color(_rgb(c0), _rgb(c1), (v - s0) / (s1 - s0))
    raise AssertionError(v)


MAP_LABELS = (
    "const d = document.getElementById('headmap-plot');"
    " const maps = d.data.filter(t => t.type === 'heatmap');"
    " const labels = d.data.filter(t => t.mode === 'text');"
    " const box = (e) => { const b = e.getBoundingClientRect();"
    "  return [b.left, b.top, b.right, b.bottom]; };"
    " return [maps.map(t => [t.name, t.z.map(r => Array.from(r)), t.colorscale || null]),"
    " labels.map(t => [t.name, Array.from(t.x), Array.from(t.y), Array.from(t.text),"
    "  Array.from(t.textfont.color)]),"
    " Array.from(d.querySelectorAll('.textpoint text')).map(box),"
    " Array.from(d.querySelectorAll('.annotation-text')).map(box),"
    " Array.from(d.querySelectorAll('.legendtext'), t => t.textContent)]")


def _disjoint(boxes: list) -> bool:
    return all(a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
               for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_head_map_labels_contrast_with_their_cells_and_fit_at_every_width(tmp_path, browser):
    """Trial 28: the head map's cell labels were white or grey on any fill (3.2:1 on the pp
    colour, 3.7:1 on viridis' teal), its panel titles text in the block colours (2.3:1),
    head types colour alone beyond 8 heads, and at phone width titles and labels overlapped."""
    root = tmp_path / "store"
    write_synthetic_run(root, "h-6", n_heads=6, depth=4, seed=3)
    write_synthetic_run(root, "h-12", n_heads=12, depth=4, seed=4,
                        created_at=dt.datetime(2025, 2, 1, tzinfo=dt.UTC))
    out = tmp_path / "site"
    build_dashboard(root, out)
    kinds = ["position-position", "content-position", "content-content"]

    def check(page: str) -> tuple:
        open_page(browser, (out / "runs" / page).as_uri())
        maps, labels, texts, titles, legend = browser.execute_script(MAP_LABELS)
        by_name = {name: (z, scale) for name, z, scale in maps}
        for name, xs, ys, text, ink in labels:
            panel = name.removeprefix("labels ")
            z, scale = by_name[panel]
            for x, y, word, colour in zip(xs, ys, text, ink, strict=True):
                v = z[y][x]
                if panel == "head_type":
                    fill = _rgb(scale[2 * v][1])  # the stepped scale: two stops a type
                    assert word in ({"p", "x", "c"} | {"pp", "pc+cp", "cc"}), word
                    assert word[0] == "pxc"[v] or word == ["pp", "pc+cp", "cc"][v]
                else:
                    fill = _viridis(v)
                    assert word == f"{v:.2f}"
                assert _contrast(_rgb(colour), fill) >= 4.5, (panel, word, colour, fill)
        # titles in black (a block's colour only in the square before its name)
        assert browser.execute_script(
            "return Array.from(document.querySelectorAll('#headmap-plot .annotation-text'),"
            " t => getComputedStyle(t).fill)").count("rgb(0, 0, 0)") == 5
        return by_name, {name: len(text) for name, *_, text, _ink in labels}, texts, titles, legend

    try:
        browser.set_window_size(1400, 1000)
        by_name, counts, texts, titles, legend = check("h-6.html")
        cells = sum(v is not None for row in by_name["head_type"][0] for v in row)
        assert cells == 24
        # every cell named at this width, its type and its four shares
        assert counts == {f"labels {b}": 24 for b in by_name}
        assert _disjoint(texts) and _disjoint(titles)
        assert legend == [f"{s}: {k}" for s, k in zip(["pp", "pc+cp", "cc"], kinds, strict=True)]
        # 12 heads: the type panel still says each type (its letter), the legend the letters
        by_name, counts, texts, titles, legend = check("h-12.html")
        assert counts.get("labels head_type") == 48
        assert _disjoint(texts) and _disjoint(titles)
        assert legend == ["pp (p): position-position", "pc+cp (x): content-position",
                          "cc (c): content-content"]
        # a phone: no title or label on another
        browser.set_window_size(400, 900)
        for page in ("h-6.html", "h-12.html"):
            _, counts, texts, titles, _ = check(page)
            assert _disjoint(texts) and _disjoint(titles), page
        assert counts == {}  # 12 heads in 400 px: cells of 5 px hold no text (hover does)
        # printed from a wide window: drawn again at the paper's width, nothing on another
        browser.set_window_size(1400, 1000)
        open_page(browser, (out / "runs" / "h-6.html").as_uri())
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": "print"})
        try:
            wait_for(browser,
                     "return document.getElementById('headmap-plot')._fullLayout.width <= 680")
            _, _, texts, titles, _ = browser.execute_script(MAP_LABELS)
            assert texts and _disjoint(texts) and _disjoint(titles)
        finally:
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"media": ""})
        wait_for(browser, "return document.getElementById('headmap-plot')._fullLayout.width > 900")
    finally:
        browser.set_window_size(1400, 1000)
