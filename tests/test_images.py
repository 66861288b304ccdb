"""bfd.images: listing, odd and broken files, the embedded samples, batching that never stops."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bfd import images as I


def _to_tensor(img: Image.Image) -> torch.Tensor:
    assert img.mode == "RGB"
    arr = np.asarray(img.resize((16, 16)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def _jpeg_bytes(size=(48, 40)) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


GOOD = {  # id -> (width, height)
    "cmyk.jpg": (40, 30),
    "gray16.png": (20, 10),
    "palette_t.png": (12, 12),
    "rgba.png": (8, 6),
    "gray.png": (9, 7),
    "bw.png": (5, 5),
    "la.png": (6, 4),
    "nested/deeper/upper.JPG": (48, 40),
}
BAD = {
    "truncated.jpg": "cannot decode",
    "x.png": "not a recognised image format",
    "zero.png": "empty file (0 bytes)",
}


@pytest.fixture
def odd_folder(tmp_path):
    d = tmp_path / "imgs"
    (d / "nested" / "deeper").mkdir(parents=True)
    (d / ".hidden").mkdir()
    Image.new("CMYK", (40, 30), (0, 128, 255, 0)).save(d / "cmyk.jpg")
    ramp = (np.arange(200, dtype=np.uint16).reshape(10, 20) * 329).astype(np.uint16)
    Image.fromarray(ramp).save(d / "gray16.png")
    pal = Image.new("P", (12, 12), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 6, 12))
    pal.save(d / "palette_t.png", transparency=0)
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (10, 20, 30, 255)
    Image.fromarray(rgba).save(d / "rgba.png")
    Image.new("L", (9, 7), 77).save(d / "gray.png")
    Image.new("1", (5, 5), 1).save(d / "bw.png")
    Image.new("LA", (6, 4), (50, 0)).save(d / "la.png")
    (d / "nested" / "deeper" / "upper.JPG").write_bytes(_jpeg_bytes())
    (d / "truncated.jpg").write_bytes(_jpeg_bytes()[:400])
    (d / "x.png").write_text("this is not an image\n")
    (d / "zero.png").write_bytes(b"")
    (d / ".hidden" / "skip.png").write_bytes(_jpeg_bytes())
    (d / "notes.txt").write_text("not listed")
    return d


def test_folder_listing_is_sorted_recursive_and_hashed(odd_folder) -> None:
    records = I.list_images(str(odd_folder))
    assert [r.id for r in records] == sorted(set(GOOD) | set(BAD))
    assert [r.index for r in records] == list(range(len(records)))
    zero = next(r for r in records if r.id == "zero.png")
    assert zero.sha256 == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    # hashed on threads (images.HASH_THREADS), each record still its own file's hash
    assert [r.sha256 for r in records] == [
        hashlib.sha256(Path(r.path).read_bytes()).hexdigest() for r in records]
    assert I.list_images(str(odd_folder), n_images=3) == records[:3]


def _rglob_listing(root: Path) -> list[str]:
    """The image files of a folder as ``Path.rglob`` finds them (brute force)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.suffix.lower() in I.IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _settle(root: Path) -> None:
    """Every folder of the tree last changed a minute ago, as a user's image folder has."""
    past = time.time_ns() - 60 * 10**9
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, ns=(past, past))


