"""Every benchmark runs once at a tiny size (``--quick``), so none can rot unnoticed. Nothing
here is timed: the figures of a quick run mean nothing; the test asserts that it finishes and
prints its figures. The selected scripts run two at a time (much of a quick run waits on
its subprocesses' imports and servers), each test waiting for its own script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# not benchmarks: the GPU check needs a device (bench/gpu.sh runs it there)
NOT_BENCHES = {"gpu_check.py"}


# scripts with a second mode that a plain --quick run does not reach: name -> argv
EXTRA_MODES = {"audit_bound": ("audit.py", "--only", "bound")}
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if p.name not in NOT_BENCHES) + sorted(
    EXTRA_MODES)
AT_ONCE = 2
# the longest quick runs (on 2 CPU cores), started first so that the others fill in beside
# them; only the order in which they start
LONGEST_FIRST = ("interrupt.py", "decompose.py", "audit.py", "query.py", "audit_rerun.py")


def run_quick(script: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    name, *extra = EXTRA_MODES.get(script, (script,))
    return subprocess.run([sys.executable, str(BENCH / name), "--quick", *extra],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def quick_runs(request, tmp_path_factory) -> dict[str, Future]:
    """``--quick`` runs of the scripts whose tests are selected, ``AT_ONCE`` at a time, the
    longest first."""
    selected = {item.callspec.params["script"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    rank = {script: k for k, script in enumerate(LONGEST_FIRST)}
    order = sorted(sorted(selected), key=lambda s: rank.get(s, len(rank)))
    with ThreadPoolExecutor(max_workers=AT_ONCE) as pool:
        yield {script: pool.submit(run_quick, script, tmp_path_factory.mktemp("bench"))
               for script in order}
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_runs_quick(script, quick_runs):
    out = quick_runs[script].result()
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    figures = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert figures, script
    if script == "audit_bound":  # the forward plus parts that each take time
        assert figures["bound_over_forward"] > 1 and figures["cpu_bound_over_forward"] > 1
