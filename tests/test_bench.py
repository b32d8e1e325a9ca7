"""``pcamlab bench``: sane, self-consistent rows and tables (no timing assertions: the machine is shared)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math

import pytest

from pcamlab.cli.main import main
from pcamlab.deploy.bench import COLUMNS, format_table, measure_peak_flops, run_bench, write_results
from pcamlab.errors import ConfigError, RunError
from pcamlab.models import model_summary

HAS_ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return run_bench(["baseline"], precisions=["fp32", "bf16"], batch_sizes=[2], channels_last=[True, False],
                     steps=2, warmup=0, onnx=HAS_ONNX, peak_size=128)


def test_rows_cover_every_combination_with_positive_rates(rows):
    torch_rows = [(row["precision"], row["channels_last"]) for row in rows if row["runtime"] == "torch"]
    assert sorted(torch_rows) == sorted([("fp32", True), ("fp32", False), ("bf16", True), ("bf16", False)])
    flops = model_summary("baseline")["flops"]
    for row in rows:
        assert list(row) == COLUMNS
        assert row["model"] == "baseline" and row["batch_size"] == 2 and row["flops_per_image"] == flops
        assert row["inference_images_per_second"] > 0 and math.isfinite(row["inference_images_per_second"])
        assert row["peak_flops"] > 0 and row["threads"] >= 1
        if row["runtime"] == "torch":
            assert row["train_images_per_second"] > 0
            assert row["train_step_ms"] == pytest.approx(2 / row["train_images_per_second"] * 1e3)


@pytest.mark.skipif(not HAS_ONNX, reason="onnx and onnxruntime are not installed")
def test_onnx_row_is_inference_only_fp32(rows):
    (onnx_row,) = [row for row in rows if row["runtime"] == "onnxruntime"]
    assert onnx_row["precision"] == "fp32" and onnx_row["channels_last"] is None
    assert onnx_row["train_images_per_second"] is None and onnx_row["train_fraction_of_peak"] is None


def test_fraction_of_peak_is_rate_times_flops_over_peak(rows):
    peaks = {}
    for row in rows:
        peaks.setdefault(row["precision"], row["matmul_flops"])
        assert row["matmul_flops"] == peaks[row["precision"]]  # one peak per precision, after the re-measures
    for row in rows:  # fp32 compares with its own peak; bf16 with the larger of bf16 and fp32
        assert row["peak_flops"] == max(peaks[row["precision"]], peaks["fp32"])
        expected = row["inference_images_per_second"] * row["flops_per_image"] / row["peak_flops"]
        assert row["inference_fraction_of_peak"] == pytest.approx(expected)
        if row["train_images_per_second"] is not None:
            expected = row["train_images_per_second"] * row["flops_per_image"] * 3 / row["peak_flops"]
            assert row["train_fraction_of_peak"] == pytest.approx(expected)


def test_table_lists_every_row(rows):
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["model", "runtime", "precision", "ch_last"]
    assert set(lines[1]) <= {"-", " "}
    footer = [index for index, line in enumerate(lines) if line.startswith("peak (matmul)")]
    body = lines[2:footer[0]]
    assert len(body) == len(rows)
    if HAS_ONNX:
        onnx_line = next(line for line in body if "onnxruntime" in line)
        assert onnx_line.split()[6:8] == ["-", "-"]  # no training numbers for onnxruntime
    assert "bf16" in lines[footer[0]] and lines[footer[0]].startswith("peak (matmul): fp32")


def test_write_results_json_and_csv(tmp_path, rows):
    written = write_results(rows, tmp_path / "bench.json")
    assert json.loads(written.read_text()) == rows
    with open(write_results(rows, tmp_path / "bench.csv"), newline="") as file:
        table = list(csv.DictReader(file))
    assert [row["runtime"] for row in table] == [row["runtime"] for row in rows]
    assert list(table[0]) == COLUMNS
    with pytest.raises(RunError, match="already exists"):
        write_results(rows, tmp_path / "bench.csv")
    with pytest.raises(ConfigError, match=r"\.json or \.csv"):
        write_results(rows, tmp_path / "bench.txt")


def test_bad_arguments_fail_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'baseline'"):
        run_bench(["baselin"])
    with pytest.raises(ConfigError, match="did you mean 'bf16'"):
        run_bench(["baseline"], precisions=["fp16"])
    with pytest.raises(ConfigError, match="at least one"):
        run_bench(["baseline"], batch_sizes=[])
    with pytest.raises(ConfigError, match="steps must be >= 1"):
        run_bench(["baseline"], steps=0)


def test_peak_flops_is_positive_for_both_precisions():
    assert measure_peak_flops("fp32", size=64, repeats=2) > 0
    assert measure_peak_flops("bf16", size=64, repeats=2) > 0


def test_cli_bench_prints_table_and_writes_csv(tmp_path, capsys):
    out = tmp_path / "bench.csv"
    arguments = ["bench", "--models", "baseline", "--batch-size", "2", "--channels-last", "on", "--steps", "1",
                 "--warmup", "0", "--peak-size", "64", "--out", str(out)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "train img/s" in printed
    with open(out, newline="") as file:
        assert len(list(csv.DictReader(file))) == 1
    assert main(arguments) == 2  # refuses to overwrite before timing anything
    assert "--force" in capsys.readouterr().err


@pytest.mark.skipif(not HAS_ONNX, reason="onnx and onnxruntime are not installed")
def test_onnx_row_for_a_model_the_legacy_exporter_cannot_export():
    # p4m-densenet rotates its filters with aten::rot90, which the legacy ONNX exporter lacks: the bench
    # falls back to the dynamo exporter instead of dying half-way through a table
    (row,) = [row for row in run_bench(["p4m-densenet"], batch_sizes=[2], channels_last=[False], steps=1, warmup=0,
                                       onnx=True, input_size=32, peak_size=64) if row["runtime"] == "onnxruntime"]
    assert row["model"] == "p4m-densenet" and row["inference_images_per_second"] > 0
