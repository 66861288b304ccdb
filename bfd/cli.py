"""The ``bfd`` command: extract, decompose, audit, and read the results back in SQL."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from bfd.text import names_read_as_utf8, shown

# The commands of one run's pipeline (torch, Prefect): Ctrl-C keeps their shards.
_PIPELINE_COMMANDS = ("extract", "decompose", "audit", "audit-checkpoints")
# Commands that only read a store (no torch, timm or Prefect).
_READING_COMMANDS = ("verify", "sql", "catalog", "query", "runs", "dashboard", "plot")
# the commands that run no Prefect flow: the reading ones and bfd drop-activations
_NO_FLOW_COMMANDS = (*_READING_COMMANDS, "drop-activations")
# Exit status of a command whose output pipe was closed (128 + SIGPIPE), as a shell reports it.
_EXIT_BROKEN_PIPE = 141
# The one option of every command, given before the command or after it.
_VERBOSE_HELP = "show Prefect's logs (of the commands that run flows)"
# -v of a reading command (it runs no Prefect flow): accepted, and changes nothing
_NO_FLOW_HELP = "no effect here: this command runs no Prefect flow (accepted like bfd -v)"


def _prefect_defaults(verbose: bool) -> None:
    """Offline-friendly Prefect settings for a command-line run, unless the user set them."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    # A failed task or flow run logs its traceback to the console; the command reports the
    # error itself in one line, and the run's logs stay in Prefect's API (and with -v here).
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
                          "NOTSET" if verbose else "CRITICAL")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # Prefect's client-side usage telemetry (3.9): its first-run notice landed in the
    # command's output, and it reaches for the network; off, like the server's analytics
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # torch is not imported yet: idle OpenMP workers then sleep instead of spinning, which
    # otherwise starves the small LAPACK and elementwise calls between GEMMs on few cores
    # lower case: libgomp compares it case-blind by the locale, and in a Turkish one "PASSIVE"
    # lowers to "passıve" (refused with a line on stderr, trial 31)
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def limit_malloc_arenas(arenas: int = 2) -> None:
    """At most ``arenas`` glibc malloc arenas (unless ``MALLOC_ARENA_MAX`` is set), before a
    command that runs flows starts its threads: with one arena per thread, the freed chunk
    buffers of the dask and torch threads stayed in the process. Peak RSS of the
    decomposition of a 2-layer ViT-S/16 store (bench/decompose.py (b), one run each):
    1.46-1.48 GB at N=2048 against 1.63-1.66 GB with the default arenas. Nothing on other C
    libraries."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(-8, arenas)  # -8: M_ARENA_MAX (glibc malloc.h)


def _store(args: argparse.Namespace) -> str:
    """The store of a command: a new path, an empty folder or a store. A folder of other
    files (a typo'd ``--store``, a home folder) is refused in one line (exit 2), before any
    work: a writing command would make it a store, a reading one would read it as an empty
    one (``bfd.storage.check_store``)."""
    from bfd.storage import Store, check_store, default_store

    root = Store(args.store).root if args.store else default_store().root
    if root.exists() and not root.is_dir():
        raise ValueError(f"store {str(root)!r} is a file; expected a store folder (or a new "
                         "path) for --store")
    if root.is_dir():
        check_store(root)
    return str(root)


def say_new_store(store: str, missing: bool, dry_run: bool = False) -> None:
    """A writing command's line when its work made its store (``missing``: none was there when
    it began; a dry run: would make it): a typo'd --store of a scheduled job started a new
    history there unseen, its first audit passing --fail-on-drift as the first of its series
    (trial 17). Said once the work is done, so that a request refused stays one line."""
    if missing and (dry_run or os.path.exists(store)):
        made = "would be made" if dry_run else "was made"
        sys.stderr.write(f"bfd: no store was at {store!r}: a new one {made} there\n")


def _check_request_early(args: argparse.Namespace, config) -> None:
    """What of a request needs no model, checked before torch, timm and Prefect are imported
    (10-26 s) or Prefect's server starts: the image source (a warning when it holds fewer
    images than ``--n-images``), the store's path and the workers.
    Its options, a weights file's first bytes among them, were checked when ``config`` was
    typed (``bfd.cli_audits.audit_config``, by the rules of ``bfd.requests``)."""
    from bfd.images import check_source, folder_note
    from bfd.requests import check_workers

    # a missing or empty image source is the user's mistake: refused before an audit records it
    held = check_source(config.images, config.n_images)
    note = folder_note(config.images)  # links to folders, other formats: not images to bfd
    if note:
        print(f"bfd: note: {note}", file=sys.stderr)
    if config.n_images is not None and held is not None and held < config.n_images:
        # said before the work, not only after the results (bfd.cli_audits.print_image_notes)
        print(f"bfd: warning: --n-images {config.n_images}, but {shown(config.images)} holds "
              f"{held} images; all {held} are used", file=sys.stderr)
    _store(args)
    check_workers(args.workers)


def _check_model_request(config):
    """What of an extraction request (a dict, or an audit's typed config) needs the model
    (its name known to timm and supported, layers in range, the input size against its
    patch) or torch (a CUDA device) but no Prefect: checked after ``_check_request_early``
    and before Prefect is imported (``_check_placement``, the flows), which came first and
    held such a refusal back by seconds. Prefect's temporary server may be starting
    meanwhile (``_start_prefect_server``: its start-up overlaps these imports); it is not
    waited for at such a refusal (``bfd.flows.server``). Returns the model's shapes
    (``bfd.models.ModelInfo``)."""
    from bfd.tasks.extract import ExtractConfig, validate_config

    return validate_config(ExtractConfig(**_extract_dict(config)))


def _check_space(config, store: str, info) -> None:
    """A run whose activations cannot fit in the free space of the store's disk, refused
    before Prefect is imported or anything recorded, where it can be known then
    (``bfd.tasks.extract.check_space``); ``info``: what ``_check_model_request`` returned."""
    from bfd.tasks.extract import ExtractConfig, check_space

    check_space(store, ExtractConfig(**_extract_dict(config)), info)


def _check_placement(args: argparse.Namespace, config) -> None:
    """Where the request runs: the cluster's address, and ``--workers`` capped at the
    machine's cores or GPUs (one line on stderr when it is); after ``_check_model_request``."""
    from bfd.flows.runners import capped_workers, check_dask_address
    from bfd.models import resolve_device

    if args.dask_address:
        check_dask_address(args.dask_address)
    device = resolve_device(_extract_dict(config).get("device", "auto"))
    args.workers, warning = capped_workers(args.workers, device)
    if warning:
        print(f"bfd: warning: {warning}", file=sys.stderr)


def _extract_dict(config) -> dict:
    """An extraction request as a dict (an audit's typed config gives its own)."""
    return config if isinstance(config, dict) else config.extract_config()


def _add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="store directory (default: $BFD_STORE or ./bfd-store)")


