"""The interactive dashboard of a store: static pages that work from ``file://`` and any plain
static server (docs/dashboard.md).

Layout of the output folder::

    index.html           Overview: every series and run, depth profiles of the chosen runs
    series.html          every run-level metric of a series against audit step or time,
                         drift flags, head-type changes
    compare.html         any two runs (each audit of a run a choice), per-layer and per-head
                         deltas and head-type changes on compare_runs' basis (intervals
                         where stored)
    runs/<run>.html      one page per run: the paper's views (of a run with a damaged table
                         file: one line saying so, also on the other pages, until it is repaired)
    runs/<run>.heads.js  the run's head shares and types (``data.head_figures``), which the
                         Compare page loads for the two runs chosen (a script: file:// pages
                         cannot read another file's data)
    assets/              plotly.min.js (from the plotly package), dashboard.js, dashboard.css
    .bfd-dashboard.json  what each page was built from, so a rebuild writes only what changed
    .bfd-positional/     each run's positional components, kept while its results are the same

Each page embeds its data as JSON in a ``<script type="application/json">`` element (``<``,
``>`` and ``&`` written as ``\\u003c`` etc., so no string can close the element) and draws it
with plotly.js in the browser; every string from the store reaches the page as JSON data and
is put into the document as text, never as markup.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import html
import json
import logging
import os
import re
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Final

import duckdb

from bfd.core.model_check_limit import MODEL_CHECK_LIMIT
from bfd.queries import connect
from bfd.report import data as D
from bfd.storage.paths import atomic_write

__all__ = [
    "DashboardBuild",
    "build_dashboard",
    "damaged_runs",
    "embed_json",
    "heads_name",
    "make_server",
    "page_name",
    "serve_dashboard",
]

MANIFEST: Final[str] = ".bfd-dashboard.json"
_ASSETS: Final[tuple[str, ...]] = ("dashboard.js", "dashboard.css")
_TITLES: Final[dict[str, str]] = {
    "overview": "Overview",
    "series": "Series",
    "compare": "Compare",
    "run": "Run",
}


@dataclass
class DashboardBuild:
    """What one ``build_dashboard`` call did.

    Attributes:
        index: The overview page.
        written: Pages and assets written by this call (relative to the output folder).
        unchanged: Pages left as they were: their data being the same, or rebuilt (``force``)
            byte for byte the same; every page of the dashboard is written or unchanged.
        removed: Pages of runs no longer in the store, deleted.
    """

    index: Path
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def pages_written(self) -> list[str]:
        """The pages among ``written`` (not the ``assets/`` files)."""
        return [rel for rel in self.written if not rel.startswith("assets/")]


# A run's page as the manifest names it: runs/<a safe_file_stem>.html, one folder down
_OLD_PAGE = re.compile(r"runs/[A-Za-z0-9][A-Za-z0-9_.-]{0,150}\.html")


def page_name(run_id: str) -> str:
    """The file of a run's page inside ``runs/``: the run id where it is a safe file name."""
    return f"{D.safe_file_stem(run_id)}.html"


def heads_name(run_id: str) -> str:
    """The file of a run's head figures inside ``runs/``, beside its page."""
    return f"{D.safe_file_stem(run_id)}.heads.js"


def heads_script(run_id: str, heads: D.Columns) -> str:
    """A run's head figures as a script that puts them into ``window.BFD_HEADS[run_id]``
    (JSON as ``embed_json`` writes it: no string can end the script)."""
    return (f"(window.BFD_HEADS = window.BFD_HEADS || {{}})[{embed_json(run_id)}] = "
            f"{embed_json(heads)};\n")


def _asset_text(name: str) -> str:
    return resources.files("bfd.report").joinpath("assets", name).read_text(encoding="utf-8")


def _plotly_js() -> tuple[str, str]:
    """plotly.js as the plotly package ships it, and its version."""
    import plotly
    from plotly.offline import get_plotlyjs

    return get_plotlyjs(), plotly.__version__


