"""Checkpoint folders with a known, planted change, for the audit tests."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

MODEL = "test_vit"
IMG_SIZE = 64
# What the audits of these checkpoints look at: block 0 only, where the planted change shows.
AUDIT = {"model": MODEL, "images": "samples", "n_images": 6, "img_size": IMG_SIZE,
         "layers": "0", "dtype": "float32", "images_per_chunk": 6}
POS_SCALE = 4.0


def make_checkpoints(folder: Path) -> list[Path]:
    """Three checkpoints of one random-init ``test_vit``, one file format each:

    - ``step_100.safetensors``: the model;
    - ``step_200.pth``: ``{"model": ...}`` with ``pos_embed`` scaled by ``POS_SCALE`` (the
      planted positional change: block 0's input holds more position);
    - ``step_300.pt``: ``{"state_dict": ...}`` of step 200 with another classifier head, which
      no activation depends on (new weights, no drift).
    """
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(MODEL, pretrained=False, img_size=IMG_SIZE)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    planted = {**base, "pos_embed": base["pos_embed"] * POS_SCALE}
    head = {**planted, "head.weight": planted["head.weight"] + 1.0}
    paths = [folder / "step_100.safetensors", folder / "step_200.pth", folder / "step_300.pt"]
    save_file(base, paths[0])
    torch.save({"model": planted, "epoch": 2}, paths[1])
    torch.save({"state_dict": head}, paths[2])
    return paths
