"""Which earlier audit an audit's drift compares with: the latest complete audit of its series,
at or before its step, whose run is comparable with its own (bfd.tasks.audits.compared_audit),
so that an ad-hoc audit of another N in a nightly series does not leave the next night's
audit uncompared. Runs are planted straight into a store's tables (tests/dashstore.py), their
results Datasets written from those tables: no model, no extraction, no Prefect."""

from __future__ import annotations

import re
from html import unescape as html_unescape

import numpy as np
import pytest
from dashstore import write_nightly_series

from bfd.cli_audits import drift_exit, print_audit
from bfd.queries import connect, run_query
from bfd.storage import Store, read_audits, read_drift, read_run_table
from bfd.tasks.audits import drift_said, skipped_audits
from bfd.tasks.drift_gate import not_compared

SERIES = "nightly"
NOTE_TAIL = "; not compared: raw shares change with the images, not only with the model"


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    """tests/dashstore.py NIGHTLY_AUDITS: A (N 16), B (N 8, ad hoc), C (N 16, frac_pos of
    layer 0 planted 0.2 higher than A's), D (N 4), E (N 8: B's run), F (N 16, other heads)."""
    root = tmp_path_factory.mktemp("nightly") / "store"
    return root, write_nightly_series(root, SERIES)


def test_an_audit_compares_with_the_latest_comparable_one_skipping_an_ad_hoc_audit(
        nightly, capsys):
    root, rows = nightly
    a, b, c = (rows[k] for k in "ABC")
    assert a["prev_audit_id"] is None and a["drift_note"] is None
    # B (another N) has nothing comparable before it: not compared, said for A
    assert (b["prev_audit_id"], b["skipped"]) == (a["audit_id"], [])
    assert b["drift_note"] == "previous audit used another decoded N (N 16 -> 8)" + NOTE_TAIL
    # C compares with A, skipping B, and flags the planted change alone
    assert (c["prev_audit_id"], c["prev_step"], c["drift_note"]) == (a["audit_id"], 1, None)
    assert c["skipped"] == [{"audit_id": b["audit_id"], "step": 2,
                             "why": "another decoded N (N 8 -> 16)"}]
    drift = read_drift(Store(root), SERIES, c["audit_id"])
    assert drift and {r["prev_audit_id"] for r in drift} == {a["audit_id"]}
    assert {r["comparable"] for r in drift} == {True}  # kept (an earlier bfd's: filled)
    flagged = [(r["layer"], r["head"], r["metric"]) for r in drift if r["flagged"]]
    assert flagged == [(0, None, "frac_pos")] and c["n_flagged"] == 1
    (pos,) = [r for r in drift if r["flagged"]]
    planted = read_run_table(Store(root), "layers", "r-a").to_pylist()
    before = next(r["frac_pos"] for r in planted if (r["layer"], r["site"]) == (0, "attn_in"))
    assert pos["before"] == before and pos["delta"] == pytest.approx(0.2, abs=1e-12)
    assert all(r["delta"] == 0 for r in drift if r["metric"] != "head_type" and not r["flagged"])
    # the stored row is what was returned; the skipped audits are derived from the series
    stored = {r["audit_id"]: r for r in read_audits(Store(root), SERIES)}
    assert stored[c["audit_id"]]["prev_audit_id"] == a["audit_id"]
    assert "skipped" not in stored[c["audit_id"]]  # said, not a column of the audits table
    assert skipped_audits(list(stored.values()), stored[c["audit_id"]]) == [
        {"audit_id": b["audit_id"], "step": 2}]
    # what bfd audit prints, and the gates
    said = (f"1 value(s) flagged against audit {a['audit_id']} (step 1), the latest "
            f"comparable; skipped 1 audit not comparable ({b['audit_id']} at step 2: another "
            "decoded N (N 8 -> 16))")
    assert drift_said(c) == said
    capsys.readouterr()
    assert print_audit({**c, "how": "computed"}, str(root)) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[1] == f"drift: {said}" and "frac_pos" in out[3], out
    assert drift_exit(c["n_flagged"], True, [c]) == 3
    assert capsys.readouterr().err == "bfd: drift: 1 value(s) flagged (--fail-on-drift)\n"
    assert not_compared(c) is None and drift_exit(0, False, [c], True) == 0
    assert drift_exit(0, True, [b], True) == 3  # B compared nothing
    assert capsys.readouterr().err == (
        f"bfd: drift not compared (--fail-if-not-compared): {b['drift_note']}\n")