def _code_version(plotly_version: str) -> str:
    """Part of every page key: new page code or a new plotly rebuilds every page."""
    digest = hashlib.sha256(plotly_version.encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(Path(D.__file__).read_bytes())
    for name in _ASSETS:
        digest.update(_asset_text(name).encode())
    return digest.hexdigest()[:16]


def embed_json(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``<``, ``>`` or ``&`` appears
    literally, so neither ``</script>`` nor ``<!--`` in a string can end or alter the element."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _page(kind: str, title: str, payload: dict[str, Any], depth: int, store: str,
          notices: tuple[str, ...] = (), drawn: bool = True) -> str:
    """A page; ``notices``: lines said above everything (a damaged run), as text; ``drawn``:
    False for a page of nothing but its notices (no data, no scripts)."""
    up = "../" * depth
    current = " aria-current='page'"
    nav = "".join(
        f"<a href='{up}{href}'{current if kind == name else ''}>{label}</a>"
        for name, href, label in (
            ("overview", "index.html", "Overview"),
            ("series", "series.html", "Series"),
            ("compare", "compare.html", "Compare"),
        )
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)} · BFD dashboard</title><link rel='icon' href='data:,'>"
        f"<link rel='stylesheet' href='{up}assets/dashboard.css'></head>"
        f"<body data-page='{kind}'><header><a class='skip' href='#app'>Skip to the page</a>"
        "<nav aria-label='pages'>"
        f"<span class='brand'>BFD dashboard</span>{nav}</nav>"
        f"<p class='note'>store <code>{html.escape(store)}</code></p>"
        + "".join(f"<p class='damaged' role='alert'>{html.escape(n)}</p>" for n in notices)
        + "</header>"
        # not a live region: a choice redraws most of the page, which a screen reader then
        # read out whole (trial 28)
        f"<main id='app' tabindex='-1'><h1>{html.escape(title)}</h1>"
        + ("<noscript>This dashboard draws its figures with JavaScript.</noscript></main>"
           f"<script type='application/json' id='bfd-data'>{embed_json(payload)}</script>"
           f"<script src='{up}assets/plotly.min.js'></script>"
           f"<script src='{up}assets/dashboard.js'></script>" if drawn else "</main>")
        + "</body></html>\n"
    )


def _dropped_activations(store_root: Path, runs: D.Columns) -> None:
    """A run whose activations ``bfd drop-activations`` removed says so (``bfd runs``'
    ``activations``: dropped), not that they are stored."""
    from bfd.storage import Store, dropped

    if "activations" in runs:
        runs["activations"] = [
            "dropped" if dropped(Store(store_root), run_id) is not None else said
            for run_id, said in zip(runs["run_id"], runs["activations"], strict=True)]


def _pending_notice(store_root: Path, listed: set[str]) -> str | None:
    """One line on the overview naming the store's runs that are not published (an extraction
    stopped, a run extracted and not decomposed: ``bfd.storage.unpublished_runs``), which no
    page shows; None when there is none."""
    from collections import Counter

    from bfd.storage import Store, unpublished_runs

    runs = unpublished_runs(Store(store_root), listed)
    if not runs:
        return None
    counts = ", ".join(f"{n} {status}" for status, n in sorted(Counter(
        r.status for r in runs).items()))
    return (f"{len(runs)} run(s) of this store are not published and on no page ({counts}): "
            f"bfd runs --store {store_root} says what to do with each")


