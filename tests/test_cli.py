"""The command line end to end: train a few steps, evaluate, reload, and fail cleanly on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import shutil
from pathlib import Path

from fixtures_data import sample_patches, write_bad_image, write_folders

from pcamlab.cli.main import main


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    images, labels = sample_patches(24, split="train", seed=3)
    valid_images, valid_labels = sample_patches(12, split="valid", seed=4)
    return write_folders(tmp_path_factory.mktemp("folders"), {"train": (images, labels), "valid": (valid_images, valid_labels)})


def test_help_lists_every_command_fast():
    from pcamlab.cli.main import COMMAND_MODULES

    result = subprocess.run([sys.executable, "-m", "pcamlab", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    commands = [name.rsplit(".", 1)[1] for name in COMMAND_MODULES]
    assert {"demo", "train", "evaluate", "predict", "export", "data", "explain", "bench"} <= set(commands)
    for command in commands:
        assert f"    {command} " in result.stdout, command
    # --help must not import torch (it stays fast)
    probe = "import sys, pcamlab.cli.main as m; m.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_every_command_and_subcommand_has_working_help(capsys):
    import argparse

    from pcamlab.cli.main import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        paths = [[name]]
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                paths += [[name, sub] for sub in action.choices]
        for path in paths:
            with pytest.raises(SystemExit) as exit_info:
                parser.parse_args([*path, "--help"])
            assert exit_info.value.code == 0, path
            assert "usage: pcamlab " + " ".join(path) in capsys.readouterr().out


def test_a_command_module_that_fails_to_import_is_an_error(monkeypatch):
    import pcamlab.cli.main as cli_main

    monkeypatch.setattr(cli_main, "COMMAND_MODULES", [*cli_main.COMMAND_MODULES, "pcamlab.cli.no_such_command"])
    with pytest.raises(ImportError, match="command module 'pcamlab.cli.no_such_command' cannot be imported"):
        cli_main.build_parser()


def test_train_then_evaluate_reproduces_the_validation_auc(tiny_folders, tmp_path, capsys):
    run = tmp_path / "run"
    code = main([
        "train", "--data", str(tiny_folders), "--out", str(run), "--no-progress",
        "--set", "model.name=baseline", "--set", "model.options={filters: [8, 16], dense_units: 16}",
        "--set", "train.epochs=2", "--set", "train.batch_size=8",
    ])
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert "epoch   2" in capsys.readouterr().out

    code = main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders), "--split", "valid"])
    assert code == 0
    metrics = json.loads((run / "eval-valid" / "metrics.json").read_text())
    assert metrics["roc_auc"] == pytest.approx(summary["best"]["val_auc"], abs=1e-6)
    assert metrics["n"] == 12
    for name in ("roc.png", "confusion_matrix.png", "pr.png", "predictions.csv"):
        assert (run / "eval-valid" / name).stat().st_size > 0
    assert "ROC AUC" in capsys.readouterr().out

    # a second evaluation into the same folder is refused, not silently overwritten
    assert main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders)]) == 2
    assert "already exists" in capsys.readouterr().err


TINY_TRAIN = ["--no-progress", "--set", "model.name=baseline", "--set", "model.options={filters: [8, 16], dense_units: 16}",
              "--set", "train.epochs=1", "--set", "train.batch_size=8"]


@pytest.fixture(scope="module")
def relative_run(tiny_folders, tmp_path_factory):
    """A run trained with ``--data dm`` (a path relative to the working folder); returns (run, data)."""
    import os

    base = tmp_path_factory.mktemp("relative")
    shutil.copytree(tiny_folders, base / "dm")
    before = os.getcwd()
    os.chdir(base)
    try:
        assert main(["train", "--data", "dm", "--out", "run", *TINY_TRAIN]) == 0
    finally:
        os.chdir(before)
    return base / "run", base / "dm"


def test_a_runs_other_checkpoints_get_their_own_evaluation_folders(relative_run, tiny_folders, capsys):
    """best.safetensors -> <run>/eval-valid; last.safetensors beside it -> <run>/last-eval-valid, never the same."""
    run, _ = relative_run
    for name, folder in (("best", "eval-valid"), ("last", "last-eval-valid")):
        assert main(["evaluate", str(run / f"{name}.safetensors"), "--data", str(tiny_folders)]) == 0
        assert (run / folder / "metrics.json").is_file(), folder
    assert json.loads((run / "last-eval-valid" / "metrics.json").read_text())["checkpoint"].endswith("last.safetensors")
    capsys.readouterr()


def test_models_outside_a_run_folder_get_their_own_evaluation_folder(relative_run, tiny_folders, tmp_path, capsys):
    run, _ = relative_run
    for name in ("m", "q"):  # two model files side by side (as /tmp/m.onnx and /tmp/q.onnx)
        shutil.copy(run / "best.safetensors", tmp_path / f"{name}.safetensors")
        assert main(["evaluate", str(tmp_path / f"{name}.safetensors"), "--data", str(tiny_folders)]) == 0
        assert (tmp_path / f"{name}-eval-valid" / "metrics.json").is_file()
    assert not (tmp_path / "eval-valid").exists()
    capsys.readouterr()
    # the same model again is refused, in the command line's words
    assert main(["evaluate", str(tmp_path / "m.safetensors"), "--data", str(tiny_folders)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err and "force=True" not in err
    # a bad model file is said as such, before any complaint about the output folder
    (tmp_path / "m.py").write_text("print('not a model')\n")
    (tmp_path / "broken.safetensors").write_bytes((run / "best.safetensors").read_bytes()[:100])
    for bad in ("m.py", "broken.safetensors"):
        assert main(["evaluate", str(tmp_path / bad), "--data", str(tiny_folders),
                     "--out", str(tmp_path / "m-eval-valid")]) == 2
        err = capsys.readouterr().err
        assert "already exists" not in err and bad in err, err


def test_a_run_trained_on_a_relative_data_path_evaluates_from_another_folder(relative_run, tmp_path, monkeypatch, capsys):
    import yaml

    run, data = relative_run
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["path"] == str(data)  # stored absolute
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", str(run / "best.safetensors"), "--out", str(tmp_path / "a")]) == 0
    assert f"split 'valid' of {data}" in capsys.readouterr().out
    moved = data.with_name("dm-moved")
    data.rename(moved)
    try:
        assert main(["evaluate", str(run / "best.safetensors"), "--out", str(tmp_path / "b")]) == 2
        err = capsys.readouterr().err
        assert "stored in checkpoint" in err and "pass --data" in err and err.count("\n") == 1, err
        assert main(["evaluate", str(run / "best.safetensors"), "--data", str(moved), "--out", str(tmp_path / "b")]) == 0
        capsys.readouterr()
        # explain reopens the run's data the same way, and says the same
        assert main(["explain", str(run / "best.safetensors"), "--n", "8", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert "stored in checkpoint" in err and "pass --data" in err and err.count("\n") == 1, err
        assert not (tmp_path / "x").exists()
    finally:
        moved.rename(data)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--data", "/no/such/folder", "--out", "{tmp}/r"], "does not exist"),
        (["train", "--data", "sample", "--out", "{tmp}/r", "--set", "train.optimiser=sgd"], "did you mean 'optimizer'"),
        (["train", "--data", "sample", "--out", "{tmp}/r", "--set", "model.name=resnet19"], "model.name must be one of"),
        (["evaluate", "{tmp}/missing.safetensors", "--data", "sample"], "does not exist"),
        (["train", "--data", "sample", "--out", "{tmp}/file.txt"], "a file stands where a folder"),
        (["data", "info", "sample", "--out", "{tmp}/file.txt"], "not a folder pcamlab can use"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("mine\n")  # an --out naming an existing file (NotADirectory/FileExists)
    code = main([part.replace("{tmp}", str(tmp_path)) for part in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("pcamlab: error: ")


def test_skip_bad_trains_past_an_unreadable_file_and_reports_it(tiny_folders, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_folders, data)
    bad = write_bad_image(data / "train" / "1" / "zz_broken.png", "truncated")
    common = ["train", "--data", str(data), "--no-progress", "--set", "model.name=baseline",
              "--set", "model.options={filters: [8, 16], dense_units: 16}", "--set", "train.epochs=1",
              "--set", "train.batch_size=8"]
    assert main([*common, "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    assert bad.name in err and err.count("\n") == 1
    assert main([*common, "--out", str(tmp_path / "lenient"), "--skip-bad"]) == 0
    assert "1 unreadable files skipped" in capsys.readouterr().out
    assert json.loads((tmp_path / "lenient" / "summary.json").read_text())["data"]["skipped_files"] == 1


def test_demo_writes_every_promised_file(tmp_path, capsys, monkeypatch):
    """The main job end to end, shortened: train a few steps, evaluate, explain, report."""
    monkeypatch.chdir(tmp_path)
    short = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=3", "--set", "model.options={width: 8}"]
    assert main(["demo", "--no-progress", *short]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "demo"
    for name in ("metrics.json", "roc.png", "confusion_matrix.png", "explain-valid/first_layer_filters.png",
                 "best.safetensors", "report.html", "training_curves.png", "explain-valid"):
        assert (run / name).exists(), name
        assert name in out  # the summary says where each file is
    assert "ROC AUC" in out and json.loads((run / "metrics.json").read_text())["n"] == 200
    # a second demo never overwrites the first
    assert main(["demo", "--no-progress", *short]) == 0
    assert (tmp_path / "runs" / "demo-2" / "metrics.json").is_file()


def test_unusable_output_or_run_folders_are_usage_errors_exit_2(tiny_folders, tmp_path, capsys):
    """Issue 9 2.10: an existing output, a run with nothing to resume, a missing run folder: 2, not 1."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("a finished run lives here")
    cases = [
        (["train", "--data", str(tiny_folders), "--out", str(taken)], "already holds a run"),
        (["train", "--data", str(tiny_folders), "--out", str(tmp_path / "empty"), "--resume"], "nothing to resume"),
        (["train", "--data", str(tiny_folders), "--out", str(taken), "--final"], "already holds a run"),
        (["report", str(tmp_path / "no-such-run")], "does not exist"),
        (["data", "convert", str(tiny_folders), str(taken), "--to", "h5"], "already exists"),
    ]
    (tmp_path / "empty").mkdir()
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert message in err and err.count("\n") == 1, (argv, err)