def test_with_no_comparable_earlier_audit_the_previous_one_says_why(nightly):
    root, rows = nightly
    b, c, d, e = (rows[k] for k in "BCDE")
    # D, the first audit on 4 images: not compared, said against the previous audit (C)
    assert (d["prev_audit_id"], d["skipped"], d["n_flagged"]) == (c["audit_id"], [], 0)
    assert d["drift_note"] == "previous audit used another decoded N (N 16 -> 4)" + NOTE_TAIL
    assert drift_said(d) == d["drift_note"] == not_compared(d)
    assert read_drift(Store(root), SERIES, d["audit_id"]) == []
    # E (B's run again) skips two audits back to B, in series order
    assert (e["prev_audit_id"], e["drift_note"], e["n_flagged"]) == (b["audit_id"], None, 0)
    assert e["skipped"] == [
        {"audit_id": c["audit_id"], "step": 3, "why": "another decoded N (N 16 -> 8)"},
        {"audit_id": d["audit_id"], "step": 4, "why": "another decoded N (N 4 -> 8)"}]
    stored = read_audits(Store(root), SERIES)
    assert skipped_audits(stored, next(r for r in stored if r["audit_id"] == e["audit_id"])) == [
        {"audit_id": c["audit_id"], "step": 3}, {"audit_id": d["audit_id"], "step": 4}]
    assert "skipped 2 audits not comparable" in drift_said(e)


def test_queries_and_the_series_page_read_the_audit_compared_with(nightly):
    from bfd.report import data as D

    root, rows = nightly
    ids = {k: r["audit_id"] for k, r in rows.items()}
    with connect(root) as con:
        history = run_query(con, "audit_history", {"series": SERIES}).to_pylist()
        drift = run_query(con, "drift", {"series": SERIES, "audit_id": ids["C"]}).to_pylist()
        series = D.series_data(con)
        heads = {run: {(h["layer"], h["head"]): h["head_type"]
                       for h in read_run_table(Store(root), "heads", run).to_pylist()}
                 for run in ("r-c", "r-f", "r-b")}
    assert [h["audit_id"] for h in history] == [ids[k] for k in "ABCDEF"]
    assert [h["prev_audit_id"] for h in history] == [
        None, ids["A"], ids["A"], ids["C"], ids["B"], ids["C"]]
    assert [h["prev_run_id"] for h in history] == [None, "r-a", "r-a", "r-c", "r-b", "r-c"]
    assert [h["comparable"] for h in history] == [None, False, True, False, True, True]
    # C's figures against A's, not B's: the tables of A and C are one planted model
    assert history[2]["delta_f_pp"] == 0 and history[2]["delta_frac_pos_mean"] == 0
    assert history[1]["delta_f_pp"] is None and history[3]["delta_f_pp"] is None
    assert drift[0]["metric"] == "frac_pos" and drift[0]["flagged"]
    assert {(r["prev_audit_id"], r["prev_run_id"]) for r in drift} == {(ids["A"], "r-a")}
    # the Series page's points name the audit each was compared with
    points = [p for p in series["metrics"].to_pylist() if p["series"] == SERIES]
    assert [p["prev_audit_id"] for p in points] == [h["prev_audit_id"] for h in history]
    # head-type changes: F against C (the audit its drift compared with), not E (another N)
    changes = [c for c in series["head_type_changes"].to_pylist() if c["series"] == SERIES]
    want = sorted((layer, head, heads["r-c"][layer, head], t)
                  for (layer, head), t in heads["r-f"].items() if heads["r-c"][layer, head] != t)
    assert want and sorted((c["layer"], c["head"], c["before"], c["after"]) for c in changes
                           if c["audit_id"] == ids["F"]) == want
    assert {(c["prev_audit_id"], c["prev_run_id"]) for c in changes
            if c["audit_id"] == ids["F"]} == {(ids["C"], "r-c")}
    # F's flagged head types mark the counts of the types they changed between (not n_heads)
    flagged_types = {(r["layer"], r["head"]) for r in read_drift(Store(root), SERIES, ids["F"])
                     if r["metric"] == "head_type" and r["flagged"]}
    assert flagged_types == {(w[0], w[1]) for w in want}
    # every head_type row keeps the two types the audit compared (a later decomposition of
    # its runs leaves the record as it was); the other rows name none
    rows = read_drift(Store(root), SERIES, ids["F"])
    assert all((r["type_before"], r["type_after"]) == (
        heads["r-c"][r["layer"], r["head"]], heads["r-f"][r["layer"], r["head"]])
        for r in rows if r["metric"] == "head_type")
    assert all(r["type_before"] is r["type_after"] is None for r in rows
               if r["metric"] != "head_type")
    marks = [m["plot"] for m in series["drift_marks"].to_pylist()
             if m["audit_id"] == ids["F"] and "head_type" in m["metrics"]]
    assert marks and "n_heads" not in marks
    assert np.isfinite([h["f_pp"] for h in history]).all()