def damaged_runs(store_root: Path, listed: set[str]) -> dict[str, str]:
    """The published runs not in ``listed`` (the catalog's) whose table files or pointer do
    not read (the catalog leaves such a run out whole), each with one line saying so: the
    first fault (``bfd.storage.table_faults``) and the command that names the repair. A run
    whose table files are all gone has left the store's tables: not listed."""
    from bfd.storage import Store, read_pointer, table_faults, validate_run_id
    from bfd.storage.unpublished import OWNER_CAN_READ

    store = Store(store_root)
    found: dict[str, str] = {}
    if not store.runs_dir.is_dir():
        return found
    for entry in sorted(store.runs_dir.iterdir()):
        try:
            validate_run_id(entry.name)
        except ValueError:
            continue
        if entry.name in listed:
            continue
        try:
            if not store.published_pointer(entry.name).exists():
                continue
        except PermissionError as err:  # another user's private run (their umask)
            found[entry.name] = (
                f"run {entry.name} cannot be read by this user ({err.strerror}: "
                f"{store.run_dir(entry.name)}), left out of this dashboard and of SQL; "
                f"{OWNER_CAN_READ}")
            continue
        try:
            pointer = read_pointer(store, entry.name)
        except ValueError:
            pointer = None  # table_faults names it
        if pointer is not None and not any((store.root / rel).exists()
                                           for rel in pointer["tables"].values()):
            continue
        # (a file of an older bfd, lacking columns added since, is no damage: read as it is)
        faults = [f for f in table_faults(store, entry.name) if not f.older]
        if faults:
            more = f" (and {len(faults) - 1} more)" if len(faults) > 1 else ""
            found[entry.name] = (
                f"run {entry.name} is damaged, left out of this dashboard and of SQL: "
                f"{faults[0]}{more}; bfd verify {entry.name} --store {store_root} names the "
                "command that publishes it again")
    return found


def _write_if_changed(out: Path, rel: str, text: str, build: DashboardBuild | None) -> None:
    """Writes ``text`` to ``out/rel`` (``build.written``) unless the file holds it already: a
    page then counts as unchanged, an asset as neither; ``build`` None: a page's data file
    (``heads_name``), counted as neither."""
    path = out / rel
    try:
        same = path.is_file() and path.read_text(encoding="utf-8") == text
    except PermissionError:  # another user's page, private by their umask: replaced
        same = False
    if same:
        if build is not None and not rel.startswith("assets/"):
            build.unchanged.append(rel)
        return
    _replace_with(path, text)
    if build is not None:
        build.written.append(rel)


def _replace_with(path: Path, text: str) -> None:
    """``path`` holds ``text`` (``atomic_write``, not flushed to disk: the dashboard is made
    again from the store): two builds of one dashboard at once each rename their own
    temporary file (a shared ``.<name>.tmp`` was renamed away by one while the other wrote
    it: trial 19, exit 2 in 3 of 8 pairs)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data), durable=False)


POSITIONAL: Final[str] = ".bfd-positional"


def _positional(root: Path, out: Path, run_id: str, grid: tuple, key: str, force: bool
                ) -> tuple[dict | None, bool]:
    """``positional_components`` of a run, and whether they could be read now; kept in
    ``<out>/.bfd-positional/`` under ``key`` (the run's published results and the page code):
    each audit rewrites its run's page (the run's latest audit) but leaves the run's results
    as they were, which take an open of the results and an SVD per layer to read again."""
    path = out / POSITIONAL / f"{D.safe_file_stem(run_id)}.json"
    if not force:
        try:
            kept = json.loads(path.read_text(encoding="utf-8"))
            if kept.get("key") == key:
                return kept["pos"], True
        except (OSError, ValueError, AttributeError, KeyError):
            pass
    try:
        pos = D.positional_components(root, run_id, grid, strict=True)
    except (FileNotFoundError, ValueError, KeyError, OSError):
        # published but not readable now (a store being copied): not kept, so that the
        # next build reads them again
        path.unlink(missing_ok=True)
        return None, False
    if pos is None:  # none published or stored: the page says so until the run changes
        path.unlink(missing_ok=True)
        return None, True
    _replace_with(path, json.dumps({"key": key, "pos": pos}))
    return pos, True


def _results_path(store_root: Path, run_id: str) -> str:
    """Where ``bfd.storage.open_results`` reads the run's results (docs/layout.md)."""
    from bfd.storage import Store, results_path

    return results_path(Store(store_root, zarr_url=os.environ.get("BFD_ZARR_URL")), run_id)


