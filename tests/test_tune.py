"""pcamlab tune: search spaces and sweep plans, tiny real studies, resume after a kill, PostgreSQL workers."""

from __future__ import annotations

import csv
import html
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import require_service
from fixtures_data import sample_patches, write_h5

from pcamlab.cli.main import main
from pcamlab.config import config_to_dict, load_config
from pcamlab.errors import ConfigError, RunFolderError
from pcamlab.tune.report import hanley_mcneil_interval
from pcamlab.tune.space import load_space, load_sweep, spec_layers
from pcamlab.tune.study import StudySettings, resume_study, run_study
from pcamlab.tune.sweep import format_what_mattered, what_mattered

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.name=simple-cnn", "model.options={width: 4, dropout: 0.0}", "train.batch_size=8", "train.epochs=2",
    "train.max_steps_per_epoch=2", "train.precision=fp32", "train.threads=1", "train.patience=0",
    "train.schedule_over=epochs", "train.time_budget_minutes=0", "evaluate.batch_size=64", "augment.dihedral=false",
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_h5(tmp_path_factory.mktemp("h5"), {"train": sample_patches(16, "train", seed=1),
                                                    "valid": sample_patches(16, "valid", seed=2)})


def _base(data, *extra) -> dict:
    return config_to_dict(load_config(None, [f"data.path={data}", *TINY, *extra]))


