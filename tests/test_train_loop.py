"""The training loop's parts do what they say: the budget stop rule on simulated fast and slow machines,
the batch check against batch-norm, the stop flag, and the effect of EMA, gradient clipping, L1 and compile."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from fixtures_data import sample_patches, write_bad_image, write_folders, write_tiny_h5
from safetensors.torch import load_file
from torch import nn

from pcamlab import stopping
from pcamlab.cli.main import main
from pcamlab.config import load_config
from pcamlab.errors import ConfigError
from pcamlab.train.clock import RunClock, scaled_clock
from pcamlab.train.early_stopping import BudgetStopRule, EarlyStopping
from pcamlab.train.ema import ModelEma, ema_decay_at
from pcamlab.train.loop import train

TINY = [
    "model.name=baseline", "model.options={filters: [8, 16], dense_units: 16}", "train.batch_size=8",
    "train.epochs=2", "train.patience=0", "train.learning_rate=0.003", "train.warmup_epochs=0",
    "train.precision=fp32", "train.threads=1",
]
# a dense layer followed by BatchNorm1d: it cannot train on one patch ("Expected more than 1 value per channel")
SPEC_BN1D = ("model.options={layers: [{conv: {filters: 4}}, {pool: {size: 8}}, flatten, {dense: {units: 8}}, "
             "{batch_norm: {}}, {activation: relu}, {dense: {units: 1}}]}")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_tiny_h5(tmp_path_factory.mktemp("h5"))


def _config(data, *extra):
    return load_config(None, [f"data.path={data}", *TINY, *extra])


# -- the budget rule: a budget run ends where its schedule ends, on a machine of any speed ------------------

# A run that never improves after its first epoch (min_delta 1): the strongest case for stopping early.
# 1.5 s of budget on the simulated machine, so the 3x faster one takes 4.5 s of real time.
BUDGET = ["model.name=simple-cnn", "model.options={width: 4}", "train.epochs=100000", "train.max_steps_per_epoch=2",
          "train.schedule_over=budget", "train.time_budget_minutes=0.025", "train.scheduler=cosine",
          "train.patience=2", "train.min_delta=1.0", "data.cache=stream"]  # stream: no TensorBoard pictures


def test_the_budget_rule_counts_only_epochs_with_a_decayed_learning_rate():
    rule = BudgetStopRule.from_config(load_config("configs/default.yaml"))
    assert rule.lr_fraction == 0.1 and rule.counts(0.1) and not rule.counts(0.35)
    assert BudgetStopRule.from_config(load_config(None)).lr_fraction is None  # a schedule over epochs: every epoch
    early = EarlyStopping("val_auc", patience=2, rule=rule)
    for epoch, factor in enumerate([1.0, 0.6, 0.4, 0.2, 0.09], 1):  # never better than epoch 1
        early.update(epoch, 0.9 if epoch == 1 else 0.8, counts=True, learning_rate_factor=factor)
    assert early.stale_epochs == 1 and early.reason(progressive=False) is None  # 4 stale epochs, one counted
    early.update(6, 0.8, counts=True, learning_rate_factor=0.05)
    assert early.reason(progressive=False).startswith("early stop: val_auc did not improve for 2 epochs once the "
                                                      "learning rate had decayed to 10% of its peak")


@pytest.mark.parametrize("speed", [1 / 3, 3.0], ids=["3x-faster-machine", "3x-slower-machine"])
def test_a_budget_run_ends_at_its_budget_or_stops_decayed_on_any_machine(tiny_data, tmp_path, speed):
    """A clock at 1/3 speed is a machine 3x faster (every step, validation and start-up counts a third)."""
    summary = train(_config(tiny_data, *BUDGET), tmp_path / "run", progress=False, clock=scaled_clock(speed))
    budget, factor = summary["budget"], summary["final_learning_rate_factor"]
    if summary["stopped_by"] == "time_budget":  # at the first step past the budget, the schedule at its end
        assert budget["used_at_previous_step"] <= 1.0 < budget["used_when_training_stopped"], budget
        assert factor <= 0.1, summary["stop_reason"]  # the last step's rate, set before it (1% at the very end)
    else:  # earlier only with a convergence reason: no improvement once the learning rate had decayed
        assert summary["stopped_by"] == "early_stop" and "once the learning rate had decayed" in summary["stop_reason"]
        assert factor <= 0.1 and budget["used_when_training_stopped"] >= 0.8, summary["stop_reason"]


def test_without_the_rule_a_fast_machine_stops_with_its_learning_rate_high(tiny_data, tmp_path):
    """The failure the rule fixes (issue 25): patience in epochs ends a fast machine's run mid-schedule."""
    summary = train(_config(tiny_data, *BUDGET, "train.patience_lr_fraction=1"), tmp_path / "run", progress=False,
                    clock=scaled_clock(1 / 3))
    assert summary["stopped_by"] == "early_stop" and summary["epochs_run"] == 3
    assert summary["budget"]["used_when_training_stopped"] < 0.6 and summary["final_learning_rate_factor"] > 0.3


