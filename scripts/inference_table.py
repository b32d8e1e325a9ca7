"""Inference table of one checkpoint: patches/s and validation AUC per runtime.

Runtimes: torch fp32 as trained, torch fp32 as ``TorchPredictor`` scores by default (batch-norm folded
into the convolutions, channels_last weights: ``pcamlab.runtime.fold``), torch bf16 (autocast),
ONNX Runtime fp32 and ONNX Runtime int8 (static quantisation calibrated on training patches, as
``pcamlab export --quantize int8`` writes it). Every runtime scores the same validation patches through
the one Predictor API (uint8 patches in, probabilities out: normalisation and batching included).
Throughput: the median of ``--repeats`` interleaved passes over ``--timed`` patches at ``--batch-size``;
AUC: every validation patch, once. The CPU, threads and the 1-minute load average are printed: on a
shared machine compare rows of one run (they were interleaved), not runs.

Usage:
    python scripts/inference_table.py runs/default/best.safetensors --data ../shared/data/pcam-jpg
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", default="../shared/data/pcam-jpg")
    parser.add_argument("--batch-size", type=int, default=32, help="patches per forward pass (default 32, "
                        "the predictors' own on a CPU)")
    parser.add_argument("--timed", type=int, default=1024, help="patches per timed pass (default 1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration-patches", type=int, default=512)
    parser.add_argument("--out", help="also write the rows as JSON")
    args = parser.parse_args()

    from pcamlab.data import load_split_arrays, open_split
    from pcamlab.deploy import export_checkpoint
    from pcamlab.evaluate.metrics import roc_auc
    from pcamlab.runtime import OnnxPredictor, TorchPredictor, load_checkpoint
    from pcamlab.train.time_to_auc import cpu_description

    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    images, labels, _ = load_split_arrays(open_split(args.data, "valid"))
    folder = Path(tempfile.mkdtemp(prefix="inference-table-"))
    try:
        source = folder / "best.safetensors"
        shutil.copy(args.checkpoint, source)
        fp32_onnx = export_checkpoint(source, folder / "best.onnx")["path"]
        int8 = export_checkpoint(source, quantize="int8", calibration=args.data,
                                 calibration_count=args.calibration_patches)
        model = checkpoint.model.eval()
        predictors = {
            "torch fp32, as trained": TorchPredictor(model, checkpoint.contract, precision="fp32", fold_batch_norm=False),
            "torch fp32 (BN folded, channels_last: the default)": TorchPredictor(model, checkpoint.contract, precision="fp32"),
            "torch bf16 (BN folded)": TorchPredictor(model, checkpoint.contract, precision="bf16"),
            "ONNX Runtime fp32": OnnxPredictor(fp32_onnx, threads=args.threads),
            "ONNX Runtime int8": OnnxPredictor(int8["path"], threads=args.threads),
        }
        for predictor in predictors.values():  # time exactly --batch-size per forward pass (CPU default: 32)
            predictor.forward_batch_size = args.batch_size
        timed = images[: args.timed]
        seconds = {name: [] for name in predictors}
        for predictor in predictors.values():  # warm-up (first-call allocations, oneDNN primitive cache)
            predictor.predict_proba(timed[: args.batch_size], batch_size=args.batch_size)
        load_before = cpu_description()["load_average"]
        for _ in range(args.repeats):
            for name, predictor in predictors.items():
                start = time.perf_counter()
                predictor.predict_proba(timed, batch_size=args.batch_size)
                seconds[name].append(time.perf_counter() - start)
        rows = []
        reference = None
        for name, predictor in predictors.items():
            probabilities = predictor.predict_proba(images, batch_size=args.batch_size).astype(np.float64)
            auc = roc_auc(labels, probabilities)
            reference = auc if reference is None else reference
            rows.append({"runtime": name, "patches_per_second": round(len(timed) / statistics.median(seconds[name]), 1),
                         "val_auc": round(float(auc), 4), "auc_change_vs_torch_fp32": round(float(auc - reference), 4),
                         "file_bytes": {"ONNX Runtime fp32": Path(fp32_onnx).stat().st_size,
                                        "ONNX Runtime int8": int8["bytes"]}.get(name)})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cpu = cpu_description()
    print("| runtime | patches/s | val AUC | AUC change vs torch fp32 |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['runtime']} | {row['patches_per_second']:.0f} | {row['val_auc']:.4f} | {row['auc_change_vs_torch_fp32']:+.4f} |")
    print(f"\n{checkpoint.config.model.name} {checkpoint.config.model.options}; {len(labels)} validation patches of "
          f"{args.data} for the AUC; throughput: median of {args.repeats} interleaved passes over {len(timed)} patches, "
          f"batch {args.batch_size}, {args.threads} threads. CPU: {cpu['model']} ({', '.join(cpu['extensions'])}, native "
          f"bf16 {'yes' if cpu['native_bf16'] else 'no'}); 1-minute load average {load_before} before / "
          f"{cpu['load_average']} after (shared machine). int8 calibrated on {int8['calibration']['source']}.")
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "cpu": cpu, "load_before": load_before}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