def test_a_folder_is_walked_once_while_unchanged(odd_folder) -> None:
    """The listing equals rglob's every time; a settled, unchanged tree is walked once, and
    any entry added, removed or renamed in any of its folders is seen."""
    from bfd.image_folders import walks

    (odd_folder / "link.png").symlink_to(odd_folder / "gray.png")  # a link to a file counts
    (odd_folder / "dangling.png").symlink_to(odd_folder / "nowhere.png")
    (odd_folder / "linked-folder").symlink_to(odd_folder / "nested")  # not followed

    def listed() -> list[str]:
        ids = [r.id for r in I.list_images(str(odd_folder))]
        assert ids == _rglob_listing(odd_folder)
        return ids

    _settle(odd_folder)
    before = walks()
    first = listed()
    assert "link.png" in first and not any(i.startswith("linked-folder") for i in first)
    assert listed() == first and I.check_source(str(odd_folder)) == len(first)
    assert walks() - before == 1
    changes = [
        lambda: (odd_folder / "nested" / "deeper" / "new.png").write_bytes(b"x"),  # added
        lambda: (odd_folder / "nested" / "deeper" / "upper.JPG").unlink(),  # removed
        lambda: (odd_folder / "gray.png").rename(odd_folder / "grey.png"),  # renamed
        lambda: (odd_folder / "nested" / "sub").mkdir(),  # a new folder, then its image
        lambda: (odd_folder / "nested" / "sub" / "a.png").write_bytes(b"x"),
    ]
    for change in changes:
        change()
        _settle(odd_folder)
        before = walks()
        changed = listed()
        assert changed != first or change is changes[3]
        assert listed() == changed and walks() - before == 1
        first = changed
    # a tree changed within bfd.files.SETTLED_NS of its walk is walked each time
    (odd_folder / "fresh.png").write_bytes(b"x")
    before = walks()
    assert listed() == listed() and walks() - before == 2


def test_odd_images_decode_to_rgb_and_bad_ones_report_reasons(odd_folder) -> None:
    records = {r.id: r for r in I.list_images(str(odd_folder))}
    for rid, size in GOOD.items():
        img = I.load_image(records[rid])
        assert (img.mode, img.size) == ("RGB", size), rid
    for rid, reason in BAD.items():
        with pytest.raises(I.ImageDecodeError, match=re.escape(reason)):
            I.load_image(records[rid])

    gray16 = np.asarray(I.load_image(records["gray16.png"]))
    assert gray16[-1, -1, 0] == round(199 * 329 / 257)  # rescaled, not clipped at 255
    assert (gray16[..., 0] == gray16[..., 2]).all()
    rgba = np.asarray(I.load_image(records["rgba.png"]))
    assert tuple(rgba[0, 0]) == (10, 20, 30) and tuple(rgba[0, -1]) == (255, 255, 255)
    pal = np.asarray(I.load_image(records["palette_t.png"]))
    assert tuple(pal[0, 0]) == (0, 0, 255) and tuple(pal[0, -1]) == (255, 255, 255)
    assert tuple(np.asarray(I.load_image(records["la.png"]))[0, 0]) == (255, 255, 255)


def test_iter_batches_never_raises_and_keeps_slots(odd_folder) -> None:
    records = I.list_images(str(odd_folder))
    by_index = {r.index: r.id for r in records}
    for workers in (0, 2):
        batches = list(I.iter_batches(records, _to_tensor, batch_size=4, num_workers=workers))
        assert len(batches) == 3  # 11 records in groups of 4
        good = [i for b in batches for i in b.indices]
        errors = dict(e for b in batches for e in b.errors)
        assert sorted(good + list(errors)) == list(range(len(records)))
        assert {by_index[i] for i in good} == set(GOOD)
        assert {by_index[i]: msg for i, msg in errors.items()}.keys() == BAD.keys()
        for i, msg in errors.items():
            assert BAD[by_index[i]] in msg
        for b in batches:
            expected = (len(b.indices), 3, 16, 16) if b.indices else (0,)
            assert b.images.shape == expected
    only_bad = [r for r in records if r.id in BAD]
    (batch,) = I.iter_batches(only_bad, _to_tensor, batch_size=8)
    assert batch.indices == [] and batch.images.shape == (0,) and len(batch.errors) == 3
    with pytest.raises(ValueError, match="batch_size must be a positive integer; got 0"):
        next(I.iter_batches(records, _to_tensor, batch_size=0))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("prefetch", [0, 1, 5])
def test_iter_batches_align_and_prefetch_keep_order(odd_folder, workers, prefetch) -> None:
    records = I.list_images(str(odd_folder))  # 11 records
    batches = list(I.iter_batches(records, _to_tensor, batch_size=4, num_workers=workers,
                                  align=6, prefetch=prefetch))
    slots = [sorted([*b.indices, *(i for i, _ in b.errors)]) for b in batches]
    # groups of at most 4 that restart at record 6: 0-3, 4-5, 6-9, 10
    assert slots == [[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10]]
    plain = list(I.iter_batches(records, _to_tensor, batch_size=4, align=6))
    for a, b in zip(batches, plain, strict=True):
        assert a.indices == b.indices and a.errors == b.errors
        assert torch.equal(a.images, b.images)
    with pytest.raises(ValueError, match="align must be a positive integer; got 0"):
        next(I.iter_batches(records, _to_tensor, batch_size=4, align=0))


