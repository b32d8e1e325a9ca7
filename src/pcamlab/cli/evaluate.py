"""``pcamlab evaluate``: score a trained model (checkpoint, ONNX or TorchScript) on a labelled split."""

from __future__ import annotations

import argparse

from pcamlab.cli._common import add_format_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="metrics, ROC and confusion matrix of a checkpoint on a labelled split",
        description="Evaluate a checkpoint: writes metrics.json, predictions.csv, roc.png, pr.png, "
        "confusion_matrix.png, reliability.png and score_histogram.png.",
    )
    parser.add_argument("checkpoint", metavar="MODEL",
                        help="a .safetensors checkpoint from a run folder, or an .onnx / .pt file from pcamlab export")
    parser.add_argument("--data", default=None, metavar="PATH",
                        help="dataset root, or 'sample' (default: the data the model was trained on)")
    parser.add_argument("--split", default="valid", help="split to score: valid or test (default valid)")
    add_format_argument(parser, "data layout (default: the model's own at its own data, else auto)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: <run>/eval-<split> for a run folder's checkpoint, else <folder>/<model name>-eval-<split>)")
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_const", const=True, default=None,
                     help="average over the 8 dihedral transforms (default: as the model's recipe says, evaluate.tta)")
    tta.add_argument("--no-tta", dest="tta", action="store_const", const=False, help="score the patches as they are")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="patches scored per step (default 256; on a CPU, forward passes of at most 32)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--force", action="store_true", help="replace an earlier evaluation in --out")
    parser.set_defaults(func=run)


def format_metrics(metrics: dict) -> str:
    """A short human-readable block of the key metrics."""
    ci = metrics.get("roc_auc_ci") or [float("nan"), float("nan")]
    auc = metrics.get("roc_auc")
    threshold = metrics["threshold"]
    origin = metrics.get("threshold_origin") or {}
    where = origin.get("label", f"{threshold:.3f}").split(" ", 1)[-1]  # "(youden, chosen on ...)"
    at = f"at {threshold:.3f}"  # every threshold-dependent number says its threshold
    lines = [
        f"patches      {metrics['n']} ({metrics['n_positive']} tumour)",
        f"ROC AUC      {auc:.4f}  (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if auc is not None else "ROC AUC      undefined",
        f"threshold    {threshold:.3f}  {where}" if origin else f"threshold    {threshold:.3f}",
        f"accuracy     {metrics['accuracy']:.4f}  {at}",
        f"precision    {metrics['precision']:.4f}  {at}",
        f"recall       {metrics['recall']:.4f}  {at}",
        f"specificity  {metrics['specificity']:.4f}  {at}",
        f"F1           {metrics['f1']:.4f}  {at}",
        f"confusion    TP {metrics['tp']}  FP {metrics['fp']}  TN {metrics['tn']}  FN {metrics['fn']}  {at}",
    ]
    effect = metrics.get("tta_effect")
    if effect:
        lines.append(f"TTA          AUC {effect['roc_auc_without_tta']:.4f} -> {effect['roc_auc_with_tta']:.4f}")
    return "\n".join(lines)


def tta_words(*, used: bool, asked: bool | None, recipe: bool | None) -> str:
    """How the patches were scored and who decided it, for the first line: the recipe or a flag, and whether
    the flag overrode the recipe (``recipe`` None: a model file without a recipe)."""
    if asked is None:
        if used:
            return " with 8-view TTA (the recipe's evaluate.tta; --no-tta scores without)"
        return (" without TTA (the recipe's evaluate.tta is off; --tta averages the 8 dihedral views)" if recipe is False
                else " without TTA (--tta averages the 8 dihedral views)")
    if used:
        return " with 8-view TTA (--tta" + ("; the recipe evaluates without)" if recipe is False else ")")
    return (" without TTA (--no-tta overrides the recipe's evaluate.tta, which scores with 8-view TTA)"
            if recipe else " without TTA (--no-tta)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pcamlab.cli._common import progress_bar
    from pcamlab.evaluate.run import default_out_dir, evaluate_checkpoint
    from pcamlab.runfolder import RunFolder

    out = Path(args.out) if args.out else None
    update, close = progress_bar("decoding")
    metrics = evaluate_checkpoint(
        args.checkpoint, args.data, args.split, out, format=args.format, tta=args.tta,
        threshold=args.threshold, batch_size=args.batch_size, device=args.device, force=args.force, progress=update,
    )
    close()
    out = out or default_out_dir(args.checkpoint, args.split, tta=metrics["tta"])
    print(f"evaluated    split {metrics['split']!r} of {metrics['data']}"
          + tta_words(used=metrics["tta"], asked=args.tta, recipe=metrics.get("recipe_tta")))
    if metrics.get("fold"):
        print(f"note: this is the dataset's {metrics['split']!r} split, not the held-out part of {metrics['fold']}; "
              f"that fold's own validation AUC is in {RunFolder(Path(args.checkpoint).parent).history}")
    print(format_metrics(metrics))
    print(f"written to {out}/ (metrics.json, predictions.csv, roc.png, pr.png, confusion_matrix.png, ...)")
    return 0
