"""A pipeline command refuses what it can check without the model before it imports torch,
timm or Prefect (10-26 s) or starts Prefect's server: its options (``bfd.requests``), the
image source, a weights file's first bytes, the workers, the series and step of an audit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import run_cli as run

from bfd import files

REPO = Path(__file__).resolve().parents[1]
BASE = ["--model", "test_vit", "--weights", "random", "--n-images", "8", "--img-size", "32",
        "--layers", "0,1", "--dtype", "float32", "--images-per-chunk", "4"]

# Each: the command line (``{tmp}`` the test's folder) and what its one error line says.
REFUSED = {
    "n-images-negative": (["extract", *BASE, "--n-images", "-3"],
                          ["--n-images: must be an integer >= 2", "(given -3)"]),
    "n-images-one": (["audit", *BASE, "--n-images", "1"], ["--n-images: must be an integer"]),
    "images-missing": (["extract", *BASE, "--images", "{tmp}/nope"],
                       ["image source", "/nope' does not exist"]),
    "audit-images-missing": (["audit", *BASE, "--images", "{tmp}/nope"], ["does not exist"]),
    "weights-missing": (["extract", *BASE, "--weights", "{tmp}/nope.pth"],
                        ["--weights: checkpoint file", "nope.pth' does not exist"]),
    "weights-junk": (["extract", *BASE, "--weights", "{tmp}/junk.pth"],
                     ["junk.pth' is not a readable torch checkpoint"]),
    "weights-suffix": (["extract", *BASE, "--weights", "imagenet"],
                       ["--weights: 'imagenet' is not pretrained, random or a checkpoint"]),
    "layers-not-ints": (["extract", *BASE, "--layers", "0,x"],
                        ["--layers: must be 'all' or comma-separated ints", "'0,x'"]),
    "audit-layers-not-ints": (["audit", *BASE, "--layers", "a"], ["--layers: must be 'all'"]),
    # it said "must be 'all' or comma-separated ints like 0,5,11": -1 is an int
    "layers-negative": (["audit", *BASE, "--layers", "-1"],
                        ["bfd: error: --layers: layers are block indices from 0 to the model's "
                         "depth - 1 (0,5,11 or all): a negative one is not allowed (given '-1')"
                         "\n"]),
    "layers-one-negative": (["extract", *BASE, "--layers", "0, -3"],
                            ["a negative one is not allowed (given '0, -3')"]),
    "sites-twice": (["extract", *BASE, "--sites", "resid,resid"],
                    ["--sites: names 'resid' twice; give distinct sites from attn_in and/or "
                     "resid (given 'resid,resid')"]),
    # pydantic said "Input should be 'attn_in' or 'resid' (given 'atn_in')"
    "sites-unknown": (["audit", *BASE, "--sites", "atn_in"],
                      ["bfd: error: --sites: unknown site 'atn_in'; the sites are attn_in and/or "
                       "resid\n"]),
    "sites-one-unknown": (["extract", *BASE, "--sites", "resid,atn_in"],
                          ["--sites: unknown site 'atn_in'; the sites are attn_in and/or resid "
                           "(given 'resid,atn_in')"]),
    "checkpoints-sites-unknown": (["audit-checkpoints", "{tmp}/ckpts", "--model", "test_vit",
                                   "--sites", "atn_in"], ["--sites: unknown site 'atn_in'"]),
    # parameters left uninitialised (torch.empty) under a random init: not one network per
    # seed, NaN at times, where it was refused as non-finite activations, "try --dtype float32"
    "audit-weight-init-skip": (["audit", *BASE, "--model-arg", "weight_init=skip"],
                               ["--model-arg weight_init=skip leaves the model's parameters "
                                "uninitialised under --weights random"]),
    "batch-size-0": (["extract", *BASE, "--batch-size", "0"],
                     ["--batch-size: must be a positive integer (given 0)"]),
    "shard-splits-chunks": (["extract", *BASE, "--images-per-shard", "6"],
                            ["--images-per-shard 6 must be a multiple of images_per_chunk=4"]),
    "device-unknown": (["extract", *BASE, "--device", "tpu"],
                       ["--device: must be auto, cpu, cuda or cuda:K (given 'tpu')"]),
    "workers-0": (["extract", *BASE, "--workers", "0"], ["--workers must be >= 1; got 0"]),
    "series-dot": (["audit", *BASE, "--series", "."], ["--series must not be empty, '.'"]),
    # an empty series was taken for the default series, silently
    "series-empty": (["audit", *BASE, "--series", ""], ["--series must not be empty"]),
    "checkpoints-series-empty": (["audit-checkpoints", "{tmp}/ckpts", "--model", "test_vit",
                                  "--series", ""], ["--series must not be empty"]),
    # trial 25 (F6): a terminal acted on the escapes wherever the series was printed
    "series-escape": (["audit", *BASE, "--series", "a\x1b]0;T\x07\x1b[2Jb"],
                      ["a series must not hold control characters", "'a\\x1b]0;T\\x07\\x1b[2Jb'"]),
    "series-newline": (["audit", *BASE, "--series", "two\nlines"],
                       ["a series must not hold control characters"]),
    "series-too-long": (["audit", *BASE, "--series", "s" * 300],
                        ["is too long: its folder name would be 300 bytes"]),
    "step-past-int64": (["audit", *BASE, "--step", str(2**63)],
                        [f"--step must fit a 64-bit integer; got {2**63}"]),
    "checkpoints-n-images": (["audit-checkpoints", "{tmp}/ckpts", "--model", "test_vit",
                              "--n-images", "-3"], ["--n-images: must be an integer >= 2"]),
    "checkpoints-series-dot": (["audit-checkpoints", "{tmp}/ckpts", "--model", "test_vit",
                                "--series", ".."], ["--series must not be empty"]),
    # on the CPU autocast changes nothing but the run id (it was recorded, and ignored)
    "autocast-on-cpu": (["extract", *BASE, "--device", "cpu", "--autocast", "bf16"],
                        ["bfd: error: --autocast bf16 applies to a CUDA forward only (--device "
                         "cpu: the forward would be float32 all the same); leave out "
                         "--autocast, or run on --device cuda\n"]),
    "audit-autocast-on-cpu": (["audit", *BASE, "--device", "cpu", "--autocast", "fp16"],
                              ["--autocast fp16 applies to a CUDA forward only"]),
    "decompose-device-unknown": (["decompose", "some-run", "--device", "tpu"],
                                 ["device must be auto, cpu, cuda or cuda:K; got 'tpu'"]),
}


def test_pipeline_commands_refuse_what_needs_no_model_before_torch_timm_prefect(tmp_path):
    """Each refusal is one line, exit 2, and the process imported none of torch, timm and
    Prefect, started no Prefect server (no Prefect home) and made no store."""
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    (tmp_path / "ckpts").mkdir()
    # a torch.save zip holding a data.pkl: the checkpoint check passes it
    with zipfile.ZipFile(tmp_path / "ckpts" / "step_1.pth", "w") as z:
        z.writestr("step_1/data.pkl", b"\x80\x02}q\x00.")
    argvs = {name: [a.replace("{tmp}", str(tmp_path)) for a in argv]
             + ["--store", str(tmp_path / "store")] for name, (argv, _) in REFUSED.items()}
    home = tmp_path / "prefect-home"  # the PREFECT_HOME of _main_in_a_process
    out = _main_in_a_process(tmp_path, argvs)
    for name, (_, needles) in REFUSED.items():  # in order: the first to import one fails
        exit_code, err, imported = out[name]
        assert exit_code == 2 and err.startswith("bfd: error: ") and err.count("\n") == 1, (
            name, err)
        assert all(needle in err for needle in needles), (name, err)
        assert imported == [], name
    assert not home.exists() and not (tmp_path / "store").exists()


# Each: what needs the model (timm's name, its depth), not Prefect: the command line and what
# its one error line says.
NEED_THE_MODEL = {
    "audit-model-unknown": (["audit", *BASE, "--model", "no_such_model"],
                            ["model 'no_such_model' is unknown to timm"]),
    # a typo: the same line, with timm's close names
    "audit-model-mistyped": (["audit", *BASE, "--model", "vit_tiny_patch16_22"],
                             ["model 'vit_tiny_patch16_22' is unknown to timm",
                              "did you mean vit_tiny_patch16_224, "]),
    "extract-model-unknown": (["extract", *BASE, "--model", "no_such_model"],
                              ["model 'no_such_model' is unknown to timm"]),
    # a known architecture with a mistyped pretrained tag: timm's line with the close tags
    "audit-tag-mistyped": (["audit", *BASE, "--model", "vit_tiny_patch16_224.augreg_in21kk"],
                           ["Invalid pretrained tag (augreg_in21kk)",
                            "did you mean vit_tiny_patch16_224.augreg_in21k, "]),
    # the same check as bfd audit's layers (cli._check_model_request)
    # (named as the option it is, as other options' errors are: bfd.flows.params)
    "checkpoints-layers-out-of-range": (
        ["audit-checkpoints", "{tmp}/ckpts", "--model", "test_vit", "--layers", "0,9"],
        ["--layers: must be in [0, 6) for a 6-block model; got [9]"]),
}


def test_a_request_the_model_refuses_is_refused_before_prefect(tmp_path):
    """A model timm does not know, or layers out of range, need timm to be told: refused in
    one line (exit 2) before Prefect is imported (the command imported it, and the flows'
    runners, before this check: seconds more before the line), and before any store is
    made. A model timm does not know is refused before Prefect's temporary server starts
    (no Prefect home made): bfd audit and extract started it first, its start-up (seconds of
    CPU) overlapping the import of torch and timm, and a typo was refused after it. (For a
    name timm registers they still do: bfd.cli._check_model_first.)"""
    (tmp_path / "ckpts").mkdir()
    with zipfile.ZipFile(tmp_path / "ckpts" / "step_1.pth", "w") as z:
        z.writestr("step_1/data.pkl", b"\x80\x02}q\x00.")
    argvs = {name: [a.replace("{tmp}", str(tmp_path)) for a in argv]
             + ["--store", str(tmp_path / "store")] for name, (argv, _) in NEED_THE_MODEL.items()}
    # one process, each command as if alone: a server launched sets PREFECT_API_URL for the
    # next command; in order, the first command to import Prefect fails
    out = _main_in_a_process(tmp_path, argvs, as_if_alone=True)
    for name, (_, needles) in NEED_THE_MODEL.items():
        exit_code, err, imported = out[name]
        assert exit_code == 2 and err.startswith("bfd: error: ") and err.count("\n") == 1, (
            name, err)
        assert all(needle in err for needle in needles), (name, err)
        assert "prefect" not in imported, name
    assert not (tmp_path / "store").exists()
    # no server started (audit-checkpoints starts none before its flow)
    assert not (tmp_path / "prefect-home").exists()


def test_an_img_size_timms_constructor_refuses_is_one_line_naming_the_option(tmp_path):
    """An --img-size that passes bfd's own check (a multiple of the patch size) but that
    timm's constructor asserts against: a hybrid whose CNN stem needs a multiple of 32 at
    patch size 8, and XCiT, whose class is refused at any size. Each is one line, exit 2 (a
    mistake in the request), before any store or Prefect server; it was a traceback, exit 1
    (trial 21, F6). The hybrid's line names the option, timm's failed assertion and the
    sizes near it that the model builds with."""
    dry = ["--weights", "random", "--images", "samples", "--n-images", "8", "--layers", "0",
           "--dry-run", "--store", str(tmp_path / "store")]
    argvs = {"hybrid": ["audit", "--model", "vit_tiny_r_s16_p8_224", "--img-size", "80", *dry],
             "xcit": ["audit", "--model", "xcit_nano_12_p16_224", "--img-size", "70", *dry]}
    out = _main_in_a_process(tmp_path, argvs, as_if_alone=True)
    for name, needles in (
            ("hybrid", ["bfd: error: --img-size 80 does not fit model 'vit_tiny_r_s16_p8_224': "
                        "timm's constructor refuses it (AssertionError: assert "
                        "self.feature_size[0] % self.patch_size[0] == 0",
                        "hybrid_embed.py", "sizes near it that it builds with: 64, 96"]),
            ("xcit", ["bfd: error: model 'xcit_nano_12_p16_224' is not supported: its class "
                      "is Xcit, not timm's VisionTransformer"])):
        exit_code, err, _ = out[name]
        assert exit_code == 2 and err.count("\n") == 1, (name, err)
        assert all(needle in err for needle in needles), (name, err)
    assert not (tmp_path / "store").exists() and not (tmp_path / "prefect-home").exists()


def test_the_timm_architectures_read_from_its_files_are_its_list_models():
    """The names that let bfd audit and extract start Prefect's server before the model is
    checked (bfd.cli._check_model_first) are timm's own, read without importing it: all of
    them, so that a known name keeps the server's start-up overlapping the imports."""
    import timm

    from bfd.cli import _timm_architectures

    assert _timm_architectures() == set(timm.list_models())


