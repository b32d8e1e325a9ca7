"""int8 export (ONNX Runtime static quantisation) and predict's choice of the fastest runtime."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from pcamlab.cli.main import main
from pcamlab.data import load_split_arrays, open_split
from pcamlab.deploy import export_checkpoint
from pcamlab.errors import CheckpointError, ConfigError
from pcamlab.runtime import OnnxPredictor, TorchPredictor, load_checkpoint, load_predictor, save_checkpoint
from pcamlab.runtime.fastest import open_fastest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx and onnxruntime are not installed (pip install onnx onnxruntime)",
)

ASSET = Path(__file__).parent / "assets" / "checkpoint-v1-simple-cnn-w4.safetensors"  # trained on the sample


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A copy of a trained checkpoint with its int8 export beside it (the default name)."""
    checkpoint = tmp_path_factory.mktemp("run") / "best.safetensors"
    shutil.copy(ASSET, checkpoint)
    report = export_checkpoint(checkpoint, quantize="int8", calibration="sample", calibration_count=64, timing=False)
    return checkpoint, report


def set_speed(path: Path, speed) -> None:
    """Replace the timing stored in an export (what export measured on this CPU) by ``speed``."""
    import json

    import onnx

    from pcamlab.runtime.fastest import SPEED_KEY

    model = onnx.load(str(path))
    properties = {entry.key: entry.value for entry in model.metadata_props}
    properties[SPEED_KEY] = speed if isinstance(speed, str) else json.dumps(speed)
    onnx.helper.set_model_props(model, properties)
    onnx.save(model, str(path))


def test_int8_export_is_smaller_loads_and_keeps_the_auc(exported):
    checkpoint, report = exported
    assert report["path"] == checkpoint.with_suffix(".int8.onnx") and report["quantize"] == "int8"
    assert report["bytes"] < report["fp32_bytes"]
    assert report["quantized_nodes"] > 0 and report["calibration"]["patches"] == 64
    assert abs(report["sample_auc_int8"] - report["sample_auc_fp32"]) <= 0.01
    images, _, _ = load_split_arrays(open_split("sample", "valid"))
    predictor = load_predictor(report["path"])
    assert isinstance(predictor, OnnxPredictor)
    int8 = predictor.predict_proba(images[:32])
    fp32 = TorchPredictor.from_checkpoint(checkpoint, precision="fp32").predict_proba(images[:32])
    assert int8.dtype == np.float32 and np.max(np.abs(int8 - fp32)) < 0.05  # close, not equal: it is int8
    assert predictor.contract == TorchPredictor.from_checkpoint(checkpoint).contract


def test_auto_runtime_takes_the_matching_int8_export_and_never_a_stale_one(exported, tmp_path):
    checkpoint, report = exported
    predictor, runtime, reason = open_fastest(checkpoint)
    assert runtime == "int8" and isinstance(predictor, OnnxPredictor) and "from this checkpoint" in reason
    assert open_fastest(checkpoint, "torch")[1] == "torch"
    with pytest.raises(CheckpointError, match="no best.onnx.*pcamlab export"):
        open_fastest(checkpoint, "onnx")
    # another checkpoint under the same name: its old export must not be used
    loaded = load_checkpoint(checkpoint)
    other = save_checkpoint(tmp_path / "best.safetensors", loaded.model, loaded.config, loaded.contract, {"epoch": 9})
    shutil.copy(report["path"], tmp_path / "best.int8.onnx")
    predictor, runtime, reason = open_fastest(other)
    assert runtime == "torch" and "another checkpoint" in reason
    with pytest.raises(CheckpointError, match="another checkpoint"):
        open_fastest(other, "int8")
    with pytest.raises(ConfigError, match="runtime must be one of"):
        open_fastest(checkpoint, "tensorrt")
    with pytest.raises(ConfigError, match="is an int8 file"):
        open_fastest(report["path"], "torch")


