"""A file named in a request has one spelling (``bfd.files.input_path``): ``imgs``,
``./imgs/`` and ``/abs/imgs`` (and a weights file likewise) are one request, one run id,
whatever folder the command runs in; a run made before, with a path as typed, is still found
from the folder it was made in."""

from __future__ import annotations

import os
import shlex

import pytest
from checkpoints import AUDIT, make_checkpoints
from conftest import run_cli
from test_reuse import bfd_without_prefect_api, image_folder, options

from bfd.files import input_path, same_input
from bfd.storage import (
    Store,
    list_runs,
    read_audits,
    read_request,
    read_table,
    repair_command,
    verify_run,
)
from bfd.tasks.request_key import request_identity


def test_one_spelling_of_a_path(tmp_path, monkeypatch):
    """Relative, ``./``, trailing ``/``, ``..`` and a linked folder give one absolute path; the
    last name is kept (a linked ``last.pth``), and the values that name no file stay."""
    real = tmp_path / "real"
    (real / "imgs").mkdir(parents=True)
    (real / "step_2.pth").write_bytes(b"x")
    (tmp_path / "link").symlink_to(real)
    (real / "last.pth").symlink_to(real / "step_2.pth")
    monkeypatch.chdir(tmp_path / "link")  # the process sees the folder's real path
    want = str(real / "imgs")
    for spelling in ("imgs", "./imgs/", "imgs/.", f"{real}/imgs", f"{tmp_path}/link/imgs/",
                     "../real/imgs", "imgs/../imgs"):
        assert input_path(spelling) == want, spelling
        assert input_path(input_path(spelling)) == want
    assert input_path("last.pth") == str(real / "last.pth")
    assert input_path(".") == str(real) and input_path("/") == "/"
    for value in ("samples", "random", "pretrained", ""):
        assert input_path(value) == value
    monkeypatch.setenv("HOME", str(real))
    assert input_path("~/imgs") == want
    # a request made before holds the path as typed: it names the same folder from here
    assert same_input("./imgs/", want) and same_input(want, want)
    # a request key recorded before: its checkpoint counts as audited from this folder
    inputs = {"model": "m", "weights": "a.pth", "weights_sha256": "0" * 64, "n_listed": 2}
    assert request_identity({**inputs, "images": "./imgs/"}) == request_identity(
        {**inputs, "images": want, "weights": "b.pth"})
    assert request_identity({**inputs, "images": "other"}) != request_identity(
        {**inputs, "images": want})
    assert not same_input("other", want)
    assert not same_input("samples", str(real / "samples"))  # the embedded images, no folder