def test_the_pretrained_tags_read_from_its_files_are_timms():
    """The ``arch.tag`` names that let a tagged model's check wait for the server's start-up
    are pretrained configs timm has (each resolves, but for a rare key of its files that it
    does not register: such a name is checked after the server, as every tag was before),
    and nearly all of them: a tag missing there is only checked sooner."""
    import timm
    from timm.models import get_pretrained_cfg

    from bfd.cli import _known_to_timm, _timm_names

    tagged = _timm_names()[1]
    unresolved = [name for name in tagged if get_pretrained_cfg(name) is None]
    assert len(unresolved) < 0.01 * len(tagged), unresolved
    listed = set(timm.list_pretrained())
    assert len(listed - tagged) < 0.05 * len(listed)
    assert _known_to_timm("vit_tiny_patch16_224.augreg_in21k")
    assert _known_to_timm("vit_tiny_patch16_224")
    assert not _known_to_timm("vit_tiny_patch16_224.augreg_in21kk")
    assert not _known_to_timm("vit_tiny_patch16_22")


def test_autocast_where_auto_finds_no_cuda_is_refused_before_work():
    """``--device auto`` is resolved with torch: the extraction's check refuses autocast when
    it resolves to the CPU, before any weights are loaded or anything is written."""
    import torch

    from bfd.tasks.extract import ExtractConfig, check_before_work

    if torch.cuda.is_available():
        pytest.skip("auto resolves to CUDA here")
    cfg = ExtractConfig(model="test_vit", weights="random", n_images=8, img_size=32,
                        autocast="bf16")
    with pytest.raises(ValueError, match=r"^--autocast bf16 applies to a CUDA forward only "
                       r"\(--device auto: torch sees no CUDA device here"):
        check_before_work(cfg)
    check_before_work(ExtractConfig(model="test_vit", weights="random", n_images=8,
                                    img_size=32))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """A small seeded timm ViT saved whole (``torch.save(model)``, zip and the format before
    torch 1.6), as its state_dict, and as a training checkpoint holding the state_dict."""
    import timm
    import torch

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = timm.create_model("test_vit", pretrained=False, img_size=32)
    paths = {name: folder / f"{name}.pth" for name in ("whole", "whole_legacy", "state_dict",
                                                       "training")}
    torch.save(model, paths["whole"])
    torch.save(model, paths["whole_legacy"], _use_new_zipfile_serialization=False)
    torch.save(model.state_dict(), paths["state_dict"])
    torch.save({"model": model.state_dict(), "epoch": 3}, paths["training"])
    return paths