def test_past_the_previous_audit_only_a_run_known_comparable_is_compared_with(nightly):
    """A run missing from the runs table is compared with as before when it is the previous
    audit's (nothing says it is not comparable), but never reached past a previous audit not
    comparable: its results may be gone."""
    from bfd.tasks.drift import latest_comparable

    root, _ = nightly
    store = Store(root)
    assert latest_comparable(store, "r-c", [("r-a", None), ("gone", None)]) == (1, [])
    at, why = latest_comparable(store, "r-c", [("gone", None), ("r-b", None)])
    assert at is None and [short for short, _ in why] == [
        "another decoded N (N 8 -> 16)", "its run gone not in the runs table"]
    at, why = latest_comparable(store, "r-c", [("r-a", None), ("gone", None), ("r-b", None)])
    assert at == 0 and len(why) == 2


def test_the_audit_report_names_the_audit_compared_with_and_those_skipped(nightly):
    from bfd.flows.prefect_io import audit_markdown

    root, rows = nightly
    a, b, c = (rows[k] for k in "ABC")
    drift = read_drift(Store(root), SERIES, c["audit_id"])
    text = audit_markdown({**c, "how": "computed"}, {}, [], drift, str(root))
    assert (f"- audit: `{c['audit_id']}`, compared with: `{a['audit_id']}`") in text
    assert (f"**1 flagged** of {len(drift)} compared values (reference: audit "
            f"`{a['audit_id']}`).\nIt is the latest comparable audit: skipped 1 audit not "
            f"comparable ({b['audit_id']} at step 2: another decoded N (N 8 -> 16)).") in text


def test_serve_says_the_audit_compared_with_and_those_skipped(nightly):
    """bfd serve's end line of an audit run reads the store's audits: the audit compared with
    (its step) and the audits between it and this one, skipped (no reasons: not stored)."""
    import datetime as dt
    import types

    from bfd.flows.serve import RunLines
    from bfd.queries.seen import run_seen
    from bfd.tasks.audits import audit_row, drift_since_previous
    from bfd.tasks.drift import DEFAULT_THRESHOLDS

    root, _ = nightly
    made = []
    for step, run_id, flow_run in ((1, "r-a", None), (2, "r-b", None), (3, "r-c", "fr-1")):
        began = dt.datetime(2026, 12, step, tzinfo=dt.UTC)
        with audit_row(Store(root), "served", step, "schedule", flow_run, began) as row:
            drift_since_previous(Store(root), row, run_id, DEFAULT_THRESHOLDS,
                                 run_seen(root, run_id))
        made.append(row["audit_id"])
    run = types.SimpleNamespace(parameters={"store": str(root)}, id="fr-1")
    said = RunLines({}, print)._what_it_did(None, run, types.SimpleNamespace(flow_name="audit"))
    assert said == (f"audit {made[2]} of series served (step 3): run r-c; drift: 1 value(s) "
                    f"flagged against audit {made[0]} (step 1), the latest comparable; skipped "
                    f"1 audit not comparable ({made[1]} at step 2)")


