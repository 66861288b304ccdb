"""A named query given a parameter that names nothing in the store (a typo in a model, run or
series), whatever the others match, or parameters that contradict each other (a run of another
model), is refused in one line on stderr, with the known values closest to it; stdout is the
query's empty result, as without the hint."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest
from conftest import run_cli as cli
from test_queries import _plant_audit, build_store


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """vit_a (two complete runs and an unfinished one), vit_b, and two audit series of vit_a
    (audits vit_a@pretrained-1 of a-new and vit_a@seed-1-1 of a-old)."""
    root = tmp_path_factory.mktemp("hints") / "store"
    build_store(root)
    _plant_audit(root, "vit_a@pretrained", "a-new", 1, None)
    _plant_audit(root, "vit_a@seed-1", "a-old", 1, None)
    return root


def query(store: Path, capsys, name: str, *params: str, fmt: str = "json",
          unknown: bool = False) -> tuple[list, str]:
    """The query's result and stderr; ``unknown``: a parameter names nothing, exit 2 (an
    unknown model or run is a mistake in the request: README), the result still written."""
    argv = ["query", name, "--store", str(store), "--format", fmt]
    for param in params:
        argv += ["--param", param]
    code, out, err = cli(argv, capsys)
    assert code == (2 if unknown else 0) and ("error" in err) == unknown, err
    return (json.loads(out) if fmt == "json" else out), err


def closest(value: str, known: list[str]) -> str:
    """The known values as difflib ranks them against ``value``, three at most."""
    return ", ".join(difflib.get_close_matches(value, known, n=3, cutoff=0))


# each query given a parameter naming nothing (a typo), parameters that contradict each
# other, or known values giving no rows: what bfd query and run_query refuse, with the line
REFUSALS = [
    ("layer_profile", ["model=vit_aa"],
     f"model 'vit_aa' names no run of the store; closest known: "
     f"{closest('vit_aa', ['vit_a', 'vit_b'])}"),
    ("head_map", ["model=vit_c", "run_id=a-nwe"],
     f"model 'vit_c' names no run of the store; closest known: "
     f"{closest('vit_c', ['vit_a', 'vit_b'])}; run_id 'a-nwe' names no run of the store; "
     f"closest known: {closest('a-nwe', ['a-old', 'a-new', 'a-unfinished', 'b-1'])}"),
    ("head_types", ["model=vitb"],
     f"model 'vitb' names no run of the store; closest known: "
     f"{closest('vitb', ['vit_a', 'vit_b'])}"),
    ("drift", ["series=vit_a@pretraind"],
     f"series 'vit_a@pretraind' names no audit of the store; closest known: "
     f"{closest('vit_a@pretraind', ['vit_a@pretrained', 'vit_a@seed-1'])}"),
    ("compare_runs", ["run_a=x", "run_b=a-new"],
     f"run_a 'x' names no run of the store; closest known: "
     f"{closest('x', ['a-old', 'a-new', 'a-unfinished', 'b-1'])}"),
    # the other model has rows: refused all the same (its rows were written, vit_bb's NULL)
    ("compare_models", ["model_a=vit_a", "model_b=vit_bb"],
     f"model_b 'vit_bb' names no run of the store; closest known: "
     f"{closest('vit_bb', ['vit_a', 'vit_b'])}"),
    ("head_type_changes", ["run_a=a-old", "run_b=b-2"],
     f"run_b 'b-2' names no run of the store; closest known: "
     f"{closest('b-2', ['a-old', 'a-new', 'a-unfinished', 'b-1'])}"),
    # known values that contradict each other (they gave no rows, exit 0, no word why)
    ("layer_profile", ["model=vit_a", "run_id=b-1"],
     "run_id 'b-1' is a run of vit_b, not of model 'vit_a'"),
    ("head_map", ["model=vit_a", "run_id=b-1"],
     "run_id 'b-1' is a run of vit_b, not of model 'vit_a'"),
    ("drift", ["series=vit_a@pretrained", "audit_id=vit_a@seed-1-1"],
     "audit_id 'vit_a@seed-1-1' is an audit of series vit_a@seed-1, not of series "
     "'vit_a@pretrained'"),
    ("audit_history", ["series=vit_a@seed-1", "model=vit_b"],
     "series 'vit_a@seed-1' holds no audit of model 'vit_b'; its audits are of vit_a"),
    ("audit_history", ["model=vit_b"], None),  # a known model, never audited: no rows, no hint
    ("layer_profile", ["model=vit_a", "run_id=a-unfinished"], None),  # known, not complete
]
REFUSAL_IDS = ["model", "model-and-run", "optional-model", "series", "unknown-run",
               "unknown-beside-a-known-model", "unknown-beside-a-known-run",
               "run-of-another-model", "head-map-run-of-another-model",
               "audit-of-another-series", "series-of-another-model", "known-model",
               "known-unfinished-run"]


@pytest.mark.parametrize(("name", "params", "hint"), REFUSALS, ids=REFUSAL_IDS)
def test_no_rows_name_the_closest_known_values(store, capsys, name, params, hint):
    """A parameter naming nothing exits 2 (it exited 0, against README's exit table), even
    when another one has rows (compare_models wrote them, one side NULL, exit 0), and so do
    parameters naming things of different models or series; a known one that gives no rows
    exits 0."""
    rows, err = query(store, capsys, name, *params, unknown=hint is not None)
    assert rows == []
    assert err == (f"bfd: error: no rows: {hint}\n" if hint else "")


@pytest.mark.parametrize(("name", "params", "hint"), REFUSALS, ids=REFUSAL_IDS)
def test_run_query_refuses_as_bfd_query_does(store, name, params, hint):
    """Trial 29: ``bfd.queries.run_query`` (README, "Use it in a notebook") ran a typo's
    query, rows of NULL deltas against a model that is not there, where ``bfd query``
    refuses it; now the same line, as a ValueError (``check=False`` runs the SQL regardless:
    tests/test_queries.py)."""
    from bfd.queries import run_query

    given = dict(p.split("=", 1) for p in params)
    if hint is None:
        assert run_query(store, name, given).num_rows == 0
        return
    with pytest.raises(ValueError) as err:
        run_query(store, name, given)
    assert str(err.value) == hint


def test_rows_or_no_identifying_parameter_give_no_hint_and_stdout_is_unchanged(store, capsys):
    rows, err = query(store, capsys, "layer_profile", "model=vit_a")
    assert rows and err == ""
    # the same empty result, with and without the hint beside it
    header, err = query(store, capsys, "layer_profile", "model=vit_aa", fmt="csv",
                        unknown=True)
    same, quiet = query(store, capsys, "layer_profile", "model=vit_a",
                        "run_id=a-unfinished", fmt="csv")
    assert header == same and header.count("\n") == 1 and err and not quiet
    # a refused request that would have had rows: its empty result, the query's columns
    both, err = query(store, capsys, "compare_models", "model_a=vit_a", "model_b=vit_b",
                      fmt="csv")
    refused, why = query(store, capsys, "compare_models", "model_a=vit_a", "model_b=vit_bb",
                         fmt="csv", unknown=True)
    assert both.count("\n") > 1 and not err
    assert refused == both.splitlines(keepends=True)[0] and why.startswith("bfd: error:")


def test_every_parameter_of_a_named_query_is_checked_against_the_store():
    """A new query's parameter naming a model, run or series is refused when it names none
    only if IDENTIFIERS knows it: every declared parameter is sorted into one of the two."""
    from bfd.queries.hints import IDENTIFIERS, NOT_IDENTIFIERS
    from bfd.queries.specs import list_queries, read_spec

    declared = {p.name for name in list_queries() for p in read_spec(name).params}
    assert declared == set(IDENTIFIERS) | NOT_IDENTIFIERS


def test_an_empty_store_says_it_holds_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rows, err = query(tmp_path / "empty", capsys, "layer_profile", "model=vit_a", unknown=True)
    assert rows == []
    assert err == "bfd: error: no rows: model 'vit_a' names no run: the store holds no runs\n"


def test_drift_of_an_audit_that_compared_nothing_says_why(tmp_path, capsys):
    """The latest audit of a series was not compared (other images): the drift query's empty
    result says so, with its stored reason and the latest audit that has drift rows."""
    from bfd.storage import Store, write_drift

    root = tmp_path / "store"
    build_store(root)
    first = _plant_audit(root, "s", "a-old", 1, None)
    second = _plant_audit(root, "s", "a-new", 2, first)
    write_drift(Store(root), "s", second, [{
        "audit_id": second, "prev_audit_id": first, "layer": 0, "head": None,
        "metric": "frac_pos", "before": 0.5, "after": 0.25, "delta": -0.25, "threshold": 0.05,
        "flagged": True}])
    note = "previous audit used other images (N 200 -> 100); not compared: raw shares change"
    third = _plant_audit(root, "s", "a-old", 3, second, drift_note=note)
    rows, err = query(root, capsys, "drift", "series=s")
    assert rows == []
    assert err == (f"bfd: no rows: audit {third} (step 3) has no drift rows: {note}; the latest "
                   f"audit with drift: {second} (step 2) (--param audit_id=...)\n")
    rows, err = query(root, capsys, "drift", "series=s", f"audit_id={first}")
    assert (rows, err) == (
        [], f"bfd: no rows: audit {first} (step 1) has no drift rows: it is the first audit of "
            "its series\n")
    rows, err = query(root, capsys, "drift", "series=s", f"audit_id={second}")
    assert len(rows) == 1 and err == ""


@pytest.mark.parametrize(("sql", "said"), [
    # DuckDB's hint, on the line after its message, was cut off with the statement it quotes
    ("SELECT * FROM layer",
     'SQL: Catalog Error: Table with name layer does not exist! Did you mean "layers"?'),
    ("SELECT frac_poss FROM layers",
     'SQL: Binder Error: Referenced column "frac_poss" not found in FROM clause! Candidate '
     'bindings: "frac_pos", '),
    ("SELECT layer, frac_pos FROM layers GROUP BY layer",
     'SQL: Binder Error: column "frac_pos" must appear in the GROUP BY clause or must be part '
     'of an aggregate function. Either add it to the GROUP BY list, or use ANY_VALUE('),
    # the statement and the caret under it that DuckDB quotes stay off the line
    ("SELEC 1", 'SQL: Parser Error: syntax error at or near "SELEC"'),
], ids=["did-you-mean", "candidate-bindings", "either-add-it", "no-statement-quoted"])
def test_sql_errors_keep_duckdb_hints_on_their_one_line(store, capsys, sql, said):
    code, out, err = cli(["sql", sql, "--store", str(store)], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"bfd: error: {said}"), err
    assert "LINE" not in err and "^" not in err and "!;" not in err


def test_a_named_query_says_its_own_error_without_duckdb_s_prefix(store, capsys):
    code, out, err = cli(["query", "compare_models", "--store", str(store), "--param",
                          "model_a=vit_a", "--param", "model_b=vit_b", "--param", "bins=ten"],
                         capsys)
    assert (code, err) == (
        2, "bfd: error: compare_models: bins must be a positive integer; given ten\n")
    # bfd sql's own error() is SQL's: said as DuckDB says it
    code, out, err = cli(["sql", "SELECT error('compare_models: mine')", "--store",
                          str(store)], capsys)
    assert (code, err) == (2, "bfd: error: SQL: Invalid Input Error: compare_models: mine\n")


def test_drift_rows_of_an_audit_never_recorded_are_in_no_query(tmp_path, capsys):
    """An audit writes its drift rows, then its own row: a process killed between the two
    left drift rows that `bfd sql` listed, of an audit no table holds (trial 26 F8)."""
    from bfd.queries import run_sql
    from bfd.storage import Store, write_drift

    root = tmp_path / "store"
    build_store(root)
    first = _plant_audit(root, "s", "a-old", 1, None)
    row = {"prev_audit_id": first, "layer": 0, "head": None, "metric": "frac_pos",
           "before": 0.5, "after": 0.25, "delta": -0.25, "threshold": 0.05, "flagged": True}
    second = _plant_audit(root, "s", "a-new", 2, first)
    write_drift(Store(root), "s", second, [{"audit_id": second, **row}])
    write_drift(Store(root), "s", "20261204T000000000000Z-deadbeef",
                [{"audit_id": "20261204T000000000000Z-deadbeef", **row}])
    found = run_sql(str(root), "SELECT audit_id FROM drift ORDER BY audit_id").to_pylist()
    assert found == [{"audit_id": second}]