@pytest.mark.parametrize("command", ["extract", "audit"])
def test_a_pickled_model_object_is_refused_in_one_line_that_says_how_to_convert_it(
        model_files, tmp_path, command):
    proc = subprocess.run(
        [sys.executable, "-m", "bfd.cli", command, *BASE, "--weights",
         str(model_files["whole"]), "--store", str(tmp_path / "store")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(tmp_path / "home")})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == (
        f"bfd: error: --weights: weights file {str(model_files['whole'])!r} is a pickled model "
        "object (timm.models.vision_transformer.VisionTransformer, saved by "
        "torch.save(model)), not a state_dict or .safetensors file; convert it once in "
        "Python, for a file you trust: model = torch.load(path, weights_only=False); "
        "torch.save(model.state_dict(), path)\n")
    assert not (tmp_path / "store").exists() and not (tmp_path / "home").exists()


def test_the_pickled_model_check_tells_model_objects_from_state_dicts(model_files):
    """Both formats of a whole model are refused; a state_dict, alone or in a training
    checkpoint's dict, passes (the loader takes them)."""
    for name in ("whole", "whole_legacy"):
        with pytest.raises(ValueError, match=r"is a pickled model object \(timm\.models\."
                           r"vision_transformer\.VisionTransformer"):
            files.check_checkpoint(model_files[name])
    for name in ("state_dict", "training"):
        files.check_checkpoint(model_files[name])


