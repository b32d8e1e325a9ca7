"""Train the tiny patch model the slide tests use and write it to tests/assets/slide_model.safetensors.

A ``baseline`` CNN shrunk to filters [8, 16] and a 16-unit dense layer (about 10,600 parameters, 43 KB,
about 5 MFLOPs per patch), trained for a few seeded epochs on the 800 real training patches of the
sample shipped in pcamlab (dihedral flips, Adam). The slide tests build their slides from the sample's
*valid* patches (other Camelyon16 slides), so the model never saw the tissue of a test slide.

Usage:
    python scripts/make_slide_fixture.py [--out tests/assets/slide_model.safetensors] [--epochs 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from pcamlab.config import ModelConfig, RunConfig
from pcamlab.data.augment import dihedral
from pcamlab.evaluate.metrics import roc_auc
from pcamlab.models import build_model
from pcamlab.slide.synthetic import sample_pools
from pcamlab.runtime import InputContract, TorchPredictor, save_checkpoint

MEAN = [0.70, 0.54, 0.69]  # approximate PCam channel means/stds (0-1 scale); the model learns around them
STD = [0.17, 0.20, 0.15]
OPTIONS = {"filters": [8, 16], "dense_units": 16}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/assets/slide_model.safetensors")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    normal, tumour = sample_pools("train")
    images = np.concatenate([normal, tumour])
    labels = torch.from_numpy(np.r_[np.zeros(len(normal)), np.ones(len(tumour))].astype(np.float32))
    contract = InputContract(mean=MEAN, std=STD)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    inputs = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std  # (N, 3, 96, 96)
    config = RunConfig(model=ModelConfig(name="baseline", options=dict(OPTIONS)))
    model = build_model(config.model)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(order), 64):
            batch = order[start:start + 64]
            view = int(torch.randint(8, (1,), generator=generator))
            logits = model(dihedral(inputs[batch], view)).reshape(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    valid_normal, valid_tumour = sample_pools("valid")
    valid = np.concatenate([valid_normal, valid_tumour])
    valid_labels = np.r_[np.zeros(len(valid_normal)), np.ones(len(valid_tumour))]
    auc = roc_auc(valid_labels, TorchPredictor(model, contract).predict_proba(valid))
    out = save_checkpoint(Path(args.out), model, config, contract, {"epoch": args.epochs, "valid_auc": auc})
    print(f"valid patch AUC {auc:.4f}; written {out} ({out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
