"""Benchmark of the streaming BFD core at ViT-S/16 shape (T=196, d=384, H=6).

Prints, each as a ratio against a baseline measured in the same run:
  (a) the core's floating-point throughput / this machine's float32 matmul throughput, both
      on --device, on activations already there (host-to-device copies and the synthetic data
      generator are left out of both);
  (b) the literal brute force's time / the core's time, like for like: the same N
      (--compare-n), the CPU, float64 pass 2 (``compute_dtype="float64"``), each warmed up
      first and the best of --reps taken;
  (c) peak RSS of the streaming path at N=2048 / at N=256 (fresh processes; interpreter and
      torch import included in both);
  (d) the core's time with the jackknife intervals (16 groups, the default) / without them
      (0 groups), same N, device and warm-up.

Usage: python bench/core.py [--n 256] [--chunk 64] [--compare-n 8] [--device cpu|cuda]
       [--quick]   (tiny shapes, one rep: checks that the bench runs, its figures mean nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # as the bfd command runs (bfd/cli.py)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bfd.core import decompose_layer, head_maps  # noqa: E402

T, D, H = 196, 384, 6  # ViT-S/16; --quick uses QUICK
QUICK = (16, 32, 2)


def make_chunks(n: int, chunk: int, seed: int = 0, shape: tuple[int, int, int] = (T, D, H)):
    """A chunk source that synthesises activations chunk by chunk (N never sits in memory)."""
    t, d, _ = shape
    rng = np.random.default_rng(seed)
    pos = rng.normal(size=(t + 1, d)).astype(np.float32)

    def chunks():
        for start in range(0, n, chunk):
            g = np.random.default_rng([seed, start])
            m = min(chunk, n - start)
            yield start, pos + g.standard_normal((m, t + 1, d), dtype=np.float32)

    return chunks


def qkv_weight(seed: int = 0, shape: tuple[int, int, int] = (T, D, H)) -> np.ndarray:
    d = shape[1]
    return np.random.default_rng(seed).normal(size=(3 * d, d)) / np.sqrt(d)


def core_flops(n: int, shape: tuple[int, int, int] = (T, D, H)) -> float:
    """Useful flops of pass 2: the projection onto all heads' modes and the per-image Grams."""
    t, d, h = shape
    dh = d // h
    projection = 2.0 * n * t * d * (2 * h * dh)
    grams = 2.0 * n * (2 * h) * t * dh * dh
    return projection + grams


def matmul_flops_per_s(device: str, reps: int = 10,
                       shape: tuple[int, int, int] = (T, D, H)) -> float:
    """float32 GEMM throughput at the shape pass 2 runs: (64·T, d) @ (d, 2·H·dh), one
    warm-up first."""
    t, d, _ = shape
    a = torch.randn(64 * t, d, device=device)
    b = torch.randn(d, 2 * d, device=device)
    a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * a.shape[0] * d * b.shape[1] / best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_core(n: int, chunk: int, device: str, reps: int = 3, compute_dtype: str = "float32",
              shape: tuple[int, int, int] = (T, D, H), groups: int = 16) -> float:
    """Best of ``reps`` after one warm-up run, on chunks already on ``device``."""
    maps = head_maps(qkv_weight(shape=shape), shape[2])
    source = make_chunks(n, chunk, shape=shape)
    # time the math, not the synthetic data generator or the host-to-device copy
    cached = [(s, torch.from_numpy(x).to(device)) for s, x in source()]

    def once() -> float:
        _sync(device)
        t0 = time.perf_counter()
        decompose_layer(lambda: iter(cached), maps, prefix_tokens=1, device=device,
                        compute_dtype=compute_dtype, groups=groups)
        _sync(device)
        return time.perf_counter() - t0

    once()  # warm-up: allocator, kernels, thread pools
    return min(once() for _ in range(reps))


