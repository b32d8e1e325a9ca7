"""Which stop rule lets a budget run end where its schedule ends on any machine? Replay them on real runs.

A budget run on a machine that fits N epochs into its budget has, epoch by epoch, the learning rate of a
run whose cosine spans N epochs (``schedule_over: epochs``, ``train.epochs=N``): the same decay, with
the budget's position = epoch / N. So a 3x faster machine is N x 3 epochs, a 3x slower one N / 3. For each
N this script trains the recipe once without early stopping (``train.patience=0``), records validation
AUC and the learning rate after every epoch, and replays three stop rules on that history:

- ``patience in epochs`` (before issue 25): stop after ``patience`` full-patch epochs without improvement;
- ``patience in wall time``: stop after ``wall_share`` of the budget without improvement;
- ``patience once decayed`` (``train.patience_lr_fraction``): count only epochs that end with the learning
  rate at or below that fraction of its peak.

It prints, per rule and N, where the run would stop (share of the budget), the learning rate there, and
the best validation AUC it would keep against the best of the whole schedule. No timing is measured.

    PYTHONPATH=src .venv/bin/python scripts/budget_rule_replay.py --data sample --epochs 8 24 --out /tmp/replay
    PYTHONPATH=src .venv/bin/python scripts/budget_rule_replay.py --data ../shared/data/pcam-jpg --epochs 8 23 69 \
        --out runs/replay    # 23 = the 2-core Xeon's epochs in 15 minutes; 69 and 8 = a machine 3x faster, 3x slower
"""

from __future__ import annotations

import argparse
import csv
import shutil
from pathlib import Path


def replay(rows: list[dict], rule: str, patience: int, crop_epochs: int, lr_fraction: float, wall_share: float,
           peak: float) -> int:
    """The epoch (1-based) at which ``rule`` stops the run recorded in ``rows`` (its last epoch if never)."""
    epochs = len(rows)
    best, best_epoch, stale = None, 0, 0
    for index, row in enumerate(rows, 1):
        auc, factor = float(row["val_auc"]), float(row["learning_rate"]) / peak
        full_patches = index > min(crop_epochs, epochs - 1, epochs // 2) if crop_epochs else True
        if best is None or auc > best:
            best, best_epoch, stale = auc, index, 0
        elif full_patches and (rule != "decayed" or factor <= lr_fraction):
            stale += 1
        if rule == "wall" and full_patches and (index - best_epoch) / epochs >= wall_share:
            return index
        if rule != "wall" and stale >= patience:
            return index
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sample")
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--epochs", type=int, nargs="+", default=[8, 24], help="epochs per budget (machine speeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--lr-fraction", type=float, default=0.1)
    parser.add_argument("--wall-share", type=float, default=0.25)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from pcamlab.config import load_config
    from pcamlab.train.loop import train

    out = Path(args.out)
    print("| epochs in the budget | seed | rule | stops at (share of budget) | learning rate there (of peak) "
          "| best val AUC kept | best of the whole schedule |")
    print("|---|---|---|---|---|---|---|")
    for epochs in args.epochs:
        for seed in args.seeds:
            folder = out / f"epochs-{epochs}-seed-{seed}"
            if not (folder / "summary.json").is_file():
                shutil.rmtree(folder, ignore_errors=True)
                config = load_config(args.config, [
                    f"data.path={args.data}", f"train.epochs={epochs}", "train.schedule_over=epochs",
                    "train.time_budget_minutes=0", "train.patience=0", f"train.seed={seed}",
                ])
                train(config, folder, progress=False)
            config = load_config(folder / "config.yaml")
            with open(folder / "history.csv") as file:
                rows = list(csv.DictReader(file))
            best_all = max(float(row["val_auc"]) for row in rows)
            for rule, name in (("epochs", f"patience {args.patience} epochs"),
                               ("wall", f"patience {args.wall_share:.0%} of the budget"),
                               ("decayed", f"patience {args.patience} once lr <= {args.lr_fraction:.0%}")):
                stop = replay(rows, rule, args.patience, config.augment.crop_epochs if config.augment.crop_size else 0,
                              args.lr_fraction, args.wall_share, config.train.learning_rate)
                kept = max(float(row["val_auc"]) for row in rows[:stop])
                factor = float(rows[stop - 1]["learning_rate"]) / config.train.learning_rate
                print(f"| {epochs} | {seed} | {name} | {stop / epochs:.0%} (epoch {stop}) | {factor:.1%} "
                      f"| {kept:.4f} | {best_all:.4f} |")


if __name__ == "__main__":
    main()