def test_run_clock_reads_a_scaled_clock():
    ticks = iter([100.0, 130.0])
    clock = RunClock(budget_minutes=1, read=scaled_clock(1 / 3, lambda: next(ticks)))
    assert clock.fraction() == pytest.approx(10 / 60)  # 30 s of this machine = 10 s of one 3x faster
    with pytest.raises(ValueError, match="speed must be > 0"):
        scaled_clock(0)


# One second per read of the clock: a run of 2 steps per epoch reads it 8 times an epoch, so a budget of one
# minute ends in epoch 7 (the same reads every time, on any machine).
COUNTED = ["train.epochs=1000", "train.max_steps_per_epoch=2", "train.schedule_over=budget", "train.scheduler=cosine",
           "data.cache=stream"]


def _counting_clock():
    ticks = itertools.count()
    return lambda: float(next(ticks))


def _rates(run) -> list[float]:
    with open(run / "history.csv") as file:
        return [float(row["learning_rate"]) for row in csv.DictReader(file)]


class _Interrupted(Exception):
    pass


def _interrupt_after(last_epoch):
    def on_epoch(epoch, row):
        if epoch == last_epoch:
            raise _Interrupted
    return on_epoch


def test_a_resumed_budget_run_goes_on_with_its_budget_and_schedule(tiny_data, tmp_path):
    """Tester 1 item 2: a resume started a new budget (the learning rate jumped back up, the run trained a whole
    budget again and summary.json counted only the resumed part)."""
    config = _config(tiny_data, *COUNTED, "train.time_budget_minutes=1")
    whole = train(config, tmp_path / "whole", progress=False, clock=_counting_clock())
    with pytest.raises(_Interrupted):
        train(config, tmp_path / "run", progress=False, clock=_counting_clock(), on_epoch=_interrupt_after(3))
    saved = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)["elapsed_seconds"]
    assert saved > 20
    summary = train(config, tmp_path / "run", resume=True, progress=False, clock=_counting_clock())
    rates = _rates(tmp_path / "run")
    assert rates == sorted(rates, reverse=True), rates  # the cosine goes on down, it does not start again
    assert summary["stopped_by"] == "time_budget" and abs(summary["epochs_run"] - whole["epochs_run"]) <= 1
    assert summary["wall_seconds"] > 60 and summary["budget"]["used_at_end"] > 1  # the whole run is counted


def test_an_epoch_cut_short_by_the_budget_is_the_budgets_stop_not_patiences(tiny_data, tmp_path):
    """Tester 1 item 5: the epoch the budget ended counted for patience, and the stop was called early_stop."""
    # epoch 3 reads the clock at 25 s and 27 s after its steps: a budget of 26 s ends it
    config = _config(tiny_data, *COUNTED, f"train.time_budget_minutes={26 / 60}", "train.patience=2", "train.min_delta=1.0",
                     "train.patience_lr_fraction=1")  # never improves after epoch 1; every epoch counts
    summary = train(config, tmp_path / "run", progress=False, clock=_counting_clock())
    assert summary["epochs_run"] == 3, summary["budget"]  # epochs 2 and 3 without improvement: patience 2 would also stop here
    assert summary["stopped_by"] == "time_budget" and summary["stop_reason"].startswith("time budget of"), summary["budget"]
    state = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)
    assert state["stale_epochs"] == 1  # epoch 3, cut short, is not a whole epoch without improvement