def test_auto_without_timings_prefers_int8_then_fp32_onnx(tmp_path):
    from pcamlab.runtime.fastest import AUTO_ORDER

    assert AUTO_ORDER == ("int8", "onnx")  # README inference table, width 32: int8 1.5x fp32 ONNX, fp32 ONNX 2x torch
    checkpoint = tmp_path / "best.safetensors"
    shutil.copy(ASSET, checkpoint)
    export_checkpoint(checkpoint, timing=False)  # best.onnx
    assert open_fastest(checkpoint)[1] == "onnx"  # only fp32 beside it
    export_checkpoint(checkpoint, quantize="int8", calibration="sample", calibration_count=64, timing=False)
    predictor, runtime, reason = open_fastest(checkpoint)
    assert runtime == "int8" and "not every export was timed on this CPU" in reason  # both: int8 first
    assert open_fastest(checkpoint, "onnx")[1] == "onnx"  # asked for


def test_auto_takes_the_runtime_timed_fastest_on_this_cpu(tmp_path):
    from pcamlab.runtime.device import cpu_signature

    checkpoint = tmp_path / "best.safetensors"
    shutil.copy(ASSET, checkpoint)
    fp32 = export_checkpoint(checkpoint)
    int8 = export_checkpoint(checkpoint, quantize="int8", calibration="sample", calibration_count=64)
    for report in (fp32, int8):  # export timed the file and torch here, and stored both
        speed = report["speed"]
        assert speed["cpu"] == cpu_signature() and speed["patches_per_s"] > 0 and speed["torch_patches_per_s"] > 0
        assert load_predictor(report["path"]).session.get_modelmeta().custom_metadata_map["pcamlab.speed"]
    measured = {"onnx": fp32["speed"]["patches_per_s"], "int8": int8["speed"]["patches_per_s"],
                "torch": min(fp32["speed"]["torch_patches_per_s"], int8["speed"]["torch_patches_per_s"])}
    assert open_fastest(checkpoint)[1] == max(measured, key=measured.get)  # whatever this CPU measured

    here = cpu_signature()
    set_speed(fp32["path"], {"patches_per_s": 2291, "torch_patches_per_s": 1040, "cpu": here})
    set_speed(int8["path"], {"patches_per_s": 1929, "torch_patches_per_s": 1100, "cpu": here})
    predictor, runtime, reason = open_fastest(checkpoint)
    assert runtime == "onnx" and predictor.path == fp32["path"]  # width 16 on the Xeon: fp32 beats int8
    assert "onnx 2291 > int8 1929 > torch 1070 patches/s" in reason  # torch: the mean of its two timings
    set_speed(fp32["path"], {"patches_per_s": 300, "torch_patches_per_s": 1040, "cpu": here})
    set_speed(int8["path"], {"patches_per_s": 900, "torch_patches_per_s": 1100, "cpu": here})
    predictor, runtime, reason = open_fastest(checkpoint)
    assert runtime == "torch" and isinstance(predictor, TorchPredictor) and reason.startswith("fastest timed")
    # timed on another CPU kind, or unreadable: the default order, and it says why
    for stale in ({"patches_per_s": 2291, "torch_patches_per_s": 1040, "cpu": "AMD EPYC (avx2); 2 threads"},
                  "{not json", {"patches_per_s": "fast", "torch_patches_per_s": 1, "cpu": here},
                  '{"patches_per_s": Infinity, "torch_patches_per_s": 1, "cpu": "%s"}' % here,
                  {"patches_per_s": 1e308, "torch_patches_per_s": 1, "cpu": here},
                  {"patches_per_s": True, "torch_patches_per_s": 1, "cpu": here}):
        set_speed(fp32["path"], stale)
        predictor, runtime, reason = open_fastest(checkpoint)
        assert runtime == "int8" and "not every export was timed on this CPU" in reason
    assert open_fastest(checkpoint, "onnx")[1] == "onnx"  # asked for: no timing needed