def _space(tmp_path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _study(out):
    import optuna

    record = json.loads((Path(out) / "study.json").read_text())
    return optuna.load_study(study_name=record["study_name"], storage=f"sqlite:///{Path(out) / 'study.db'}")


# ----------------------------------------------------------------------------------------------
# Spaces, sweep plans, architecture knobs (no training).


@pytest.mark.parametrize("text, message", [
    ("params:\n  train.learnin_rate: {float: [0.001, 0.01]}\n", "did you mean 'learning_rate'"),
    ("params:\n  train.learning_rate: {uniform: [0.001, 0.01]}\n", "unknown key 'uniform'"),
    ("params:\n  train.learning_rate: {float: [0.01, 0.001]}\n", "low < high"),
    ("params:\n  train.learning_rate: {float: [0.0, 0.01], log: true}\n", "log needs low > 0"),
    ("params:\n  train.optimizer: {categorical: [adamw, adamx]}\n", "train.optimizer must be one of"),
    ("params:\n  train.epochs: {float: [1.5, 3]}\n", "must be an integer"),
    ("params:\n  train.momentum: {float: [0.8, 0.9], when: {train.optimizer: sgd}}\n", "not a categorical parameter listed before it"),
    ("params:\n  train.optimizer: {categorical: [sgd]}\n  train.momentum: {float: [0.8, 0.9], when: {train.optimizer: adam}}\n", "'adam' is not a choice of train.optimizer"),
    ("params:\n  model.options.widht: {int: [4, 8]}\n", "did you mean 'width'"),
    ("params:\n  spec.stage: {int: [2, 3]}\n", "did you mean 'spec.stages'"),
    ("params:\n  spec.downsample: {categorical: [max, maximum]}\n", "spec.downsample must be one of"),
    ("params:\n  spec.stages: {int: [2, 12]}\n", "model.options.layers"),
    ("params:\n  model.options: {categorical: [1]}\n", "is a mapping"),
    ("parms:\n  train.epochs: {int: [1, 2]}\n", "did you mean 'params'"),
    ("params: {}\n", "needs a params: mapping"),
])
def test_bad_search_space_is_one_line_naming_file_and_entry(tmp_path, tiny_data, text, message):
    path = _space(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_space(path, _base(tiny_data))
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert str(path) in text


def test_conditional_parameter_is_sampled_only_when_its_condition_holds(tmp_path, tiny_data):
    import optuna

    space = load_space(_space(tmp_path, (
        "params:\n  train.optimizer: {categorical: [sgd, adamw]}\n"
        "  train.momentum: {float: [0.8, 0.99], when: {train.optimizer: sgd}}\n"
        "  train.learning_rate: {float: [0.0001, 0.01], log: true}\n")), _base(tiny_data))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        trial = study.ask()
        sampled = space.sample(trial)
        seen.append(sampled)
        study.tell(trial, 0.5)
        values = space.apply(_base(tiny_data), sampled)
        assert values["train"]["optimizer"] == sampled["train.optimizer"]
    assert all(("train.momentum" in s) == (s["train.optimizer"] == "sgd") for s in seen)
    assert {s["train.optimizer"] for s in seen} == {"sgd", "adamw"}
    assert all(1e-4 <= s["train.learning_rate"] <= 1e-2 for s in seen)


def test_spec_knobs_build_the_architecture_they_describe():
    import torch

    from pcamlab.config import ModelConfig
    from pcamlab.models import build_model

    pooled = spec_layers({"stages": 3, "width": 8, "one_by_one": True, "downsample": "sum"})
    assert [layer["pool"]["type"] for layer in pooled if "pool" in layer] == ["sum", "sum"]
    assert sum(1 for layer in pooled if "conv" in layer and layer["conv"]["kernel"] == 1) == 3
    assert [layer["conv"]["filters"] for layer in pooled if "conv" in layer and layer["conv"]["kernel"] == 3] == [8, 16, 32]
    strided = spec_layers({"stages": 3, "width": 8, "downsample": "stride", "dropout": 0.0})
    assert not any("pool" in layer for layer in strided) and not any("dropout" in layer for layer in strided)
    assert [layer["conv"]["stride"] for layer in strided if "conv" in layer] == [1, 2, 2]
    for layers in (pooled, strided):
        model = build_model(ModelConfig(name="spec", options={"layers": layers}))
        assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 1)
    with pytest.raises(ConfigError, match="spec.activation must be one of"):
        spec_layers({"activation": "swish"})


def test_every_shipped_space_and_sweep_loads():
    base = config_to_dict(load_config(REPO / "configs" / "tune" / "base-quick.yaml"))
    files = sorted((REPO / "configs" / "tune").glob("*.yaml"))
    loaded = 0
    for path in files:
        raw = yaml.safe_load(path.read_text())
        if "params" in raw:
            assert load_space(path, base).params
            loaded += 1
        elif "knobs" in raw:
            plan = load_sweep(path, base)
            assert len(plan.runs) == len(plan.seeds) * (1 + sum(len(v) for v in plan.knobs.values()))
            loaded += 1
    assert loaded >= 4
    notes = load_sweep(REPO / "configs" / "tune" / "sweep-notes.yaml", base)
    for knob in ("layers (stages)", "width", "1x1 convolutions", "stride 2 vs pooling", "pooling type", "activation",
                 "loss", "L2 (weight decay)", "dropout", "batch size", "optimizer", "learning-rate schedule"):
        assert knob in notes.knobs


def test_bad_sweep_plan_is_one_line(tmp_path, tiny_data):
    for text, message in [
        ("seeds: 1\nknobs:\n  width: {spec.width: [8]}\n", "seeds must be >= 2"),
        ("knobs:\n  width: {spec.width: 8}\n", "must be {field: [values]}"),
        ("knobs:\n  opt:\n    - {train.optimizer: sgdd}\n", "did you mean 'sgd'"),
        ("knobs:\n  width: {spec.width: [8, 8]}\n", "lists the value '8' twice"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("[", r"\[")):
            load_sweep(_space(tmp_path, text, "sweep.yaml"), _base(tiny_data))


def test_what_mattered_pairs_by_seed_and_sizes_the_interval():
    rows = [{"knob": "base", "value": "base", "seed": s, "val_auc": a} for s, a in [(0, 0.80), (1, 0.82), (2, 0.78)]]
    rows += [{"knob": "width", "value": "64", "seed": s, "val_auc": a} for s, a in [(0, 0.85), (1, 0.86), (2, 0.84)]]
    rows += [{"knob": "width", "value": "8", "seed": s, "val_auc": a} for s, a in [(0, 0.81), (1, 0.80), (2, 0.79)]]
    table = what_mattered(rows)
    wide, narrow = table["rows"]
    assert wide["delta_auc"] == pytest.approx(0.05)  # paired: 0.05, 0.04, 0.06
    pooled = math.sqrt((0.0002 + 0.0006) / 4)  # squared deviations of both values' differences / (2 + 2) df
    assert table["base"]["pooled_sd_difference"] == pytest.approx(pooled)
    half = 4.302653 * max(0.01, pooled) / math.sqrt(3)  # t(0.975, 2) x sd (own 0.01, floored at the pooled) / sqrt(3)
    assert (wide["ci_low"], wide["ci_high"]) == pytest.approx((0.05 - half, 0.05 + half), abs=1e-6)
    assert wide["verdict"] == "better" and narrow["verdict"] == "within noise"
    assert table["base"]["sd_auc"] == pytest.approx(0.02)
    # two seeds that happen to agree exactly get the pooled spread, not a zero-width interval
    rows += [{"knob": "pool", "value": "sum", "seed": s, "val_auc": a} for s, a in [(0, 0.81), (1, 0.83), (2, 0.79)]]
    chance = what_mattered(rows)["rows"][-1]
    assert chance["ci_high"] - chance["ci_low"] > 0.02 and chance["verdict"] == "within noise"
    text = format_what_mattered(table)
    assert "+0.0500" in text and "within noise" in text and "better" in text


def test_hanley_mcneil_interval_contains_the_auc_and_narrows_with_more_patches():
    small = hanley_mcneil_interval(0.9, 50, 50)
    large = hanley_mcneil_interval(0.9, 5000, 5000)
    assert small[0] < 0.9 < small[1] and large[0] < 0.9 < large[1]
    assert (large[1] - large[0]) < (small[1] - small[0]) / 5
    assert hanley_mcneil_interval(0.9, 0, 10) is None


def test_on_epoch_callback_can_stop_training(tiny_data, tmp_path):
    from pcamlab.train.loop import train

    seen = []

    def stop(epoch, row):
        seen.append((epoch, row["val_auc"]))
        raise KeyboardInterrupt  # what pruning does, with another exception

    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, [f"data.path={tiny_data}", *TINY, "train.epochs=3"]), tmp_path / "run", progress=False, on_epoch=stop)
    assert len(seen) == 1 and isinstance(seen[0][1], float)
    assert len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 2
    assert not (tmp_path / "run" / "summary.json").exists()


