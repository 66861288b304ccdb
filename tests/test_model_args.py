"""``--model-arg KEY=VALUE``: a ViT built otherwise than its timm name's default (registers,
no class token, no qkv bias) is audited as built, is another run and another model than the
default's, and a checkpoint that does not fit says which ``--model-arg`` it needs."""

from __future__ import annotations

import csv
import io
import json
import re

import numpy as np
import pytest
import timm
import torch
from conftest import run_cli

from bfd import models
from bfd.requests import parse_model_arg
from bfd.storage import Store, open_activations, open_results, read_request
from bfd.tasks.drift import same_model
from bfd.tasks.extract import ExtractConfig, prepare_run
from bfd.tasks.request_key import key_of_config

BASE = ["--model", "test_vit", "--n-images", "8", "--img-size", "32", "--layers", "0",
        "--device", "cpu"]


def _save(path, **model_args) -> str:
    model = timm.create_model("test_vit", pretrained=False, img_size=32, **model_args)
    torch.save(model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpts")
    return {"reg4": _save(tmp / "reg4.pth", reg_tokens=4),
            "nocls": _save(tmp / "nocls.pth", class_token=False, global_pool="avg"),
            "nobias": _save(tmp / "nobias.pth", qkv_bias=False),
            # a fine-tune on 10 classes (the trial's checkpoints, all refused before)
            "tuned": _save(tmp / "tuned.pth", num_classes=10)}


def test_model_arg_values_are_python_or_json_literals_else_text():
    assert parse_model_arg("reg_tokens=4") == ("reg_tokens", 4)
    assert parse_model_arg("class_token=False") == ("class_token", False)
    assert parse_model_arg("class_token=false") == ("class_token", False)
    assert parse_model_arg("init_values=1e-5") == ("init_values", 1e-5)
    assert parse_model_arg("fc_norm=None") == ("fc_norm", None)
    assert parse_model_arg("global_pool=avg") == ("global_pool", "avg")
    assert parse_model_arg("global_pool='avg'") == ("global_pool", "avg")
    with pytest.raises(ValueError, match="--model-arg must be KEY=VALUE"):
        parse_model_arg("reg_tokens")


@pytest.mark.parametrize(("name", "hint"), [
    ("reg4", "the file holds 4 register token(s) (reg_token): give --model-arg reg_tokens=4"),
    ("nocls", "the file holds no class token (cls_token): give --model-arg class_token=False "
              "--model-arg global_pool='avg'"),
    ("nobias", "the file holds no qkv biases (blocks.*.attn.qkv.bias): give --model-arg "
               "qkv_bias=False"),
    ("tuned", "the file holds a classifier head of 10 classes (head.weight; no part of BFD): "
              "give --model-arg num_classes=10"),
])
def test_weights_that_do_not_fit_say_which_model_arg_they_need(files, name, hint):
    """The old line said only torch's shapes ('[1, 14, 14, -1]' is invalid ...)."""
    with pytest.raises(ValueError) as err:
        models.load_model("test_vit", files[name], img_size=32)
    line = str(err.value)
    assert "do not fit 'test_vit'" in line and line.endswith(hint) and "\n" not in line


def test_the_hinted_model_args_load_each_file(files):
    for name, args in {"reg4": {"reg_tokens": 4},
                       "nocls": {"class_token": False, "global_pool": "avg"},
                       "nobias": {"qkv_bias": False}, "tuned": {"num_classes": 10}}.items():
        model, info = models.load_model("test_vit", files[name], img_size=32, model_args=args)
        state = torch.load(files[name], weights_only=True)
        # timm leaves a classifier of other classes than its default at init: BFD reads none
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()
                   if not k.startswith("head.")), name
        assert (info.has_cls, info.num_reg_tokens) == (name != "nocls", 4 * (name == "reg4"))


def test_a_register_checkpoint_is_audited_with_its_registers_as_prefix_tokens(
        prefect_harness, files, tmp_path, capsys):
    store = str(tmp_path / "store")
    code, out, err = run_cli(["audit", *BASE, "--weights", files["reg4"], "--model-arg",
                              "reg_tokens=4", "--store", store, "--no-dashboard"], capsys)
    assert code == 0, err
    # another build of test_vit: a series of its own by default
    assert f"of series test_vit[reg_tokens=4]@{files['reg4']} " in out, out
    rid = out.split(" run ", 1)[1].split()[0].rstrip(",")
    request = read_request(Store(store), rid)
    assert request.extra["model_args"] == {"reg_tokens": 4}
    acts = open_activations(Store(store), rid)
    types = [str(t) for t in acts["token_type"].values]
    assert types[:5] == ["cls"] + ["register"] * 4 and set(types[5:]) == {"patch"}
    info = json.loads(acts.attrs["model_info"])
    assert (info["num_prefix_tokens"], info["num_reg_tokens"]) == (5, 4)
    assert json.loads(acts.attrs["config_json"])["extra"]["model_args"] == {"reg_tokens": 4}
    code, out, err = run_cli(["runs", "--store", store, "--format", "csv"], capsys)
    assert code == 0, err
    assert [(r["run_id"], r["model"]) for r in csv.DictReader(io.StringIO(out))] == [
        (rid, 'test_vit {"reg_tokens":4}')], out
    # the model tensors are the file's: Stage 2 reads the checkpoint's qkv weight
    state = torch.load(files["reg4"], weights_only=True)
    from bfd.storage import read_model_tensors

    tensors = read_model_tensors(Store(store), rid)
    assert np.array_equal(np.asarray(tensors["qkv_weight"].values)[0],
                          state["blocks.0.attn.qkv.weight"].numpy())