def time_brute(n: int, reps: int = 1, shape: tuple[int, int, int] = (T, D, H)) -> float:
    """Best of ``reps`` of the literal brute force (float64, CPU) after a tiny warm-up call."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from brute import brute_heads

    brute_heads(np.random.default_rng(0).normal(size=(2, 4, 8)), qkv_weight(shape=(4, 8, 2)), 2,
                explicit_modes=False)
    x = np.concatenate([x for _, x in make_chunks(n, n, shape=shape)()])[:, 1:]
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        brute_heads(x, qkv_weight(shape=shape), shape[2], explicit_modes=False)
        best = min(best, time.perf_counter() - t0)
    return best


def peak_rss_mb(n: int, chunk: int, shape: tuple[int, int, int] = (T, D, H)) -> float:
    """Peak RSS of a fresh process that streams n images through the core."""
    bench_dir = str(Path(__file__).parent)
    code = (
        f"import resource, sys; sys.path.insert(0, {bench_dir!r}); import core as b; "
        "from bfd.core import decompose_layer, head_maps; "
        f"decompose_layer(b.make_chunks({n}, {chunk}, shape={shape}), "
        f"head_maps(b.qkv_weight(shape={shape}), {shape[2]}), prefix_tokens=1); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--compare-n", type=int, default=8,
                   help="N of (b), where the brute force and the core both run")
    p.add_argument("--reps", type=int, default=3, help="best of this many, after a warm-up")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes and sizes, one rep: the bench runs, the figures mean nothing")
    args = p.parse_args()
    shape, rss_n = (T, D, H), (256, 2048)
    if args.quick:
        shape, rss_n = QUICK, (16, 128)
        args.n, args.chunk, args.compare_n, args.reps = 8, 4, 2, 1

    mm = matmul_flops_per_s(args.device, reps=3 * args.reps, shape=shape)
    t_core = time_core(args.n, args.chunk, args.device, args.reps, shape=shape)
    t_plain = time_core(args.n, args.chunk, args.device, args.reps, shape=shape, groups=0)
    core_rate = core_flops(args.n, shape) / t_core
    t_brute = time_brute(args.compare_n, 1 if args.quick else min(args.reps, 2), shape)
    # no intervals: the brute force computes none
    t_core_same = time_core(args.compare_n, args.chunk, "cpu", args.reps, "float64", shape,
                            groups=0)
    rss_small = peak_rss_mb(rss_n[0], args.chunk, shape)
    rss_large = peak_rss_mb(rss_n[1], args.chunk, shape)
    figures = {
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "shape": dict(zip(("tokens", "dim", "heads"), shape, strict=True)),
        "n_images": args.n,
        "core_seconds": round(t_core, 4),
        "core_gflops": round(core_rate / 1e9, 2),
        "matmul_f32_gflops": round(mm / 1e9, 2),
        "leaves_out": "core_seconds/core_gflops: the synthetic data generator and host-to-device "
                      "copies (chunks are on the device before timing), reading a store, "
                      "Prefect; matmul_f32_gflops: the same copies",
        "throughput_ratio_vs_matmul": round(core_rate / mm, 3),
        "compare_n": args.compare_n,
        "brute_seconds_cpu_float64": round(t_brute, 4),
        "core_seconds_cpu_float64": round(t_core_same, 4),
        "speedup_vs_brute_same_n": round(t_brute / t_core_same, 1),
        f"peak_rss_mb_n{rss_n[0]}": round(rss_small, 1),
        f"peak_rss_mb_n{rss_n[1]}": round(rss_large, 1),
        "peak_rss_ratio": round(rss_large / rss_small, 3),
        "core_seconds_without_intervals": round(t_plain, 4),
        "intervals_cost_ratio": round(t_core / t_plain, 3),
    }
    print(json.dumps(figures, indent=2))
    print(f"(a) throughput / float32 matmul on {args.device}: "
          f"{figures['throughput_ratio_vs_matmul']} (goal >= 0.5)")
    print(f"(b) brute force time / core time, both float64 on the CPU at N={args.compare_n}, "
          f"warmed up: {figures['speedup_vs_brute_same_n']}")
    print(f"(c) peak RSS N={rss_n[1]} / N={rss_n[0]}: {figures['peak_rss_ratio']} (goal < 1.1)")
    print(f"(d) with / without intervals: {figures['intervals_cost_ratio']} (goal <= 1.3)")


if __name__ == "__main__":
    main()