def test_drift_does_not_flag_frac_content_the_exact_complement_of_frac_pos(tmp_path):
    """frac_content is frac_img + frac_int, 1 - frac_pos: a change of frac_pos is one of
    frac_content with the sign turned, so flagging both counted every frac_pos flag twice."""
    from dashstore import write_results_of_tables, write_synthetic_run

    from bfd.tasks.drift import drift_metrics, drift_rows

    root = tmp_path / "store"
    # a layer's pos share moved to img (attn_in, layer 0) and int to pos (resid, layer 1),
    # every share of the results kept consistent: frac_content moves with frac_pos
    moved = {("attn_in", 0, "frac_pos"): 0.2, ("attn_in", 0, "frac_img"): -0.2,
             ("attn_in", 0, "frac_content"): -0.2, ("resid", 1, "frac_pos"): 0.1,
             ("resid", 1, "frac_int"): -0.1, ("resid", 1, "frac_content"): -0.1}
    for run_id, shift in (("r-a", None), ("r-b", moved)):
        write_synthetic_run(root, run_id, weights=f"w-{run_id}", seed=1)
        write_results_of_tables(root, run_id, shift)
    rows = drift_rows(Store(root), "r-a", "r-b")
    flagged = sorted((r["layer"], r["metric"], round(r["delta"], 12)) for r in rows
                     if r["flagged"])
    assert flagged == [(0, "frac_img", -0.2), (0, "frac_pos", 0.2), (1, "frac_int_resid", -0.1),
                       (1, "frac_pos_resid", 0.1)]
    assert not [r for r in rows if r["metric"].startswith("frac_content")]
    assert {r["metric"] for r in rows if r["head"] is None} == {
        "frac_pos", "frac_img", "frac_int", "frac_pos_resid", "frac_img_resid",
        "frac_int_resid"} == set(drift_metrics()) - {"f_pp", "f_pc", "f_cp", "f_cc", "head_type"}


def test_drift_since_compares_every_later_audit_with_one_baseline(nightly):
    """``bfd query drift_since``: the slow drift an audit's own drift misses, every later
    audit of the series against one fixed audit, row for row the drift check's values
    (``bfd.tasks.drift.drift_rows``, the Python that writes an audit's drift), only for audits
    comparable with the baseline."""
    from bfd.tasks.drift import drift_rows

    root, rows = nightly
    audits = {k: rows[k] for k in "ABCDEF"}
    cols = ("layer", "head", "metric", "before", "after", "delta", "threshold", "flagged",
            "type_before", "type_after")

    def ordered(found) -> list[tuple]:
        rows = sorted(found, key=lambda r: (r["layer"], -1 if r["head"] is None else r["head"],
                                            r["metric"]))
        return [tuple(r.get(c) for c in cols) for r in rows]

    def reference(before: str, after: str) -> list[tuple]:
        return ordered(drift_rows(Store(root), audits[before]["run_id"],
                                  audits[after]["run_id"]))

    with connect(root) as con:
        first = run_query(con, "drift_since", {"series": SERIES}).to_pylist()
        # the baseline is the first audit, A (N 16): C and F are of its N, B, D, E are not
        assert {r["since_audit_id"] for r in first} == {audits["A"]["audit_id"]}
        by_audit = {}
        for r in first:
            by_audit.setdefault(r["audit_id"], []).append(r)
        assert list(by_audit) == [audits["F"]["audit_id"], audits["C"]["audit_id"]]  # newest first
        got, want = ordered(by_audit[audits["F"]["audit_id"]]), reference("A", "F")
        assert len(got) == len(want) > 0 and any(w[7] for w in want)
        for g, w in zip(got, want, strict=True):
            assert g[:3] == w[:3] and g[6:] == w[6:], (g, w)
            for a, b in zip(g[3:6], w[3:6], strict=True):  # before, after, delta
                assert (a is None and b is None) or a == pytest.approx(b, abs=1e-15), (g, w)
        # C's tables are A's (this store plants its change in C's results alone): no change
        assert {r["delta"] for r in by_audit[audits["C"]["audit_id"]]} == {0.0}
        # in an audit, flagged rows first
        flags = [r["flagged"] for r in by_audit[audits["F"]["audit_id"]]]
        assert flags == sorted(flags, reverse=True)
        # a higher threshold flags less; the baseline chosen by its step (B, N 8: E is B's run)
        high = run_query(con, "drift_since", {"series": SERIES, "threshold": "0.3"}).to_pylist()
        assert sum(r["flagged"] for r in high) < sum(flags)
        assert all(abs(r["delta"]) > 0.3 for r in high if r["flagged"])
        since_b = run_query(con, "drift_since", {"series": SERIES, "since": "2"}).to_pylist()
        assert {r["audit_id"] for r in since_b} == {audits["E"]["audit_id"]}
        assert all(r["delta"] == 0 and not r["flagged"] for r in since_b)
        for params, said in (({"threshold": "2"}, "threshold must be a number from 0 to 1"),
                             ({"since": "x"}, r"since must be a step \(an integer\)")):
            with pytest.raises(Exception, match=said):
                run_query(con, "drift_since", {"series": SERIES, **params})


