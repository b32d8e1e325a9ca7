"""Benchmark ``pcamlab slide predict`` on a Camelyon16-sized synthetic slide: wall time, tiles/s, peak memory.

Builds (once, reused when present) a pyramidal JPEG TIFF of about 25,000 x 50,000 pixels at 0.972 um/px
with about 40% tissue from the real PCam sample, then predicts it whole, each run in its own process so
its peak resident memory (``VmHWM`` of ``/proc/self/status``) is its own:

- ``pipeline``: a constant predictor, so the figure is the slide pipeline alone (tissue mask, reading,
  region cutting, the memory-mapped grid, outputs): the ceiling any model can reach;
- ``model only``: the predictor on 4,096 tiles already in memory (no slide): the model's own ceiling;
- ``torch``, ``onnx`` and ``int8`` (ONNX Runtime, ``pcamlab export --quantize int8``): the whole
  pipeline through the Predictor.

The model is the default preset (``simple-cnn``) unless ``--model`` names a checkpoint; weights do not
change the speed, so without one an untrained default model is written. This is a benchmark, not a
test: it takes minutes. Run it once on a quiet machine and report the load average with the figures.

Usage:
    python scripts/bench_slide.py --work runs/bench-slide [--model CKPT] [--runs torch,onnx,int8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
from pcamlab.slide import load_predictor, predict_slide
kind, model, slide, out, batch_size, readers = sys.argv[1:7]
if kind == "pipeline":
    class Constant:
        contract = load_predictor(model).contract
        path = "constant"
        def predict_proba(self, images, batch_size=256):
            return np.full(len(images), 0.5, dtype=np.float32)
    predictor = Constant()
else:
    predictor = load_predictor(model)
if kind == "model-only":
    from pcamlab.slide import sample_pools
    normal, tumour = sample_pools("valid")
    tiles = np.resize(np.concatenate([normal, tumour]), (4096, 96, 96, 3))
    predictor.predict_proba(tiles[:256], batch_size=256)  # warm-up
    started = time.perf_counter()
    predictor.predict_proba(tiles, batch_size=int(batch_size))
    seconds = time.perf_counter() - started
    result = {"tiles": len(tiles), "seconds": seconds, "tiles_per_second": len(tiles) / seconds}
else:
    started = time.perf_counter()
    summary = predict_slide(predictor, slide, out, batch_size=int(batch_size), readers=int(readers)).summary
    seconds = time.perf_counter() - started
    result = {"tiles": summary["tiles"], "seconds": seconds, "tiles_per_second": summary["tiles"] / seconds,
              "inference_seconds": summary["inference_seconds"], "tissue_area_mm2": summary["tissue_area_mm2"],
              "tiles_grid": summary["tiles_grid"]}
usage = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child started by a big parent
# reported the parent's peak (1,128 MB for every run, a 4,096-tile model-only run included)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
result["peak_rss_mb"] = peak_kb / 1024
result["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # of the whole child: on a shared machine, tiles per CPU-second
print("RESULT " + json.dumps(result))
"""


def default_checkpoint(path: Path) -> Path:
    """An untrained default-preset checkpoint (speed does not depend on the weights)."""
    import torch

    from pcamlab.config import RunConfig
    from pcamlab.models import build_model
    from pcamlab.runtime import InputContract, save_checkpoint

    config = RunConfig()
    torch.manual_seed(0)
    model = build_model(config.model).eval()
    return save_checkpoint(path, model, config, InputContract(mean=(0.70, 0.54, 0.69), std=(0.17, 0.20, 0.15)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/bench-slide", help="folder for the slide, models and outputs")
    parser.add_argument("--model", help="checkpoint to use (default: an untrained default-preset model)")
    parser.add_argument("--width", type=int, default=25_000)
    parser.add_argument("--height", type=int, default=50_000)
    parser.add_argument("--tissue", type=float, default=0.4)
    parser.add_argument("--runs", default="pipeline,model-only-torch,model-only-onnx,model-only-int8,torch,onnx,int8",
                        help="comma-separated: pipeline, model-only-torch, model-only-onnx, model-only-int8, torch, onnx, int8")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--readers", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    facts: dict = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                   "load_before": os.getloadavg()}
    try:
        facts["cpu"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        pass

    slide = work / "camelyon-sized.tif"
    if not slide.exists():
        from pcamlab.slide import make_synthetic_slide, sample_pools

        started = time.perf_counter()
        made = make_synthetic_slide(slide, *sample_pools("valid"), width=args.width, height=args.height,
                                    tissue_fraction=args.tissue, seed=0)
        facts["slide_build_seconds"] = round(time.perf_counter() - started, 1)
        print(f"built {slide} {made.level_dimensions[0]} in {facts['slide_build_seconds']} s", flush=True)
    facts["slide_bytes"] = slide.stat().st_size

    model = Path(args.model) if args.model else work / "default-untrained.safetensors"
    if not model.exists():
        default_checkpoint(model)
    onnx = model.with_suffix(".onnx")
    if any(run.endswith(("onnx", "int8")) for run in args.runs.split(",")) and not onnx.exists():
        from pcamlab.deploy import export_checkpoint

        export_checkpoint(model, onnx)
    int8 = model.with_suffix(".int8.onnx")
    if any(run.endswith("int8") for run in args.runs.split(",")) and not int8.exists():
        from pcamlab.deploy import export_checkpoint

        export_checkpoint(model, int8, quantize="int8", calibration="sample")

    results = {}
    for run in args.runs.split(","):
        kind = "model-only" if run.startswith("model-only") else run
        model_file = onnx if run.endswith("onnx") else int8 if run.endswith("int8") else model
        out = work / f"out-{run}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / f".out-{run}.partial", ignore_errors=True)
        load_before = os.getloadavg()[0]
        completed = subprocess.run(
            [sys.executable, "-c", CHILD, kind, str(model_file), str(slide), str(out), str(args.batch_size),
             str(args.readers)], capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"{run}: failed\n{completed.stderr[-2000:]}", flush=True)
            continue
        result = json.loads(completed.stdout.split("RESULT ", 1)[1])
        result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
        results[run] = result
        print(f"{run:18s} {result['tiles']:>7,} tiles  {result['seconds']:7.1f} s  "
              f"{result['tiles_per_second']:7.0f} tiles/s  (inference {result.get('inference_seconds', 0):.1f} s)  peak RSS {result['peak_rss_mb']:6.0f} MB  "
              f"(load {load_before:.1f} -> {result['load_after']:.1f})", flush=True)
    facts["load_after"] = os.getloadavg()
    report = {"facts": facts, "results": results, "model": str(model)}
    (work / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