@pytest.mark.parametrize("layers, missing", [
    ("[flatten, {dense: {units: 4}}]", "no nn.Conv2d layer"),
    ("[{conv: {filters: 4, kernel: 96, padding: valid}}, flatten]", "no conv layer with a spatial output"),
], ids=["no-conv", "no-spatial-conv"])
def test_a_model_without_pictures_trains_with_a_note_said_before_training(tiny_data, tmp_path, layers, missing):
    """Tester 1 item 4: the epoch pictures failed after a whole epoch and left a half run folder."""
    lines = []
    summary = train(_config(tiny_data, "model.name=spec", f"model.options={{layers: {layers}}}", "train.epochs=1",
                            "data.cache=ram"), tmp_path / "run", progress=False, log=lines.append)
    assert summary["finished"] and (tmp_path / "run" / "summary.json").is_file()
    notes = [index for index, line in enumerate(lines) if line.startswith("note: no filter or Grad-CAM pictures")]
    first_epoch = next(index for index, line in enumerate(lines) if line.startswith("epoch   1"))
    assert notes and notes[0] < first_epoch and missing in lines[notes[0]], lines


# -- the batch check: batch-norm that cannot train on a batch is one line, or a skipped step ----------------


def test_a_batch_batch_norm_cannot_train_on_is_one_line_naming_train_batch_size(tiny_data, tmp_path, capsys):
    config = _config(tiny_data, "model.name=spec", SPEC_BN1D, "train.batch_size=1")
    with pytest.raises(ConfigError, match=r"train.batch_size 1 is too small for model.name 'spec': its batch-norm "
                                          r"layers need at least 2 patches .* set train.batch_size to 2 or more"):
        train(config, tmp_path / "one", progress=False)
    arguments = ["train", "--data", str(tiny_data), "--out", str(tmp_path / "cli"), "--no-progress"]
    for item in [*TINY, "model.name=spec", SPEC_BN1D, "train.batch_size=1"]:
        arguments += ["--set", item]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.batch_size 1 is too small" in err and "Traceback" not in err
    # a model without batch-norm trains on one patch per step
    assert train(_config(tiny_data, "train.batch_size=1", "train.epochs=1", "train.max_steps_per_epoch=2"),
                 tmp_path / "baseline", progress=False)["finished"]


def test_the_last_partial_batch_is_dropped_so_batch_norm_never_meets_one_patch(tmp_path):
    # 17 patches in batches of 8: 2 steps per epoch; the 17th patch (a different one each epoch) is left out
    data = write_tiny_h5(tmp_path / "h5", train=17, valid=8)
    summary = train(_config(data, "model.name=spec", SPEC_BN1D, "train.epochs=2"), tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "resume.pt", weights_only=True)["optimizer"]["state"]
    assert int(next(iter(state.values()))["step"]) == 4 and summary["skipped_steps"] == 0


def test_a_streamed_batch_left_with_one_patch_is_skipped_with_a_note(tmp_path):
    images, labels = sample_patches(12, split="train", seed=3)
    picks = [int((labels == 0).argmax()), int((labels == 1).argmax()), int((labels == 1).nonzero()[0][1])]
    valid_images, valid_labels = sample_patches(8, split="valid", seed=4)
    root = write_folders(tmp_path / "data", {"train": (images[picks], labels[picks]),
                                             "valid": (valid_images, valid_labels)})
    write_bad_image(root / "train" / "0" / "zz_broken.png", "truncated")  # 4 files, batches of 2: one has 1 patch
    lines: list[str] = []
    summary = train(_config(root, "model.name=spec", SPEC_BN1D, "train.batch_size=2", "train.epochs=1",
                            "data.cache=stream", "data.skip_bad=true"), tmp_path / "run", progress=False, log=lines.append)
    assert summary["skipped_steps"] == 1 and summary["data"]["skipped_files"] == 1
    assert any("skipped 1 step whose batch" in line and "cannot train on one" in line for line in lines), lines