def test_serve_says_when_an_audit_is_the_first_of_its_store(tmp_path):
    """A deployment whose store moved, or whose path is mistyped, audits into a new store: its
    first audit compares nothing and passes --fail-on-drift; serve's end line says that the
    store holds no other audit (trial 26 F3: nothing said)."""
    import datetime as dt
    import types

    from dashstore import write_results_of_tables, write_synthetic_run

    from bfd.flows.serve import RunLines
    from bfd.queries.seen import run_seen
    from bfd.tasks.audits import audit_row, drift_since_previous
    from bfd.tasks.drift import DEFAULT_THRESHOLDS

    root = tmp_path / "moved"
    write_synthetic_run(root, "r-1", weights="w", seed=1, n_images=8)
    write_results_of_tables(root, "r-1", None)
    dep = types.SimpleNamespace(flow_name="audit")
    for step, flow_run in ((1, "fr-1"), (2, "fr-2")):
        began = dt.datetime(2026, 12, step, tzinfo=dt.UTC)
        with audit_row(Store(root), "s", step, "schedule", flow_run, began) as row:
            drift_since_previous(Store(root), row, "r-1", DEFAULT_THRESHOLDS,
                                 run_seen(root, "r-1"))
        run = types.SimpleNamespace(parameters={"store": str(root)}, id=flow_run)
        said = RunLines({}, print)._what_it_did(None, run, dep)
        first = f"; the first audit of store {root} (was it moved, or its path mistyped?)"
        assert said.endswith(first) == (step == 1), said


@pytest.mark.parametrize("series", [
    "x` <img src=x onerror=alert(1)> **b** [l](javascript:alert(1)) <script>s</script> `y",
    "``two`` and | a pipe", "`", "it's a \"quoted\" name"])
def test_the_audit_report_shows_names_as_typed_whatever_they_hold(series):
    """A series (or path) holding backticks ended its code span in the audit's Markdown
    report, and the rest was read as Markdown: a link to javascript: in the Prefect UI (trial
    31). Each name is one code span showing it as typed, and each command line runs in a shell
    as shown."""
    import shlex

    from markdown_it import MarkdownIt

    from bfd.flows.prefect_io import audit_markdown, md_code

    audit = {"series": series, "step": 3, "run_id": "r-1", "audit_id": "a-1",
             "prev_audit_id": None, "how": "computed"}
    run = {"model": "m", "weights": f"/w/{series}.pth", "images": "samples", "n_images": 8}
    text = audit_markdown(audit, run, [], [], f"/st/{series}")
    html = MarkdownIt("commonmark").enable("table").render(text)
    codes = [html_unescape(c) for c in re.findall(r"<code>(.*?)</code>", html, re.S)]
    assert series in codes and f"/w/{series}.pth" in codes and f"/st/{series}" in codes
    assert "<a " not in html and "<strong>" not in html and "<img" not in html
    (history,) = [c for c in codes if c.startswith("bfd query audit_history")]
    assert shlex.split(history)[4:] == [f"series={series}", "--store", f"/st/{series}"]
    # in a table's cell, a pipe does not split the cell
    table = MarkdownIt("commonmark").enable("table").render(
        f"| a | b |\n|---|---|\n| {md_code(series, cell=True)} | 2 |\n")
    assert table.count("<td>") == 2 and html_unescape(
        re.search(r"<code>(.*?)</code>", table, re.S)[1]) == series
