"""Comparing run folders: rows, ranking, facts from summary/config/history, and the three formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from pcamlab.errors import ConfigError, DataError
from pcamlab.evaluate.compare import COLUMNS, compare_runs, format_csv, format_markdown, format_rows, format_table


def make_run(root: Path, name: str, *, auc: float | None, ece: float = 0.05, model: str = "baseline",
             evaluation: str = "eval-valid", summary: dict | None = None, history: str | None = None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  name: {model}\ntrain:\n  epochs: 10\n")
    if auc is not None:
        folder = run / evaluation if evaluation else run
        folder.mkdir(exist_ok=True)
        metrics = {"n": 200, "roc_auc": auc, "roc_auc_ci": [auc - 0.02, auc + 0.01], "accuracy": 0.9,
                   "recall": 0.85, "specificity": 0.95, "threshold": 0.5, "ece": ece, "warnings": []}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if summary is not None:
        (run / "summary.json").write_text(json.dumps(summary))
    if history is not None:
        (run / "history.csv").write_text(history)
    return run


@pytest.fixture()
def runs(tmp_path):
    return [
        make_run(tmp_path, "small", auc=0.91, ece=0.02, summary={"model": {"name": "baseline", "parameters": 1234},
                                                                 "epochs_run": 4, "best_epoch": 3}),
        make_run(tmp_path, "big", auc=0.95, ece=0.08, model="resnet18", evaluation=""),
        make_run(tmp_path, "untested", auc=None, history="epoch,val_auc\n1,0.7\n2,0.83\n3,0.8\n"),
    ]


def test_rows_hold_metrics_and_run_facts_best_first(runs):
    rows = compare_runs(runs)
    assert [row["run"] for row in rows] == ["big", "small", "untested"]  # unevaluated run last
    big, small, untested = rows
    assert set(big) == set(COLUMNS)
    assert big["roc_auc"] == 0.95 and big["roc_auc_ci_low"] == pytest.approx(0.93) and big["evaluation"] == ""
    assert big["model"] == "resnet18"  # from config.yaml when summary.json has no model
    assert big["sensitivity"] == 0.85  # "recall" in metrics.json
    assert small["evaluation"] == "eval-valid" and small["parameters"] == 1234 and small["epochs"] == 4
    assert small["best_epoch"] == 3 and small["model"] == "baseline"
    assert untested["roc_auc"] is None and untested["evaluation"] is None
    assert untested["epochs"] == 3 and untested["best_val_auc"] == 0.83 and untested["best_epoch"] == 2


def test_sorting_direction_follows_the_metric(runs):
    assert [row["run"] for row in compare_runs(runs, sort_by="ece")] == ["small", "big", "untested"]  # lower first
    assert [row["run"] for row in compare_runs(runs, sort_by="run")] == ["big", "small", "untested"]
    with pytest.raises(ConfigError, match="did you mean 'roc_auc'"):
        compare_runs(runs, sort_by="roc_aux")


def test_one_row_per_metrics_file(tmp_path):
    run = make_run(tmp_path, "two-evals", auc=0.9)
    (run / "eval-test").mkdir()
    (run / "eval-test" / "metrics.json").write_text(json.dumps({"roc_auc": 0.88, "split": "test"}))
    rows = compare_runs([run])
    assert [(row["evaluation"], row["roc_auc"], row["split"]) for row in rows] == [
        ("eval-valid", 0.9, None), ("eval-test", 0.88, "test")]


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        compare_runs([tmp_path / "missing"])
    with pytest.raises(ConfigError, match="non-empty list"):
        compare_runs([])
    broken = make_run(tmp_path, "broken", auc=None)
    (broken / "metrics.json").write_text("{oops")
    with pytest.raises(DataError, match="not readable JSON"):
        compare_runs([broken])


def test_csv_round_trips_full_precision(runs):
    rows = compare_runs(runs)
    parsed = list(csv.DictReader(io.StringIO(format_csv(rows))))
    assert [row["run"] for row in parsed] == ["big", "small", "untested"]
    assert float(parsed[0]["roc_auc_ci_low"]) == rows[0]["roc_auc_ci_low"]  # no rounding
    assert parsed[2]["roc_auc"] == ""  # unknown = empty cell
    assert "pr_auc" not in parsed[0]  # columns nobody has are left out


def test_table_and_markdown_are_aligned_and_compact(runs):
    rows = compare_runs(runs)
    table = format_table(rows).splitlines()
    assert table[0].split()[:3] == ["run", "evaluation", "model"]
    assert set(table[1].replace(" ", "")) == {"-"}
    assert len(table) == 2 + len(rows)
    auc_end = table[0].index("roc_auc") + len("roc_auc")
    assert table[2][:auc_end].endswith("0.9500") and table[4][:auc_end].endswith("-")  # right-aligned
    assert "best_val_auc" not in table[0]  # not a key column
    markdown = format_markdown(rows).splitlines()
    assert markdown[1].startswith("| --- | --- |") and "---:" in markdown[1]
    assert all(line.count("|") == markdown[0].count("|") for line in markdown)
    assert format_rows(rows, "markdown") == "\n".join(markdown) + "\n"
    assert format_table(rows, ["run", "ece"]).splitlines()[0].split() == ["run", "ece"]
    with pytest.raises(ConfigError, match="format must be one of"):
        format_rows(rows, "html")
    with pytest.raises(ConfigError, match="did you mean 'ece'"):
        format_table(rows, ["run", "ecee"])


def test_compare_cli(runs, capsys):
    from pcamlab.cli.main import main

    assert main(["compare", *map(str, runs), "--sort", "ece", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run,evaluation,model") and lines[1].startswith("small,")
    assert main(["compare", str(runs[0]), "--sort", "auc_roc"]) == 2
    assert "sort_by must be one of" in capsys.readouterr().err