def test_changed_file_is_skipped(odd_folder) -> None:
    records = I.list_images(str(odd_folder))
    Image.new("L", (9, 7), 78).save(odd_folder / "gray.png")
    (batch,) = I.iter_batches([r for r in records if r.id == "gray.png"], _to_tensor, 4)
    assert batch.indices == [] and "changed since listing" in batch.errors[0][1]


def test_manifest_source(odd_folder, tmp_path) -> None:
    manifest = odd_folder / "list.txt"
    absolute = odd_folder / "gray.png"
    manifest.write_text(f"# a comment\n\ncmyk.jpg\n  nested/deeper/upper.JPG  \n{absolute}\n"
                        "gone.png\n")
    records = I.list_images(str(manifest))
    assert [r.id for r in records] == ["cmyk.jpg", "nested/deeper/upper.JPG", str(absolute),
                                       "gone.png"]
    assert records[3].sha256 == ""
    batches = list(I.iter_batches(records, _to_tensor, batch_size=10))
    assert batches[0].indices == [0, 1, 2]
    assert batches[0].errors[0][0] == 3 and "cannot read" in batches[0].errors[0][1]
    manifest.write_text("cmyk.jpg\ncmyk.jpg\n")
    with pytest.raises(ValueError, match="lists 'cmyk.jpg' twice"):
        I.list_images(str(manifest))
    # one file however spelled; a byte-order mark (Notepad's) is no part of the first path
    # (trial 24: '\ufeffcmyk.jpg' was a missing file, ./cmyk.jpg a second image)
    manifest.write_text("cmyk.jpg\n./cmyk.jpg\n")
    with pytest.raises(ValueError, match=r"lists './cmyk.jpg' twice \(as 'cmyk.jpg' too\)"):
        I.list_images(str(manifest))
    manifest.write_bytes("\ufeffcmyk.jpg\r\ngray.png\r\n".encode())
    assert [(r.id, bool(r.sha256)) for r in I.list_images(str(manifest))] == [
        ("cmyk.jpg", True), ("gray.png", True)]
    # a manifest of which fewer than 2 entries name a file (a CSV with a header and a label
    # column): refused before any work, saying how its lines are read (trial 24: the audit
    # loaded the model, extracted, then said "0 decoded images" with no reason)
    manifest.write_text("path,label\ncmyk.jpg,1\ngray.png,2\n")
    for check in (I.list_images, I.check_source):
        with pytest.raises(ValueError, match=(
                r"list.txt': 0 of its 3 entries name a file; the first, 'path,label', is "
                rf"{odd_folder}/path,label. Each line is one path, relative to the manifest's "
                r"folder .*; BFD needs at least 2 images")):
            check(str(manifest))
    manifest.write_text("cmyk.jpg\ngone.png\n")  # one file: refused too
    with pytest.raises(ValueError, match="1 of its 2 entries name a file; the first, 'gone.png'"):
        I.check_source(str(manifest))
    manifest.write_text("gone.png\ncmyk.jpg\ngray.png\n")  # two: listed, the missing skipped
    assert I.check_source(str(manifest)) == 3


def test_a_folder_says_what_its_listing_leaves_out(tmp_path) -> None:
    """Links to folders (not followed) and files of image formats bfd does not list are left
    out of a folder's images; said in one note (trial 24: without a word)."""
    folder, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    for f in (folder, elsewhere):
        f.mkdir()
        for i in range(2):
            Image.new("L", (4, 4), i).save(f / f"{i}.png")
    assert I.folder_note(str(folder)) is None and I.folder_note("samples") is None
    (folder / "more").symlink_to(elsewhere, target_is_directory=True)
    (folder / "photo.avif").write_bytes(b"x")
    (folder / "scan.JFIF").write_bytes(b"x")
    (folder / ".hidden.avif").write_bytes(b"x")
    assert [r.id for r in I.list_images(str(folder))] == ["0.png", "1.png"]
    note = I.folder_note(str(folder))
    assert note.startswith(f"{folder} holds 1 link(s) to folders, not followed (more) and 2 "
                           "file(s) of image formats it does not list (photo.avif, scan.JFIF; "
                           "it lists .bmp, "), note
    assert note.endswith(": left out; a manifest of their paths lists them")
    # names found in the folder are printed, not acted on by the terminal (trial 31)
    (folder / "photo.avif").rename(folder / "clear\x1b[2J\u202e.avif")
    note = I.folder_note(str(folder))
    assert "clear\\x1b[2J\\u202e.avif" in note and "\x1b" not in note


