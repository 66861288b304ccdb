"""Input files named on the command line: which suffixes a weights file may have, whether
its first bytes are those of a checkpoint (``check_checkpoint``), and the sha256 of a file's
bytes. Imports neither torch nor timm, so that a request can be checked and keyed without
them (``bfd.tasks.request_key``).

A file is hashed once per process while it is unchanged: ``bfd audit`` keys a request
(``bfd.tasks.request_key``: the weights file and every image) before the flow's planner
builds the same request (``bfd.tasks.extract.prepare_run``), and the planner reuses those
digests. A digest is reused only for the same file (device and inode) with the same size,
modification and change times (``st_ctime_ns`` moves on every write, even one that sets
the modification time back). File systems stamp times from a coarse clock (a few ms on
Linux, up to 2 s on some), so two writes within one tick can leave the same stamp: as git
does for its index, a file changed less than ``SETTLED_NS`` before it is hashed, or while
it is, is not remembered.

A file named in a request is named by one spelling (``input_path``): ``imgs``, ``./imgs/``
and ``/work/imgs`` are one folder, and a run's id hashes the name (docs/layout.md, "Run
ids").
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickletools
import struct
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Final, Generic, TypeVar

_V = TypeVar("_V")

WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")


def local_cores() -> int:
    """The cores this process may run on (its CPU affinity where the system says it): the
    threads that hash a source's images (``bfd.images``) and the flows' task threads."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1

# Digests kept, the least recently used dropped first: about 0.2 KB each, so a listing of
# this many images costs some 25 MB; a longer one is hashed again as before.
CACHE_SIZE: Final[int] = 1 << 17

# How long ago a file must have last changed for its digest to be remembered.
SETTLED_NS: Final[int] = 2_000_000_000

# The largest header a .safetensors file may have (the safetensors library refuses larger).
_SAFETENSORS_MAX_HEADER: Final[int] = 100_000_000


class _StampCache(Generic[_V]):
    """Values by file ``_stamp``, at most ``size`` of them, the least recently used dropped
    first. Not locked: call it under ``_lock``. Whether a value may be kept (the hash cache's
    "settled" rule) is the caller's choice."""

    def __init__(self, size: int) -> None:
        self._items: OrderedDict[tuple[int, ...], _V] = OrderedDict()
        self._size = size

    def get(self, stamp: tuple[int, ...]) -> _V | None:
        value = self._items.get(stamp)
        if value is not None:
            self._items.move_to_end(stamp)
        return value

    def put(self, stamp: tuple[int, ...], value: _V) -> None:
        self._items[stamp] = value
        if len(self._items) > self._size:
            self._items.popitem(last=False)


_lock = threading.Lock()
_digests: _StampCache[str] = _StampCache(CACHE_SIZE)
_bytes_hashed = 0
# The most of a checkpoint's pickle read to tell a state_dict from a model object: the tensors'
# bytes are not in it, so a model's pickle is some 100 KB.
_PICKLE_READ: Final[int] = 16 << 20
# Globals of a pickled state_dict (or a dict holding one): anything else is the object's class.
_STATE_DICT_GLOBALS: Final[tuple[str, ...]] = ("collections.", "copyreg.", "builtins.",
                                               "torch._utils.", "_codecs.")

# Weights files whose first bytes passed ``check_checkpoint``, by ``_stamp``: the command's
# request check, the extraction's and the model's load each ask, and it is read once.
# Unlike the hash cache it keeps a file however recently it changed (no "settled" rule), by
# choice: a file rewritten within one tick of the clock at the same size may pass unread, and
# the load then says what is wrong with it (a file that passes may fail to load anyway).
_CHECKED_SIZE: Final[int] = 1024
_checked: _StampCache[bool] = _StampCache(_CHECKED_SIZE)
_headers_read = 0


# The values of --weights and --images that name no file (bfd.images.SAMPLES is "samples").
NOT_PATHS: Final[frozenset[str]] = frozenset({"pretrained", "random", "samples"})


def input_path(value: str) -> str:
    """The one spelling of a file or folder named by ``--weights`` or ``--images``: ``~``
    expanded, made absolute from the current directory, the path of the folder it lies in
    resolved as the system resolves it (``.``, ``..``, symbolic links): ``imgs``, ``./imgs/``,
    ``/work/imgs`` and ``/home/u/work/imgs`` through a linked ``/home/u`` are one spelling;
    ``pretrained``, ``random``, ``samples`` and ``""`` as they are.

    The last name is kept as given, not resolved: a ``last.pth`` linked to each new
    checkpoint stays ``last.pth`` (the user's name for it, and the default series of its
    audits, ``bfd.tasks.audits.default_series``); what the file holds is its sha256, which the
    run request keeps beside it.
    """
    if not isinstance(value, str) or value in NOT_PATHS or not value:
        return value
    path = os.path.join(os.getcwd(), os.path.expanduser(value))  # an absolute value stays
    folder, name = os.path.split(path.rstrip(os.sep) or os.sep)
    if name in ("", ".", ".."):  # the root, or a folder named by . or ..
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(folder), name)


def same_input(stored: str, given: str) -> bool:
    """Whether a path a stored run request holds names what ``given`` (``input_path``'s
    spelling) names: the same spelling, or another one of a request made before paths were
    spelled one way (``./imgs/``; a relative one taken from the current directory)."""
    return stored == given or (isinstance(stored, str) and stored not in NOT_PATHS
                               and input_path(stored) == given)