def test_other_model_args_are_another_run_and_none_keep_the_run_id(tmp_path, capsys):
    """A request without model arguments keeps the run id and key it had before they
    existed (its RunRequest.extra and key inputs unchanged); two values are two runs."""
    base = dict(model="test_vit", weights="random", n_images=4, img_size=32, layers=(0,),
                images_per_chunk=4, device="cpu")
    plain = prepare_run(str(tmp_path / "s"), ExtractConfig(**base))
    request = read_request(Store(str(tmp_path / "s")), plain.run_id)
    assert request.extra == {"autocast": "none", "seed": 0}
    key, inputs = key_of_config(ExtractConfig(**base).to_dict())
    assert "model_args" not in inputs
    ids = {prepare_run(str(tmp_path / "s"), ExtractConfig(**base, model_args=args)).run_id
           for args in ({"reg_tokens": 4}, {"reg_tokens": 2})}
    assert len(ids | {plain.run_id}) == 3
    keys = {key_of_config(ExtractConfig(**base, model_args=args).to_dict())[0]
            for args in ({"reg_tokens": 4}, {"reg_tokens": 2})}
    assert len(keys | {key}) == 3
    # bfd runs names each run's model with its arguments (runs extracted, not published)
    code, out, err = run_cli(["runs", "--store", str(tmp_path / "s"), "--format", "csv"],
                             capsys)
    assert code == 0, err
    assert {r["model"] for r in csv.DictReader(io.StringIO(out))} == {
        "test_vit", 'test_vit {"reg_tokens":4}', 'test_vit {"reg_tokens":2}'}, out