def test_an_extraction_reads_the_weights_file_header_once(prefect_harness, model_files,
                                                          tmp_path, capsys):
    """The command's request check, the extraction's own and the model's load share one
    read of an unchanged weights file's first bytes."""
    weights = shutil.copy(model_files["state_dict"], tmp_path / "weights.pth")  # unread yet
    before = files.headers_read()
    code, out, err = run(["extract", *BASE, "--weights", str(weights),
                          "--store", str(tmp_path / "store")], capsys)
    assert code == 0 and out.startswith("run "), err
    assert files.headers_read() - before == 1


def test_audit_checkpoints_takes_no_seed(tmp_path, capsys):
    """Its weights are each checkpoint's: a seed of a random init means nothing there."""
    with pytest.raises(SystemExit) as exited:
        run(["audit-checkpoints", "--help"], capsys)
    assert exited.value.code == 0 and "--seed" not in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        run(["audit-checkpoints", str(tmp_path), "--model", "test_vit", "--seed", "3"], capsys)
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "bfd audit-checkpoints: error: unrecognized arguments: --seed 3; "
        "bfd audit-checkpoints --help lists its options\n")


def test_the_flow_parameters_schema_says_what_the_rules_decide():
    """A deployment run is checked against AuditConfig's JSON schema when it is submitted and
    by ``bfd.requests``' rules when it runs: both give the same verdict on each value."""
    import jsonschema

    from bfd.flows.params import AuditConfig
    from bfd.requests import SCHEMA, check_option

    schema = AuditConfig.model_json_schema()
    values = {"n_images": [None, -3, 0, 1, 2, 64], "img_size": [None, 0, 1, 32],
              "batch_size": [0, 1, 32], "images_per_chunk": [-1, 0, 4],
              "images_per_shard": [None, 0, 8],
              "layers": ["all", " all ", "0", "0,5, 11", "0,x", "", "-1", "1,,2", "all,0"],
              "device": ["auto", "cpu", "cuda", "cuda:1", "gpu", "cuda:", "CPU", " cpu"]}
    assert set(values) == set(SCHEMA)
    for name, cases in values.items():
        for value in cases:
            try:
                check_option(name, value)
                ruled = True
            except ValueError:
                ruled = False
            valid = jsonschema.Draft202012Validator(schema).is_valid({name: value})
            assert valid == ruled, (name, value)


