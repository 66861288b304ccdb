"""Benchmark of the streaming BFD core at ViT-S/16 shape (T=196, d=384, H=6).

Prints, each as a ratio against a baseline measured in the same run:
  (a) the core's floating-point throughput / this machine's float32 matmul throughput;
  (b) the core's time per image / the literal brute force's time per image;
  (c) peak RSS of the streaming path at N=2048 / at N=256;
  (d) the time with the jackknife intervals (16 groups, the default) / without them (0).

Usage: python bench/core.py [--n 256] [--chunk 64] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the bfd command runs (bfd/cli.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bfd.core import decompose_layer, head_maps  # noqa: E402

T, D, H = 196, 384, 6
DH = D // H


def make_chunks(n: int, chunk: int, seed: int = 0):
    """A chunk source that synthesises activations chunk by chunk (N never sits in memory)."""
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(T + 1, D)).astype(np.float32)

    def chunks():
        for start in range(0, n, chunk):
            g = np.random.default_rng([seed, start])
            m = min(chunk, n - start)
            yield start, pos + g.standard_normal((m, T + 1, D), dtype=np.float32)

    return chunks


def qkv_weight(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3 * D, D)) / np.sqrt(D)


def core_flops(n: int) -> float:
    """Useful flops of pass 2: the projection onto all heads' modes and the per-image Grams."""
    projection = 2.0 * n * T * D * (2 * H * DH)
    grams = 2.0 * n * (2 * H) * T * DH * DH
    return projection + grams


def matmul_flops_per_s(device: str, reps: int = 10) -> float:
    """float32 GEMM throughput at the shape pass 2 runs: (64·T, d) @ (d, 2·H·dh)."""
    a = torch.randn(64 * T, D, device=device)
    b = torch.randn(D, 2 * H * DH, device=device)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * a.shape[0] * D * b.shape[1] / best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_core(n: int, chunk: int, device: str, reps: int = 3, groups: int = 16) -> float:
    maps = head_maps(qkv_weight(), H)
    source = make_chunks(n, chunk)
    # time the math, not the synthetic data generator or the host-to-device copy
    cached = [(s, torch.from_numpy(x).to(device)) for s, x in source()]
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        decompose_layer(lambda: iter(cached), maps, prefix_tokens=1, device=device,
                        groups=groups)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def time_brute(n: int) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from brute import brute_heads

    x = np.concatenate([x for _, x in make_chunks(n, n)()])[:, 1:]
    t0 = time.perf_counter()
    brute_heads(x, qkv_weight(), H, explicit_modes=False)
    return time.perf_counter() - t0


def peak_rss_mb(n: int, chunk: int) -> float:
    """Peak RSS of a fresh process that streams n images through the core."""
    bench_dir = str(Path(__file__).parent)
    code = (
        f"import resource, sys; sys.path.insert(0, {bench_dir!r}); import core as b; "
        "from bfd.core import decompose_layer, head_maps; "
        f"decompose_layer(b.make_chunks({n}, {chunk}), head_maps(b.qkv_weight(), b.H), "
        "prefix_tokens=1); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--brute-n", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()

    mm = matmul_flops_per_s(args.device)
    t_core = time_core(args.n, args.chunk, args.device)
    t_plain = time_core(args.n, args.chunk, args.device, groups=0)
    core_rate = core_flops(args.n) / t_core
    t_brute = time_brute(args.brute_n)
    rss_small = peak_rss_mb(256, args.chunk)
    rss_large = peak_rss_mb(2048, args.chunk)
    figures = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "n_images": args.n,
        "core_seconds": round(t_core, 4),
        "core_gflops": round(core_rate / 1e9, 2),
        "matmul_f32_gflops": round(mm / 1e9, 2),
        "throughput_ratio_vs_matmul": round(core_rate / mm, 3),
        "speedup_vs_brute_per_image": round((t_brute / args.brute_n) / (t_core / args.n), 1),
        "peak_rss_mb_n256": round(rss_small, 1),
        "peak_rss_mb_n2048": round(rss_large, 1),
        "peak_rss_ratio_2048_vs_256": round(rss_large / rss_small, 3),
        "core_seconds_without_intervals": round(t_plain, 4),
        "intervals_cost_ratio": round(t_core / t_plain, 3),
    }
    print(json.dumps(figures, indent=2))
    print(f"(a) throughput / float32 matmul: {figures['throughput_ratio_vs_matmul']} (goal >= 0.5)")
    print(f"(b) brute force time / core time, per image: {figures['speedup_vs_brute_per_image']}")
    print(f"(c) peak RSS N=2048 / N=256: {figures['peak_rss_ratio_2048_vs_256']} (goal < 1.1)")
    print(f"(d) with / without intervals: {figures['intervals_cost_ratio']} (goal <= 1.3)")


if __name__ == "__main__":
    main()
