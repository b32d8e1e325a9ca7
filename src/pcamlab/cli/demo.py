"""``pcamlab demo``: train, evaluate and explain on the real PCam sample shipped in the package."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train, evaluate and explain the default model on the shipped real PCam sample",
        description="The whole workflow in a few minutes of CPU on 800 real PCam patches.",
    )
    parser.add_argument("--out", metavar="DIR",
                        help="run folder to create (default runs/demo, or runs/demo-2, -3... when it exists)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", action="append", default=[],
                        help="override a field of the demo recipe, e.g. --set train.epochs=3")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from pcamlab.cli.evaluate import format_metrics
    from pcamlab.demo import demo_run_dir, run_demo
    from pcamlab.runfolder import RunFolder

    out = demo_run_dir(args.out)  # runs/demo, or runs/demo-2... when it exists
    print(f"pcamlab demo: training the default model on the real PCam sample shipped with pcamlab -> {out}/")
    result = run_demo(out, overrides=args.overrides, progress=not args.no_progress and sys.stderr.isatty(), log=print)
    summary = result["summary"]
    print()
    print(f"== validation split ({result['metrics']['n']} patches from other slides), best epoch {summary['best_epoch']} ==")
    print(format_metrics(result["metrics"]))
    print(f"training speed {summary['train_images_per_second_median']:.0f} patches/s ({summary['device']}, {summary['precision']}); "
          f"demo wall time {result['wall_seconds']:.0f} s")
    print()
    print("files:")
    descriptions = {
        "metrics.json": "all metrics", "roc.png": "ROC curve", "confusion_matrix.png": "confusion matrix",
        "first_layer_filters.png": "learned first-layer filters", RunFolder.BEST: "best checkpoint",
        RunFolder.HISTORY: "per-epoch log", "training_curves.png": "loss, AUC and learning rate per epoch",
        "explain-valid": "Grad-CAM gallery, feature maps, confident mistakes", RunFolder.TENSORBOARD: "TensorBoard logs (tensorboard --logdir runs)",
        "report.html": "the run report, open in a browser",
    }
    width = max(len(str(path)) for path in result["files"].values())
    for name, path in result["files"].items():
        print(f"  {str(path):<{width}}  {descriptions.get(name, '')}")
    return 0