# -- the stop flag: SIGINT/SIGTERM stop between steps; the resume state stays and the run says where ----------


def test_a_stop_request_keeps_the_resume_state_and_resumes_to_identical_weights(tiny_data, tmp_path):
    options = ["train.epochs=3", "train.deterministic=true"]
    straight = tmp_path / "straight"
    train(_config(tiny_data, *options), straight, progress=False)

    def stop_in_epoch_two(model, epochs_done):
        if epochs_done > 1.2:
            stopping.request(signal.SIGTERM)  # as the signal handler would
        return False

    stopped, lines = tmp_path / "a stopped run", []  # a space: the suggested command quotes the path
    try:
        with pytest.raises(stopping.Stopped):
            train(_config(tiny_data, *options), stopped, progress=False, log=lines.append, on_step=stop_in_epoch_two)
    finally:
        stopping.clear()
    assert lines[-1] == (f"stopped by SIGTERM in epoch 2: the resume state of epoch 1 is {stopped / 'resume.pt'}; "
                         f"`pcamlab train --resume --out '{stopped}'` (resume=True from Python) continues from epoch 2")
    assert torch.load(stopped / "resume.pt", weights_only=True)["epoch"] == 1 and not (stopped / "summary.json").exists()
    train(_config(tiny_data, *options), stopped, resume=True, progress=False)
    expected, resumed = load_file(str(straight / "last.safetensors")), load_file(str(stopped / "last.safetensors"))
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)


def test_a_sigtermed_train_command_says_it_and_where_the_resume_state_is(tiny_data, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "pcamlab", "train", "--data", str(tiny_data), "--out", str(out), "--no-progress"]
    for item in [*TINY, "train.epochs=500", "train.max_steps_per_epoch=2"]:
        command += ["--set", item]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for line in process.stdout:
            if line.startswith("epoch   1"):
                process.send_signal(signal.SIGTERM)
                break
        out_text, err_text = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, err_text
    assert err_text.strip().splitlines()[-1] == "pcamlab: terminated (SIGTERM)" and "Traceback" not in err_text
    assert "stopped by SIGTERM in epoch" in out_text and str(out / "resume.pt") in out_text
    assert torch.load(out / "resume.pt", weights_only=True)["epoch"] >= 1


# -- options that change the weights: each with a check that can fail ---------------------------------------


