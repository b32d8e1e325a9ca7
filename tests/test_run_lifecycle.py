"""A run's life: its schedule ends with it, it resumes whatever its protocol, it can be trained further
without touching the finished folder, several processes share one clock, and deterministic runs repeat."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from fixtures_data import write_tiny_h5
from safetensors.torch import load_file

from pcamlab.cli.main import main
from pcamlab.config import load_config
from pcamlab.errors import ConfigError, RunError, RunFolderError
from pcamlab.train.loop import HISTORY_COLUMNS, learning_rate_factor, train
from pcamlab.train.protocols import choice_from_run, run_final, run_folder_protocol, run_kfold

TINY = [
    "model.name=baseline", "model.options={filters: [8, 16], dense_units: 16}", "train.batch_size=8",
    "train.epochs=2", "train.patience=0", "train.learning_rate=0.003", "train.warmup_epochs=0",
    "train.precision=fp32", "train.threads=1",
]
TIMING = {"seconds", "images_per_second"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_h5(tmp_path_factory.mktemp("h5"))


def _config(data, *extra):
    return load_config(None, [f"data.path={data}", *TINY, *extra])


def _history(run):
    with open(run / "history.csv") as file:
        return list(csv.DictReader(file))


def _numbers(rows):
    """History rows without the timing columns (which differ run to run by nature)."""
    return [{key: value for key, value in row.items() if key not in TIMING} for row in rows]


def _fingerprint(folder):
    return {path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# -- 2.2: a schedule ends when training ends, epochs or budget --------------------------------------------


def test_budget_recipe_cut_to_fewer_epochs_ends_its_schedule_with_the_last_epoch(tiny_data, tmp_path):
    recipe = load_config("configs/default.yaml", ["train.epochs=2"])
    assert recipe.train.schedule_over == "budget" and recipe.train.time_budget_minutes == 15
    # 2 epochs in, 5% of the 15 minutes used: training ends here, so the schedule must be at its end
    assert learning_rate_factor(recipe, 2.0, budget_fraction=0.05) == pytest.approx(0.01)
    assert learning_rate_factor(recipe, 1.0, budget_fraction=0.05) == pytest.approx(0.505)  # half-way
    # the budget still ends the schedule when it comes first
    assert learning_rate_factor(load_config("configs/default.yaml"), 4.0, budget_fraction=1.0) == pytest.approx(0.01)

    config = _config(tiny_data, "train.batch_size=2", "train.schedule_over=budget", "train.time_budget_minutes=60")
    train(config, tmp_path / "run", progress=False)
    rates = [float(row["learning_rate"]) for row in _history(tmp_path / "run")]
    assert len(rates) == 2 and rates[-1] < 0.02 * config.train.learning_rate  # 16 steps/epoch: last at 31/32


# -- 2.6: resume reads the protocol from the folder; accurate messages --------------------------------------


def test_resume_of_an_interrupted_kfold_needs_no_protocol_flags(tiny_data, tmp_path, capsys):
    out = tmp_path / "cv"
    config = _config(tiny_data, "train.epochs=1")

    def stop_in_fold_two(line: str) -> None:
        if line.startswith("[fold 2/2] epoch"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_kfold(config, out, folds=2, groups="none", progress=False, log=stop_in_fold_two)
    assert run_folder_protocol(out) == {"protocol": "kfold", "folds": 2, "repeats": 1}
    assert not (out / "cv_summary.json").exists()
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "resuming the cross-validation" in printed and "[fold 1/2] already finished, kept" in printed
    summary = json.loads((out / "cv_summary.json").read_text())
    assert summary["folds"] == 2 and len(summary["runs"]) == 2
    # a finished cross-validation is never resumed, like a finished hold-out run: one line, exit 2, untouched
    kept = (out / "cv_summary.json").stat().st_mtime_ns
    assert main(["train", "--resume", "--out", str(out), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "already finished" in captured.err and "another --out" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "already finished, kept" not in captured.out and (out / "cv_summary.json").stat().st_mtime_ns == kept
    with pytest.raises(RunFolderError, match="already finished"):
        run_kfold(config, out, folds=2, groups="none", resume=True, progress=False)
    # a contradicting --protocol is refused, not obeyed
    assert main(["train", "--resume", "--protocol", "holdout", "--out", str(out)]) == 2
    assert "holds a kfold run" in capsys.readouterr().err


def test_resume_messages_say_what_is_really_there(tiny_data, tmp_path, monkeypatch):
    config = _config(tiny_data, "train.epochs=1")
    with pytest.raises(RunError, match="nothing to resume: .* does not exist"):
        train(config, tmp_path / "missing", resume=True, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="nothing to resume: .* is empty"):
        train(config, tmp_path / "empty", resume=True, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    with pytest.raises(RunError, match="holds no pcamlab run"):
        run_kfold(config, tmp_path / "other", folds=2, resume=True, progress=False)

    # interrupted before its first epoch ended: resume starts it again instead of refusing
    started = tmp_path / "started"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("pcamlab.train.epoch.compute_loss", interrupt)  # Ctrl-C at the first step
        with pytest.raises(KeyboardInterrupt):
            train(config, started, progress=False)
    assert (started / "config.yaml").is_file() and not (started / "resume.pt").exists()
    lines: list[str] = []
    summary = train(config, started, resume=True, progress=False, log=lines.append)
    assert summary["finished"] and any("training again from epoch 1" in line for line in lines)

    # a hold-out folder is not resumed as a cross-validation, nor a final fit as a hold-out run
    with pytest.raises(RunError, match="single \\(hold-out\\) run, not a cross-validation"):
        run_kfold(config, started, folds=2, resume=True, progress=False)


# -- 3.3: continuing a finished run for more epochs ------------------------------------------------------


def test_continuing_a_finished_run_writes_a_new_folder_and_equals_a_longer_run(tiny_data, tmp_path, capsys):
    constant = ["train.scheduler=none"]  # the same rate either way, so continuing 2 -> 3 must equal 3 straight
    first = tmp_path / "first"
    train(_config(tiny_data, *constant), first, progress=False)
    before = _fingerprint(first)

    # --resume of a finished run names the way to train it further, and touches nothing
    assert main(["train", "--resume", "--out", str(first), "--set", "train.epochs=3"]) == 2
    assert f"--continue {first} --out NEW" in capsys.readouterr().err
    more = tmp_path / "more"
    assert main(["train", "--continue", str(first), "--out", str(more), "--no-progress", "--set", "train.epochs=3"]) == 0
    assert _fingerprint(first) == before  # the finished run is left exactly as it was
    summary = json.loads((more / "summary.json").read_text())
    assert summary["continued_from"] == str(first) and summary["epochs_run"] == 3
    assert _numbers(_history(more))[:2] == _numbers(_history(first))

    straight = tmp_path / "straight"
    train(_config(tiny_data, *constant, "train.epochs=3"), straight, progress=False)
    assert _numbers(_history(more)) == _numbers(_history(straight))
    expected, got = load_file(str(straight / "last.safetensors")), load_file(str(more / "last.safetensors"))
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=0, msg=name)

    with pytest.raises(ConfigError, match="already ran 2 epochs; continuing needs more"):
        train(_config(tiny_data, *constant), tmp_path / "same", continue_from=first, progress=False)
    with pytest.raises(ConfigError, match="continue with the run's own config.yaml"):
        train(_config(tiny_data, *constant, "train.epochs=3", "model.options={filters: [4, 8], dense_units: 16}"),
              tmp_path / "other-model", continue_from=first, progress=False)
    assert not (tmp_path / "same").exists() and not (tmp_path / "other-model").exists()


# -- 2.3: a final model's threshold comes from models trained the same way ------------------------------


def test_final_threshold_comes_from_models_trained_like_the_final_one(tiny_data, tmp_path):
    from pcamlab.data import load_split_arrays, open_split
    from pcamlab.evaluate.thresholds import choose_threshold
    from pcamlab.runtime import load_checkpoint
    from pcamlab.runtime.predictor import TorchPredictor

    youden = "evaluate.threshold_method=youden"
    # a budget recipe chose its threshold at its best epoch, mid-way down a schedule over 60 minutes: the
    # final fit replays that many epochs with the schedule over them, another model, so it does not travel
    recipe = [youden, "train.epochs=3", "train.scheduler=cosine", "train.schedule_over=budget",
              "train.time_budget_minutes=60"]
    budget = tmp_path / "budget"
    train(_config(tiny_data, *recipe), budget, progress=False)
    final = tmp_path / "final"
    result = run_final(_config(tiny_data, *recipe), final, epochs_from=budget, progress=False)
    fitted = final / "threshold-fit"
    assert (fitted / "last.safetensors").is_file() and len(_history(fitted)) == result["epochs"]
    images, labels, _ = load_split_arrays(open_split(tiny_data, "valid"))
    expected = choose_threshold(labels, TorchPredictor.from_checkpoint(fitted / "last.safetensors").predict_proba(images))
    for name in ("last.safetensors", "best.safetensors"):
        contract = load_checkpoint(final / name).contract
        assert contract.threshold == pytest.approx(expected) and "threshold-fit" in contract.threshold_source
    assert json.loads((final / "final.json").read_text())["threshold_source"] == contract.threshold_source
    assert json.loads((final / "summary.json").read_text())["threshold"] == contract.threshold

    # a run trained exactly like the final fit (1 epoch, its last epoch chose the threshold) lends its own
    same = tmp_path / "same"
    source = train(_config(tiny_data, youden, "train.epochs=1"), same, progress=False)
    result = run_final(_config(tiny_data, youden), tmp_path / "final-same", epochs_from=same, progress=False)
    contract = load_checkpoint(tmp_path / "final-same" / "last.safetensors").contract
    assert contract.threshold == source["threshold"] and "trained like this one" in contract.threshold_source
    assert not (tmp_path / "final-same" / "threshold-fit").exists()


# -- 2.10 (part): a final fit has no validation columns to print -----------------------------------------


def test_final_fit_prints_no_nan_and_is_not_a_source_of_epochs(tiny_data, tmp_path):
    lines: list[str] = []
    run_final(_config(tiny_data), tmp_path / "final", epochs=1, progress=False, log=lines.append)
    epoch_lines = [line for line in lines if line.startswith("epoch")]
    assert epoch_lines and not any("nan" in line for line in lines), lines
    assert "no validation split" in epoch_lines[0]
    summary = json.loads((tmp_path / "final" / "summary.json").read_text())
    assert summary["validated"] is False and summary["best"]["val_auc"] is None
    assert run_folder_protocol(tmp_path / "final") == {"protocol": "final"}
    with pytest.raises(ConfigError, match="was not validated"):
        choice_from_run(tmp_path / "final")


# -- 2.8: deterministic runs repeat, and train() leaves no global torch state behind ------------------------


def test_deterministic_runs_repeat_and_leave_no_global_state(tiny_data, tmp_path):
    options = ["train.deterministic=true", "model.options={filters: [8, 16], dense_units: 16, dropout: 0.5}",
               "augment.hed=0.05", "augment.brightness=0.1"]
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.deterministic, torch.get_num_threads())
    runs = []
    for name in ("a", "b"):
        summary = train(_config(tiny_data, *options), tmp_path / name, progress=False)
        assert summary["deterministic"] and summary["threads"] == 1
        assert (torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.deterministic,
                torch.get_num_threads()) == flags  # put back as they were
        runs.append(tmp_path / name)
    assert _numbers(_history(runs[0])) == _numbers(_history(runs[1]))
    first, second = load_file(str(runs[0] / "last.safetensors")), load_file(str(runs[1] / "last.safetensors"))
    assert all(torch.equal(first[name], second[name]) for name in first)
    with pytest.raises(ConfigError, match="train.deterministic .* wall clock"):
        _config(tiny_data, *options, "train.schedule_over=budget", "train.time_budget_minutes=1")


def test_streaming_batches_never_draw_from_the_global_random_stream(tiny_data):
    from pcamlab.config import DataConfig
    from pcamlab.data import open_split
    from pcamlab.data.loader import make_batch_source

    source = make_batch_source(open_split(tiny_data, "train"), DataConfig(cache="stream"), 8, shuffle=True)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    batches = list(source.epoch(seed=1))
    assert len(batches) == 4
    assert torch.equal(torch.get_rng_state(), state)  # dropout after this sees the stream it was seeded with


# -- 2.7: several processes follow one clock -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        return handle.getsockname()[1]


# Rank 0's clock advances one second per read, so its 20-second budget ends inside epoch 2 after the same
# reads every time; rank 1's runs an hour ahead and 1,000 times slower: on its own clock its budget would never
# end, and it would wait in the next step's all-reduce for ever (the test's timeout) once rank 0 stopped. Each
# rank writes the learning-rate factors it used and its stop.
CLOCK_WORKER = """
import itertools, json, os, sys, time
import pcamlab.train.schedule as schedule
from pcamlab.config import load_config
from pcamlab.train.loop import train
rank = int(os.environ["RANK"])
if rank == 0:
    ticks = itertools.count()
    clock = lambda: float(next(ticks))