def _local_uri(path: str) -> str | None:
    """A file:// link to a local results folder; None for remote Zarr stores (s3://...)."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path):
        return path if path.startswith(("file://", "http://", "https://")) else None
    return Path(path).absolute().as_uri()


def _flow_run_url(flow_run_id: str | None) -> str | None:
    base = os.environ.get("PREFECT_UI_URL")
    if not flow_run_id or not base:
        return None
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


def _run_links(store_root: Path, runs: D.Columns) -> None:
    """Adds to each run its page, results path and Prefect flow run link."""
    runs["page"] = [page_name(run_id) for run_id in runs["run_id"]]
    runs["results_path"] = [_results_path(store_root, run_id) for run_id in runs["run_id"]]
    runs["results_url"] = [_local_uri(path) for path in runs["results_path"]]
    runs["flow_run_url"] = [_flow_run_url(fid) for fid in runs["flow_run_id"]]


# The per-layer metrics the Series page's layer x step heatmap offers (of layer_rows), in its
# menu's order: the page reads them from the columns of its layer rows (``_series_layers``).
SERIES_LAYER_METRICS: Final[tuple[str, ...]] = ("frac_pos", "frac_pos_resid", "f_pp", "f_pc",
                                                "f_cp", "f_cc")


def _series_layers(layers: D.Columns, run_ids: list[str | None]) -> D.Columns:
    """The layer rows the Series page's heatmap reads: of the runs of its points only (each
    run once, however many audits and series it is in), and only the heatmap's columns (the
    overview's ``layers`` less the columns the page does not show)."""
    wanted = set(run_ids)
    keep = [i for i, run_id in enumerate(layers.get("run_id", [])) if run_id in wanted]
    names = ["run_id", "layer", *(m for m in SERIES_LAYER_METRICS if m in layers)]
    return {name: [layers[name][i] for i in keep] for name in names}


def refresh_outputs(store: str, logger: logging.Logger | logging.LoggerAdapter) -> str | None:
    """The SQL catalog's snapshot, then the dashboard ``<store>/dashboard``: derived views of
    what is written (a flow auditing many models refreshes them once, at its end), so a
    failure here is a warning to ``logger``, not a failed audit. Returns the dashboard's
    ``index.html`` (absolute) once rebuilt, else None."""
    from bfd.queries import refresh_catalog

    try:
        refresh_catalog(store)
        index = os.path.abspath(build_dashboard(store, f"{store}/dashboard").index)
    except Exception as err:  # noqa: BLE001 - derived outputs; the next audit rebuilds them
        logger.warning("catalog or dashboard not refreshed (%s); the next query rebuilds it", err)
        return None
    logger.info("dashboard: %s", index)
    return index