# ----------------------------------------------------------------------------------------------
# Tiny real studies.


def test_cli_study_writes_trials_best_config_report_and_compare_reads_it(tiny_data, tmp_path, capsys):
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n"
                             "  train.optimizer: {categorical: [adamw, sgd]}\n"
                             "  train.momentum: {float: [0.8, 0.95], when: {train.optimizer: sgd}}\n")
    out = tmp_path / "st #1"  # a folder name the shell and a SQLAlchemy URL both need escaped
    args = ["tune", "--data", str(tiny_data), "--space", str(space), "--out", str(out), "--trials", "2",
            "--sampler", "random", "--threads", "1"] + [item for pair in (("--set", s) for s in TINY) for item in pair]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "trial 1 " in printed and "best val_auc" in printed and "[2/2 finished" in printed
    # the printed dashboard command works when pasted: one shell word, a URL that opens this very study.db
    command = next(line for line in printed.splitlines() if line.startswith("report:")).split("(interactive: ", 1)[1][:-1]
    words = shlex.split(command)
    assert words[0] == "optuna-dashboard" and len(words) == 2
    from sqlalchemy import create_engine, inspect
    from sqlalchemy.engine import make_url

    assert make_url(words[1]).database == str(out / "study.db")
    engine = create_engine(words[1])
    assert "trials" in inspect(engine).get_table_names()
    engine.dispose()
    with open(out / "trials.csv") as file:
        rows = list(csv.DictReader(file))
    assert [row["state"] for row in rows] == ["COMPLETE"] * 2
    assert all(0 <= float(row["val_auc_ci_low"]) <= float(row["val_auc"]) <= float(row["val_auc_ci_high"]) for row in rows)
    assert all((out / row["run"] / "best.safetensors").is_file() for row in rows)
    best = max(rows, key=lambda row: float(row["val_auc"]))
    config = load_config(out / "best.yaml")  # a config pcamlab train runs as is
    assert config.train.learning_rate == pytest.approx(float(best["train.learning_rate"]))
    assert config_to_dict(config) == yaml.safe_load((out / best["run"] / "config.yaml").read_text())
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "<script" not in page and "http://" not in page.replace("http://127.0.0.1", "")
    assert "Top 2 trials" in page and f"<code>{html.escape(command)}</code>" in page
    assert main(["compare", str(out)]) == 0
    table = capsys.readouterr().out
    assert all(f"st #1/trial-000{n}" in table for n in range(2))
    with pytest.raises(RunFolderError, match="already holds a study"):
        run_study(_base(tiny_data), space, out, trials=1)


