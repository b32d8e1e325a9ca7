"""``pcamlab bench``: throughput per model, precision and layout vs peak FLOP/s; or ``--time-to-auc``."""

from __future__ import annotations

import argparse


def _names(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _sizes(text: str) -> list[int]:
    try:
        return [int(item) for item in _names(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 32,64; got {text!r}") from None


def _layouts(text: str) -> list[bool]:
    values = {"on": True, "off": False}
    items = _names(text)
    if not items or any(item not in values for item in items):
        raise argparse.ArgumentTypeError(f"expected on, off or on,off; got {text!r}")
    return [values[item] for item in items]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="training/inference images per second and fraction of the machine's peak FLOP/s",
        description="Benchmark models on synthetic input (no data loading): training images/s "
        "(forward + backward + AdamW) and inference images/s per model, batch size, precision "
        "(fp32, bf16 autocast) and channels_last on/off, with FLOPs per patch and the fraction of the "
        "peak FLOP/s measured with a large matmul. Timings on a shared machine are noisy: run twice.",
    )
    parser.add_argument("--models", type=_names, default=None, metavar="A,B",
                        help="models to time: registered names (see pcamlab models), each optionally with options "
                        "as NAME:OPTION=VALUE[:...]; default baseline and the default model, simple-cnn:width=16")
    parser.add_argument("--model", metavar="FILE",
                        help="instead: time a trained model file (.safetensors, .onnx, .pt) end to end through "
                        "its predictor on real sample patches (uint8 in, probabilities out)")
    parser.add_argument("--tta", action="store_true", help="with --model: time test-time augmentation")
    parser.add_argument("--patches", type=int, default=256, help="with --model: patches per timed pass (default 256)")
    parser.add_argument("--precision", type=_names, default=["fp32"], metavar="P,Q",
                        help="fp32 and/or bf16 (default fp32)")
    parser.add_argument("--batch-size", type=_sizes, default=[64], metavar="N,M", help="default 64")
    parser.add_argument("--channels-last", type=_layouts, default=[True, False], metavar="on,off",
                        help="memory layouts to time (default on,off)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--onnx", action="store_true", help="also time onnxruntime fp32 inference")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile inference (slow to compile)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's)")
    parser.add_argument("--peak-size", type=int, help="side of the peak-FLOP/s matmul (default 2048 fp32, 1024 bf16)")
    parser.add_argument("--out", metavar="PATH", help="also write the rows to PATH (.json or .csv); with --time-to-auc "
                        "a new folder for the results and runs (required there)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    group = parser.add_argument_group(
        "time to AUC", "--time-to-auc trains each --config from scratch on --data, once per seed, each in a fresh "
        "process, and reports the wall time (from the run's start: imports, decoding, training) to validation "
        "AUC 0.85/0.90/0.92/0.94 and the AUC at 1/2/5/15 minutes, median over seeds (AUC in fp32, scored after "
        "training on weights copied at fixed wall times). Writes time_to_auc.{md,json,png} into --out (a folder).",
    )
    group.add_argument("--time-to-auc", action="store_true", help="run the time-to-AUC benchmark instead")
    group.add_argument("--config", dest="configs", action="append", default=[], metavar="FILE",
                       help="a recipe (run config YAML); repeat for several (default configs/speedrun.yaml)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config field in every recipe (repeatable)")
    group.add_argument("--data", metavar="PATH", default="../shared/data/pcam-jpg",
                       help="dataset root with train and valid splits (default ../shared/data/pcam-jpg)")
    group.add_argument("--seeds", type=int, default=3, help="runs per recipe; the table gives medians (default 3)")
    group.add_argument("--first-seed", type=int, default=0, metavar="K",
                       help="seeds K..K+SEEDS-1 (default 0): adds seeds to a benchmark that ran the first ones")
    group.add_argument("--minutes", type=float, default=15.0,
                       help="horizon: stop a run still training then (default 15)")
    group.add_argument("--interval", type=float, default=0.0,
                       help="seconds between weight copies (default: 5 s to 1 min, growing to 60 s after 5 min)")
    group.add_argument("--valid-subset", type=int, default=0, metavar="N",
                       help="score N fixed validation patches instead of all (default all)")
    parser.set_defaults(func=run)


def run_time_to_auc(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pcamlab.config import load_config
    from pcamlab.errors import ConfigError
    from pcamlab.train.time_to_auc import run_time_to_auc as measure

    if not args.out:
        raise ConfigError("--time-to-auc writes a folder of results: pass --out FOLDER")
    paths = args.configs or ["configs/speedrun.yaml"]
    recipes = {}
    for path in paths:
        name = Path(path).stem
        if name in recipes:
            raise ConfigError(f"two recipes are named {name!r} (--config {path}); give the files different names")
        recipes[name] = load_config(path, args.overrides)
    result = measure(
        recipes, args.data, args.out, seeds=args.seeds, first_seed=args.first_seed, minutes=args.minutes, interval=args.interval,
        valid_subset=args.valid_subset, threads=args.threads, log=print,
    )
    print(result["markdown"], end="")
    print(f"written to {Path(args.out) / 'time_to_auc.md'} (+ .json, .png)")
    return 0


def run(args: argparse.Namespace) -> int:
    import sys

    if args.time_to_auc:
        return run_time_to_auc(args)
    from pcamlab.deploy.bench import bench_model_file, format_model_table, format_table, run_bench, write_results

    if args.out and not args.force:
        from pathlib import Path

        from pcamlab.errors import RunFolderError

        if Path(args.out).exists():  # fail before minutes of timing, not after
            raise RunFolderError(f"{args.out!r} already exists; choose another --out or pass --force to replace it")
    if args.model:
        rows = bench_model_file(args.model, batch_sizes=args.batch_size, patches=args.patches, tta=args.tta,
                                device=args.device)
        print(format_model_table(rows))
        if args.out:
            print(f"written to {write_results(rows, args.out, force=args.force)}")
        return 0
    rows = run_bench(
        args.models, precisions=args.precision, batch_sizes=args.batch_size, channels_last=args.channels_last,
        steps=args.steps, warmup=args.warmup, onnx=args.onnx, compile=args.compile, device=args.device,
        threads=args.threads, peak_size=args.peak_size, log=lambda line: print(line, file=sys.stderr),
    )
    print(format_table(rows))
    if args.out:
        print(f"written to {write_results(rows, args.out, force=args.force)}")
    return 0