def _img_size(text: str) -> int:
    """``--img-size``: one int, the side of a square input. ``HxW`` is refused saying so (it
    was refused as an invalid int)."""
    try:
        return int(text)
    except ValueError:
        pass
    if re.fullmatch(r"\s*\d+\s*[xX*,]\s*\d+\s*", text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: one int, the side of a square input (a non-square HxW input is not "
            "supported: BFD audits square inputs, docs/layout.md)")
    raise argparse.ArgumentTypeError(f"invalid int value: {text!r}")


def _add_extract_options(p: argparse.ArgumentParser, weights: bool = True) -> None:
    """The options of an extraction request; ``weights=False`` for a command whose weights
    come from elsewhere (audit-checkpoints: each checkpoint file), which then has no
    ``--weights`` nor ``--seed`` (of a random init)."""
    p.add_argument("--model", help="timm model name, e.g. vit_small_patch16_224")
    if weights:
        p.add_argument("--weights", default="pretrained",
                       help="pretrained (timm/HF cache), random (timm's init seeded by --seed: "
                       "another --img-size or --model-arg draws other weights), or a "
                       ".safetensors/.pth file")
    p.add_argument("--images", default="samples",
                   help="image folder, a file listing image paths, or 'samples' (embedded)")
    p.add_argument("--n-images", type=int,
                   help="use the first N images (samples: 64, crops of 11 photographs)")
    p.add_argument("--layers", default="all", help="all, or block indices like 0,5,11")
    p.add_argument("--sites", default="attn_in,resid", help="attn_in and/or resid")
    p.add_argument("--img-size", type=_img_size,
                   help="model input size, one int: a square input (default: the model's)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="storage dtype of activations")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward (default 32)")
    p.add_argument("--images-per-chunk", type=int,
                   help="images per Zarr chunk, fixed per run (default 32)")
    p.add_argument("--images-per-shard", type=int,
                   help="images per shard task, a multiple of --images-per-chunk (default: one "
                   "chunk)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    p.add_argument("--autocast", choices=("none", "bf16", "fp16"), default="none",
                   help="forward under CUDA autocast (a part of the run id); refused with "
                   "--device cpu, or auto without a CUDA device: the CPU forward is float32")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a timm.create_model argument of the model, for a ViT built otherwise "
                   "than its name's default: reg_tokens=4, class_token=False, qkv_bias=False, "
                   "global_pool=avg, ...; VALUE a Python/JSON literal (int, float, bool, None) "
                   "or a string; repeatable; part of the run id")
    if weights:
        p.add_argument("--seed", type=int, default=0, help="seed of a random init")
    p.add_argument("--workers", type=int, default=1, help="local extraction workers")
    p.add_argument("--dask-address", help="run on an existing Dask cluster (tcp://host:port)")
    p.add_argument("--gpu-resources", action="store_true",
                   help="ask the Dask cluster for one GPU resource per shard task")
    _add_store(p)


