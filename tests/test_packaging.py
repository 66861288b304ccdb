"""Every third-party module the package imports is a runtime dependency, and every one the
tests and benches import is a runtime or ``dev`` dependency of pyproject.toml, so a fresh
``pip install -e ".[dev]"`` (``.ci/run``) can run them."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the package and the helper modules that tests and benches import from their own folders
LOCAL = {"bfd"} | {p.stem for folder in ("tests", "bench") for p in (REPO / folder).rglob("*.py")}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(requirements: list[str]) -> set[str]:
    """Distribution names, extras included (``dask[distributed]`` declares ``distributed``)."""
    out = set()
    for req in requirements:
        m = re.match(r"\s*([A-Za-z0-9_.-]+)(?:\[([^\]]*)\])?", req)
        out.add(_norm(m.group(1)))
        out |= {_norm(e) for e in (m.group(2) or "").split(",") if e.strip()}
    return out


def _imports(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - LOCAL - set(sys.stdlib_module_names) - {"__future__"}


def _missing(folders: list[str], declared: set[str]) -> dict[str, list[str]]:
    dists = packages_distributions()
    missing = {}
    for module in sorted(set().union(*(_imports(REPO / f) for f in folders))):
        names = {_norm(d) for d in dists.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    return missing


def test_dependencies_are_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = _declared(project["dependencies"])
    dev = _declared(project["optional-dependencies"]["dev"])
    assert _missing(["bfd"], runtime) == {}
    assert _missing(["tests", "bench"], runtime | dev) == {}


def test_python_dash_m_bfd_is_the_bfd_command(tmp_path, capsys):
    """``python -m bfd`` runs the command (it said "No module named bfd.__main__"), with the
    same output and exit status as ``bfd``, and a refusal's exit status too."""
    import os
    import subprocess

    from conftest import run_cli

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    store = str(tmp_path / "store")
    listed = subprocess.run([sys.executable, "-m", "bfd", "query", "--list", "--store", store],
                            capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == run_cli(["query", "--list", "--store", store], capsys)[1]
    assert "model_summary" in listed.stdout
    refused = subprocess.run([sys.executable, "-m", "bfd", "query", "no_such_query"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode == 2 and refused.stderr.startswith("bfd: "), refused.stderr