def build_dashboard(
    store_root: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    catalog: duckdb.DuckDBPyConnection | None = None,
) -> DashboardBuild:
    """Writes (or refreshes) the dashboard of a store.

    Pages whose data and code are unchanged since the last build in ``out_dir`` are left
    alone; run pages are keyed by the run id and a hash of the run's rows in every per-run
    table, so adding one run to a store of hundreds writes that run's page and the three
    store-wide pages only.

    Args:
        store_root: The store directory.
        out_dir: The output folder; created if missing.
        force: Rewrite every page.
        catalog: An open catalog of the store to read (left open); by default
            ``bfd.queries.connect(store_root)``.

    Returns:
        What was written, left unchanged and removed.

    Raises:
        FileNotFoundError: ``store_root`` is not a directory.
    """
    root = Path(store_root)
    out = Path(out_dir)
    js, plotly_version = _plotly_js()
    code = _code_version(plotly_version)
    manifest_path = out / MANIFEST
    old: dict[str, Any] = {}
    if manifest_path.is_file() and not force:
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
    old_pages: dict[str, str] = old.get("pages", {}) if old.get("code") == code else {}
    build = DashboardBuild(index=out / "index.html")
    pages: dict[str, str] = {}
    # connect refuses a folder that is not a store before out (by default in it) is made
    con = catalog if catalog is not None else connect(root)
    try:
        out.mkdir(parents=True, exist_ok=True)
        runs = D.columnar(D.run_list(con))
        _run_links(root, runs)
        _dropped_activations(root, runs)
        damaged = damaged_runs(root, set(runs["run_id"]))
        notices = tuple(damaged.values())
        layers = D.columnar(D.layer_rows(con))
        has_audits = D.audits_present(con)
        series = {name: D.columnar(t) for name, t in D.series_data(con).items()}
        series["not_kept"] = D.figures_not_kept(con)
        series["latest_series"] = D.latest_series(con)
        # the page of each point's run, a damaged run's too (its page says so; not in runs)
        paged = set(runs["run_id"]) | set(damaged)
        series["metrics"]["page"] = [page_name(r) if r in paged else None
                                     for r in series["metrics"]["run_id"]]
        common = {"runs": runs, "has_audits": has_audits}
        series_list = D.columnar(D.series_list(con))
        # the page of each series' latest run: a damaged run (not in runs) has one too
        series_list["latest_page"] = [page_name(run_id) for run_id in series_list["latest_run"]]
        # one row a complete run; the pages derive each pair's same_model and note from them
        shapes = D.columnar(D.run_shapes(con))
        series["layers"] = _series_layers(layers, series["metrics"]["run_id"])
        generated = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        site_pages = {
            "index.html": ("overview", {**common, "layers": layers,
                                        "series_list": series_list}),
            "series.html": ("series", {**common, **series, "shapes": shapes}),
            "compare.html": ("compare", {**common, "layers": layers, "shapes": shapes,
                                         "choices": D.columnar(D.compare_choices(con)),
                                         # the steps audit-checkpoints left out, named
                                         # when the address asks for one
                                         "left_out": series["left_out"]}),
        }
        pending = _pending_notice(root, set(runs["run_id"]) | set(damaged))
        for rel, (kind, payload) in site_pages.items():
            said = (*notices, *([pending] if pending and rel == "index.html" else []))
            key = D.content_hash(payload, [code, *said])
            pages[rel] = key
            if old_pages.get(rel) == key and (out / rel).is_file():
                build.unchanged.append(rel)
                continue
            payload = {**payload, "generated": generated}
            _write_if_changed(out, rel, _page(kind, _TITLES[kind], payload, 0, str(root),
                                              said), build)
        for run_id, notice in damaged.items():  # its page says so, until it is repaired
            rel = f"runs/{page_name(run_id)}"
            pages[rel] = D.content_hash(notice, [code])
            _write_if_changed(out, rel, _page("run", f"Run {run_id}", {}, 1, str(root),
                                              (notice,), drawn=False), build)
        keys = D.run_keys(con)
        audits_of = D.run_audits(con)
        for i, run_id in enumerate(runs["run_id"]):
            rel = f"runs/{runs['page'][i]}"
            run = {name: values[i] for name, values in runs.items()}
            # every audit of the run (a rollback's too), listed on its page
            audits = audits_of.get(run_id, {})
            key = D.content_hash([keys.get(run_id), run, audits], [code])
            pages[rel] = key
            heads_rel = f"runs/{heads_name(run_id)}"
            if (old_pages.get(rel) == key and (out / rel).is_file()
                    and (out / heads_rel).is_file()):
                build.unchanged.append(rel)
                continue
            detail = {name: D.columnar(t) for name, t in D.run_detail(con, run_id).items()}
            # written with its page (not counted as one): what Compare reads of its heads
            _write_if_changed(out, heads_rel, heads_script(run_id, D.head_figures(
                detail["heads"])), None)
            grid = (run["grid_h"], run["grid_w"])
            detail["pos"], read = _positional(
                root, out, run_id, grid, D.content_hash([run["results_path"], grid], [code]), force)
            if not read:  # built again next time, when they may be readable
                pages[rel] = None
            # the limit of the check against the model (docs/checks.md): the residual
            # figure draws it, and a run above it is said above the figures
            payload = {"run": run, **detail, "audits": audits, "generated": generated,
                       "model_check_limit": MODEL_CHECK_LIMIT}
            _write_if_changed(out, rel, _page("run", f"Run {run_id}", payload, 1, str(root)), build)
    finally:
        if catalog is None:
            con.close()
    # only a page this code names (runs/<safe stem>.html): the old manifest is a file in the
    # store that anyone who writes there can edit, and runs/../../x removed any file
    # (trial 25, F1)
    for rel in old.get("pages", {}):
        if rel not in pages and _OLD_PAGE.fullmatch(rel):
            (out / rel).unlink(missing_ok=True)
            build.removed.append(rel)
    # the head figures of runs no longer in the store (or damaged: Compare offers them not)
    kept_heads = {heads_name(run_id) for run_id in runs["run_id"]}
    if (out / "runs").is_dir():
        for stale in (out / "runs").glob("*.heads.js"):
            if stale.name not in kept_heads:
                stale.unlink(missing_ok=True)
    listed = {f"{D.safe_file_stem(run_id)}.json" for run_id in runs["run_id"]}
    if (out / POSITIONAL).is_dir():
        for kept in (out / POSITIONAL).iterdir():
            if kept.name not in listed:
                kept.unlink(missing_ok=True)
    assets = {"assets/plotly.min.js": js}
    assets.update({f"assets/{name}": _asset_text(name) for name in _ASSETS})
    for rel, text in assets.items():
        if old.get("code") != code or not (out / rel).is_file():
            _write_if_changed(out, rel, text, build)
    manifest = {"code": code, "plotly": plotly_version, "pages": pages}
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    return build