@pytest.mark.slow
def test_an_audit_is_one_run_however_its_paths_are_spelled(tmp_path, prefect_harness, capsys,
                                                          monkeypatch):
    """``--images imgs --weights ckpt.safetensors`` from their folder, then ``./imgs/`` and
    ``./ckpt.safetensors``, then both absolute from another folder: one run id; the second
    and third audits are answered as already computed (the third without Prefect, from its
    request key), and the run's request holds the absolute paths."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    images = image_folder(work / "imgs")
    elsewhere.mkdir()
    weights = work / "ckpt.safetensors"
    weights.write_bytes(make_checkpoints(tmp_path / "ckpts")[0].read_bytes())
    store = tmp_path / "store"
    monkeypatch.chdir(work)

    code, out1, err = run_cli([*options("imgs", "ckpt.safetensors", store, 1),
                               "--no-dashboard"], capsys)
    assert code == 0, err
    code, out2, err = run_cli([*options("./imgs/", "./ckpt.safetensors", store, 2),
                               "--no-dashboard"], capsys)
    assert code == 0, err
    ran, out3, err3 = bfd_without_prefect_api([*options(images, weights, store, 3),
                                               "--no-dashboard"], tmp_path, cwd=elsewhere)
    assert ran["code"] == 0 and ran["loaded"] == [], err3
    assert "is already computed: the audit is recorded without a Prefect flow run" in err3

    audits = {a["step"]: a for a in read_audits(Store(store), "s")}
    (rid,) = {a["run_id"] for a in audits.values()}
    assert f"run {rid} computed" in out1
    assert f"run {rid} reused, nothing recomputed" in out2
    assert f"run {rid} reused, nothing recomputed" in out3
    assert [r["run_id"] for r in read_table(Store(store), "runs").to_pylist()] == [rid]
    assert list_runs(Store(store)) == [rid]
    request = read_request(Store(store), rid)
    assert (request.weights, request.images) == (str(weights), str(images))
    # the same run: drift compares it with itself, nothing flagged
    assert [audits[s]["prev_audit_id"] for s in (2, 3)] == [audits[1]["audit_id"],
                                                             audits[2]["audit_id"]]
    assert audits[2]["drift_note"] is None and audits[2]["n_flagged"] == 0


def extract_argv(weights: str, images: str, store) -> list[str]:
    return ["extract", "--model", AUDIT["model"], "--weights", weights, "--images", images,
            "--img-size", str(AUDIT["img_size"]), "--layers", "0", "--dtype", "float32",
            "--images-per-chunk", "3", "--store", str(store)]


@pytest.mark.slow
def test_a_repair_command_works_from_any_folder(tmp_path, prefect_harness, capsys,
                                                monkeypatch):
    """A run extracted with relative paths: ``bfd extract`` of another spelling finds it, and
    from another folder ``bfd verify`` names absolute paths, so that its repair command,
    run there, repairs that run (not another one)."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    image_folder(work / "imgs")
    elsewhere.mkdir()
    weights = work / "ckpt.safetensors"
    weights.write_bytes(make_checkpoints(tmp_path / "ckpts")[0].read_bytes())
    store = tmp_path / "store"
    monkeypatch.chdir(work)
    code, out, err = run_cli(extract_argv("ckpt.safetensors", "imgs", store), capsys)
    assert code == 0, err
    (rid,) = list_runs(Store(store))
    assert run_cli(extract_argv("./ckpt.safetensors", "imgs/", store), capsys)[1] == out

    chunk = next(p for p in sorted((store / "bfd.zarr" / rid / "attn_in" / "c").rglob("*"))
                 if p.is_file())
    chunk.unlink()
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(["verify", rid, "--store", str(store)], capsys)
    assert code == 1 and "bfd: but" not in err, err  # its weights file is there, from here
    command = repair_command(Store(store), rid)
    assert f"--weights {weights} --images {work / 'imgs'} " in command
    assert command in err
    argv = shlex.split(command)
    assert argv[0] == "bfd"
    code, out, err = run_cli(argv[1:], capsys)
    assert code == 0 and out.strip() == f"run {rid} extracted into {store}", err
    assert list_runs(Store(store)) == [rid] and verify_run(Store(store), rid) == []


@pytest.mark.slow
def test_a_run_made_with_a_path_as_typed_is_found_again(tmp_path, prefect_harness, capsys,
                                                        monkeypatch):
    """A store made before paths had one spelling holds ``imgs`` and ``ckpt.safetensors`` as
    typed (the run id hashes them). The same audit from the same folder finds that run:
    nothing is recomputed, its request stays as it was, and the next audit is answered from
    the request key without Prefect."""
    import importlib

    import bfd.files

    work = tmp_path / "work"
    images = image_folder(work / "imgs")
    weights = work / "ckpt.safetensors"
    weights.write_bytes(make_checkpoints(tmp_path / "ckpts")[0].read_bytes())
    store = tmp_path / "store"
    monkeypatch.chdir(work)
    argv = [*options("imgs", "ckpt.safetensors", store, 1), "--no-dashboard"]
    modules = ("bfd.flows.params", "bfd.tasks.extract", "bfd.tasks.request_key", "bfd.files")
    for module in modules:  # imported before: their input_path is bfd.files' own
        importlib.import_module(module)
    with monkeypatch.context() as m:  # the code before: paths kept as typed
        for module in modules:
            m.setattr(f"{module}.input_path", lambda value: value)
        assert run_cli(argv, capsys)[0] == 0
        assert bfd.files.input_path("imgs") == "imgs"
    (old,) = list_runs(Store(store))
    assert read_request(Store(store), old).images == "imgs"
    runs_before = read_table(Store(store), "runs").to_pylist()

    code, out, err = run_cli([*options("./imgs/", str(weights), store, 2), "--no-dashboard"],
                             capsys)
    assert code == 0, err
    assert f"run {old} reused, nothing recomputed" in out, out
    assert list_runs(Store(store)) == [old]
    assert read_table(Store(store), "runs").to_pylist() == runs_before
    assert read_request(Store(store), old).images == "imgs"
    ran, _, err = bfd_without_prefect_api([*options(images, weights, store, 3),
                                           "--no-dashboard"], tmp_path, cwd=work)
    assert ran["code"] == 0 and ran["loaded"] == [], err
    assert [a["run_id"] for a in read_audits(Store(store), "s")] == [old] * 3
    assert os.getcwd() == str(work)