def add_decompose_options(p: argparse.ArgumentParser) -> None:
    """The decomposition options that change a run's results (``bfd.storage.republish``'s
    ``RESULT_FLAGS``), of ``bfd decompose``, ``bfd audit`` and ``bfd audit-checkpoints``;
    ``decompose_options`` reads them back."""
    g = p.add_argument_group("decomposition (options that change the results)")
    g.add_argument("--prefix", choices=("exclude", "include"), default="exclude",
                   help="prefix tokens (CLS, registers): left out of the factors and energies "
                   "(default) or each counted as one more position")
    g.add_argument("--control-seed", type=int, default=0,
                   help="seed of the split-half and shuffle controls")
    g.add_argument("--compute-dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of the pass-2 projection")
    g.add_argument("--jackknife-groups", type=int, default=16,
                   help="image groups of the 95 %% intervals (a multiple of 4, >= 8; 0: none)")
    g.add_argument("--ci-target", type=float, default=0.02,
                   help="interval half-width the main shares should reach (default 0.02)")


def decompose_options(args: argparse.Namespace) -> dict:
    """The options of ``add_decompose_options`` as given, by their names in
    ``bfd.tasks.options.DecomposeOptions`` (and the flows' ``DecomposeParams``), checked as
    ``bfd decompose`` checks them (one line, exit 2, before any work)."""
    from bfd.tasks.options import DecomposeOptions

    given = {"prefix": args.prefix, "seed": args.control_seed,
             "compute_dtype": args.compute_dtype, "jackknife_groups": args.jackknife_groups,
             "ci_target": args.ci_target}
    DecomposeOptions(**given)
    return given


def _extract_config(args: argparse.Namespace) -> dict:
    if not args.model:
        demo = " (or use --demo)" if hasattr(args, "demo") else ""
        raise ValueError(f"--model is required{demo}; e.g. --model vit_small_patch16_224")
    if shown(args.model) != args.model:  # before the series named after it (trial 31)
        raise ValueError(f"--model must not hold control characters (a newline, a tab, a "
                         f"terminal's escape); got '{shown(args.model)}'")
    cfg = {
        "model": args.model, "weights": args.weights, "images": args.images,
        "n_images": args.n_images, "layers": args.layers,
        "sites": tuple(s.strip() for s in args.sites.split(",") if s.strip()),
        "img_size": args.img_size, "dtype": args.dtype, "batch_size": args.batch_size,
        "device": args.device, "autocast": args.autocast, "seed": args.seed,
    }
    if args.model_arg:
        from bfd.requests import parse_model_arg

        cfg["model_args"] = dict(parse_model_arg(text) for text in args.model_arg)
    if args.images_per_chunk is not None:
        cfg["images_per_chunk"] = args.images_per_chunk
    if args.images_per_shard is not None:
        cfg["images_per_shard"] = args.images_per_shard
    return cfg