def test_threshold_dependent_numbers_say_their_threshold_and_where_it_was_chosen(tiny_folders, tmp_path, capsys):
    """Issue 9 2.9: accuracy & co. at a threshold chosen on the same split are labelled optimistic."""
    run = tmp_path / "run"
    assert main([
        "train", "--data", str(tiny_folders), "--out", str(run), "--no-progress",
        "--set", "model.name=baseline", "--set", "model.options={filters: [8, 16], dense_units: 16}",
        "--set", "train.epochs=1", "--set", "train.batch_size=8", "--set", "evaluate.threshold_method=youden",
    ]) == 0
    log = capsys.readouterr().out
    assert "val_acc@0.5 " in log and "val_acc " not in log  # the training log's accuracy says it is at 0.5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["threshold_chosen_on"]["split"] == "valid" and summary["val_accuracy_threshold"] == 0.5

    assert main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders), "--split", "valid"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((run / "eval-valid" / "metrics.json").read_text())
    origin = metrics["threshold_origin"]
    threshold = f"{metrics['threshold']:.3f}"
    assert origin["source"] == "youden" and origin["optimistic"] is True
    assert origin["label"] == (f"{threshold} (youden, chosen on validation split 'valid' during training; "
                               "measured on that same split: optimistic)")
    assert {"accuracy", "recall", "specificity", "precision", "f1", "tp"} <= set(origin["applies_to"])
    assert f"threshold    {threshold}  (youden, chosen on validation split 'valid'" in printed
    for name in ("accuracy", "precision", "recall", "specificity", "F1", "confusion"):
        line = next(line for line in printed.splitlines() if line.startswith(name))
        assert line.endswith(f"at {threshold}"), line

    assert main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders), "--split", "train"]) == 0
    other = json.loads((run / "eval-train" / "metrics.json").read_text())["threshold_origin"]
    assert other["optimistic"] is False and "optimistic" not in other["label"]
    assert main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders), "--threshold", "0.3",
                 "--out", str(tmp_path / "given")]) == 0
    given = json.loads((tmp_path / "given" / "metrics.json").read_text())["threshold_origin"]
    assert given["label"] == "0.300 (given by the caller)"
    capsys.readouterr()

    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    assert f"Threshold: {threshold} (youden, chosen on validation split" in html  # the glance (first metrics file)
    assert "measured on that same split: optimistic" in html  # eval-valid's threshold-dependent rows say so
    assert f"Accuracy at {metrics['threshold']:.2f}" in html