else:
    clock = lambda: 3600.0 + time.perf_counter() / 1000
factors = []
original = schedule.learning_rate_factor
def recording(*args, **kwargs):
    factors.append(original(*args, **kwargs))
    return factors[-1]
schedule.learning_rate_factor = recording
summary = train(load_config(None, sys.argv[2:]), sys.argv[1], progress=False, clock=clock)
with open(os.path.join(sys.argv[1], f"rates-{rank}.json"), "w") as file:
    json.dump({"factors": factors, "stop": summary["stop_reason"], "epochs": summary["epochs_run"]}, file)
"""


def test_two_processes_share_one_clock_under_a_budget_schedule(tiny_data, tmp_path):
    out = tmp_path / "double"
    options = [f"data.path={tiny_data}", *TINY, "train.device=cpu", "train.epochs=4",
               "train.schedule_over=budget", f"train.time_budget_minutes={20 / 60}"]
    port = str(_free_port())
    processes = []
    for rank in range(2):
        env = dict(os.environ, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        processes.append(subprocess.Popen([sys.executable, "-c", CLOCK_WORKER, str(out), *options], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [process.communicate(timeout=120)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert all(process.returncode == 0 for process in processes), outputs
    rank0, rank1 = (json.loads((out / f"rates-{rank}.json").read_text()) for rank in range(2))
    assert rank0 == rank1  # the same learning rate at every step, and the same stop after the same step
    assert rank0["stop"].startswith("time budget of") and rank0["epochs"] < 4  # the budget ended it, not the epochs
    assert len(rank0["factors"]) > 3 and rank0["factors"] == sorted(rank0["factors"], reverse=True)
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    assert list(_history(out)[0]) == HISTORY_COLUMNS


def test_the_cli_prints_its_lines_once_under_torchrun(tiny_data, tmp_path, monkeypatch, capsys):
    # torchrun starts the command in every process; only rank 0 speaks (the README's line printed its
    # "run folder" line twice, interleaved with the other process's epochs)
    arguments = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "rank1"), "--no-progress"]
    for item in [*TINY, "train.epochs=1"]:
        arguments += ["--set", item]
    monkeypatch.setenv("RANK", "1")  # WORLD_SIZE unset: trains alone, but as rank 1 would
    assert main(arguments) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--continue", str(tmp_path / "rank1"), "--out", str(tmp_path / "rank0"), "--no-progress",
                 "--set", "train.epochs=2"]) == 0
    assert "run folder:" in capsys.readouterr().out
