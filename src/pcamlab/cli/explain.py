"""``pcamlab explain CHECKPOINT --data PATH [--split valid] [--out DIR]``: filters, feature maps, Grad-CAM."""

from __future__ import annotations

import argparse
from pathlib import Path

from pcamlab.cli._common import seed_type

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "explain",
        help="draw filters, feature maps, Grad-CAM heat maps and confident mistakes of a checkpoint",
        description=(
            "Explain a trained checkpoint on a data split: first-layer and deeper filters, the feature maps "
            "of one tumour patch, a Grad-CAM gallery of true positives, false positives and false negatives, "
            "and the most confident mistakes. Writes PNGs and explain.json into --out."
        ),
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .safetensors checkpoint, e.g. runs/NAME/best.safetensors")
    parser.add_argument(
        "--data", default=None, metavar="PATH",
        help="dataset folder or 'sample' (default: the data.path stored in the checkpoint)",
    )
    parser.add_argument("--split", default="valid", help="split to explain (default: valid)")
    parser.add_argument(
        "--out", default=None, metavar="DIR",
        help="output folder (default: explain-SPLIT beside the checkpoint, so the run report picks it up)",
    )
    parser.add_argument("--n", type=int, default=256, help="patches drawn at random from the split (default: 256)")
    parser.add_argument("--per-group", type=int, default=6, help="patches per Grad-CAM group (default: 6)")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed of the random draw (default: 0)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pcamlab.explain import run_explain

    out = Path(args.out) if args.out else Path(args.checkpoint).parent / f"explain-{args.split}"
    summary = run_explain(
        args.checkpoint, args.data, args.split, out,
        n=args.n, seed=args.seed, per_group=args.per_group, device=args.device,
    )
    counts = summary["counts"]
    print(
        f"explained {summary['n']} patches of {summary['split']!r} at threshold {summary['threshold']:.2f}: "
        f"{counts['true_positive']} true positives, {counts['false_positive']} false positives, "
        f"{counts['false_negative']} false negatives, {counts['true_negative']} true negatives "
        f"(Grad-CAM layer {summary['gradcam_layer']!r})"
    )
    for path in summary["files"].values():
        print(f"wrote {path}")
    return 0
