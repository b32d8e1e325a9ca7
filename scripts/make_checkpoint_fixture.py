"""Write the small checkpoint fixtures of tests/assets: checkpoints as pcamlab wrote them on 2026-11-29.

They pin the on-disk format: every later pcamlab must still load them (``tests/test_runtime.py``). The
fixtures were written by this script at commit b57d83f, before ``pcamlab.runtime`` existed (its imports
were then ``pcamlab.train.checkpoint.make_contract/save_checkpoint`` and
``pcamlab.evaluate.predict.predict_proba``). Do not rerun it to "refresh" them: a fixture written by
newer code no longer shows that old checkpoints load. It stays runnable to make NEW fixtures.

Each fixture is a seeded ``simple-cnn`` of width 4 (about 25k parameters, ~100 kB) and comes with
``NAME.expected.json``: the probabilities it gave on 8 patches of the shipped sample's valid split,
so a test can check the reloaded model predicts exactly as it did.

- ``checkpoint-v1-simple-cnn-w4.safetensors``: plain contract, threshold 0.5.
- ``checkpoint-v1-reinhard-w4.safetensors``: Reinhard stain normaliser fitted on sample patches and a
  threshold of 0.37 chosen as if by ``evaluate.threshold_method: youden``.

Usage:
    python scripts/make_checkpoint_fixture.py tests/assets
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from pcamlab.config import load_config
from pcamlab.data import open_split
from pcamlab.data.normalize import NORMALIZERS
from pcamlab.models import build_model
from pcamlab.runtime import InputContract, TorchPredictor, save_checkpoint


def sample_patches(count: int = 8) -> np.ndarray:
    reader = open_split("sample", "valid")
    indices = np.linspace(0, len(reader) - 1, count).round().astype(int)  # both class folders
    return np.stack([reader[int(index)][0] for index in indices])  # (count, 96, 96, 3) uint8


def main(out_dir: str) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    patches = sample_patches()
    for name, stain, threshold in (("checkpoint-v1-simple-cnn-w4", False, 0.5),
                                   ("checkpoint-v1-reinhard-w4", True, 0.37)):
        torch.manual_seed(0)
        config = load_config(overrides=["model.name=simple-cnn", "model.options={width: 4}",
                                        "evaluate.threshold_method=youden" if stain else "evaluate.threshold=0.5",
                                        *(["data.stain_normalization=reinhard"] if stain else [])])
        model = build_model(config.model).eval()
        stain_normalization = NORMALIZERS.get("reinhard")().fit(patches).to_dict() if stain else None
        contract = InputContract(patch_size=96, mean=(0.70, 0.54, 0.69), std=(0.17, 0.21, 0.16), threshold=threshold,
                                 threshold_source="youden" if stain else "fixed", stain_normalization=stain_normalization)
        metadata = {"epoch": 3, "val_auc": 0.75, "val_loss": 0.6}
        save_checkpoint(out / f"{name}.safetensors", model, config, contract, metadata)
        probabilities = TorchPredictor(model, contract).predict_proba(patches)
        (out / f"{name}.expected.json").write_text(json.dumps({
            "patches": "8 patches of the sample valid split, np.linspace(0, len - 1, 8).round()",
            "probabilities": [float(p) for p in probabilities],
        }, indent=2) + "\n")
        print(out / f"{name}.safetensors", [round(float(p), 4) for p in probabilities])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/assets")
