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
    assert table[2][:auc_end].endswith("0.9500") and table[4][:auc_end].endswith("—")  # right-aligned; undefined is "—"
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


def test_one_number_format_per_column():
    rows = [{"run": "a", "roc_auc": 0.95, "train_seconds": 34.7}, {"run": "b", "roc_auc": 0.9, "train_seconds": 4.9},
            {"run": "c", "roc_auc": None, "train_seconds": 1234.56}]
    markdown = format_markdown(rows, ["run", "roc_auc", "train_seconds"]).splitlines()
    assert [line.split("|")[3].strip() for line in markdown[2:]] == ["34.7", "4.9", "1234.6"]
    assert [line.split("|")[2].strip() for line in markdown[2:]] == ["0.9500", "0.9000", "—"]
    table = format_table(rows, ["run", "roc_auc", "train_seconds"]).splitlines()
    assert [line.split()[2] for line in table[2:]] == ["34.7", "4.9", "1234.6"]


def test_compare_cli(runs, capsys):
    from pcamlab.cli.main import main

    assert main(["compare", *map(str, runs), "--sort", "ece", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("run,evaluation,model") and lines[1].startswith("small,")
    assert main(["compare", str(runs[0]), "--sort", "auc_roc"]) == 2
    assert "sort_by must be one of" in capsys.readouterr().err


def make_cv_folder(root: Path, name: str = "cv", aucs=(0.90, 0.92, 0.94)) -> Path:
    """A cross-validation folder as run_kfold writes it (cv_summary.json, cv_results.csv, config.yaml)."""
    from pcamlab.config import load_config
    from pcamlab.train.protocols import _cv_summary, _write_results

    folder = root / name
    folder.mkdir(parents=True)
    rows = [{"repeat": 1, "fold": index + 1, "train_patches": 80, "valid_patches": 40, "val_auc": auc,
             "val_loss": 0.4, "val_accuracy": 0.8 + index / 100, "best_epoch": 3 + index, "epochs_run": 6,
             "threshold": 0.5, "wall_seconds": 1.0, "run": f"repeat-1/fold-{index + 1}"} for index, auc in enumerate(aucs)]
    config = load_config(None, ["model.name=baseline"])
    class Reader:  # what _cv_summary reads of the train split
        root = folder

        def __len__(self):
            return 120

    summary = _cv_summary(rows, config, len(aucs), 1, "none", Reader())
    (folder / "cv_summary.json").write_text(json.dumps(summary))
    _write_results(folder / "cv_results.csv", rows)
    (folder / "config.yaml").write_text("model:\n  name: baseline\ntrain:\n  epochs: 6\n  learning_rate: 0.001\n")
    return folder


def test_a_cross_validation_folder_shows_the_folds_mean_and_sd(tmp_path):
    """Issue 9 2.10: compare on a k-fold folder printed nothing useful."""
    folder = make_cv_folder(tmp_path)
    rows = compare_runs([folder])
    assert len(rows) == 1
    row = rows[0]
    assert row["evaluation"] == "kfold 3" and row["folds"] == 3 and row["model"] == "baseline"
    assert row["roc_auc"] == pytest.approx(0.92) and row["roc_auc_sd"] == pytest.approx(0.02)
    assert row["accuracy"] == pytest.approx(0.81) and row["threshold"] == 0.5  # val_accuracy is at 0.5
    table = format_table(rows)
    assert "roc_auc_sd" in table and "0.0200" in table and "0.9200" in table


def test_compare_shows_the_config_fields_that_differ(tmp_path, capsys):
    from pcamlab.cli.main import main
    from pcamlab.evaluate.compare import config_differences

    first = make_run(tmp_path, "a", auc=0.9)
    second = make_run(tmp_path, "b", auc=0.91, model="simple-cnn")
    folder = make_cv_folder(tmp_path)
    differences = config_differences([first, second, folder])
    assert differences["model.name"] == {str(first): "baseline", str(second): "simple-cnn", str(folder): "baseline"}
    assert differences["train.epochs"][str(folder)] == 6 and differences["train.learning_rate"][str(first)] is None
    assert config_differences([first, make_run(tmp_path, "c", auc=0.5)]) == {}

    assert main(["compare", str(first), str(second), str(folder)]) == 0
    printed = capsys.readouterr().out
    assert "config fields that differ (3):" in printed
    line = next(line for line in printed.splitlines() if line.strip().startswith("model.name"))
    assert f"{first}: baseline" in line and f"{second}: simple-cnn" in line
    assert main(["compare", str(first), str(second), "--format", "markdown"]) == 0
    assert "| config field |" in capsys.readouterr().out
    assert main(["compare", str(first), str(make_run(tmp_path, "d", auc=0.5))]) == 0
    assert "config: the runs' config.yaml files agree" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["NaN", "0.9", True])
def test_a_metric_that_is_not_a_number_is_undefined_and_sorts_last(tmp_path, value):
    """Tester 1 item 3: "roc_auc": "0.9" (text) raised TypeError in the sort; true showed as "true", sorted first."""
    make_run(tmp_path, "good", auc=0.91)
    odd = make_run(tmp_path, "odd", auc=0.5)
    metrics_path = odd / "eval-valid" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["roc_auc"] = value
    metrics_path.write_text(json.dumps(metrics))
    rows = compare_runs([tmp_path / "odd", tmp_path / "good"])
    assert [row["run"] for row in rows] == ["good", "odd"] and rows[1]["roc_auc"] is None
    odd_line = next(line for line in format_table(rows).splitlines() if line.startswith("odd"))
    assert "true" not in odd_line and "—" in odd_line
