"""The bit-identical reference of the training loop: SHA-256 of every tensor a seeded fp32 run writes.

Trains ``configs/default.yaml`` on the embedded sample (800 train, 203 valid real PCam patches) for a
fixed number of epochs, fp32, deterministic, one thread, no time budget (``schedule_over=epochs``), so
the run ends by epochs and the crop schedule is exercised (crops in epochs 1-2, full patches in epoch 3).
A second recipe turns on the options the default leaves off (EMA, gradient clipping, L1, label smoothing,
the plateau schedule, a step cap). It then prints one line per tensor of ``best.safetensors`` and
``last.safetensors`` (``FILE TENSOR SHA256``), one for ``history.csv`` without its two timing columns
(``seconds``, ``images_per_second``: wall clock), and one for ``resume.pt``'s model tensors.

Run it before and after a change of ``pcamlab.train``; the outputs must be equal line for line:

    PYTHONPATH=src .venv/bin/python scripts/loop_reference.py --out /tmp/ref-before > before.txt
    (change the loop)
    PYTHONPATH=src .venv/bin/python scripts/loop_reference.py --out /tmp/ref-after > after.txt
    diff before.txt after.txt && echo identical
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
from pathlib import Path

RECIPES = {
    "default": [],
    "options": [
        "train.ema_decay=0.9", "train.grad_clip=0.5", "train.l1=1e-6", "train.label_smoothing=0.1",
        "train.scheduler=plateau", "train.plateau_patience=1", "train.patience=3", "train.max_steps_per_epoch=9",
    ],
}
COMMON = [
    "data.path=sample", "train.epochs=3", "train.time_budget_minutes=0", "train.schedule_over=epochs",
    "train.precision=fp32", "train.deterministic=true", "train.threads=1", "train.seed=0",
    "augment.crop_epochs=2", "data.cache=ram",
]
TIMING_COLUMNS = ("seconds", "images_per_second")


def tensor_hashes(path: Path) -> list[tuple[str, str]]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return [(name, hashlib.sha256(tensors[name].contiguous().numpy().tobytes()).hexdigest()) for name in sorted(tensors)]


def history_hash(path: Path) -> str:
    with open(path) as file:
        rows = list(csv.DictReader(file))
    text = io.StringIO()
    for row in rows:
        text.write(",".join(f"{key}={value}" for key, value in row.items() if key not in TIMING_COLUMNS) + "\n")
    return hashlib.sha256(text.getvalue().encode()).hexdigest()


def main() -> None:
    import torch

    from pcamlab.config import load_config
    from pcamlab.train.loop import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="scratch folder for the runs (replaced)")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    repository = Path(__file__).resolve().parents[1]
    for name, overrides in RECIPES.items():
        config = load_config(repository / "configs" / "default.yaml", COMMON + overrides)
        summary = train(config, out / name, progress=False)
        print(f"{name} summary epochs_run={summary['epochs_run']} best_epoch={summary['best_epoch']} "
              f"stop_reason={summary['stop_reason']!r} threshold={summary['threshold']!r}")
        for file in ("best.safetensors", "last.safetensors"):
            for tensor, digest in tensor_hashes(out / name / file):
                print(f"{name} {file} {tensor} {digest}")
        print(f"{name} history.csv(no timing) {history_hash(out / name / 'history.csv')}")
        state = torch.load(out / name / "resume.pt", map_location="cpu", weights_only=True)
        for tensor in sorted(state["model"]):
            digest = hashlib.sha256(state["model"][tensor].contiguous().numpy().tobytes()).hexdigest()
            print(f"{name} resume.pt:model {tensor} {digest}")


if __name__ == "__main__":
    main()
