"""``pcamlab export``: a checkpoint to a verified ONNX or TorchScript file for deployment."""

from __future__ import annotations

import argparse
import shlex


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX (fp32 or int8) or TorchScript, verified against torch",
        description="Export a checkpoint. By default the exported model takes uint8 RGB patches "
        "(B, H, W, 3) and normalises inside; outputs 'probability' and 'logit' (B,). The input contract "
        "is stored in the file. The export is checked on real sample patches against torch "
        "(max |difference| <= 1e-4) before the file is kept.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="a .safetensors file from a run folder")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="default onnx")
    parser.add_argument("--out", metavar="FILE", help="file to write (default: beside the checkpoint, .onnx/.pt)")
    parser.add_argument("--input", dest="input_kind", default="uint8", choices=["uint8", "float"],
                        help="uint8: NHWC patches, normalisation inside (default); float: normalised NCHW (ONNX)")
    parser.add_argument("--exporter", default="auto", choices=["auto", "dynamo", "legacy"],
                        help="ONNX exporter: auto tries dynamo then legacy (default auto)")
    parser.add_argument("--opset", type=int, help="ONNX opset, 17 or newer (default 18 dynamo / 17 legacy)")
    parser.add_argument("--quantize", default="none", choices=["none", "int8"],
                        help="int8: ONNX Runtime static quantisation calibrated on training patches, written to "
                        "NAME.int8.onnx beside the checkpoint by default, or exactly --out; only the int8 file is written "
                        "(ONNX only; default none)")
    parser.add_argument("--calibration", metavar="PATH",
                        help="dataset root whose train split calibrates int8 (default: the checkpoint's data.path)")
    parser.add_argument("--calibration-patches", type=int, default=512, metavar="N",
                        help="training patches that calibrate int8 (default 512)")
    parser.add_argument("--no-timing", dest="timing", action="store_false",
                        help="do not time the file and torch on this CPU (predict --runtime auto then falls back to "
                        "its default order int8 > onnx > torch)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pcamlab.deploy import export_checkpoint

    report = export_checkpoint(
        args.checkpoint, args.out, format=args.format, input_kind=args.input_kind, exporter=args.exporter,
        opset=args.opset, force=args.force, quantize=args.quantize, calibration=args.calibration,
        calibration_count=args.calibration_patches, timing=args.timing,
    )
    how = report["exporter"] + (f", opset {report['opset']}" if report["opset"] else "")
    print(f"exported {report['format']} ({how}, {report['input_kind']} input) to {report['path']} "
          f"({report['bytes'] / 1e6:.2f} MB)")
    if report["dynamo_error"]:
        print(f"note: the dynamo exporter failed ({report['dynamo_error']}); used the legacy exporter")
    if report["stain_normalization"]:
        print(f"note: the model expects {report['stain_normalization']} stain-normalised patches; the graph does "
              "not include it: pcamlab.deploy.load_onnx / pcamlab predict apply it from the stored contract, "
              "other runtimes must apply it first")
    _say_where_auto_looks(args.checkpoint, report)
    if report.get("speed"):
        speed = report["speed"]
        kind = "int8" if report["quantize"] == "int8" else "fp32"
        print(f"timed on this CPU ({speed['cpu']}; forward passes of {speed['forward_batch_size']} patches, median of "
              f"{speed['repeats']} passes over {speed['patches']}): "
              f"ONNX {kind} {speed['patches_per_s']:.0f} patches/s, torch {speed['torch_patches_per_s']:.0f} patches/s; "
              "pcamlab predict --runtime auto runs the fastest runtime timed here")
    if report["quantize"] == "int8":
        print(f"int8: {report['bytes'] / report['fp32_bytes']:.2f}x the size of the fp32 graph it was quantised from "
              "(that fp32 graph is not kept: export again without --quantize for NAME.onnx); calibrated on "
              f"{report['calibration']['source']}; {report['quantized_nodes']} quantised tensors ({report['quantizer']})")
        if report["sample_auc_fp32"] is not None:
            print(f"verified on the sample's validation patches: AUC fp32 {report['sample_auc_fp32']:.4f}, int8 "
                  f"{report['sample_auc_int8']:.4f}; max |probability difference| {report['max_abs_diff']:.3f}; "
                  "measure your own validation split with: pcamlab evaluate FILE.int8.onnx")
        return 0
    print(f"verified on {report['patches']} sample patches at batch sizes {report['batch_sizes']}: "
          f"max |probability difference| vs torch {report['max_abs_diff']:.2e} (limit {report['tolerance']:g})")
    return 0


def _say_where_auto_looks(checkpoint: str, report: dict) -> None:
    """An ONNX export written elsewhere than beside its checkpoint is never found by ``predict --runtime auto``."""
    from pathlib import Path

    from pcamlab.runtime.fastest import export_sibling

    if report["format"] != "onnx" or Path(checkpoint).suffix != ".safetensors":
        return
    runtime = "int8" if report["quantize"] == "int8" else "onnx"
    sibling = export_sibling(checkpoint, runtime)
    if Path(report["path"]).resolve() != sibling.resolve():
        print(f"note: pcamlab predict --runtime auto looks for {sibling} beside the checkpoint, so it will not use "
              f"{report['path']}; pass the file itself (pcamlab predict {shlex.quote(str(report['path']))} ...) or export without --out")
