"""GPU check for a device machine: the shard task on CUDA (float32 storage) against a CPU
forward of the same images, then every published variable of a CUDA decomposition against a
CPU decomposition of the same stored activations. Exits 1 when any error passes its threshold.

Thresholds (relative to the largest magnitude of the CPU figure):
  activations   ACT_TOL  = 1e-2  (cuDNN's default TF32 convolutions round the patch embedding
                                  to 10 mantissa bits; a wrong copy or layer is O(1))
  results       RES_TOL  = 1e-4  (both passes accumulate in float64; the projection is float32)
  labels        head_type and mode_type equal.
  *_residual    the identity residuals are rounding-level numbers, compared with nothing:
                each must stay below RESIDUAL_MAX on the device.

Prints one JSON object. Needs no Prefect (the plain task functions are called).
Usage: python bench/gpu_check.py [--model vit_small_patch16_224] [--n-images 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch

from bfd import capture, models
from bfd import images as imgs
from bfd.storage import Store, open_activations
from bfd.tasks.decompose import DecomposeOptions, decompose_site_layer
from bfd.tasks.extract import ExtractConfig, extract_shard, prepare_run

ACT_TOL = 1e-2
RES_TOL = 1e-4
RESIDUAL_MAX = 1e-6


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| over the finite entries (NaN where both are NaN)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if not np.array_equal(np.isnan(got), np.isnan(want)):
        return float("inf")
    ok = ~np.isnan(want)
    if not ok.any():
        return 0.0
    scale = np.abs(want[ok]).max()
    return float(np.abs(got[ok] - want[ok]).max() / scale) if scale else float(
        np.abs(got[ok]).max())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--device", default="cuda", help="cpu runs the same check on the CPU")
    args = p.parse_args()
    out: dict = {"cuda": torch.cuda.is_available(),
                 "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                 "torch": torch.__version__, "act_tol": ACT_TOL, "res_tol": RES_TOL}
    root = tempfile.mkdtemp(prefix="bfd-gpu-")
    cfg = ExtractConfig(model=args.model, weights="random", images="samples",
                        n_images=args.n_images, layers="0,5,11", dtype="float32",
                        device=args.device, images_per_chunk=32)
    t0 = time.perf_counter()
    plan = prepare_run(root, cfg)
    for shard in plan.shards:
        extract_shard(root, plan.run_id, cfg, shard, plan.layers,
                      list(plan.records[shard.start:shard.stop]))
    out["extract_seconds"] = round(time.perf_counter() - t0, 2)
    stored = open_activations(Store(root), plan.run_id).load()

    model, _ = models.load_model(args.model, "random")
    tf = models.transform(model)
    recs = imgs.list_images("samples", 8)
    batch = torch.stack([tf(imgs.load_image(r)) for r in recs])
    ref = capture.forward_capture(model, batch, list(plan.layers), ["attn_in", "resid"])
    failures = []
    for site in ("attn_in", "resid"):
        err = rel_err(stored[site].values[:, :8], ref[site].numpy())
        out[f"{site}_rel_err_gpu_vs_cpu"] = err
        if not err <= ACT_TOL:
            failures.append(f"activations {site}: {err:.3g} > {ACT_TOL}")

    for site, layer in (("attn_in", 5), ("resid", 0)):
        t0 = time.perf_counter()
        dev = decompose_site_layer(root, plan.run_id, site, layer,
                                   DecomposeOptions(device=args.device))
        out[f"decompose_{site}_{layer}_seconds"] = round(time.perf_counter() - t0, 2)
        cpu = decompose_site_layer(root, plan.run_id, site, layer, DecomposeOptions(device="cpu"))
        errs = {}
        for name, var in cpu.data_vars.items():
            if var.dtype.kind in "US":
                if not np.array_equal(dev[name].values, var.values):
                    failures.append(f"{site} layer {layer} {name}: labels differ")
                continue
            if name.endswith("_residual"):  # NaN where not computed (no heads at resid)
                if np.isnan(var) != np.isnan(dev[name]) or float(dev[name]) > RESIDUAL_MAX:
                    failures.append(f"{site} layer {layer} {name}: {float(dev[name]):.3g}")
                continue
            errs[name] = rel_err(dev[name].values, var.values)
            if not errs[name] <= RES_TOL:
                failures.append(f"{site} layer {layer} {name}: {errs[name]:.3g} > {RES_TOL}")
        out[f"{site}_{layer}_max_rel_err"] = max(errs.values())
        out[f"{site}_{layer}_worst"] = max(errs, key=errs.get)
        out[f"{site}_{layer}_frac_pos"] = float(dev.frac_pos)
    out["failures"] = failures
    print(json.dumps(out, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
