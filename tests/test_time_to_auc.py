"""Time-to-AUC benchmark: the milestone arithmetic on hand-made curves, and one real run on the sample."""

from __future__ import annotations

import json

import pytest

from pcamlab.cli.main import main
from pcamlab.config import load_config
from pcamlab.errors import ConfigError, RunError
from pcamlab.train.time_to_auc import format_markdown, run_time_to_auc, snapshot_times, summarise_runs


def _run(points, finished=None, horizon_stop=False):
    curve = [{"seconds": s, "epochs": 0.0, "auc": a, "final": False} for s, a in points]
    curve[-1]["final"] = True
    return {"curve": curve, "finished_seconds": finished or points[-1][0], "stopped_at_horizon": horizon_stop,
            "epochs_run": 1, "model": "m", "precision": "fp32", "threads": 2, "scored_patches": 10}


def test_snapshot_times_grow_with_time_and_stop_at_the_horizon():
    times = snapshot_times(900)
    assert times[:3] == [5.0, 10.0, 15.0] and times[-1] == 900.0
    assert all(b > a for a, b in zip(times, times[1:]))
    assert 60.0 in times and 120.0 in times and 300.0 in times  # every milestone time is sampled
    assert len(times) < 60
    assert snapshot_times(3, interval=1) == [1.0, 2.0, 3.0]
    with pytest.raises(ConfigError, match="horizon"):
        snapshot_times(0)


def test_milestones_are_the_median_over_seeds_and_a_miss_counts_as_never():
    runs = {"r": [
        _run([(10, 0.80), (30, 0.91), (70, 0.95)]),
        _run([(10, 0.86), (50, 0.90), (80, 0.93)]),
        _run([(10, 0.70), (40, 0.84), (90, 0.89)]),  # never reaches 0.90
    ]}
    row = summarise_runs(runs)["r"]
    assert row["seconds_to_auc"]["0.85"] == 30  # times 30, 10, inf
    assert row["seconds_to_auc"]["0.90"] == 50 and row["reached"]["0.90"] == 2  # 30, 50, inf
    assert row["seconds_to_auc"]["0.94"] is None and row["reached"]["0.94"] == 1  # 70, inf, inf
    assert row["auc_at_seconds"]["60"] == 0.90  # last points before 60 s: 0.91, 0.90, 0.84
    # finished on their own before 2/5/15 min: the final model's AUC carries forward
    assert row["auc_at_seconds"]["900"] == 0.93
    assert row["final_auc"] == 0.93
    assert "not reached" in format_markdown({
        "summary": {"r": row}, "cpu": {"model": "cpu", "extensions": [], "native_bf16": False}, "seeds": 3,
        "threads": 2, "load_average": {"before": 1, "after": 1}, "valid_subset": 0, "data": "d",
        "interval_text": "5 s", "minutes": 15,
    })


def test_a_copy_just_after_a_milestone_time_is_not_printed_as_that_time():
    """A copy at 60.4 s reaching 0.90 is after "AUC @ 1 min" (last copy at or before 60 s): printed as 61 s, not 60 s."""
    row = summarise_runs({"r": [_run([(30, 0.85), (60.4, 0.91)])]})["r"]
    assert row["auc_at_seconds"]["60"] == 0.85
    table = format_markdown({
        "summary": {"r": row}, "cpu": {"model": "cpu", "extensions": [], "native_bf16": False}, "seeds": 1,
        "threads": 2, "load_average": {"before": 1, "after": 1}, "valid_subset": 0, "data": "d",
        "interval_text": "5 s", "minutes": 15,
    })
    assert "| r | 30 s | 61 s |" in table and "means the seeds differ" in table


def test_a_run_stopped_at_the_horizon_reports_no_auc_after_it():
    row = summarise_runs({"r": [_run([(10, 0.8), (61, 0.9)], horizon_stop=True)]})["r"]
    assert row["auc_at_seconds"]["60"] == 0.8
    assert row["auc_at_seconds"]["120"] is None  # not measured, not carried forward


def test_time_to_auc_on_the_sample_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "tta"
    code = main([
        "bench", "--time-to-auc", "--config", "configs/default.yaml", "--data", "sample", "--seeds", "1",
        "--minutes", "0.5", "--interval", "0.5", "--set", "model.options.width=4", "--set", "train.epochs=1",
        "--set", "train.max_steps_per_epoch=3", "--set", "train.time_budget_minutes=0",
        "--set", "train.schedule_over=epochs", "--valid-subset", "64", "--out", str(out), "--first-seed", "2",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| default |" in printed and "native bf16" in printed and "torch threads" in printed
    assert "One seed;" in printed and "note: --minutes" not in printed  # no budget to cut off here
    result = json.loads((out / "time_to_auc.json").read_text())
    run = result["runs"]["default"][0]
    assert run["seed"] == 2 and (out / "runs" / "default-seed2" / "best.safetensors").exists()  # --first-seed
    assert load_config(out / "runs" / "default-seed2" / "config.yaml").train.seed == 2
    assert run["scored_patches"] == 64 and run["epochs_run"] == 1
    curve = run["curve"]
    assert curve[-1]["final"] and all(0.0 <= p["auc"] <= 1.0 for p in curve)
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(curve, curve[1:]))
    assert curve[0]["seconds"] > 0.5  # the clock includes the new process's start, imports and decoding
    assert result["cpu"]["model"] and result["threads"] >= 1
    assert (out / "time_to_auc.png").stat().st_size > 1000
    assert (out / "time_to_auc.md").read_text().startswith("| recipe |")
    with pytest.raises(RunError, match="already holds results"):
        run_time_to_auc({"default": load_config("configs/default.yaml")}, "sample", out, seeds=1, minutes=0.1)


def test_bad_arguments_are_one_line_errors(tmp_path):
    config = load_config("configs/default.yaml")
    with pytest.raises(ConfigError, match="seeds must be >= 1"):
        run_time_to_auc({"d": config}, "sample", tmp_path / "a", seeds=0)
    with pytest.raises(ConfigError, match="first_seed must be >= 0"):
        run_time_to_auc({"d": config}, "sample", tmp_path / "c", first_seed=-1)
    with pytest.raises(ConfigError, match="at least one recipe"):
        run_time_to_auc({}, "sample", tmp_path / "b")
    assert main(["bench", "--time-to-auc", "--config", "configs/default.yaml"]) == 2  # no --out


def test_a_horizon_shorter_than_the_recipes_budget_is_said(tmp_path, capsys):
    """--minutes 0.1 on the 15-minute default: the note says the schedule is cut off, before any run starts."""
    main(["bench", "--time-to-auc", "--config", "configs/default.yaml", "--data", str(tmp_path / "absent"),
          "--minutes", "0.1", "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "note: --minutes 0.1 ends default before its 15-minute budget" in printed
    assert "--set train.time_budget_minutes=0.1" in printed