def test_readme_run_folder_table_lists_what_train_writes(tiny_folders, tmp_path):
    """Issue 9 2.10: the README's run-folder table listed files `train` alone never writes."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("| file | what it is | written by |", 1)[1].split("\n\n", 1)[0]
    promised = set()
    for row in table.splitlines()[2:]:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if cells[-1] == "`train`":
            promised |= {name.rstrip("/") for name in re.findall(r"`([^`]+)`", cells[0])}
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folders), "--out", str(run), "--no-progress",
                 "--set", "model.name=baseline", "--set", "model.options={filters: [4, 8], dense_units: 8}",
                 "--set", "train.epochs=1", "--set", "train.batch_size=8"]) == 0
    assert promised == {path.name for path in run.iterdir()}
def test_the_demo_run_folder_is_chosen_by_the_library(tmp_path, monkeypatch, capsys):
    from pcamlab.demo import demo_run_dir
    from pcamlab.errors import RunError

    monkeypatch.chdir(tmp_path)
    assert str(demo_run_dir()) == "runs/demo"
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "history.csv").write_text("epoch\n")
    assert str(demo_run_dir()) == "runs/demo-2"
    with pytest.raises(RunError, match="already holds a run; choose another out_dir") as error:
        demo_run_dir("runs/demo")
    assert error.value.parameters == ("out_dir",)
    assert main(["demo", "--out", "runs/demo"]) != 0
    assert "already holds a run; choose another --out" in capsys.readouterr().err  # the CLI names its flag


def test_sigterm_stops_a_command_like_ctrl_c_so_its_cleanup_runs(tmp_path):
    """timeout, Slurm and docker stop send SIGTERM: finally blocks (temporary files) must run, exit 143."""
    import signal
    import time

    marker = tmp_path / "marker"
    code = (
        "import sys, time\n"
        "import pcamlab.cli.export as export\n"
        "from pcamlab.cli.main import main\n"
        "def slow(args):\n"
        "    open(sys.argv[1], 'w').write('started')\n"
        "    try:\n"
        "        time.sleep(60)\n"
        "    finally:\n"
        "        open(sys.argv[1], 'a').write(' cleaned')\n"
        "export.run = slow\n"
        "sys.exit(main(['export', 'x.safetensors']))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code, str(marker)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and marker.read_text().startswith("started")) and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 143 and marker.read_text() == "started cleaned"
    assert "pcamlab: terminated (SIGTERM)" in stderr


def test_an_error_raised_while_cleaning_up_after_a_stop_exits_as_the_stop(capsys):
    """A SIGINT landing inside an import leaves a half-initialised module; cleanup code that imports it again fails
    (seen: ImportError from torch._inductor in the training loop's restore of torch settings). The command was
    stopped: it exits 130/143 with one line, not 1 with a traceback."""
    import signal

    from pcamlab import stopping
    from pcamlab.cli import main as cli

    def stopped_then_cleanup_fails(args):
        try:
            raise stopping.Stopped(signal.SIGTERM)
        finally:
            raise ImportError("cannot import name 'IndentedBuffer' from partially initialized module")

    parser = cli.build_parser()
    args = parser.parse_args(["models"])
    args.func = stopped_then_cleanup_fails
    assert cli._dispatch(parser, args) == 143
    err = capsys.readouterr().err
    assert "while stopping: ImportError" in err and "terminated (SIGTERM)" in err and "Traceback" not in err


def test_evaluate_follows_the_recipes_tta_unless_told(tiny_folders, tmp_path, capsys):
    """A recipe with evaluate.tta (configs/default.yaml) is evaluated with 8-view TTA by default; --no-tta and --tta win."""
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_folders), "--out", str(run), *TINY_TRAIN, "--set", "evaluate.tta=true"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders)]) == 0
    printed = capsys.readouterr().out
    recipe = json.loads((run / "eval-valid-tta" / "metrics.json").read_text())
    assert recipe["tta"] is True and "with 8-view TTA (the recipe's evaluate.tta" in printed
    assert recipe["tta_effect"]["roc_auc_with_tta"] == pytest.approx(recipe["roc_auc"], abs=1e-9)
    assert main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders), "--no-tta"]) == 0
    assert "without TTA (--no-tta overrides the recipe's evaluate.tta" in capsys.readouterr().out
    plain = json.loads((run / "eval-valid" / "metrics.json").read_text())
    assert plain["recipe_tta"] is True and plain["tta"] is False and plain["roc_auc"] == pytest.approx(recipe["tta_effect"]["roc_auc_without_tta"], abs=1e-9)
    assert main(["evaluate", str(run / "best.safetensors"), "--data", str(tiny_folders), "--tta", "--out",
                 str(tmp_path / "asked")]) == 0
    assert "with 8-view TTA (--tta)" in capsys.readouterr().out
    plain_run = tmp_path / "plain-run"  # a recipe without TTA: the first line says the recipe decided
    assert main(["train", "--data", str(tiny_folders), "--out", str(plain_run), *TINY_TRAIN, "--set", "evaluate.tta=false"]) == 0
    assert "no --config, so pcamlab's built-in field defaults" in capsys.readouterr().out  # and the train said so
    assert main(["evaluate", str(plain_run / "best.safetensors"), "--data", str(tiny_folders)]) == 0
    assert "without TTA (the recipe's evaluate.tta is off" in capsys.readouterr().out
    with pytest.raises(SystemExit) as both:  # one or the other, refused by argparse in one line
        main(["evaluate", str(run / "best.safetensors"), "--tta", "--no-tta"])
    assert both.value.code == 2
    assert "not allowed with argument --tta" in capsys.readouterr().err