def test_search_scores_the_base_config_first_and_says_whether_the_best_beats_it(tiny_data, tmp_path):
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n"
                             "  train.optimizer: {categorical: [adamw, sgd]}\n"
                             "  train.momentum: {float: [0.8, 0.95], when: {train.optimizer: sgd}}\n"
                             "  model.options.width: {categorical: [4, 8]}\n"
                             "  model.options.depth: {int: [1, 2]}\n")  # the base leaves depth to the model (1)
    lines: list[str] = []
    result = run_study(_base(tiny_data, "train.learning_rate=0.003", "train.optimizer=adamw"), space, tmp_path / "st",
                       StudySettings(sampler="random", pruner="none"), trials=2, threads=1, log=lines.append)
    first = _study(tmp_path / "st").trials[0]
    assert first.params == {"train.learning_rate": 0.003, "train.optimizer": "adamw", "model.options.width": 4,
                            "model.options.depth": 1}
    assert first.user_attrs["base"] is True and "trial 0 is the base config" in "\n".join(lines)
    with open(tmp_path / "st" / "trials.csv") as file:
        assert [row["base"] for row in csv.DictReader(file)] == ["True", "False"]
    base, best = result["base"], result["best"]
    assert base["number"] == 0 and base["val_auc"] == pytest.approx(first.value)
    assert base["best_minus_base"] == pytest.approx(best["val_auc"] - first.value)
    assert base["beats"] is (best["number"] != 0 and base["best_minus_base"] > base["ci_half_width"])
    assert "base config" in (tmp_path / "st" / "report.html").read_text()
    # a base value outside the space: said, and no trial is marked as the base
    lines.clear()
    run_study(_base(tiny_data, "train.learning_rate=0.5"), space, tmp_path / "outside",
              StudySettings(sampler="random", pruner="none"), trials=1, threads=1, log=lines.append)
    assert any("not a point of the space" in line and "train.learning_rate=0.5 is outside [0.001, 0.01]" in line for line in lines)
    assert "base" not in _study(tmp_path / "outside").trials[0].user_attrs


def test_base_verdict_needs_more_than_the_base_interval_to_call_a_win():
    from pcamlab.tune.report import _base_summary, base_verdict

    rows = [{"number": 0, "state": "COMPLETE", "val_auc": 0.90, "val_auc_ci_low": 0.88, "val_auc_ci_high": 0.92, "base": True},
            {"number": 1, "state": "COMPLETE", "val_auc": 0.915, "val_auc_ci_low": 0.9, "val_auc_ci_high": 0.93, "base": False}]
    close = _base_summary(rows, {"number": 1, "val_auc": 0.915})
    assert close["beats"] is False and "keep the base" in base_verdict(close)
    far = _base_summary(rows, {"number": 1, "val_auc": 0.925})
    assert far["beats"] is True and "candidate to replace it" in base_verdict(far)
    assert _base_summary(rows, {"number": 0, "val_auc": 0.90})["beats"] is False  # the base itself is the best
    assert _base_summary(rows[1:], {"number": 1, "val_auc": 0.915}) is None  # no base trial


