"""``pcamlab bench``: training and inference throughput per model, precision and layout vs peak FLOP/s."""

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
    parser.add_argument("--models", type=_names, default=["baseline", "simple-cnn"], metavar="A,B",
                        help="registered models (default baseline,simple-cnn; see pcamlab models)")
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
    parser.add_argument("--out", metavar="FILE", help="also write the rows to FILE (.json or .csv)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from pcamlab.deploy.bench import format_table, run_bench, write_results

    if args.out and not args.force:
        from pathlib import Path

        from pcamlab.errors import RunFolderError

        if Path(args.out).exists():  # fail before minutes of timing, not after
            raise RunFolderError(f"{args.out!r} already exists; choose another --out or pass --force to replace it")
    rows = run_bench(
        args.models, precisions=args.precision, batch_sizes=args.batch_size, channels_last=args.channels_last,
        steps=args.steps, warmup=args.warmup, onnx=args.onnx, compile=args.compile, device=args.device,
        threads=args.threads, peak_size=args.peak_size, log=lambda line: print(line, file=sys.stderr),
    )
    print(format_table(rows))
    if args.out:
        print(f"written to {write_results(rows, args.out, force=args.force)}")
    return 0