def test_export_cli_prints_its_timing_and_no_timing_stores_none(tmp_path, capsys):
    checkpoint = tmp_path / "best.safetensors"
    shutil.copy(ASSET, checkpoint)
    assert main(["export", str(checkpoint)]) == 0
    assert "timed on this CPU (" in capsys.readouterr().out
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "b.onnx"), "--no-timing"]) == 0
    assert "timed on this CPU" not in capsys.readouterr().out
    assert "pcamlab.speed" not in load_predictor(tmp_path / "b.onnx").session.get_modelmeta().custom_metadata_map


def test_predict_cli_reports_its_runtime(exported, tmp_path, capsys):
    checkpoint, _ = exported
    images = Path(open_split("sample", "valid").root) / "valid" / "1"
    assert main(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "p.csv")]) == 0
    assert "runtime int8 (" in capsys.readouterr().out
    assert main(["predict", str(checkpoint), str(images), "--out", str(tmp_path / "q.csv"), "--runtime", "torch"]) == 0
    assert "runtime torch (" in capsys.readouterr().out


def test_int8_export_to_out_says_what_it_wrote_and_that_auto_will_not_find_it(exported, tmp_path, capsys):
    checkpoint, _ = exported
    out = tmp_path / "q.onnx"
    assert main(["export", str(checkpoint), "--quantize", "int8", "--out", str(out), "--calibration", "sample",
                 "--calibration-patches", "16"]) == 0
    printed = capsys.readouterr().out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["q.onnx"]  # the int8 model, exactly at --out
    assert "fp32 graph is not kept" in printed and "the fp32 file's size" not in printed
    assert f"looks for {checkpoint.with_suffix('.int8.onnx')} beside the checkpoint" in printed
    import onnx

    assert "pcamlab.quantization" in {entry.key for entry in onnx.load(str(out), load_external_data=False).metadata_props}


def test_int8_needs_onnx_format(tmp_path):
    with pytest.raises(ConfigError, match="needs format='onnx'"):
        export_checkpoint(ASSET, tmp_path / "m.pt", format="torchscript", quantize="int8")


@pytest.mark.parametrize("damage", [b"", b"\x08\x01garbage that is not protobuf" * 40])
def test_a_damaged_export_is_skipped_by_auto_and_named_when_asked_for(tmp_path, damage):
    checkpoint = tmp_path / "best.safetensors"
    shutil.copy(ASSET, checkpoint)
    checkpoint.with_suffix(".onnx").write_bytes(damage)  # a half-copied or foreign file beside the checkpoint
    predictor, runtime, reason = open_fastest(checkpoint)
    assert runtime == "torch" and ("best.onnx cannot be read as ONNX" in reason or "best.onnx is not a pcamlab export" in reason)
    with pytest.raises(CheckpointError, match=r"best.onnx .*export .*--force"):
        open_fastest(checkpoint, "onnx")


def test_onnx_runtimes_refuse_a_device_they_do_not_run_on(exported):
    checkpoint, report = exported
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda"):
        open_fastest(checkpoint, "int8", device="banana")
    with pytest.raises(ConfigError, match="is an int8 file; it runs on runtime int8"):
        open_fastest(report["path"], "onnx")
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU is visible"):
            open_fastest(checkpoint, "int8", device="cuda")
    else:
        with pytest.raises(ConfigError, match="runs on the CPU"):
            open_fastest(checkpoint, "int8", device="cuda")
        with pytest.raises(ConfigError, match="ONNX file, which runs on the CPU"):
            open_fastest(report["path"], device="cuda")


def test_bench_and_predict_call_an_int8_export_int8(exported):
    """Issue 22: `pcamlab bench --model best.int8.onnx` labelled the int8 model 'onnx'."""
    from fixtures_data import sample_files

    from pcamlab.deploy.bench import bench_model_file
    from pcamlab.deploy.predict import predict_files

    _, report = exported
    (row,) = bench_model_file(report["path"], batch_sizes=[8], patches=8, repeats=1)
    assert row["runtime"] == "int8"
    files, _ = sample_files(2, "valid")
    assert predict_files(load_predictor(report["path"]), files, None).runtime == "int8"