def test_file_stamp_caches_keep_the_most_recently_used_and_headers_need_no_settling(tmp_path):
    """Both caches by file stamp drop the least recently used beyond their size; the header
    cache keeps a file checked just after it was written (no "settled" rule, by choice), and
    reads it again once it changes."""
    import struct

    cache = files._StampCache(2)
    cache.put((1,), "a")
    cache.put((2,), "b")
    assert cache.get((1,)) == "a"  # now the most recently used
    cache.put((3,), "c")
    assert (cache.get((1,)), cache.get((2,)), cache.get((3,)), cache.get((4,))) == (
        "a", None, "c", None)

    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}")
    before = files.headers_read()
    files.check_checkpoint(path)
    files.check_checkpoint(path)
    assert files.headers_read() - before == 1
    path.write_bytes(struct.pack("<Q", 3) + b"{} ")
    files.check_checkpoint(path)
    assert files.headers_read() - before == 2
    hashed = files.bytes_hashed()
    assert files.sha256_file(path) == files.sha256_file(path)
    assert files.bytes_hashed() - hashed == 2 * 11  # changed just now: not remembered


def _main_in_a_process(tmp_path: Path, argvs: dict[str, list[str]],
                       as_if_alone: bool = False) -> dict[str, list]:
    """Each command line run by ``bfd.cli.main`` in one fresh process: {name: [exit code,
    stderr, which of torch, timm and Prefect the process had imported by its end]}.

    ``as_if_alone``: after each command, what its process's exit would undo is undone before
    the next one starts, as if each ran in a process of its own: the Prefect temporary server
    it launched is stopped (``bfd.flows.server``'s exit function), and os.environ is as before
    it (a launched server sets PREFECT_API_URL, which the next command would take for a
    user's server). One process instead of one each: torch and timm are imported once."""
    code = (
        "import contextlib, io, json, os, sys\n"
        "from bfd.cli import main\n"
        "out = {}\n"
        "environ = dict(os.environ)\n"
        f"for name, argv in {argvs!r}.items():\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        "    out[name] = [code, err.getvalue(), sorted(m for m in ('torch', 'timm', 'prefect')\n"
        "                                              if m in sys.modules)]\n"
        f"    if {as_if_alone!r}:\n"
        "        server = sys.modules.get('bfd.flows.server')\n"
        "        while server is not None and server._launched:\n"
        "            server._launched.pop().stop()\n"
        "        os.environ.clear()\n"
        "        os.environ.update(environ)\n"
        "print(json.dumps(out))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env={**env, "PREFECT_HOME": str(tmp_path / "prefect-home"),
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_fewer_images_than_n_images_is_said_before_the_work(tmp_path):
    """--n-images 10 on a folder of 3 images: a warning when the images are listed, before
    anything else is checked or done (here a later refusal stops the command, before torch,
    timm and Prefect). It was said only after the audit's results."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(f"listed, not read {i}".encode())
    base = [*BASE[:4], "--images", str(folder), "--n-images", "10", "--store",
            str(tmp_path / "store")]
    out = _main_in_a_process(tmp_path, {
        "audit": ["audit", *base, "--step", str(2**63)],
        "extract": ["extract", *base, "--workers", "0"],
        "enough": ["extract", *base[:-4], "--n-images", "3", *base[-2:], "--workers", "0"]})
    warning = (f"bfd: warning: --n-images 10, but {folder} holds 3 images; all 3 are used\n")
    for name in ("audit", "extract"):
        code, err, imported = out[name]
        first, second = err.splitlines(keepends=True)
        assert (code, first, imported) == (2, warning, []), (name, err)
        assert second.startswith("bfd: error: "), (name, err)
    assert out["enough"][1].startswith("bfd: error: --workers"), out["enough"]


def test_writing_commands_refuse_a_folder_that_is_no_store_before_any_work(tmp_path):
    """A typo'd --store that exists, or a home folder, given to a command that writes: one
    line, exit 2, before torch, timm or Prefect, the folder left as it was (an audit made it a
    store: runs/, bfd.zarr/, tables/ beside the user's files). An empty folder is a new store:
    the command goes on (here to the run it does not find)."""
    folder = tmp_path / "Documents"
    (folder / "notes").mkdir(parents=True)
    (folder / "letter.txt").write_text("dear")
    (tmp_path / "ckpts").mkdir()
    with zipfile.ZipFile(tmp_path / "ckpts" / "step_1.pth", "w") as z:
        z.writestr("step_1/data.pkl", b"\x80\x02}q\x00.")
    before = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    argvs = {"extract": ["extract", *BASE], "audit": ["audit", *BASE],
             "audit-demo": ["audit", "--demo"],
             "audit-checkpoints": ["audit-checkpoints", str(tmp_path / "ckpts"), "--model",
                                   "test_vit"],
             "decompose": ["decompose", "some-run"]}
    out = _main_in_a_process(tmp_path, {name: [*argv, "--store", str(folder)]
                                        for name, argv in argvs.items()})
    for name, (code, err, imported) in out.items():
        assert code == 2 and err.count("\n") == 1, (name, err)
        assert err.startswith(f"bfd: error: {folder} is not a BFD store (it holds letter.txt, "
                              "notes, but no runs/"), (name, err)
        assert imported == [], name
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    out = _main_in_a_process(tmp_path, {"decompose": ["decompose", "some-run", "--store",
                                                      str(empty)]})
    code, err, _ = out["decompose"]
    assert code == 2 and "not a BFD store" not in err and "some-run" in err, err


def test_a_run_too_large_for_the_disk_is_refused_before_prefect_in_one_line(tmp_path):
    """A stored run whose activations cannot fit in the disk's free space (here 100 000
    images of a ViT-H at 448: about 30.6 TiB) is refused before Prefect is imported, nothing
    recorded or written, its line saying "free space" once (exit 1: the environment's fault).
    It was refused inside the flow, after the server's start-up and with a failed audit
    recorded, as "no space left writing ... (the run needs ...; free space or choose another
    --store); free space and run the command again"."""
    manifest = tmp_path / "many.txt"
    for i in range(2):  # a manifest of which fewer than 2 entries exist is refused first
        (tmp_path / f"{i}.png").write_bytes(f"an image {i}".encode())
    manifest.write_text("0.png\n1.png\n" + "".join(f"/nowhere/{i}.png\n"
                                                   for i in range(2, 100_000)))
    big = ["--model", "vit_huge_patch14_224", "--weights", "random", "--img-size", "448",
           "--dtype", "float32", "--images", str(manifest), "--store", str(tmp_path / "store")]
    # one process, each command as if alone (a server launched sets PREFECT_API_URL for the
    # next command); in order, the first command to import Prefect fails
    out = _main_in_a_process(tmp_path, {"audit": ["audit", *big, "--no-dashboard"],
                                        "extract": ["extract", *big]}, as_if_alone=True)
    for name, (code, err, imported) in out.items():
        assert code == 1 and err.count("\n") == 1, (name, err)
        assert err.startswith("bfd: error: the run needs 30.6 TiB (its activations, and for a "
                              "new run its model tensors and results) but the disk "
                              f"of the store ({tmp_path}) has "), (name, err)
        assert err.endswith(" free; free space or choose another --store (bfd audit "
                            "--no-store-activations stores none)\n"), (name, err)
        assert err.count("free space") == 1 and "prefect" not in imported, (name, err)
    assert not (tmp_path / "store").exists()