@pytest.mark.parametrize("extra, message", [
    (["--heartbeat", "0"], "heartbeat_seconds must be an integer >= 1"),
    (["--storage", "bogus://x"], "is not a database URL pcamlab can open"),
    (["--storage", "nodatabase"], "storage must be a database URL"),
    (["--minutes", "nan"], "minutes must be >= 0"),
    (["--trial-minutes", "nan"], "trial_minutes must be >= 0"),
])
def test_bad_study_settings_are_one_line_exit_2_and_leave_no_folder(tiny_data, tmp_path, capsys, extra, message):
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n")
    out = tmp_path / "st"
    args = ["tune", "--data", str(tiny_data), "--space", str(space), "--out", str(out), "--trials", "1", *extra]
    assert main(args + [item for pair in (("--set", s) for s in TINY) for item in pair]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()  # nothing half-written: the same command with a good value starts afresh


def test_an_out_folder_that_cannot_be_made_is_one_line(tiny_data, tmp_path, capsys):
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n")
    assert main(["tune", "--data", str(tiny_data), "--space", str(space), "--out", "/proc/pcamlab-tune-test", "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot use" in err and "/proc/pcamlab-tune-test" in err and err.count("\n") == 1, err


def test_grid_runs_every_value_once_and_feeds_the_pruner_each_epoch(tiny_data, tmp_path):
    base = _base(tiny_data, "train.epochs=3")
    space = _space(tmp_path, "params:\n  train.learning_rate: {categorical: [0.0001, 0.003, 0.03]}\n")
    result = run_study(base, space, tmp_path / "grid", StudySettings(sampler="grid", pruner="median", startup_trials=1), threads=1)
    study = _study(tmp_path / "grid")
    assert sorted(t.params["train.learning_rate"] for t in study.trials) == [0.0001, 0.003, 0.03]
    assert result["counts"]["finished"] == 3
    for trial in study.trials:  # the validation AUC of every epoch trained reached the pruner
        history = (tmp_path / "grid" / trial.user_attrs["run"] / "history.csv").read_text().splitlines()[1:]
        assert [round(v, 6) for v in trial.intermediate_values.values()] == [float(line.split(",")[3]) for line in history]


def test_hyperband_pruner_gets_every_epoch_and_the_study_accounts_for_each_trial(tiny_data, tmp_path):
    from optuna.pruners import HyperbandPruner

    from pcamlab.tune.study import _pruner

    assert isinstance(_pruner(StudySettings(pruner="hyperband").check()), HyperbandPruner)
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.0001, 0.03], log: true}\n")
    lines: list[str] = []
    result = run_study(_base(tiny_data, "train.epochs=3"), space, tmp_path / "hb", StudySettings(sampler="random", pruner="hyperband"),
                       trials=4, threads=1, log=lines.append)
    assert any("hyperband pruning" in line for line in lines)
    study = _study(tmp_path / "hb")
    assert result["counts"]["finished"] == 4 == result["counts"]["COMPLETE"] + result["counts"]["PRUNED"]
    for trial in study.trials:  # pruned ones stop early, complete ones report all 3 epochs
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and (len(steps) == 3 or trial.state.name == "PRUNED")


def test_a_trial_the_pruner_stops_ends_after_that_epoch_and_the_study_still_finishes(tiny_data, tmp_path, monkeypatch):
    """A pruner that prunes every trial at its first report: each stops after epoch 1 (not 3), marked PRUNED."""
    import optuna

    from pcamlab.tune import study as study_module

    monkeypatch.setattr(study_module, "_pruner", lambda settings: optuna.pruners.ThresholdPruner(lower=1.01))
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n")
    result = run_study(_base(tiny_data, "train.epochs=3"), space, tmp_path / "pruned",
                       StudySettings(sampler="random", pruner="median", startup_trials=0), trials=2, threads=1)
    study = _study(tmp_path / "pruned")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"] and result["counts"]["PRUNED"] == 2
    for trial in study.trials:
        run = tmp_path / "pruned" / trial.user_attrs["run"]
        assert list(trial.intermediate_values) == [1]
        assert len((run / "history.csv").read_text().splitlines()) == 2  # header + epoch 1: training stopped there
        assert json.loads((run / "trial.json").read_text())["state"] == "PRUNED"


def test_auc_and_latency_objectives_give_a_pareto_front(tiny_data, tmp_path):
    space = _space(tmp_path, "params:\n  model.options.width: {categorical: [2, 8]}\n  train.learning_rate: {categorical: [0.001, 0.03]}\n")
    result = run_study(_base(tiny_data, "train.epochs=1"), space, tmp_path / "pareto",
                       StudySettings(objectives=("auc", "latency"), sampler="grid"), threads=1)
    study = _study(tmp_path / "pareto")
    assert all(len(t.values) == 2 and 0 < t.values[1] < 1000 for t in study.trials)
    assert (tmp_path / "pareto" / "figures" / "pareto_front.png").is_file()
    # the front from the values trials.csv records: no trial at least as good on both objectives and better on one
    with open(tmp_path / "pareto" / "trials.csv") as file:
        points = {int(row["number"]): (float(row["val_auc"]), float(row["latency_ms"])) for row in csv.DictReader(file)}
    assert len(points) == 4

    def dominated(number):
        auc, latency = points[number]
        return any(a >= auc and l <= latency and (a, l) != (auc, latency) for a, l in points.values())

    front = {number for number in points if not dominated(number)}
    assert {t.number for t in study.best_trials} == front  # what the Pareto figure draws
    best = result["best"]["number"]
    assert best in front and points[best][0] == max(points[number][0] for number in front)
    assert result["best"]["latency_ms"] == pytest.approx(points[best][1])


def test_kfold_objective_is_the_mean_of_the_fold_aucs(tiny_data, tmp_path, monkeypatch):
    from pcamlab.train import protocols
    from pcamlab.tune import study as study_module

    given = []
    real_kfold = protocols.run_kfold
    monkeypatch.setattr(protocols, "run_kfold", lambda *args, **kwargs: given.append(kwargs) or real_kfold(*args, **kwargs))
    one = _space(tmp_path, "params:\n  train.learning_rate: {categorical: [0.003]}\n")
    result = run_study(_base(tiny_data, "train.epochs=1"), one, tmp_path / "kfold",
                       StudySettings(protocol="kfold", folds=2, sampler="grid"), threads=1)
    trial = _study(tmp_path / "kfold").trials[0]
    # each fold's validation AUC as its training run logged it (history.csv), not as the objective recorded it
    folds = []
    for fold in (1, 2):
        with open(tmp_path / "kfold" / "trials" / "trial-0000" / "repeat-1" / f"fold-{fold}" / "history.csv") as file:
            folds.append(max(float(row["val_auc"]) for row in csv.DictReader(file)))
    assert trial.value == pytest.approx(np.mean(folds), abs=1e-6) and trial.user_attrs["fold_aucs"] == pytest.approx(folds)
    assert (tmp_path / "kfold" / "trials" / "trial-0000" / "cv_summary.json").is_file()
    assert result["best"]["ci"][0] < trial.value < result["best"]["ci"][1]
    # a stop request ends a k-fold trial between steps (the safe point of every fold's training), not epochs
    assert [kwargs["on_step"] for kwargs in given] == [study_module._safe_point]


def test_sweep_trains_each_value_with_each_seed_and_reports_what_mattered(tiny_data, tmp_path, capsys):
    plan = _space(tmp_path, "seeds: [0, 1]\nspec: {stages: 2, width: 4, dropout: 0.0}\nknobs:\n"
                            "  pooling: {spec.downsample: [stride]}\n", "sweep.yaml")
    out = tmp_path / "sweep"
    args = ["tune", "--sweep", "--data", str(tiny_data), "--space", str(plan), "--out", str(out), "--threads", "1"]
    assert main(args + [item for pair in (("--set", s) for s in TINY) for item in pair]) == 0
    printed = capsys.readouterr().out
    assert "AUC - base" in printed and "pooling" in printed
    with open(out / "trials.csv") as file:
        rows = list(csv.DictReader(file))
    assert sorted((row["knob"], row["value"], row["seed"]) for row in rows) == [
        ("base", "base", "0"), ("base", "base", "1"), ("pooling", "stride", "0"), ("pooling", "stride", "1")]
    with open(out / "what_mattered.csv") as file:
        table = list(csv.DictReader(file))
    by_seed = {(row["knob"], row["seed"]): float(row["val_auc"]) for row in rows}
    expected = np.mean([by_seed[("pooling", s)] - by_seed[("base", s)] for s in "01"])
    assert float(table[0]["delta_auc"]) == pytest.approx(expected, abs=1e-5)
    assert (out / "figures" / "what_mattered.png").is_file()
    assert "What mattered" in (out / "report.html").read_text()
    layers = yaml.safe_load((out / rows[0]["run"] / "config.yaml").read_text())["model"]["options"]["layers"]
    assert layers[0]["conv"]["filters"] == 4


def test_two_workers_train_every_sweep_run_exactly_once_seed_by_seed(tiny_data, tmp_path):
    """Workers take queued runs from the storage; one grid seed per worker used to run some twice and skip others."""
    plan = _space(tmp_path, "seeds: [0, 1]\nspec: {stages: 2, width: 4, dropout: 0.0}\nknobs:\n"
                            "  pooling: {spec.downsample: [stride, average]}\n", "sweep.yaml")
    out = tmp_path / "sweep2"
    base = _base(tiny_data, "train.epochs=1")
    run_study(base, plan, out, StudySettings(kind="sweep"), workers=2, threads=1)
    study = _study(out)
    runs = [t.params["run"] for t in study.trials]
    assert sorted(runs) == list(range(6)) and all(t.state.name == "COMPLETE" for t in study.trials)
    seeds = [t.user_attrs["seed"] for t in sorted(study.trials, key=lambda t: t.number)]
    assert seeds == sorted(seeds)  # every run of seed 0 was queued before any of seed 1


def test_resumed_sweep_queues_only_the_runs_it_lacks(tiny_data, tmp_path):
    import optuna

    from pcamlab.tune.space import load_sweep
    from pcamlab.tune.study import _queue_sweep_runs, _sweep_runs_to_queue

    plan = load_sweep(_space(tmp_path, "seeds: [0, 1]\nknobs:\n  dropout: {spec.dropout: [0.5]}\n", "sweep.yaml"))
    study = optuna.create_study(direction="maximize")
    done = study.ask({"run": optuna.distributions.IntDistribution(0, 3)})
    study.tell(done, 0.8)  # run 0 (or whichever was drawn) finished
    twice = optuna.trial.create_trial(params={"run": done.params["run"]}, distributions=done.distributions, value=0.7)
    study.add_trial(twice)  # a duplicate from an old study: still one run
    lines: list[str] = []
    _queue_sweep_runs(study, plan, lines.append)
    queued = sorted(t.system_attrs["fixed_params"]["run"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,)))
    assert queued == sorted(set(range(4)) - {done.params["run"]}) and "queued the 3 sweep runs" in lines[0]
    _queue_sweep_runs(study, plan, lines.append)  # again: nothing new
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 3
    assert _sweep_runs_to_queue(study, plan, finished_only=True) == queued