def make_server(out_dir: str | os.PathLike[str], port: int = 8000) -> ThreadingHTTPServer:
    """A static file server of the built dashboard bound to 127.0.0.1 only (not started).

    Args:
        out_dir: The folder ``build_dashboard`` wrote.
        port: TCP port (0 picks a free one; ``server.server_address`` tells which).
    """
    handler = functools.partial(_QuietHandler, directory=str(out_dir))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


class _QuietHandler(SimpleHTTPRequestHandler):
    """The built dashboard's files, and nothing else (trial 25, F8): no folder listing; a
    request whose Host is not this machine's loopback name refused (a web page that rebinds
    its own name to 127.0.0.1 cannot read the dashboard's paths); a path that resolves
    outside the folder (a link) or does not read (a NUL) is not found."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "No folder listing")
        return None

    def send_head(self):  # noqa: ANN201 - the base's signature
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        if host not in ("127.0.0.1", "localhost"):  # the names of the address it listens on
            self.send_error(403, "Served to this machine's loopback address only")
            return None
        try:
            path = os.path.realpath(self.translate_path(self.path))
        except ValueError:  # an embedded NUL
            self.send_error(404, "File not found")
            return None
        root = os.path.realpath(self.directory)
        if path != root and not path.startswith(root + os.sep):
            self.send_error(404, "File not found")
            return None
        return super().send_head()


def serve_dashboard(out_dir: str | os.PathLike[str], port: int = 8000) -> None:
    """Serves the built dashboard on 127.0.0.1 until interrupted (see ``make_server``)."""
    with make_server(out_dir, port) as server:
        host, bound = server.server_address[:2]
        try:  # a Ctrl-C as soon as the line is read lands in the print: stopped the same way
            print(f"dashboard: serving {out_dir} at http://{host}:{bound}/ (Ctrl-C stops)",
                  flush=True)
            server.serve_forever()
        except KeyboardInterrupt:
            pass
