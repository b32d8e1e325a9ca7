"""``pcamlab predict``: probabilities for patches on disk (images, folders, ``_x.h5``) into a CSV."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="predict image files, folders or an _x.h5 file into a CSV",
        description="Predict the probability of tumour for every patch of the inputs and write a CSV "
        "(patch, probability, predicted, class_name) at the model's decision threshold. MODEL is a "
        "checkpoint (.safetensors) or a file written by pcamlab export (.onnx, .pt).",
    )
    parser.add_argument("checkpoint", metavar="MODEL", help="checkpoint .safetensors, or exported .onnx / .pt")
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="image files (jpg/png/tif), folders of them (recursive), PCam-style _x.h5 files")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="CSV to write (default predictions.csv, or submission.csv with --format kaggle)")
    parser.add_argument("--format", choices=["csv", "kaggle"], default="csv",
                        help="csv: patch,probability,predicted,class_name; kaggle: id,label (label = probability) "
                        "for the Kaggle test/ folder of <id>.tif files")
    parser.add_argument("--template", metavar="CSV",
                        help="with --format kaggle: sample_submission.csv giving the row order (its ids must match the files)")
    parser.add_argument("--tta", action="store_true", help="average over the 8 dihedral transforms")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="patches decoded and scored per step (default 256); on a CPU each step runs as forward "
                        "passes of at most 32 (measured fastest), on a GPU as one")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the model's)")
    parser.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N] (GPU: torch checkpoints only; default cpu)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx", "int8"],
                        help="auto: among torch and the exports of this very checkpoint beside it (NAME.onnx, "
                        "NAME.int8.onnx from pcamlab export), the one export timed fastest on this CPU (else "
                        "int8 > onnx > torch); torch on a GPU (default auto)")
    parser.add_argument("--skip-bad", action="store_true", help="skip unusable image files instead of stopping")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pcamlab.cli._common import progress_bar
    from pcamlab.errors import ConfigError

    if args.format == "kaggle":
        return run_kaggle(args)
    if args.template:
        raise ConfigError("--template orders a Kaggle submission; add --format kaggle")
    from pcamlab.deploy import predict_files

    update, close = progress_bar("predicting")
    result = predict_files(
        args.checkpoint, args.inputs, args.out or "predictions.csv", tta=args.tta, batch_size=args.batch_size,
        threshold=args.threshold, device=args.device, force=args.force, skip_bad=args.skip_bad, progress=update,
        runtime=args.runtime,
    )
    close()
    positive = int(result.predicted.sum())
    print(
        f"{len(result.names)} patches: {positive} predicted {result.class_names[1]}, "
        f"{len(result.names) - positive} {result.class_names[0]} (threshold {result.threshold:.3f}, "
        f"{_SOURCES.get(result.threshold_source, f'{result.threshold_source}, chosen on validation during training')}"
        f"{', TTA' if args.tta else ''})"
    )
    for note in result.notes:
        print(f"note: {note}")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unusable files, first: {result.skipped[0]}")
    print(f"runtime {result.runtime} ({result.runtime_reason})")
    print(f"written to {result.out}")
    return 0


_SOURCES = {"given": "given by --threshold", "fixed": "fixed by evaluate.threshold, not chosen on data"}


def run_kaggle(args: argparse.Namespace) -> int:
    from pcamlab.cli._common import progress_bar
    from pcamlab.deploy import predict_kaggle
    from pcamlab.errors import ConfigError

    if args.skip_bad:
        raise ConfigError("--skip-bad cannot be used with --format kaggle: a submission needs every test id")
    if args.threshold is not None:
        raise ConfigError("--threshold has no effect with --format kaggle: the label is the probability itself")
    update, close = progress_bar("predicting")
    result = predict_kaggle(
        args.checkpoint, args.inputs, args.out or "submission.csv", template=args.template, tta=args.tta,
        batch_size=args.batch_size, device=args.device, force=args.force, progress=update,
    )
    close()
    for note in result.notes:
        print(f"note: {note}")
    order = f"in the order of {args.template}" if args.template else "sorted by file name"
    print(f"{len(result.names)} test patches, rows {order}{' (TTA)' if args.tta else ''}")
    print(f"written to {result.out} (id,label; label = P({result.class_names[1]}))")
    return 0
