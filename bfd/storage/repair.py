"""The command line that repairs or finishes a run: its request rebuilt option by option.

A run's id hashes its whole request (``RunRequest``), so a command that leaves out one option
that shaped it (``--model-arg depth=6``, ``--seed 3``, ``--sites resid,attn_in``) computes
another run instead of finishing this one. ``repair_command`` writes every option the request
holds; what no option gives is said instead: a field of ``extra`` that a caller of the flows
wrote (a hint then, no command), and the bfd version that made the run (a note after the
command: another version computes another run).
"""

from __future__ import annotations

import shlex
from typing import Final

import bfd

from .activations import TEMPLATE_ATTR, _open_group
from .manifest import marker_files, read_marker
from .paths import DamagedStoreError, Store

# the fields of a request's ``extra`` that a command's options give (bfd.tasks.extract's
# prepare_run writes them; ``activations``: bfd audit --no-store-activations)
_OPTION_EXTRA: Final[frozenset[str]] = frozenset({"autocast", "seed", "model_args",
                                                  "activations"})


def _audit_place(store: Store, run_id: str) -> list[str]:
    """``--series`` and ``--step`` of the latest audit of a stats-only run (an audit made
    it): the command computing it again records its audit beside that one, not at the time
    it runs in the model's default series (a point after the last checkpoint of a training
    run's series); none when no audit reads."""
    from .audits import read_audits

    try:
        mine = [a for a in read_audits(store) if a["run_id"] == run_id]
    except (OSError, ValueError):
        return []
    if not mine:
        return []
    latest = max(mine, key=lambda a: (a["started_at"], a["audit_id"]))
    return [f"--series {shlex.quote(latest['series'])}", f"--step {latest['step']}"]


def repair_command(store: Store, run_id: str, shard_size: int | None = None,
                   decompose_flags: str = "") -> str:
    """The ``bfd extract`` command line that re-creates the run's request, so that it finds
    the run's id and computes what is missing or damaged (a finished, intact shard is
    skipped); falls back to a hint when the request itself cannot be read or holds what no
    option gives. For a stats-only run, the ``bfd audit --no-store-activations`` command line
    that computes it again, decomposed with ``decompose_flags``, in the series and at the step
    of its latest audit.

    Every option of the request is written, also those at their default (``--sites``,
    ``--layers``, ``--dtype``), so that the command means the same run whatever the defaults
    of the bfd that runs it.

    Args:
        shard_size: images per shard of the run; read from its first shard marker when None.
        decompose_flags: of a stats-only run, the decompose options its audit is to give
            (``result_flags``: ``--prefix include --control-seed 3``; "": the defaults), e.g.
            those it was published with; a stored run's are ``bfd decompose``'s
            (``decompose_command``), not this command's.
    """
    from bfd.requests import model_arg_words

    from .runs import is_stats_only, read_request

    command = "bfd extract"
    hint = f"{command} with the options that created run {run_id} --store {store.root}"
    try:
        req = read_request(store, run_id)
    except (OSError, ValueError, KeyError, TypeError):
        return hint
    stats_only = is_stats_only(req.extra)
    if stats_only:
        command, shard_size = "bfd audit --no-store-activations", 0
        hint = f"{command} with the options that created run {run_id} --store {store.root}"
    extra = dict(req.extra)
    if set(extra) - _OPTION_EXTRA:  # written by a caller of the flows, not by an option
        return hint
    try:
        group = _open_group(store, run_id, "r")
        ipc = group.attrs[TEMPLATE_ATTR]["images_per_chunk"] if group is not None else None
    except (OSError, ValueError, KeyError):
        ipc = None
    h, w = req.img_size if isinstance(req.img_size, tuple | list) else (req.img_size,) * 2
    # the request's paths are absolute (bfd.files.input_path): the command works from any
    # folder (a run made before may hold them relative to the folder it was made in)
    parts = [command, f"--model {shlex.quote(req.model)}",
             f"--weights {shlex.quote(req.weights)}",
             f"--images {shlex.quote(req.images)}", f"--n-images {req.n_images}",
             f"--layers {','.join(map(str, req.layers))}", f"--sites {','.join(req.sites)}"]
    if h == w:  # the option sets a square size; a non-square one is the model's default
        parts.append(f"--img-size {h}")
    parts.append(f"--dtype {req.dtype}")
    if ipc is not None:
        parts.append(f"--images-per-chunk {ipc}")
    if extra.get("seed", 0):
        parts.append(f"--seed {extra['seed']}")
    if extra.get("autocast", "none") != "none":
        parts.append(f"--autocast {extra['autocast']}")
    parts += model_arg_words(extra.get("model_args") or {})
    if shard_size is None:
        markers = marker_files(store, run_id)
        try:
            first = read_marker(markers[0]) if 0 in markers else None
        except DamagedStoreError:
            first = None
        if first is not None and first["stop"] < req.n_images:  # a whole shard: its size
            shard_size = first["stop"] - first["start"]
    if shard_size and shard_size != ipc:
        parts.append(f"--images-per-shard {shard_size}")
    if stats_only:
        parts += _audit_place(store, run_id) + ([decompose_flags] if decompose_flags else [])
    parts.append(f"--store {shlex.quote(str(store.root))}")
    if req.code_version != bfd.__version__:  # a part of the run id no option gives
        parts.append(f"(under bfd {req.code_version}, which made the run: bfd "
                     f"{bfd.__version__} computes another run of these options)")
    return " ".join(parts)
