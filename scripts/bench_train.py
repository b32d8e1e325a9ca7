"""Training throughput of the real training loop (``pcamlab.train.loop.train``) per model and precision.

The training split is decoded once and handed to every run through an in-memory reader, so the figures
are the loop's own: batch assembly, augmentation, forward, backward and the optimiser step. Each run
trains 2 epochs of ``--steps`` steps; the second epoch's images/s (no warm-up) is reported. Validation
uses the first 256 validation patches only, to keep the run short.

Usage:
    .venv/bin/python scripts/bench_train.py --data ../shared/data/pcam-jpg --models baseline,simple-cnn \
        --precision fp32,bf16 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np


class ArrayReader:
    """A PatchReader over arrays already in memory."""

    format = "array"

    def __init__(self, images: np.ndarray, labels: np.ndarray, root: str, split: str):
        self.images, self.labels, self.root, self.split, self.skip_bad = images, labels, root, split, False

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])

    def name(self, index: int) -> str:
        return f"{self.split}[{index}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/pcam-jpg")
    parser.add_argument("--models", default="baseline,simple-cnn")
    parser.add_argument("--precision", default="fp32,bf16")
    parser.add_argument("--channels-last", default="true,false")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = the model's usual batch (32 baseline, 64 others)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--bf16-steps", type=int, default=6, help="bf16 is emulated on AVX2 CPUs: fewer steps")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", help="write the rows as JSON")
    args = parser.parse_args()

    from pcamlab.config import load_config
    from pcamlab.data import load_split_arrays, open_split
    from pcamlab.runtime.device import cpu_has_native_bf16
    from pcamlab.train.loop import train

    started = time.perf_counter()
    train_images, train_labels, _ = load_split_arrays(open_split(args.data, "train"))
    valid_images, valid_labels, _ = load_split_arrays(open_split(args.data, "valid"))
    print(f"decoded {len(train_labels)} + {len(valid_labels)} patches in {time.perf_counter() - started:.0f} s; "
          f"cpu native bf16: {cpu_has_native_bf16()}; load average {os.getloadavg()[0]:.1f}")
    pick = np.r_[np.flatnonzero(valid_labels == 0)[:128], np.flatnonzero(valid_labels == 1)[:128]]
    readers = (ArrayReader(train_images, train_labels, args.data, "train"),
               ArrayReader(valid_images[pick], valid_labels[pick], args.data, "valid[:256]"))
    rows = []
    for model in args.models.split(","):
        for precision in args.precision.split(","):
            for channels_last in args.channels_last.split(","):
                steps = args.bf16_steps if precision == "bf16" else args.steps
                batch = args.batch_size or (32 if model == "baseline" else 64)
                config = load_config(None, [
                    f"model.name={model}", f"train.precision={precision}", f"train.channels_last={channels_last}",
                    f"train.batch_size={batch}", "train.epochs=2", f"train.max_steps_per_epoch={steps}",
                    "train.patience=0", f"train.threads={args.threads}", "augment.dihedral=true",
                ])
                with tempfile.TemporaryDirectory() as folder:
                    summary = train(config, os.path.join(folder, "run"), progress=False, readers=readers)
                    with open(os.path.join(folder, "run", "history.csv")) as file:
                        last = file.read().strip().splitlines()[-1].split(",")
                rate = float(last[-1])
                row = {"model": model, "precision": summary["precision"], "channels_last": channels_last == "true",
                       "batch_size": batch, "steps": steps, "images_per_second": rate,
                       "load_average": round(os.getloadavg()[0], 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(rows, file, indent=2)


if __name__ == "__main__":
    main()