def _tune_process(args: list[str], log: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    # A command a non-interactive shell starts in the background (`cmd &`) inherits SIGINT ignored, and
    # Python then never raises KeyboardInterrupt: the tune process gets Ctrl-C's default handling back.
    return subprocess.Popen([sys.executable, "-m", "pcamlab", "tune", *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=environment, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_running_trial(storage: str, study_name: str, process: subprocess.Popen, out: Path, timeout: float = 90):
    """Wait until ``process`` runs a trial that has finished at least one epoch; return that trial."""
    import optuna

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert process.poll() is None, f"worker ended early: {process.returncode}"
        if not (out / "study.json").is_file():  # before it, opening the SQLite file would create it
            time.sleep(0.3)
            continue
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except Exception:  # noqa: BLE001 - not created yet (KeyError) or the database is busy
            time.sleep(0.3)
            continue
        for trial in study.get_trials(deepcopy=False):
            history = out / str(trial.user_attrs.get("run", "-")) / "history.csv"
            if (trial.state.name == "RUNNING" and trial.user_attrs.get("worker", "").endswith(f":{process.pid}")
                    and history.is_file() and len(history.read_text().splitlines()) >= 2):
                return trial
        time.sleep(0.2)
    raise AssertionError("no trial reached its second epoch in time")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _accounted(study, target: int) -> None:
    """Every trial ends complete, or failed with a retry that completed; ``target`` finished in all."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(complete) == target and not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    retried = {t.system_attrs.get("failed_trial") for t in complete}
    assert failed and all(t.number in retried for t in failed)
    for trial in failed:
        retry = next(t for t in complete if t.system_attrs.get("failed_trial") == trial.number)
        assert retry.params == trial.params


def _start_study_process(data: Path, tmp_path: Path, trials: int, epochs: int) -> tuple[Path, subprocess.Popen]:
    """A random-search study of the learning rate in its own process (log: tmp_path/first.log): (out, process)."""
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n")
    out = tmp_path / "study"
    flags = [item for pair in (("--set", s) for s in [*TINY, f"train.epochs={epochs}"]) for item in pair]
    process = _tune_process(["--data", str(data), "--space", str(space), "--out", str(out), "--trials", str(trials),
                             "--sampler", "random", "--pruner", "none", *flags], tmp_path / "first.log")
    return out, process


@pytest.mark.slow
def test_resume_after_a_kill_fails_and_requeues_the_interrupted_trial(tiny_data, tmp_path):
    out, process = _start_study_process(tiny_data, tmp_path, trials=3, epochs=4)
    try:
        killed = _wait_for_running_trial(f"sqlite:///{out / 'study.db'}", "study", process, out)
    finally:
        _kill(process)
    lines = []
    result = resume_study(out, log=lines.append)
    assert any(f"trial {killed.number} was left running" in line for line in lines)
    study = _study(out)
    _accounted(study, 3)
    assert result["counts"]["COMPLETE"] == 3
    with open(out / "trials.csv") as file:
        rows = {int(row["number"]): row for row in csv.DictReader(file)}
    assert rows[killed.number]["state"] == "FAIL" and "re-queued" in rows[killed.number]["error"]
    retry = next(row for row in rows.values() if row["retry_of"] == str(killed.number))
    assert retry["state"] == "COMPLETE" and retry["error"] == ""  # the retry does not carry the failure's text


@pytest.mark.slow
def test_ctrl_c_mid_trial_exits_130_and_resume_requeues_that_trial(tiny_data, tmp_path):
    out, process = _start_study_process(tiny_data, tmp_path, trials=2, epochs=6)
    try:
        interrupted = _wait_for_running_trial(f"sqlite:///{out / 'study.db'}", "study", process, out)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends to the process group
        assert process.wait(timeout=60) == 130, (tmp_path / "first.log").read_text()
    finally:
        _kill(process)
    assert "pcamlab: interrupted" in (tmp_path / "first.log").read_text()
    study = _study(out)
    stopped = study.trials[interrupted.number]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["error"].startswith("interrupted (SIGINT)")
    result = resume_study(out)
    study = _study(out)
    _accounted(study, 2)
    assert result["counts"]["COMPLETE"] == 2


@pytest.mark.slow
def test_local_workers_share_the_sqlite_study_without_drawing_the_same_values(tiny_data, tmp_path):
    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n")
    # No pruner: with two workers the median pruner may stop a trial depending on which finished first, and
    # this test is about sharing the storage, not about pruning.
    settings = StudySettings(sampler="random", pruner="none")
    result = run_study(_base(tiny_data), space, tmp_path / "study", settings, trials=4, workers=2, threads=1)
    study = _study(tmp_path / "study")
    assert result["counts"]["COMPLETE"] == 4 and len(study.trials) == 4, [t.state.name for t in study.trials]
    assert os.getpid() not in {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in study.trials}  # worker processes ran them
    assert len({t.params["train.learning_rate"] for t in study.trials}) == 4


# ----------------------------------------------------------------------------------------------
# PostgreSQL: a throwaway server on 127.0.0.1, two workers, one killed mid-trial.


def _postgres_binaries() -> Path | None:
    import shutil

    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL cluster in a temporary folder, on a free 127.0.0.1 port, with a role and a database."""
    import pwd
    import shutil
    import tempfile

    binaries = _postgres_binaries()
    if binaries is None:
        require_service("postgresql", "PostgreSQL server binaries (initdb, pg_ctl) not found; install Debian's postgresql (.ci/run does)")
    prefix: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pcamlab-pg-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            require_service("postgresql", "running as root and there is no 'postgres' user to run the PostgreSQL server as")
        shutil.chown(root, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"

    def call(*command: str) -> None:
        result = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"{command[0]} failed: {result.stdout}{result.stderr}")

    try:
        call(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        call(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "30", "-o",
             f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(root, ignore_errors=True)
        require_service("postgresql", f"could not start a PostgreSQL server here: {str(error).splitlines()[0]}")
    try:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", autocommit=True) as connection:
            connection.execute("CREATE ROLE pcamlab LOGIN PASSWORD 'pcamlab'")
            connection.execute("CREATE DATABASE pcamlab_test OWNER pcamlab")
        yield f"postgresql://pcamlab:pcamlab@127.0.0.1:{port}/pcamlab_test"
    finally:
        subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_a_postgres_study_and_a_killed_workers_trial_is_retried(tiny_data, tmp_path, postgres_url):
    import optuna

    from pcamlab.tune.study import open_storage

    space = _space(tmp_path, "params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n")
    flags = [item for pair in (("--set", s) for s in [*TINY, "train.epochs=4"]) for item in pair]
    common = ["--data", str(tiny_data), "--space", str(space), "--trials", "4", "--sampler", "random", "--pruner", "none",
              "--storage", postgres_url, "--study-name", "shared", "--heartbeat", "1", *flags]
    doomed = _tune_process([*common, "--out", str(tmp_path / "a")], tmp_path / "a.log")
    try:
        time.sleep(1.0)  # let the first worker create the study
        survivor = _tune_process([*common, "--out", str(tmp_path / "b")], tmp_path / "b.log")
        killed = _wait_for_running_trial(postgres_url.replace("postgresql://", "postgresql+psycopg://"), "shared", doomed, tmp_path / "a")
    finally:
        _kill(doomed)
    try:
        survivor.wait(timeout=180)
    finally:
        if survivor.poll() is None:
            _kill(survivor)
    log = (tmp_path / "b.log").read_text()
    assert survivor.returncode == 0, log
    assert f"retry of trial {killed.number}" in log
    study = optuna.load_study(study_name="shared", storage=open_storage(postgres_url))
    _accounted(study, 4)
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study.trials} >= {str(doomed.pid), str(survivor.pid)}
    rates = [t.params["train.learning_rate"] for t in study.trials if "failed_trial" not in t.system_attrs]
    assert len(set(rates)) == len(rates)  # the two workers drew different values
    with open(tmp_path / "b" / "trials.csv") as file:
        assert len(list(csv.DictReader(file))) == len(study.trials)
