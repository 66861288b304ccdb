"""GPU extraction check for a device machine: the shard task on CUDA (float32 storage)
against a CPU forward of the same images, then the decomposition of what it stored.

Prints one JSON object. Needs no Prefect (the plain task functions are called).
Usage: python bench/gpu_check.py [--model vit_small_patch16_224] [--n-images 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from bfd import images as imgs
from bfd import models
from bfd.storage import Store, open_activations
from bfd.tasks.decompose import DecomposeOptions, decompose_site_layer
from bfd.tasks.extract import ExtractConfig, extract_shard, prepare_run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--n-images", type=int, default=64)
    p.add_argument("--device", default="cuda", help="cpu runs the same check on the CPU")
    args = p.parse_args()
    out: dict = {"cuda": torch.cuda.is_available(),
                 "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                 "torch": torch.__version__}
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
    ref = models.forward_capture(model, batch, list(plan.layers), ["attn_in", "resid"])
    for site in ("attn_in", "resid"):
        got = stored[site].values[:, :8]
        want = ref[site].numpy()
        out[f"{site}_max_rel_err_gpu_vs_cpu"] = float(
            np.abs(got - want).max() / np.abs(want).max())
    t0 = time.perf_counter()
    ds = decompose_site_layer(root, plan.run_id, "attn_in", 5, DecomposeOptions())
    out["decompose_layer5_seconds"] = round(time.perf_counter() - t0, 2)
    out["layer5_frac_pos"] = float(ds.frac_pos)
    out["layer5_head_types"] = list(ds.head_type.values)
    out["layer5_ss_identity_residual"] = float(ds.ss_identity_residual)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