def test_bad_sources_say_what_is_accepted(tmp_path, odd_folder) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist; expected a folder.*'samples'"):
        I.list_images(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="single image"):
        I.list_images(str(odd_folder / "gray.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="lists no images"):
        I.list_images(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="n_images must be a positive integer"):
        I.list_images("samples", 0)
    # an empty source (an unset shell variable) was the current folder, listed recursively;
    # a file name that is not UTF-8 failed the run's first JSON write, naming neither (trial
    # 24): each is refused in one line before any work
    for empty in ("", "  "):
        with pytest.raises(ValueError, match="is empty \\(an unset shell variable\\?\\)"):
            I.check_source(empty)
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.new("L", (4, 4)).save(odd / "good.png")
    (odd / os.fsdecode(b"bad\xff.png")).write_bytes((odd / "good.png").read_bytes())
    with pytest.raises(ValueError, match=r"image 'bad\\udcff.png' of .* not UTF-8 text; rename"):
        I.check_source(str(odd))


def test_manifest_sha256_tracks_ids_hashes_and_order() -> None:
    a = I.ImageRecord(0, "a.png", "11", "/x/a.png")
    b = I.ImageRecord(1, "b.png", "22", "/x/b.png")
    base = I.manifest_sha256([a, b])
    assert base == I.manifest_sha256([a, I.ImageRecord(1, "b.png", "22", "/elsewhere")])
    assert base != I.manifest_sha256([b, a])
    assert base != I.manifest_sha256([a, I.ImageRecord(1, "b.png", "23", "/x/b.png")])


def test_samples_are_distinct_deterministic_and_offline(monkeypatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("samples must not touch the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    I._sample_base.cache_clear()
    records = I.list_images("samples", 100)
    assert len(records) == 100 and len({r.sha256 for r in records}) == 100
    assert len({r.id for r in records}) == 100 and records[0].id == "samples/astronaut-000"
    assert I.list_images("samples", 100) == records
    assert len(I.list_images("samples")) == I.SAMPLES_DEFAULT_N
    for r in records[::9]:
        img = I.load_image(r)
        assert img.mode == "RGB" and min(img.size) >= 150
        assert I._sample_sha(np.asarray(img)) == r.sha256
    (batch,) = I.iter_batches(records[:5], _to_tensor, batch_size=5)
    assert batch.indices == [0, 1, 2, 3, 4] and batch.images.shape == (5, 3, 16, 16)
    with pytest.raises(I.ImageDecodeError, match="not a sample id"):
        I.load_image(I.ImageRecord(0, "samples/astronaut", "", None))


def test_a_copy_of_a_listed_image_is_marked_and_skipped(tmp_path) -> None:
    """Each content is decoded once: a later file of the same bytes is marked a duplicate of
    the first and skipped with that reason (trial 27: copies narrowed every interval); a
    source of copies of one file is refused before anything is hashed but its files."""
    import shutil

    from bfd.images import ImageDecodeError, check_source, list_images, load_image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(folder / f"a{k}.png")
    shutil.copyfile(folder / "a0.png", folder / "b.png")
    records = list_images(str(folder))
    assert [(r.id, r.duplicate_of) for r in records] == [
        ("a0.png", None), ("a1.png", None), ("b.png", "a0.png")]
    assert records[2].sha256 == records[0].sha256
    load_image(records[0])
    with pytest.raises(ImageDecodeError, match=r"^duplicate of a0.png \(the same bytes, sha256 "):
        load_image(records[2])
    assert check_source(str(folder)) == 3
    (folder / "a1.png").unlink()
    with pytest.raises(ValueError, match="are copies of one file"):
        check_source(str(folder))