class _LineBar:
    """A bar for a stderr that is no terminal (a log file, a scheduler's or a notebook's
    captured output): whole lines, the stage's start, its end and at most one every
    ``EVERY`` seconds between, where tqdm's carriage-return redraws would fill a log with
    ``\r`` (trial 29). The part of tqdm's interface that ``_Bars`` uses."""

    EVERY = 30.0
    mid_line = False  # every line it writes is finished

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.desc, self.unit, self.n, self.disable = total, desc, unit, 0, False
        self.start = self.said = time.monotonic()
        self._say()

    def _say(self) -> None:
        pct = 100 * self.n / self.total if self.total else 100.0
        sys.stderr.write(f"{self.desc}: {pct:3.0f}% {self.n}/{self.total} {self.unit} "
                         f"({time.monotonic() - self.start:.0f} s)\n")
        sys.stderr.flush()
        self.said = time.monotonic()

    def update(self, k: int) -> None:
        self.n += k
        if self.n < self.total and time.monotonic() - self.said >= self.EVERY:
            self._say()

    def close(self) -> None:
        if not self.disable and self.n >= self.total:
            self._say()
        self.disable = True


class _Bars:
    """tqdm bars fed by the flows' progress reports (bfd.flows.progress); lines
    (``_LineBar``) where stderr is no terminal."""

    # the stats-only run's forwards count images too (bfd.tasks.stats_only.FORWARD_STAGES)
    UNITS = {"extract": "img", "decompose": "layer", "forward 1/2": "img",
             "forward 2/2": "img"}
    # the bars of this process, for Ctrl-C's line (bfd.cli_interrupt)
    live: list[_Bars] = []

    def __init__(self) -> None:
        self.bars: dict = {}
        _Bars.live.append(self)

    @staticmethod
    def line_open() -> bool:
        """True while a bar is drawn and not closed: stderr's last line is unfinished."""
        return any(getattr(bar, "mid_line", True) and not bar.disable
                   for bars in _Bars.live for bar in bars.bars.values())

    def __call__(self, stage: str, done: int, total: int, detail: dict) -> None:
        from tqdm import tqdm

        from bfd.flows.progress import EVENTS

        if stage == "notice":
            # not print: inside a flow with log_prints, print goes to Prefect's logger
            sys.stderr.write(f"bfd: {detail['text']}\n")
            return
        if stage in EVENTS:  # no bar: a checkpoint audited (bfd.cli_audits prints it), an
            # audit's row written, a wait for another process (bfd.cli_interrupt.audit_progress)
            return
        bar = self.bars.get(stage)
        if bar is None or (bar.disable and done < total):  # a stage begun again: a new bar
            # (audit-checkpoints: each checkpoint's audit extracts; a closed bar drew nothing)
            unit = self.UNITS.get(stage, "it")
            bar = self.bars[stage] = (
                tqdm(total=total, desc=stage, unit=unit, dynamic_ncols=True, file=sys.stderr)
                if sys.stderr.isatty() else _LineBar(total, stage, unit))
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _with_bars(fn, *args, cluster: str | None = None, **kwargs):
    """``fn(*args, **kwargs)`` (a flow) drawing its progress; ``cluster`` (or its
    ``dask_address``): the Dask cluster it runs on, whose workers are watched
    (``bfd.flows.runners.workers_watched``)."""
    from bfd.flows import progress
    from bfd.flows.runners import workers_watched
    from bfd.flows.server import temporary_server_settings, wait_started

    wait_started()
    bars = _Bars()

    def say(line: str) -> None:
        progress.report("notice", 0, 0, text=line)

    try:
        with progress.listening(bars), temporary_server_settings(), workers_watched(
                cluster or kwargs.get("dask_address"), say):
            return fn(*args, **kwargs)
    finally:
        bars.close()


