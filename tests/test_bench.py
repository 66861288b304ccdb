"""Every benchmark runs once at a tiny size (``--quick``), so none can rot unnoticed. Nothing
here is timed: the figures of a quick run mean nothing; the test asserts that it finishes and
prints its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# not benchmarks: the GPU check needs a device (bench/gpu.sh runs it there)
NOT_BENCHES = {"gpu_check.py"}


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py")
                                          if p.name not in NOT_BENCHES))
def test_bench_runs_quick(script, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / script), "--quick"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    figures = json.loads(text[text.index("{"):text.rindex("}") + 1])
    assert figures, script