def test_an_audit_of_one_name_with_other_model_args_is_not_compared_as_drift(
        prefect_harness, tmp_path, capsys):
    """One series given audits of test_vit and of test_vit with 4 registers: layer l of one
    is not layer l of the other, no change of one model, and the second audit says so."""
    common = [*BASE, "--weights", "random", "--series", "mine", "--store",
              str(tmp_path / "store"), "--no-dashboard"]
    code, out, err = run_cli(["audit", *common, "--step", "1"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["audit", *common, "--step", "2", "--model-arg", "reg_tokens=4"],
                             capsys)
    assert code == 0, err
    assert ('previous audit was of another model (test_vit, not test_vit {"reg_tokens":4}); '
            "not compared") in out + err, out + err
    # its per-layer and chance-corrected tables (they read "(no rows)": the bare name's query)
    assert 'BFD audit of test_vit {"reg_tokens":4} (weights: random)' in out, out
    # which tokens its shares are over: the patches, the class token and 4 registers left out
    assert ("\npositions: the 2 x 2 = 4 patches; its 5 prefix tokens (class, distillation or "
            "register) left out (--prefix exclude, the default)\n") in out, out
    assert "(no rows)" not in out and len(re.findall(r"(?m)^ +0 ", out)) >= 2, out

    # ... and two models in SQL: model_summary had one row, the later run's, under test_vit
    store = str(tmp_path / "store")

    def query(name, *params):
        code, out, err = run_cli(["query", name, "--store", store, "--format", "csv",
                                  *[x for p in params for x in ("--param", p)]], capsys)
        return code, list(csv.DictReader(io.StringIO(out))), err

    registers = 'test_vit {"reg_tokens":4}'
    code, rows, err = query("model_summary")
    assert code == 0, err
    runs = {r["model"]: r["run_id"] for r in rows}
    assert sorted(runs) == ["test_vit", registers] and len(set(runs.values())) == 2, rows
    for name in ("layer_profile", "head_map"):
        for model, run_id in runs.items():
            code, rows, err = query(name, f"model={model}")
            assert code == 0 and rows, err
            assert {(r["model"], r["run_id"]) for r in rows} == {(model, run_id)}, rows
    code, rows, err = query("compare_models", "model_a=test_vit", f"model_b={registers}")
    assert code == 0, err
    assert {(r["run_id_a"], r["run_id_b"]) for r in rows} == {
        (runs["test_vit"], runs[registers])}, rows
    # ... and in xarray: the results say the model as the views do, and its input size
    for model, run_id in runs.items():
        attrs = open_results(Store(store), run_id).attrs
        assert (attrs["model"], attrs["model_label"], attrs["img_size"]) == (
            "test_vit", model, 32), attrs
    code, rows, err = query("layer_profile", f"run_id={runs[registers]}")  # no model needed
    assert code == 0 and {r["model"] for r in rows} == {registers}, rows
    code, rows, err = query("head_types", f"model={registers}")
    assert code == 0 and {r["run_id"] for r in rows} == {runs[registers]}, rows
    code, rows, err = query("audit_history", f"model={registers}")
    assert code == 0 and [r["run_id"] for r in rows] == [runs[registers]], rows
    # a misspelt one is told with the spelling that names it
    code, rows, err = query("layer_profile", 'model=test_vit {"reg_tokens":5}')
    assert code == 2 and registers in err, err


def test_two_runs_of_one_name_with_other_model_args_are_two_models():
    a = {"model": "test_vit", "depth": 6, "num_heads": 2, "width": 64, "model_args": {}}
    b = {**a, "model_args": {"reg_tokens": 4}}
    assert same_model(a, {**a}) and not same_model(a, b)
    assert same_model(b, {**b, "model": "test_vit.some_tag"})


@pytest.mark.parametrize(("args", "needles"), [
    (["--model-arg", "reg_tokenz=4"],
     ["timm refuses --model-arg reg_tokenz=4 for 'test_vit'", "unexpected keyword argument"]),
    (["--model-arg", "qk_norm=True"],
     ["model 'test_vit' with --model-arg qk_norm=True is not supported", "q_norm"]),
    (["--model-arg", "class_token=False"],
     ["timm refuses --model-arg class_token=False", "give --model-arg global_pool=avg too"]),
    (["--model-arg", "img_size=64"],
     ["--model-arg: img_size is not passed as a model argument: give --img-size"]),
    (["--model-arg", "reg_tokens"], ["--model-arg must be KEY=VALUE"]),
    # an unknown activation is a KeyError in timm: it was a traceback (trial 25, F9)
    (["--model-arg", "act_layer=no_such_act"],
     ["timm refuses --model-arg act_layer='no_such_act' for 'test_vit'"]),
])
def test_model_args_timm_or_bfd_refuse_are_refused_in_one_line(tmp_path, capsys, args,
                                                                 needles):
    code, _, err = run_cli(["extract", *BASE, "--weights", "random", *args, "--store",
                            str(tmp_path / "store")], capsys)
    assert code == 2 and err.startswith("bfd: error: ") and err.count("\n") == 1, err
    assert all(n in err for n in needles), err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(("name", "needles"), [
    ("vit_relpos_small_patch16_224", ["VisionTransformerRelPos", "relative position bias",
                                      "(rel_pos)", "positional factor",
                                      "learned absolute pos_embed works: vit_*"]),
    ("beit_base_patch16_224", ["Beit", "relative position bias",
                               "relative_position_bias_table"]),
    ("resnet18", ["ResNet, with no attention heads", "vit_*, deit*"]),
])
def test_refusals_of_other_classes_say_why_and_what_works(name, needles):
    with pytest.raises(models.UnsupportedModelError) as err:
        models.describe(name)
    assert all(n in str(err.value) for n in needles), str(err.value)


def test_a_non_square_img_size_is_refused_saying_inputs_are_square(tmp_path, capsys):
    """``--img-size 64x96`` was refused as "invalid int value": it now says why."""
    with pytest.raises(SystemExit) as ended:
        run_cli(["extract", *BASE, "--weights", "random", "--img-size", "64x96"], capsys)
    err = capsys.readouterr().err
    assert ended.value.code == 2 and err.count("\n") == 1 and (
        "argument --img-size: '64x96': one int, the side of a square input (a non-square HxW "
        "input is not supported: BFD audits square inputs, docs/layout.md)") in err, err


def test_a_pos_embed_of_the_patches_alone_is_told_from_one_covering_the_prefix(tmp_path):
    model = timm.create_model("test_vit", pretrained=False, img_size=48, reg_tokens=2,
                              no_embed_class=True)
    torch.save(model.state_dict(), tmp_path / "noemb.pth")
    with pytest.raises(ValueError) as err:
        models.load_model("test_vit", str(tmp_path / "noemb.pth"), img_size=48,
                          model_args={"reg_tokens": 2})
    assert str(err.value).endswith(
        "the file holds pos_embed rows of the patches alone: give --model-arg "
        "no_embed_class=True (with the other --model-arg given)"), str(err.value)
    _, info = models.load_model("test_vit", str(tmp_path / "noemb.pth"), img_size=48,
                                model_args={"reg_tokens": 2, "no_embed_class": True})
    assert (info.num_prefix_tokens, info.pos_embed_covers_prefix) == (3, False)


def test_a_stats_only_audit_builds_the_model_with_its_model_args(prefect_harness, files,
                                                                 tmp_path, capsys):
    """``--no-store-activations`` forwards the model as built: the file with 4 registers
    loads, and its run's request records the arguments beside ``activations: not stored``."""
    store = str(tmp_path / "store")
    code, out, err = run_cli(["audit", *BASE, "--weights", files["reg4"], "--model-arg",
                              "reg_tokens=4", "--store", store, "--no-dashboard",
                              "--no-store-activations"], capsys)
    assert code == 0, err
    rid = out.split(" run ", 1)[1].split()[0].rstrip(",")
    assert read_request(Store(store), rid).extra == {
        "activations": "not stored", "autocast": "none", "model_args": {"reg_tokens": 4},
        "seed": 0}