def _print_table(table, fmt: str, output: str | None = None) -> None:
    """Writes a result (a table or a record batch reader) to stdout or ``output``, streaming."""
    from bfd.output import stdout_bytes, write_result

    write_result(table, fmt, stdout_bytes(), output)


def _start_prefect_server() -> None:
    """Prefect's temporary server starts while the command imports torch and the flows."""
    from bfd.flows.server import start_early

    start_early()


# how timm registers each architecture in its source: the decorator over the function
_REGISTERED = re.compile(rb"@register_model\s*\ndef\s+(\w+)\s*\(")
# a pretrained config's key in a timm model file: 'vit_small_patch16_224.augreg_in21k': _cfg(
_TAGGED = re.compile(rb"""^\s*['"](\w+\.\w+)['"]\s*:""", re.M)


@functools.cache
def _timm_names() -> tuple[frozenset[str], frozenset[str]]:
    """The architectures timm registers (``timm.list_models()``) and the ``arch.tag`` names of
    its pretrained configs, read from its source files without importing it (torch and timm:
    seconds), in milliseconds: each ``@register_model`` function of ``timm/models`` and each
    ``'arch.tag':`` key there. Empty where its source cannot be read so (no timm, a zipped or
    compiled install); a name missing here is only checked sooner (``_check_model_first``)."""
    import importlib.util

    spec = importlib.util.find_spec("timm")  # finds the package; imports nothing
    if spec is None or not spec.origin:
        return frozenset(), frozenset()
    names: set[str] = set()
    tagged: set[str] = set()
    try:
        for path in (Path(spec.origin).parent / "models").glob("*.py"):
            source = path.read_bytes()
            names.update(name.decode() for name in _REGISTERED.findall(source))
            tagged.update(name.decode() for name in _TAGGED.findall(source))
    except OSError:
        return frozenset(), frozenset()
    return frozenset(names), frozenset(tagged)


def _timm_architectures() -> frozenset[str]:
    """The architectures timm registers, read from its files (``_timm_names``)."""
    return _timm_names()[0]


def _known_to_timm(name: str) -> bool:
    """Whether timm registers ``name``'s architecture and, given one, its pretrained tag
    (``vit_small_patch16_224.augreg_in21k``), as read from its files (``_timm_names``)."""
    architectures, tagged = _timm_names()
    arch, dot, _ = name.partition(".")
    return arch in architectures and (not dot or name in tagged)


def _check_model_first(config):
    """``_check_model_request`` and ``_start_prefect_server``, in the order that wastes least:
    for a model whose architecture (and pretrained tag, when given) timm registers
    (``_known_to_timm``) the server first, its start-up overlapping the import of torch and
    timm; any other name (mistyped, a mistyped tag, ``hf-hub:...``, a model another package
    registers) is checked first, so that one timm does not know is refused, in the same line
    with its close names, before any server starts (it started one, seconds of CPU, first).
    Returns the model's shapes (``bfd.models.ModelInfo``)."""
    name = str(_extract_dict(config).get("model") or "")
    if _known_to_timm(name):
        _start_prefect_server()
        return _check_model_request(config)
    info = _check_model_request(config)
    _start_prefect_server()
    return info


def cmd_extract(args: argparse.Namespace) -> int:
    from bfd.cli_audits import audit_config
    from bfd.cli_reuse import extracted_run_of

    config = _extract_config(args)
    typed = audit_config(config)
    _check_request_early(args, typed)
    # a request whose run is stored intact has nothing to do: said without Prefect or torch
    # (bfd.cli_reuse), as the flow would say it
    store = _store(args)  # checked (and a folder of other files refused) above
    done = extracted_run_of(args, typed, store)
    if done is not None:
        print(f"run {done} extracted into {store}")
        return 0
    info = _check_model_first(config)  # before Prefect is imported
    _check_space(config, store, info)
    _check_placement(args, config)
    from bfd.flows.extract import extract
    from bfd.flows.runners import task_runner
    from bfd.models import resolve_device

    flow = extract.with_options(task_runner=task_runner(
        args.workers, args.dask_address, resolve_device(config.get("device", "auto"))))
    missing = not os.path.exists(store)
    rid = _with_bars(flow, config, store, args.gpu_resources,
                     cluster=args.dask_address)["run_id"]
    say_new_store(store, missing)
    print(f"run {rid} extracted into {store}")
    return 0