def headers_read() -> int:
    """Weights files ``check_checkpoint`` has read in this process (a file it has passed, and
    that is unchanged since, is not read again), for tests that check how often."""
    return _headers_read


def bytes_hashed() -> int:
    """Bytes ``sha256_file`` has read in this process, for tests and benchmarks that check
    which files a command reads."""
    return _bytes_hashed


def _stamp(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sha256_file(path: str | Path) -> str:
    """sha256 of the file's bytes, as 64 hex digits, read in blocks of 1 MiB (once per
    process while the file is unchanged: see the module docstring)."""
    global _bytes_hashed
    with open(path, "rb") as f:
        stamp = _stamp(os.fstat(f.fileno()))
        with _lock:
            digest = _digests.get(stamp)
            if digest is not None:
                return digest
        h = hashlib.sha256()
        n = 0
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
        settled = (_stamp(os.fstat(f.fileno())) == stamp
                   and time.time_ns() - max(stamp[3:]) > SETTLED_NS)
    digest = h.hexdigest()
    with _lock:
        _bytes_hashed += n
        if settled:
            _digests.put(stamp, digest)
    return digest


def _safetensors_fault(f, size: int) -> str | None:
    """What is wrong with an open .safetensors file, from its header alone; None if nothing:
    an 8-byte length, a JSON header that long, and tensor data exactly as long as it says."""
    if size < 8:
        return f"{size} bytes, shorter than a header"
    (n,) = struct.unpack("<Q", f.read(8))
    if not 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER):
        return f"its header length {n} does not fit its {size} bytes"
    try:
        header = json.loads(f.read(n))
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "its header is not the JSON of a tensor table"
    if 8 + n + max(ends, default=0) != size:
        return (f"{size} bytes where its header describes {8 + n + max(ends, default=0)} "
                "(truncated?)")
    return None


def _torch_fault(f, size: int) -> str | None:
    """What is wrong with an open torch checkpoint, from its start or its zip directory
    alone; None if nothing: a zip holding a ``data.pkl`` (``torch.save``) or a pickle
    (``torch.save`` before torch 1.6)."""
    head = f.read(4)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return None
    if head != b"PK\x03\x04":
        return f"{size} bytes that are neither a torch zip file nor a pickle"
    try:
        names = zipfile.ZipFile(f).namelist()
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        return f"a damaged or truncated zip file ({' '.join(str(e).split())})"
    if not any(name.endswith("data.pkl") for name in names):
        return "a zip file that holds no data.pkl"
    return None


def _model_class(data: bytes, pickles: int) -> str | None:
    """The class of the model object that the first ``pickles`` pickles of ``data`` hold
    (``torch.save(model)``), else None: their globals, read without unpickling anything,
    name a ``torch.nn`` layer class."""
    stream = io.BytesIO(data)
    names: list[str] = []
    strings: list[str] = []
    with contextlib.suppress(Exception):  # a pickle cut at the read's end: what was seen
        for _ in range(pickles):
            for op, arg, _pos in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    if not any(name.startswith("torch.nn.modules.") for name in names):
        return None
    return next(n for n in names if not n.startswith(_STATE_DICT_GLOBALS)
                and not n.endswith("Storage"))


def _torch_model_class(f) -> str | None:
    """``_model_class`` of an open torch checkpoint that ``_torch_fault`` passed: its
    ``data.pkl``, or the pickles of the format before torch 1.6 (a magic number, the
    protocol, the system's info, then the object)."""
    f.seek(0)
    if f.read(1) == b"\x80":
        f.seek(0)
        return _model_class(f.read(_PICKLE_READ), 4)
    f.seek(0)
    try:
        archive = zipfile.ZipFile(f)
        member = next(name for name in archive.namelist() if name.endswith("data.pkl"))
        with archive.open(member) as pickle:
            data = pickle.read(_PICKLE_READ)
    except Exception:  # noqa: BLE001 - a damaged member: the load says what is wrong
        return None
    return _model_class(data, 1)


def check_checkpoint(path: str | Path) -> None:
    """Refuses a weights file that no checkpoint loader can read, from its first bytes (or a
    zip's directory) only: neither hashed nor loaded, so that a command refuses it before it
    records or computes anything. A file that passes may still fail to load (damaged tensor
    data in a zip, tensors that do not fit the model, NaN values): the load says so. A file
    that passed is not read again while it is unchanged (its ``_stamp``).

    Raises:
        ValueError: The file is not a ``.safetensors`` file (by its suffix) as its header
            describes it, or not a torch checkpoint (a zip with a ``data.pkl``, or a pickle).
        OSError: The file cannot be read.
    """
    global _headers_read
    safetensors = Path(path).suffix.lower() == ".safetensors"
    with open(path, "rb") as f:
        stamp = _stamp(os.fstat(f.fileno()))
        with _lock:
            if _checked.get(stamp):
                return
            _headers_read += 1
        fault = _safetensors_fault(f, stamp[2]) if safetensors else _torch_fault(f, stamp[2])
        model = None if safetensors or fault is not None else _torch_model_class(f)
    if fault is not None:
        kind = ".safetensors file" if safetensors else "torch checkpoint"
        raise ValueError(f"weights file {str(path)!r} is not a readable {kind}: {fault}")
    if model is not None:
        raise ValueError(f"weights file {str(path)!r} is a pickled model object ({model}, "
                         "saved by torch.save(model)), not a state_dict or .safetensors file; "
                         "convert it once in Python, for a file you trust: model = "
                         "torch.load(path, weights_only=False); torch.save(model.state_dict(), "
                         "path)")
    with _lock:
        _checked.put(stamp, True)