def test_ema_is_the_hand_computed_average_with_its_warm_up():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    average = {name: value.clone() for name, value in model.state_dict().items()}
    for update in range(1, 31):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
            model[1].num_batches_tracked += 1
        ema.update(model)
        decay = ema_decay_at(0.9, update)
        assert decay == min(0.9, (1 + update) / (10 + update))
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                average[name] = decay * average[name] + (1 - decay) * value
    averaged = ema.model.state_dict()
    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(averaged[name], average[name], rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(averaged[name], value)  # integer buffers are copied
    for name, parameter in model.named_parameters():
        assert not torch.allclose(averaged[name], parameter)  # the average is not the raw weights


def test_ema_checkpoints_hold_the_average_and_resume_holds_the_raw_weights(tiny_data, tmp_path):
    train(_config(tiny_data, "train.ema_decay=0.9", "train.epochs=1"), tmp_path / "ema", progress=False)
    checkpoint = load_file(str(tmp_path / "ema" / "last.safetensors"))
    raw = torch.load(tmp_path / "ema" / "resume.pt", weights_only=True)["model"]
    assert any(not torch.equal(checkpoint[name], raw[name]) for name in raw if raw[name].dtype.is_floating_point)


def _initial_and_trained(data, tmp_path, name, *extra):
    """(initial, trained) parameters of a 1-step or short run: the seed rebuilds the initial weights."""
    from pcamlab.models import build_model
    from pcamlab.train.model_setup import with_resolved_options

    config = _config(data, *extra)
    torch.manual_seed(config.train.seed)
    initial = dict(build_model(with_resolved_options(config).model).named_parameters())
    train(config, tmp_path / name, progress=False)
    trained = torch.load(tmp_path / name / "resume.pt", weights_only=True)["model"]
    return {key: value.detach() for key, value in initial.items()}, {key: trained[key] for key in initial}


def test_grad_clip_bounds_the_update_norm(tiny_data, tmp_path):
    # plain SGD (no momentum, no weight decay), one step: the update is exactly lr x the clipped gradient
    step = ["train.optimizer=sgd", "train.momentum=0", "train.weight_decay=0", "train.learning_rate=0.5",
            "train.scheduler=none", "train.epochs=1", "train.max_steps_per_epoch=1"]

    def update_norm(name, *extra):
        initial, trained = _initial_and_trained(tiny_data, tmp_path, name, *step, *extra)
        return torch.sqrt(sum(((trained[key] - initial[key]) ** 2).sum() for key in initial)).item()

    assert update_norm("clipped", "train.grad_clip=0.01") == pytest.approx(0.5 * 0.01, rel=1e-3)
    assert update_norm("free") > 10 * 0.5 * 0.01  # without the clip the step is far larger: the clip did it


def test_l1_shrinks_the_weights(tiny_data, tmp_path):
    common = ["train.weight_decay=0", "train.epochs=3", "train.deterministic=true"]

    def weight_l1(name, *extra):
        _, trained = _initial_and_trained(tiny_data, tmp_path, name, *common, *extra)
        return sum(value.abs().sum().item() for value in trained.values() if value.ndim > 1)

    assert weight_l1("l1", "train.l1=1e-2") < 0.9 * weight_l1("plain", "train.l1=0")


def _compile_works() -> str | None:
    try:
        torch.compile(lambda x: x * 2)(torch.ones(2))
    except Exception as error:  # no C++ compiler, an unsupported platform or Python version
        return f"torch.compile cannot run here: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    return None


@pytest.mark.slow  # inductor compiles the forward and backward graphs: ~20-60 s on 2 CPU cores
def test_compile_gives_the_eager_loss(tiny_data, tmp_path):
    reason = _compile_works()
    if reason:
        pytest.skip(reason)
    options = ["train.epochs=1", "train.deterministic=true", "augment.dihedral=false"]
    eager = train(_config(tiny_data, *options), tmp_path / "eager", progress=False)
    compiled = train(_config(tiny_data, *options, "train.compile=true"), tmp_path / "compiled", progress=False)
    losses = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("eager", "compiled")]
    assert losses[0]["best"]["val_loss"] == pytest.approx(losses[1]["best"]["val_loss"], rel=1e-4)
    rows = [(tmp_path / name / "history.csv").read_text().splitlines()[1].split(",")[1] for name in ("eager", "compiled")]
    assert float(rows[0]) == pytest.approx(float(rows[1]), rel=1e-4)  # train_loss of epoch 1
    assert eager["finished"] and compiled["finished"]


def test_a_tune_trial_budget_gets_the_budget_schedule_and_its_stop_rule():
    """``pcamlab tune --trial-minutes T``: each trial's schedule decays over its T minutes, like a budget recipe."""
    from types import SimpleNamespace

    from pcamlab.config import config_to_dict
    from pcamlab.train.early_stopping import BudgetStopRule
    from pcamlab.tune.study import _trial_config

    class OnePoint:  # a search space of one point: the base config
        def sample(self, trial):
            return {}

        def apply(self, base, sampled):
            return json.loads(json.dumps(base))

    def trial_config(minutes, *overrides):
        base = config_to_dict(load_config("configs/tune/base-quick.yaml", list(overrides)))
        job = SimpleNamespace(task=OnePoint(), base=base, settings=SimpleNamespace(trial_minutes=minutes), threads=0)
        return _trial_config(job, trial=None)[0]

    timed = trial_config(2)
    assert timed.train.time_budget_minutes == 2 and timed.train.schedule_over == "budget"
    assert BudgetStopRule.from_config(timed).lr_fraction == 0.1
    assert trial_config(0).train.schedule_over == "epochs"  # no trial budget: the base's own schedule
    assert trial_config(2, "train.scheduler=step").train.schedule_over == "epochs"  # step cannot span a budget