def cmd_decompose(args: argparse.Namespace) -> int:
    from bfd.storage import Store
    from bfd.tasks.options import DecomposeOptions, not_decomposable

    # the options and the run are checked before the server, torch or Prefect start
    given = decompose_options(args)
    options = DecomposeOptions(**given, images_per_task=args.images_per_task,
                               device=args.device)
    store = _store(args)
    refused = not_decomposable(Store(store), args.run_id, options)  # nothing to read
    if refused:
        raise ValueError(refused)
    _start_prefect_server()
    from bfd.flows.runners import check_dask_address, decompose_flow

    if args.dask_address:
        check_dask_address(args.dask_address)
    with _run_lock(store, args.run_id):
        written = _with_bars(decompose_flow(args.dask_address), args.run_id, store, **given,
                             images_per_task=args.images_per_task,
                             dask_address=args.dask_address, device=args.device)
    print(f"run {args.run_id} decomposed; results: {written['results']}")
    _cache_catalog(store)
    from bfd.cli_audits import print_model_check_warning

    print_model_check_warning(store, args.run_id)
    return 0


def _run_lock(store: str, run_id: str):
    """The run's lock (``bfd.storage.run_lock``; the flows' too): a clear refusal while
    another process computes the run (a decompose, an extraction, an audit), and a first
    write that fails at once on a read-only store; none for a run the store does not hold,
    which the command then reports."""
    import contextlib

    from bfd.storage import Store, run_lock

    s = Store(store)
    return run_lock(s, run_id) if s.run_dir(run_id).is_dir() else contextlib.nullcontext()


