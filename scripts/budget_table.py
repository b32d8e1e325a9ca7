"""Train every preset under the same wall-clock budget and tabulate validation AUC and speed.

Each preset gets the default recipe (configs/default.yaml: stain/colour/dihedral augmentation, AdamW,
cosine) with the cosine decay spread over the budget (train.schedule_over=budget), so a slow model
still finishes its schedule. Runs one preset after another (never two at once: they would share the
cores) and writes OUT/table.md; a preset whose run folder already holds a summary is not rerun.

    .venv/bin/python scripts/budget_table.py --data ../shared/data/pcam-jpg --minutes 15 --out runs/budget
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ["simple-cnn", "baseline", "fcn", "vgg-small", "densenet-small", "p4m-densenet", "resnet18", "resnet34"]


def table(out: Path, minutes: float) -> str:
    """A Markdown table of every finished run folder under ``out``, best validation AUC first."""
    import torch

    lines = [
        f"| preset | MFLOPs/patch | parameters | epochs seen in {minutes:g} min | train patches/s (median) "
        "| best val AUC | val AUC after each epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = []
    for folder in sorted(out.iterdir()):
        summary_file = folder / "summary.json"
        if not summary_file.is_file():
            continue
        summary = json.loads(summary_file.read_text())
        with open(folder / "history.csv") as file:
            history = list(csv.DictReader(file))
        # optimiser steps x batch = patches seen (partial last epoch included)
        state = torch.load(folder / "resume.pt", weights_only=True)["optimizer"]["state"]
        steps = int(next(iter(state.values()))["step"])
        batch = yaml_batch(folder)
        epochs = steps * batch / summary["data"]["train_patches"]
        trajectory = " / ".join(f"{float(row['val_auc']):.3f}" for row in history)
        rows.append((summary["best"]["val_auc"], folder.name, summary, epochs, trajectory))
    for auc, name, summary, epochs, trajectory in sorted(rows, key=lambda r: -r[0]):
        lines.append(
            f"| {name} | {summary['flops_per_patch'] / 1e6:.1f} | {summary['parameters']:,} | {epochs:.2f} | "
            f"{summary['train_images_per_second_median']:.1f} | **{auc:.4f}** (epoch {summary['best_epoch']}) | {trajectory} |"
        )
    return "\n".join(lines) + "\n"


def yaml_batch(folder: Path) -> int:
    import yaml

    return int(yaml.safe_load((folder / "config.yaml").read_text())["train"]["batch_size"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset with train and valid splits")
    parser.add_argument("--minutes", type=float, default=15.0, help="wall-clock budget per preset (data loading included)")
    parser.add_argument("--out", type=Path, default=Path("runs/budget"), help="folder for one run folder per preset")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated preset names")
    parser.add_argument("--config", default="configs/default.yaml", help="the recipe every preset gets")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra override for every run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for preset in args.presets.split(","):
        name, _, width = preset.partition("@")  # resnet18@16 = resnet18 with options.width 16
        run = args.out / preset.replace("@", "-w")
        if (run / "summary.json").is_file():
            print(f"{preset}: done already ({run})", flush=True)
            continue
        command = [
            sys.executable, "-m", "pcamlab", "train", "--data", args.data, "--config", args.config,
            "--out", str(run), "--no-progress",
            "--set", f"model.name={name}", "--set", "train.epochs=100",
            "--set", f"train.time_budget_minutes={args.minutes}", "--set", "train.schedule_over=budget",
        ]
        if name != "simple-cnn":  # the recipe's options belong to its own model
            command += ["--set", "model.options={}"]
        if width:
            command += ["--set", f"model.options.width={width}"]
        for extra in args.set:
            command += ["--set", extra]
        if run.exists():  # an interrupted earlier attempt: start it again from scratch, keep the old one
            run.rename(run.with_name(run.name + f"-interrupted-{int(time.time())}"))
        print(f"{preset}: {' '.join(command)}", flush=True)
        started = time.perf_counter()
        with open(args.out / f"{run.name}.log", "w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        print(f"{preset}: exit {code} after {time.perf_counter() - started:.0f} s", flush=True)
    text = table(args.out, args.minutes)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
