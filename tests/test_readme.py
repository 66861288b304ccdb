"""The README's `bfd` commands, as written, on a store of real audits.

Each command of the sections below is taken from README.md itself and run through the real
CLI with only its placeholders filled in: `RUN_ID`, `RUN_A`, `RUN_B` by run ids of
the store, the models of `bfd query` examples by the store's test models, `/data/staging-store`
by a second store, the port by a free one. The "Audit a real
model" examples need pretrained weights, an image folder and a checkpoint that an offline
machine does not have: they are run too, and must fail fast in one line, as the README says.
The other blocks are run elsewhere: "Set up and run" and "Test" by CI itself and
`test_audit.test_demo_end_to_end`, "Schedule it" by `test_schedule.py`, "Benchmarks" by
`test_bench.py`; the two pipeline commands of "Audits, series and drift" (`bfd audit ...
--fail-on-drift`, `bfd audit-checkpoints`) by `test_audit.py` on a test model's checkpoints.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import env_kept

from bfd.cli import main
from bfd.flows.audit import audit

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("Audit a real model", "Check and repair a store", "Ask questions in SQL",
            "Look at it", "Audits, series and drift")
# pipeline commands of "Audits, series and drift" that test_audit.py runs on a test model
ELSEWHERE = ("bfd audit --model vit_b --weights ckpt_", "bfd audit-checkpoints")
CONFIG = {"weights": "random", "images": "samples", "n_images": 8, "img_size": 32,
          "dtype": "float32", "images_per_chunk": 4}


def readme_commands(section: str) -> list[str]:
    """The `bfd` command lines of one README section's bash blocks, continuation lines joined
    and comments dropped."""
    text = (REPO / "README.md").read_text(encoding="utf-8").split(f"## {section}\n", 1)[1]
    text = text.split("\n## ", 1)[0]
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv and argv[0] == "bfd":
                out.append(shlex.join(argv))
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory, prefect_harness):
    """Two audits in series `my-run` (the second of another model) and a copy as `staging`."""
    root = tmp_path_factory.mktemp("readme")
    store = root / "store"
    first = audit({"model": "test_vit", **CONFIG}, str(store), series="my-run",
                  dashboard=False)
    second = audit({"model": "test_vit2", **CONFIG}, str(store), series="my-run",
                   dashboard=False)
    staging = root / "staging"
    shutil.copytree(store, staging)
    return store, staging, first["run_id"], second["run_id"]


# The models a named query's example names, as the store's test models: a model the store
# does not hold is an unknown one (exit 2, README's exit table).
QUERY_MODELS = {"model=vit_tiny_patch16_224": "model=test_vit",
                "model_a=deit_small_patch16_224": "model_a=test_vit",
                "model_b=vit_small_patch16_224": "model_b=test_vit2"}


def fill(command: str, staging: Path, run_a: str, run_b: str) -> list[str]:
    for placeholder, value in (("RUN_ID", run_a), ("RUN_A", run_a), ("RUN_B", run_b),
                               ("/data/staging-store", str(staging))):
        command = command.replace(placeholder, value)
    argv = shlex.split(command)[1:]
    return [QUERY_MODELS.get(a, a) for a in argv] if argv[:1] == ["query"] else argv


def all_commands() -> list[tuple[str, str]]:
    return [(section, c) for section in SECTIONS for c in readme_commands(section)]


def test_the_sections_show_commands():
    found = {section for section, _ in all_commands()}
    assert found == set(SECTIONS), set(SECTIONS) - found


@pytest.mark.parametrize(("section", "command"), all_commands())
def test_readme_command(section, command, stores, tmp_path, monkeypatch, capsys):
    store, staging, run_a, run_b = stores
    if command.startswith(ELSEWHERE):
        pytest.skip("run on a test model's checkpoints by test_audit.py")
    argv = fill(command, staging, run_a, run_b)
    monkeypatch.chdir(tmp_path)
    if argv[:1] == ["drop-activations"]:  # on a copy: the other commands read the activations
        shutil.copytree(store, tmp_path / "copy")
        argv += ["--store", str(tmp_path / "copy")]
    if "--serve" in argv:
        return serve(argv, store)
    capsys.readouterr()
    with env_kept():
        os.environ["BFD_STORE"] = str(store)
        code = main(argv)
    out, err = capsys.readouterr()
    if section == "Audit a real model":
        # offline, without the weights, images or checkpoint the example names
        assert code == 2 and err.startswith("bfd: error: ") and err.count("\n") == 1, err
        return
    assert code == 0, err
    assert "Traceback" not in err
    if argv[:1] == ["verify"]:
        assert "intact" in out
    elif argv[:1] == ["drop-activations"]:
        assert "activations dropped" in out and "freed" in out
    elif "--attach" in argv:  # staging is a copy: the EXCEPT of equal counts is empty
        assert "(no rows)" in out
    elif argv[:1] in (["sql"], ["runs"]) or argv[:2] == ["query", "model_summary"]:
        assert out.strip() and "(no rows)" not in out
    elif argv[:1] == ["plot"]:
        assert any((tmp_path / "figures").glob("*.pdf"))
    elif argv[:2] == ["catalog", "--path"]:
        assert Path(out.strip()).is_file()


def serve(argv: list[str], store: Path) -> None:
    """`bfd dashboard --serve --port N` in its own process (it serves until stopped): the
    built overview is served on 127.0.0.1 at the port asked for."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv[argv.index("--port") + 1] = str(port)
    env = {**os.environ, "BFD_STORE": str(store)}
    proc = subprocess.Popen([sys.executable, "-m", "bfd.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html",
                                            timeout=5) as page:
                    assert page.status == 200 and b"<html" in page.read().lower()
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the dashboard was not served"
                time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    # stopped as a service is, it says so as the other commands do (it ended without a line)
    assert proc.returncode == 143, err
    assert err.endswith("bfd: terminated (SIGTERM); the dashboard is no longer served\n"), err


def test_the_notebook_snippet_runs_as_written(tmp_path, monkeypatch):
    """"Use it in a notebook", executed with its names given (a timm test model's layer, real
    activations of it) in a folder with a store, `bfd-store`: its head count is the model's,
    its `f_pp` is the heads table's definition, and the named query returns the store's rows."""
    import numpy as np
    import timm
    import torch
    from dashstore import write_synthetic_run

    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Use it in a notebook\n")[1]
    (code,) = re.findall(r"```python\n(.*?)```", text.split("\n## ", 1)[0], re.S)
    monkeypatch.chdir(tmp_path)
    write_synthetic_run(tmp_path / "bfd-store", "run-1")
    model = timm.create_model("test_vit", pretrained=False, img_size=32).eval()
    taken = {}

    def keep_input(module, inputs, output) -> None:
        taken["x"] = inputs[0].detach().numpy()

    model.blocks[1].attn.qkv.register_forward_hook(keep_input)
    with torch.no_grad():
        model(torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    names = {"model": model, "l": 1, "x": taken["x"]}
    exec(compile(code, "README.md", "exec"), names)  # noqa: S102 - the README's own code
    ds = names["ds"]
    assert ds.sizes["head"] == model.blocks[1].attn.num_heads
    f_pp = ds.energy.sel(block="pp") / ds.energy.sum("block")
    np.testing.assert_allclose(ds.frac.sel(block="pp"), f_pp, rtol=1e-12)
    (row,) = names["run_query"]("bfd-store", "model_summary").to_pylist()
    assert row["run_id"] == "run-1"