def _cache_catalog(store: str) -> None:
    """Builds the SQL catalog's snapshot of the new tables now, so that the first query or
    dashboard after this command need not; the results are written whatever happens here."""
    from bfd.queries import refresh_catalog

    try:
        refresh_catalog(store)
    except Exception as err:  # noqa: BLE001 - a cache; the next query builds it
        print(f"bfd: warning: the SQL catalog was not cached ({err}); the next query builds it",
              file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """``bfd``'s parsers: no abbreviated options (``--wei`` for ``--weights``: a scheduled
    command line would change meaning when an option is added), and an unknown option or
    argument is refused by the command's own parser (``bfd audit: error: ...; bfd audit --help
    lists its options``), in one line, not by ``bfd``'s."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: ANN201 - argparse's
        """One line, exit 2 (argparse prints the whole usage, 5-13 lines, before it)."""
        self.exit(2, f"{self.prog}: error: {message}; {self.prog} --help lists its options\n")

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = next((a.choices for a in self._actions
                             if isinstance(a, argparse._SubParsersAction)), {})
            parser = commands.get(getattr(parsed, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def build_parser() -> argparse.ArgumentParser:
    from bfd.cli_audits import add_audit_options, add_audit_parsers, cmd_audit
    from bfd.cli_read import add_reading_parsers

    p = _Parser(
        prog="bfd", description="Bi-orthogonal Factor Decomposition of timm ViTs: which "
        "attention heads exchange position, content, or both.")
    p.add_argument("-v", "--verbose", action="store_true", help=_VERBOSE_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("extract", help="store per-layer activations of a model")
    _add_extract_options(s)
    s.set_defaults(fn=cmd_extract)

    s = sub.add_parser("decompose", help="decompose a stored run and publish its tables")
    s.add_argument("run_id", help="the run to decompose (bfd runs lists them)")
    add_decompose_options(s)
    s.add_argument("--images-per-task", type=int, help="images per dask task")
    s.add_argument("--device", default="auto",
                   help="auto, cpu, cuda or cuda:K (auto: CUDA when seen, the CPU on a cluster)")
    s.add_argument("--dask-address", help="run on an existing Dask cluster")
    _add_store(s)
    s.set_defaults(fn=cmd_decompose)

    s = sub.add_parser("audit", help="extract + decompose + publish one model, as one audit "
                       "of its series, with drift against the series' latest earlier audit "
                       "comparable with it (one model, images, N, img_size, --prefix)")
    s.add_argument("--demo", action="store_true",
                   help="offline demo: random-init vit_tiny on the embedded sample images")
    s.add_argument("--no-store-activations", dest="store_activations", action="store_false",
                   help="keep no activations: decompose from two forward passes over the "
                   "images (for image sets too large to store; the run gets an id of its own)")
    s.add_argument("--dry-run", action="store_true",
                   help="say what the audit would record, compute and write (the run, its "
                   "size on disk, the audit its drift compares with), its request checked; "
                   "nothing is computed or recorded")
    _add_extract_options(s)
    add_decompose_options(s)
    add_audit_options(s)
    s.add_argument("--step", type=int,
                   help="the audit's place in its series, e.g. a training step (default: the "
                   "audit's start in Unix seconds)")
    s.set_defaults(fn=cmd_audit)

    add_audit_parsers(sub)
    add_reading_parsers(sub)
    for action in sub._choices_actions:  # each command's --help starts with its own line
        sub.choices[action.dest].description = action.help
        # -v after the command as well as before it; SUPPRESS: when absent there, the value
        # given (or not) before the command stands
        sub.choices[action.dest].add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
            help=_NO_FLOW_HELP if action.dest in _NO_FLOW_COMMANDS else _VERBOSE_HELP)
    return p


def _exit_now(code: int) -> None:
    """Ends the process once the exit handlers ran (Prefect's server stop, logging's flush)
    but without the interpreter's teardown of torch, Prefect and Dask, which takes seconds and
    changes nothing on disk: everything a command writes is complete when it returns."""
    import atexit

    sys.stdout.flush()
    sys.stderr.flush()
    _drain_prefect()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _drain_prefect() -> None:
    """Sends the logs and events Prefect still holds while its server runs. Its workers drain
    at the threads' shutdown, which ``os._exit`` skips; after the server's stop (an exit
    function) they printed 'Error logging to API' (a repaired shard's warning)."""
    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=5)


def _line_buffered_stdout() -> None:
    """stdout written line by line also into a pipe or a file (``bfd audit ... | tee log``,
    ``2>&1``), as on a terminal: each line shows when it is printed, and in its place among
    stderr's warnings, not in blocks of 8 KiB at the end. Tables go to stdout's binary
    buffer (``bfd.output.stdout_bytes``), unaffected."""
    with contextlib.suppress(AttributeError, ValueError):  # replaced, or no text stream
        sys.stdout.reconfigure(line_buffering=True)


@contextlib.contextmanager
def _said_once(logger: str):
    """Each message of ``logger`` once in the block (a command): the catalog's note on a
    damaged table file was said at each of its opens, six times by one audit."""
    import logging

    seen: set[str] = set()

    def once(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in seen:
            return False
        seen.add(message)
        return True

    logging.getLogger(logger).addFilter(once)
    try:
        yield
    finally:
        logging.getLogger(logger).removeFilter(once)


@contextlib.contextmanager
def _flow_runs_noted(noted: bool):
    """A pipeline command's own process that sends its flow runs to a Prefect API server: the
    flow runs it runs are noted, so that Ctrl-C ends them ``Crashed`` there
    (``bfd.cli_interrupt.note_flow_run``). Not on the temporary server the command starts
    itself, which the same Ctrl-C stops: Ctrl-C's end would wait for it."""
    from bfd.flows.server import prefect_api_configured

    if not (noted and prefect_api_configured()):
        yield
        return
    from bfd.cli_interrupt import note_flow_run
    from bfd.flows import progress

    with progress.listening(note_flow_run):
        yield


# Pillow's DecompressionBombWarning's text
_BIG_IMAGE = r"Image size \(\d+ pixels\) exceeds limit of \d+ pixels, could be decompression bomb"


def _utf8_mode() -> None:
    """Run as a process of its own in Python's UTF-8 mode, where the locale's encoding is
    another (``LC_ALL=tr_TR.ISO-8859-9``): file names are then read as the UTF-8 they are,
    as in any UTF-8 locale. In the locale's encoding an image named ``é.png`` was another
    image id (``Ã©.png``), so the same files and model made another run and its drift was not
    compared, and a store at a non-ASCII path read as damaged (DuckDB takes paths as UTF-8):
    trial 31. The command starts again in UTF-8 mode (and so do the processes it starts:
    ``PYTHONUTF8``), printing text in the locale's encoding as before. A file name that is no
    UTF-8 is refused, as in a UTF-8 locale."""
    if names_read_as_utf8() or os.environ.get("PYTHONUTF8") == "0":
        return
    import locale

    os.environ["PYTHONUTF8"] = "1"
    os.environ.setdefault("PYTHONIOENCODING", f"{locale.getpreferredencoding(False)}:"
                          "backslashreplace")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "bfd", *sys.argv[1:]])


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:  # a process of its own
        _utf8_mode()
        _line_buffered_stdout()
    args = build_parser().parse_args(argv)
    _prefect_defaults(args.verbose)
    if args.command not in _READING_COMMANDS:
        limit_malloc_arenas()  # before the flows start their threads
        # Pillow's warning for an image above MAX_IMAGE_PIXELS (89.5 Mpx), printed raw amid the
        # bars (trial 30): the image is decoded and used; above twice that it is skipped with
        # its reason (bfd.images)
        warnings.filterwarnings("ignore", message=_BIG_IMAGE)
    if args.command in _PIPELINE_COMMANDS:  # Ctrl-C's line, also of a command run in-process
        from bfd.cli_interrupt import MESSAGE, NOT_RECORDED, forget_recorded, say

        say(NOT_RECORDED if args.command in ("audit", "audit-checkpoints") else MESSAGE)
        forget_recorded()
    if argv is None and args.command in _PIPELINE_COMMANDS:
        # a process of its own: Ctrl-C ends it at once, without Prefect's and the
        # interpreter's teardown
        from bfd.cli_interrupt import end_on_interrupt

        end_on_interrupt(_Bars.line_open)
    if argv is None and args.command == "serve":
        from bfd.cli_audits import end_serve_on_interrupt

        end_serve_on_interrupt()
    from bfd.faults import describe

    try:
        with _said_once("bfd.catalog"), _flow_runs_noted(argv is None and
                                                         args.command in _PIPELINE_COMMANDS):
            code = args.fn(args)
    except BrokenPipeError:
        # The reader of stdout is gone (`bfd sql ... | head -1`): end quietly. stdout goes to
        # devnull, so that flushing it at exit does not fail a second time.
        with contextlib.suppress(OSError, ValueError):  # no file descriptor: nothing to flush
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return _EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        from bfd.cli_interrupt import EXIT_INTERRUPTED, message

        # what it left (bfd.cli_interrupt): an audit recorded is named
        print(message() if args.command in _PIPELINE_COMMANDS else "bfd: interrupted",
              file=sys.stderr)
        if argv is None:
            # the command's own clean-up ran on the way here (a partial --output removed);
            # the interpreter's teardown of zarr, pyarrow and DuckDB would take most of a second
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    except Exception as e:
        if args.command == "audit":  # its audit recorded already: said before the error
            from bfd.cli_interrupt import failed_after_recording

            if (line := failed_after_recording()) is not None:
                print(line, file=sys.stderr)
        known = describe(e)
        if known is None:
            raise
        code, message = known
        # a path or name in it (a --store typed with an escape) printed, not acted on
        print(f"bfd: error: {shown(message)}", file=sys.stderr)
    if argv is None and args.command in _PIPELINE_COMMANDS:
        _exit_now(code)  # a refusal too: the teardown of torch and timm took 1-2 s after it
    return code


if __name__ == "__main__":
    sys.exit(main())
