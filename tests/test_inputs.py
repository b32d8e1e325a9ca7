"""The inputs people really have (issue 10): every bad input gets one line and exit code 2, nothing silent.

Each section is one kind of input from the issue, with the siblings found for it. The patches are real
(the sample shipped in the package, through ``fixtures_data``); commands run through ``pcamlab.cli.main``
in this process, so each test checks the exit code and the exact one line a person sees.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_data import kaggle_id, sample_files, tiny_splits, write_bad_image, write_folders, write_h5, write_kaggle

from pcamlab.cli.main import main
from pcamlab.config import ModelConfig, RunConfig, config_from_dict, config_to_dict, load_config
from pcamlab.config_ranges import RANGES, check_field
from pcamlab.data import BadImageError, open_split
from pcamlab.errors import ConfigError

H5_NAME = "camelyonpatch_level_2_split_{split}_{kind}.h5"
MEAN, STD = [0.70, 0.54, 0.69], [0.24, 0.28, 0.22]
TINY_TRAIN = [
    "--set", "model.name=baseline", "--set", "model.options={filters: [4, 8], dense_units: 8}",
    "--set", "train.batch_size=8", "--set", "train.epochs=1", "--set", "train.precision=fp32",
    "--set", "train.channels_last=false", "--no-progress",
]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``pcamlab ARGV`` run in this process."""
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(capsys, *argv) -> str:
    """Run a command that must fail with exit 2 and one line; return that line."""
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, f"exit {code}; stdout {out!r}; stderr {err!r}"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcamlab: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory) -> Path:
    """An untrained course baseline with a real contract: enough to run predict/evaluate/explain."""
    from pcamlab.models import build_model
    from pcamlab.runtime import InputContract, save_checkpoint

    config = RunConfig(model=ModelConfig(name="baseline", options={"filters": [4, 8], "dense_units": 8}))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(config.model).eval()
    path = tmp_path_factory.mktemp("checkpoint") / "best.safetensors"
    return save_checkpoint(path, model, config, InputContract(mean=MEAN, std=STD, threshold=0.5), {"epoch": 1})


@pytest.fixture(scope="module")
def small():
    return tiny_splits(train=8, valid=4)


def strict_json(path: Path):
    """Parse JSON the way browsers and jq do: a bare NaN or Infinity fails."""
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)


# ----------------------------------------------------------------------------------------------
# 1. Finding nothing is not success: no command succeeds on zero images.


@pytest.fixture()
def gzipped_only(tmp_path, small):
    """The official downloads never gunzipped: camelyonpatch_level_2_split_*_{x,y}.h5.gz only."""
    source = write_h5(tmp_path / "h5", small)
    root = tmp_path / "downloads"
    root.mkdir()
    for path in source.iterdir():
        with open(path, "rb") as raw, gzip.open(root / f"{path.name}.gz", "wb") as packed:
            shutil.copyfileobj(raw, packed)
    return root


def test_compressed_downloads_fail_every_command(capsys, tmp_path, gzipped_only, checkpoint_path):
    commands = [
        ["data", "info", gzipped_only],
        ["data", "info", gzipped_only, "--out", tmp_path / "info"],
        ["data", "convert", gzipped_only, tmp_path / "converted", "--to", "folders"],
        ["data", "convert", gzipped_only, tmp_path / "converted", "--to", "kaggle"],
        ["train", "--data", gzipped_only, "--out", tmp_path / "run", *TINY_TRAIN],
        ["evaluate", checkpoint_path, "--data", gzipped_only, "--out", tmp_path / "eval"],
        ["explain", checkpoint_path, "--data", gzipped_only, "--out", tmp_path / "explain"],
    ]
    for argv in commands:
        line = one_line_error(capsys, *argv)
        assert "gzip-compressed" in line and "gunzip" in line, (argv, line)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["downloads", "h5"]  # nothing half-written


def test_half_decompressed_pair_names_the_missing_file(capsys, tmp_path, small):
    root = write_h5(tmp_path / "h5", {"train": small["train"]})
    (root / H5_NAME.format(split="train", kind="y")).unlink()
    for argv in (["data", "info", root], ["data", "convert", root, tmp_path / "out", "--to", "h5"]):
        line = one_line_error(capsys, *argv)
        assert "camelyonpatch_level_2_split_train_y.h5' is missing" in line
    assert not (tmp_path / "out").exists()


def test_unpacked_archives_are_named(capsys, tmp_path):
    (tmp_path / "train_labels.csv").write_text("id,label\n")
    (tmp_path / "train.zip").write_bytes(b"PK\x03\x04")  # what the Kaggle download holds before unzip
    line = one_line_error(capsys, "data", "info", tmp_path)
    assert "train.zip" in line and "never unpacked" in line and f"unzip {tmp_path / 'train.zip'}" in line


def _all_unreadable(tmp_path: Path) -> Path:
    root = tmp_path / "broken"
    for split in ("train", "valid"):
        for label in (0, 1):
            for index in range(2):
                write_bad_image(root / split / str(label) / f"{index}.png", "truncated")
    return root


def test_skip_bad_on_nothing_readable_is_not_success(capsys, tmp_path, checkpoint_path):
    root = _all_unreadable(tmp_path)
    line = one_line_error(capsys, "data", "info", root, "--skip-bad")
    assert "no readable image" in line and "0.png" in line
    line = one_line_error(capsys, "data", "convert", root, tmp_path / "converted", "--to", "h5", "--skip-bad")
    assert "no readable image" in line and not (tmp_path / "converted").exists()
    assert not any(path.name.startswith("converted") for path in tmp_path.iterdir())  # no temporary left
    line = one_line_error(capsys, "train", "--data", root, "--out", tmp_path / "run", "--skip-bad", *TINY_TRAIN)
    assert "no readable training patch" in line
    line = one_line_error(capsys, "predict", checkpoint_path, root, "--out", tmp_path / "p.csv", "--skip-bad")
    assert "no usable patch" in line and not (tmp_path / "p.csv").exists()


def test_streaming_training_on_nothing_readable_is_not_success(capsys, tmp_path):
    root = _all_unreadable(tmp_path)
    line = one_line_error(capsys, "train", "--data", root, "--out", tmp_path / "run", "--skip-bad",
                          "--set", "data.cache=stream", *TINY_TRAIN, "--set", "train.batch_size=2")
    assert "none of the" in line and "readable" in line and "0.png" in line


def test_converting_only_unlabeled_splits_writes_nothing(capsys, tmp_path, small):
    images, labels = small["train"]
    root = write_kaggle(tmp_path / "kaggle", images, labels, test_images=small["valid"][0])
    line = one_line_error(capsys, "data", "convert", root, tmp_path / "out", "--to", "h5", "--splits", "test")
    assert "nothing to convert" in line and "unlabeled" in line and not (tmp_path / "out").exists()


def test_compare_and_report_refuse_a_folder_without_a_run(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    line = one_line_error(capsys, "compare", tmp_path / "empty")
    assert "is not a run folder" in line
    line = one_line_error(capsys, "report", tmp_path / "empty")
    assert "is not a run folder" in line and not (tmp_path / "empty" / "report.html").exists()


# ----------------------------------------------------------------------------------------------
# 2. Label files the way notebooks and spreadsheets write them.


@pytest.fixture()
def kaggle_root(tmp_path, small):
    images = np.concatenate([small["train"][0], small["valid"][0]])
    labels = np.concatenate([small["train"][1], small["valid"][1]])
    root = write_kaggle(tmp_path / "kaggle", images, labels)
    ids = [kaggle_id(image) for image in images]
    return root, ids, labels


def _read_all(root: Path) -> dict[str, int]:
    """Every file name of the Kaggle train and valid splits with its label."""
    found = {}
    for split in ("train", "valid"):
        reader = open_split(root, split, valid_fraction=0.25)
        found.update({Path(reader.name(index)).stem: int(label) for index, label in enumerate(reader.labels)})
    return found


DIALECTS = {  # name: (how to write the CSV from ids and labels, what the note says)
    "tif-suffix": (lambda ids, labels: "id,label\n" + "".join(f"{i}.tif,{y}\n" for i, y in zip(ids, labels)),
                   "ids carry the file suffix"),
    "folder-prefix": (lambda ids, labels: "id,label\n" + "".join(f"train/{i}.tif,{y}\n" for i, y in zip(ids, labels)),
                      "ids carry a folder"),
    "excel-bom": (lambda ids, labels: "\ufeffid,label\r\n" + "".join(f"{i},{y}\r\n" for i, y in zip(ids, labels)),
                  "byte-order mark"),
    "semicolons": (lambda ids, labels: "id;label\n" + "".join(f"{i};{y}\n" for i, y in zip(ids, labels)),
                   "separated by semicolons"),
    "excel-sep-line": (lambda ids, labels: "sep=;\nid;label\n" + "".join(f"{i};{y}\n" for i, y in zip(ids, labels)),
                       "'sep=;' line"),
    "pandas-index": (lambda ids, labels: ",id,label\n" + "".join(f"{n},{i},{y}\n" for n, (i, y) in enumerate(zip(ids, labels))),
                     "unnamed index column"),
    "label-first": (lambda ids, labels: "label,id\n" + "".join(f"{y},{i}\n" for i, y in zip(ids, labels)),
                    "label before id"),
    "float-labels": (lambda ids, labels: "id,label\n" + "".join(f"{i},{float(y)}\n" for i, y in zip(ids, labels)),
                     "labels are written as floats"),
    "quoted": (lambda ids, labels: '"id","label"\n' + "".join(f'"{i}","{y}"\n' for i, y in zip(ids, labels)), None),
}


@pytest.mark.parametrize("dialect", list(DIALECTS))
def test_unambiguous_csv_dialects_are_read_and_said(capsys, kaggle_root, dialect):
    root, ids, labels = kaggle_root
    write, note = DIALECTS[dialect]
    (root / "train_labels.csv").write_bytes(write(ids, labels).encode("utf-8"))
    assert _read_all(root) == dict(zip(ids, labels.tolist()))
    code, out, err = run_cli(capsys, "data", "info", root, "--valid-fraction", "0.25")
    assert code == 0 and err == ""
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    if note is None:
        assert notes == []
    else:
        assert any(note in line for line in notes), out


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"PK\x03\x04 workbook bytes", "is an Excel workbook, not CSV text; save it as 'CSV UTF-8"),
        ("id,label\ncaf\xe9,1\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 on line 2)"),
        (b"{first},1\n{second},0\n", "line 1 is ["),
        (b"id,label\n{first},1\n{first},0\n", "line 3 gives id"),
        (b"id,label\n{first},yes\n", "label 'yes'; labels must be 0 or 1"),
        (b"id,label\n{first} copy,1\n", "ids are file names of train/*.tif"),
        (b"id,label\n" + b"".join(b"%d,1\n" % n for n in range(12)), "none of the 12 ids in"),
    ],
)
def test_ambiguous_or_broken_csv_says_exactly_what_is_wrong(capsys, kaggle_root, body, expected):
    root, ids, _ = kaggle_root
    (root / "train_labels.csv").write_bytes(body.replace(b"{first}", ids[0].encode()).replace(b"{second}", ids[1].encode()))
    line = one_line_error(capsys, "data", "info", root)
    assert "train_labels.csv" in line and expected in line


# ----------------------------------------------------------------------------------------------
# 3. File names that are not UTF-8 (Latin-1 bytes from an archive made on another system).

LATIN1 = os.fsdecode(b"tumeur_\xe9t\xe9")  # what Python makes of the bytes: lone surrogates
SHOWN = "tumeur_\\xe9t\\xe9"  # how pcamlab writes the name: the bytes as visible escapes


@pytest.fixture()
def latin1_folders(tmp_path):
    files, labels = sample_files(8, "valid", seed=4)
    root = tmp_path / "patches"
    for index, (path, label) in enumerate(zip(files, labels)):
        folder = root / "valid" / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{LATIN1}_{index}.jpg" if index % 2 == 0 else path.name
        shutil.copyfile(path, folder / name)
    return root


def test_predict_writes_non_utf8_names(capsys, tmp_path, latin1_folders, checkpoint_path):
    out = tmp_path / "predictions.csv"
    code, stdout, err = run_cli(capsys, "predict", checkpoint_path, latin1_folders, "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(out.open(encoding="utf-8")))  # valid UTF-8 throughout
    assert len(rows) == 8
    assert sum(SHOWN in row["patch"] for row in rows) == 4


def test_evaluate_info_and_report_write_non_utf8_names(capsys, tmp_path, latin1_folders, checkpoint_path):
    out = tmp_path / "eval"
    code, stdout, err = run_cli(capsys, "evaluate", checkpoint_path, "--data", latin1_folders, "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader((out / "predictions.csv").open(encoding="utf-8")))
    assert len(rows) == 8 and sum(SHOWN in row["patch"] for row in rows) == 4
    strict_json(out / "metrics.json")
    code, stdout, err = run_cli(capsys, "report", out)
    assert code == 0, err
    (out / "report.html").read_text(encoding="utf-8")
    code, stdout, err = run_cli(capsys, "data", "info", latin1_folders, "--out", tmp_path / "info")
    assert code == 0, err
    strict_json(tmp_path / "info" / "info.json")


def test_non_utf8_dataset_root_in_every_run_file(capsys, tmp_path, small):
    root = write_folders(tmp_path / os.fsdecode(b"donn\xe9es"), small)
    code, stdout, err = run_cli(capsys, "train", "--data", root, "--out", tmp_path / "run", *TINY_TRAIN)
    assert code == 0, err
    summary = strict_json(tmp_path / "run" / "summary.json")
    assert "donn\\xe9es" in summary["data"]["root"]
    assert load_config(tmp_path / "run" / "config.yaml").data.path == str(root)  # config.yaml round-trips


def test_convert_to_kaggle_makes_ids_the_reader_accepts(capsys, tmp_path, latin1_folders):
    (latin1_folders / "train").symlink_to(latin1_folders / "valid")
    code, stdout, err = run_cli(capsys, "data", "convert", latin1_folders, tmp_path / "kaggle", "--to", "kaggle")
    assert code == 0, err
    assert sum(1 for _ in (tmp_path / "kaggle" / "train").iterdir()) == 16
    assert len(open_split(tmp_path / "kaggle", "train")) + len(open_split(tmp_path / "kaggle", "valid")) == 16


# ----------------------------------------------------------------------------------------------
# 5. --skip-bad means it everywhere.


@pytest.mark.parametrize("cache", ["ram", "stream"])
def test_train_skip_bad_with_the_first_training_file_unreadable(capsys, tmp_path, small, cache):
    root = write_folders(tmp_path / "data", small)
    first = sorted((root / "train" / "0").iterdir())[0]
    write_bad_image(first, "truncated", small["train"][0][0])
    code, out, err = run_cli(capsys, "train", "--data", root, "--out", tmp_path / "run", "--skip-bad",
                             "--set", f"data.cache={cache}", *TINY_TRAIN, "--set", "train.batch_size=4")
    assert code == 0, err
    assert strict_json(tmp_path / "run" / "summary.json")["data"]["skipped_files"] == 1
    line = one_line_error(capsys, "train", "--data", root, "--out", tmp_path / "again",
                          "--set", f"data.cache={cache}", *TINY_TRAIN)
    assert first.name in line and "skip_bad" in line


def test_data_info_pictures_skip_bad_files(capsys, tmp_path, small):
    root = write_folders(tmp_path / "data", small)
    for path in sorted((root / "train" / "1").iterdir())[:2]:
        write_bad_image(path, "not-image")
    code, out, err = run_cli(capsys, "data", "info", root, "--out", tmp_path / "info", "--augment", "--skip-bad",
                             "--per-class", "4")
    assert code == 0, err
    assert (tmp_path / "info" / "contact_train.png").is_file() and (tmp_path / "info" / "augment.png").is_file()
    assert strict_json(tmp_path / "info" / "info.json")["splits"]["train"]["skipped"] == 2


def test_predict_skip_bad_covers_h5_files(capsys, tmp_path, small, checkpoint_path):
    folder = tmp_path / "inputs"
    write_h5(folder, {"valid": small["valid"]})
    broken = folder / "broken_x.h5"
    broken.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)  # an HDF5 signature and nothing else
    x_path = folder / H5_NAME.format(split="valid", kind="x")
    out = tmp_path / "p.csv"
    line = one_line_error(capsys, "predict", checkpoint_path, x_path, broken, "--out", out)
    assert "broken_x.h5" in line and not out.exists()
    code, stdout, err = run_cli(capsys, "predict", checkpoint_path, x_path, broken, "--out", out, "--skip-bad")
    assert code == 0, err
    assert len(list(csv.DictReader(out.open()))) == 4 and "skipped 1 unusable" in stdout and "broken_x.h5" in stdout


# ----------------------------------------------------------------------------------------------
# 6. A validation split with one class.


def test_one_class_validation_warns_monitors_loss_and_writes_valid_json(capsys, tmp_path, small):
    images, labels = small["valid"]
    root = write_folders(tmp_path / "data", {"train": small["train"], "valid": (images[labels == 0], labels[labels == 0])})
    code, out, err = run_cli(capsys, "train", "--data", root, "--out", tmp_path / "run", *TINY_TRAIN,
                             "--set", "train.epochs=2", "--set", "evaluate.threshold_method=youden")
    assert code == 0, err
    warning = next(line for line in out.splitlines() if line.startswith("warning:"))
    assert "holds only class 0" in warning and "monitoring val_loss" in warning and "threshold stays at" in warning
    assert out.index("warning:") < out.index("epoch   1")  # said at the start, not at the end
    summary = strict_json(tmp_path / "run" / "summary.json")
    assert summary["monitor"] == "val_loss" and summary["best"]["val_auc"] is None
    assert summary["threshold"] == 0.5 and summary["warnings"]
    assert Path(summary["checkpoints"]["best"]).is_file()
    assert f"best checkpoint: {summary['checkpoints']['best']}" in out


def test_one_class_training_split_cannot_train(capsys, tmp_path, small):
    images, labels = small["train"]
    root = write_folders(tmp_path / "data", {"train": (images[labels == 1], labels[labels == 1]), "valid": small["valid"]})
    line = one_line_error(capsys, "train", "--data", root, "--out", tmp_path / "run", *TINY_TRAIN)
    assert "holds only class 1" in line and "both classes" in line


# ----------------------------------------------------------------------------------------------
# 7. Out-of-range values: one declarative table, checked when a config is loaded.


def test_every_numeric_config_field_has_a_declared_range():
    import dataclasses
    import typing

    numeric = []
    for section in dataclasses.fields(RunConfig):
        if not dataclasses.is_dataclass(typing.get_type_hints(RunConfig)[section.name]):
            continue  # a top-level value (config_files), not a section
        for field in dataclasses.fields(section.type if isinstance(section.type, type) else typing.get_type_hints(RunConfig)[section.name]):
            annotation = typing.get_type_hints(typing.get_type_hints(RunConfig)[section.name])[field.name]
            if annotation in (int, float):
                numeric.append(f"{section.name}.{field.name}")
    assert sorted(numeric) == sorted(RANGES), set(numeric) ^ set(RANGES)
    defaults = RunConfig()
    for field in RANGES:  # every default lies in its own range
        section, name = field.split(".")
        check_field(field, getattr(getattr(defaults, section), name))


@pytest.mark.parametrize(
    "override, expected",
    [
        ("evaluate.threshold=50", "evaluate.threshold must be in [0, 1] (a probability, not a percentage); got 50.0 (a percentage? use 0.5)"),
        ("evaluate.target_sensitivity=95", "evaluate.target_sensitivity must be in (0, 1]"),
        ("train.learning_rate=0", "train.learning_rate must be in (0, 10]; got 0.0; use e.g. 1e-3"),
        ("train.learning_rate=-0.001", "train.learning_rate must be in (0, 10]"),
        ("train.label_smoothing=1", "train.label_smoothing must be in [0, 1)"),
        ("train.ema_decay=1.0", "train.ema_decay must be in [0, 1) (0 = off); got 1.0; use e.g. 0.999"),
        ("train.weight_decay=-1e-4", "train.weight_decay must be in [0, 1)"),
        ("train.warmup_epochs=-1", "train.warmup_epochs must be >= 0"),
        ("train.momentum=1.5", "train.momentum must be in [0, 1)"),
        ("train.epochs=0", "train.epochs must be >= 1"),
        ("train.batch_size=0", "train.batch_size must be >= 1"),
        ("train.gamma=0", "train.gamma must be in (0, 1]"),
        ("train.seed=-1", "train.seed must be in [0, 4294967295]"),
        ("data.valid_fraction=10", "data.valid_fraction must be in (0, 1) (a fraction of the labelled patches); got 10.0 (a percentage? use 0.1)"),
        ("data.num_workers=-2", "data.num_workers must be >= 0"),
        ("augment.blur=2", "augment.blur must be in [0, 1] (a probability)"),
        ("augment.hue=0.7", "augment.hue must be in [0, 0.5]"),
        ("evaluate.batch_size=0", "evaluate.batch_size must be >= 1"),
        ("train.learning_rate=.nan", "train.learning_rate must be in (0, 10]; got nan"),
    ],
)
def test_out_of_range_config_values_fail_at_load(capsys, tmp_path, override, expected):
    line = one_line_error(capsys, "train", "--data", "sample", "--out", tmp_path / "run", "--set", override)
    assert line == f"pcamlab: error: {expected}" or expected in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["train.schedule_over=budget"], "train.schedule_over=budget needs train.time_budget_minutes > 0"),
        (["data.valid_split=train"], "data.valid_split is the training split 'train'"),
        (["data.stain_normalization=macenko", "data.cache=stream"], "data.stain_normalization needs the decoded images in RAM"),
        (["train.scheduler=plateau", "train.patience=2", "train.plateau_patience=2"], "early stopping would end the run before"),
    ],
)
def test_combinations_that_cannot_train_fail_at_load(overrides, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, overrides)


def test_threshold_flags_share_the_table(capsys, tmp_path, checkpoint_path):
    line = one_line_error(capsys, "predict", checkpoint_path, "sample", "--threshold", "50", "--out", tmp_path / "p.csv")
    assert "threshold must be in [0, 1]" in line and "use 0.5" in line and not (tmp_path / "p.csv").exists()
    line = one_line_error(capsys, "evaluate", checkpoint_path, "--data", "sample", "--threshold", "50", "--out", tmp_path / "e")
    assert "threshold must be in [0, 1]" in line and not (tmp_path / "e").exists()
    line = one_line_error(capsys, "data", "info", "sample", "--valid-fraction", "1.5")
    assert "data.valid_fraction must be in (0, 1)" in line


def test_a_checkpoint_storing_a_percentage_threshold_is_named(capsys, tmp_path, checkpoint_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(checkpoint_path), framework="pt") as handle:
        header = handle.metadata()
    config = json.loads(header["config"])
    config["evaluate"]["threshold"] = 50
    contract = json.loads(header["contract"])
    contract["threshold"] = 50
    old = tmp_path / "old.safetensors"  # written by a pcamlab that accepted 50
    save_file(load_file(str(checkpoint_path)), str(old),
              metadata={**header, "config": json.dumps(config), "contract": json.dumps(contract)})
    line = one_line_error(capsys, "evaluate", old, "--data", "sample", "--out", tmp_path / "e")
    assert "old.safetensors" in line and "threshold must be" in line and "[0, 1]" in line and "got 50" in line


# ----------------------------------------------------------------------------------------------
# 8. Typed flags: a command-line value reaches the config as typed, never re-read as YAML.


@pytest.mark.parametrize("name", ["2024.10", "my data #1", "007", "true", "[a]", "null"])
def test_data_flag_keeps_its_text(capsys, tmp_path, name):
    folder = tmp_path / name
    line = one_line_error(capsys, "train", "--data", folder, "--out", tmp_path / "run")
    assert f"dataset root {str(folder)!r} does not exist" in line


def test_data_flag_reaches_the_config_as_typed(monkeypatch, tmp_path):
    import pcamlab.train.loop

    seen = {}

    def fake_train(config, out_dir, **options):
        seen["config"] = config
        return {"checkpoints": {"best": None}}

    monkeypatch.setattr(pcamlab.train.loop, "train", fake_train)
    assert main(["train", "--data", "2024.10", "--out", str(tmp_path / "run"), "--skip-bad"]) == 0
    # The path keeps its text (not the number 2024.1); train stores it absolute so the checkpoint can be
    # evaluated from another working folder.
    assert seen["config"].data.path == os.path.abspath("2024.10") and seen["config"].data.skip_bad is True
    assert main(["train", "--data", "my data #1", "--out", str(tmp_path / "run2")]) == 0
    assert seen["config"].data.path == os.path.abspath("my data #1")


def test_set_string_fields_keep_their_text_and_yaml_numbers_are_refused(tmp_path):
    assert load_config(None, ["data.path=2024.10"]).data.path == "2024.10"
    assert load_config(None, ["data.path=runs/a #1"]).data.path == "runs/a #1"
    assert load_config(None, ["data.path='quoted #2'"]).data.path == "quoted #2"
    assert load_config(None, ["train.epochs=3", "train.learning_rate=1e-3"]).train.learning_rate == 1e-3
    with pytest.raises(ConfigError, match="holds ' #', which YAML reads as the start of a comment"):
        load_config(None, ["train.epochs=3 #three"])
    file = tmp_path / "config.yaml"
    file.write_text("data:\n  path: 2024.10\n")
    with pytest.raises(ConfigError, match=r"data.path must be a string; got the number 2024.1 .*quote it, e.g. path: '2024.1'"):
        load_config(file)
    assert config_from_dict(config_to_dict(load_config(None, ["data.path=2024.10"]))).data.path == "2024.10"


# ----------------------------------------------------------------------------------------------
# 4. Bit depth and colour modes: scale by the real bit depth when the file says it, convert what is exact,
#    refuse what needs a choice; never a silent, nearly black patch.

READ = {  # kind, suffix: how far the decoded patch may be from the original 8-bit pixels
    ("16bit-rgb", ".tif"): 0,
    ("12bit-rgb-declared", ".tif"): 1,  # MaxSampleValue 4095
    ("16bit-png-rgb", ".png"): 0,
    ("12bit-png-rgb-sbit", ".png"): 1,  # sBIT 12
    ("rgba-opaque", ".png"): 0,
}
REFUSED = {
    ("12bit-rgb", ".tif"): "is 16-bit but its largest value is",
    ("12bit-png-rgb", ".png"): "it uses 12 bits",
    ("rgba", ".png"): "transparent pixels",
    ("la", ".png"): "grayscale with alpha",
    ("cmyk", ".jpg"): "is CMYK",
    ("cmyk", ".tif"): "is CMYK",
    ("16bit", ".png"): "16-bit grayscale",
    ("grayscale", ".tif"): "8-bit grayscale",
    ("float-rgb", ".tif"): "dtype float32",
}


@pytest.mark.parametrize("kind, suffix", list(READ))
def test_deep_and_convertible_images_are_read_at_their_real_depth(capsys, tmp_path, checkpoint_path, kind, suffix):
    from pcamlab.data.readers import decode_image_file

    original = tiny_splits(train=2, valid=2)["valid"][0][0]
    path = write_bad_image(tmp_path / "in" / f"patch{suffix}", kind, original)
    decoded = decode_image_file(path)
    assert decoded.dtype == np.uint8 and decoded.shape == (96, 96, 3)
    assert int(np.abs(decoded.astype(int) - original.astype(int)).max()) <= READ[(kind, suffix)]
    code, out, err = run_cli(capsys, "predict", checkpoint_path, path, "--out", tmp_path / "p.csv")
    assert code == 0 and err == "" and "1 patches" in out


def test_palette_images_are_converted_exactly(tmp_path):
    from PIL import Image

    from pcamlab.data.readers import decode_image_file

    path = write_bad_image(tmp_path / "palette.png", "palette", tiny_splits(train=2, valid=2)["valid"][0][0])
    assert np.array_equal(decode_image_file(path), np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("kind, suffix", list(REFUSED))
def test_images_that_need_a_choice_are_refused_with_the_fix(capsys, tmp_path, checkpoint_path, kind, suffix):
    original = tiny_splits(train=2, valid=2)["valid"][0][0]
    path = write_bad_image(tmp_path / "in" / f"patch{suffix}", kind, original)
    line = one_line_error(capsys, "predict", checkpoint_path, path, "--out", tmp_path / "p.csv")
    assert str(path) in line and REFUSED[(kind, suffix)] in line
    assert any(word in line for word in ("convert", "rescale", "flatten")), line
    assert not (tmp_path / "p.csv").exists()
    root = tmp_path / "data"  # the readers (and their header-only validate) say the same
    write_folders(root, tiny_splits(train=4, valid=2))
    bad = write_bad_image(root / "train" / "1" / f"zz{suffix}", kind, original)
    line = one_line_error(capsys, "data", "info", root)
    assert str(bad) in line and REFUSED[(kind, suffix)] in line
    reader = open_split(root, "train")
    with pytest.raises(BadImageError, match=REFUSED[(kind, suffix)].replace("(", r"\(")):
        reader.validate()


# ----------------------------------------------------------------------------------------------
# 9. Advice that can help: a locked HDF5 file is not a broken download, a web page is not a file.


def _hold_open(path: Path, *, crash: bool = False):
    """A second process that opens ``path`` for writing and keeps it (or dies holding it, ``crash``)."""
    import subprocess
    import sys

    code = (
        "import h5py, os, sys, time\n"
        f"f = h5py.File({str(path)!r}, 'a', libver='latest')\n"
        "print('ready', flush=True)\n"
        + ("os._exit(9)\n" if crash else "time.sleep(60)\n")
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    return process


def test_a_locked_h5_file_says_locked_and_how_to_proceed(capsys, tmp_path, small, checkpoint_path):
    root = write_h5(tmp_path / "h5", small)
    x_path = root / H5_NAME.format(split="valid", kind="x")
    process = _hold_open(x_path)
    try:
        for argv in (["data", "info", root], ["predict", checkpoint_path, x_path, "--out", tmp_path / "p.csv"]):
            line = one_line_error(capsys, *argv)
            assert "is locked by another process" in line and "HDF5_USE_FILE_LOCKING=FALSE" in line, line
            assert "download" not in line.split("locked")[0] and "again from" not in line
    finally:
        process.kill()
        process.wait()
    assert not (tmp_path / "p.csv").exists()


def test_an_h5_file_left_open_by_a_crashed_writer_says_h5clear(capsys, tmp_path, small):
    root = write_h5(tmp_path / "h5", small)
    y_path = root / H5_NAME.format(split="train", kind="y")
    import h5py

    with h5py.File(y_path, "r") as file:
        labels = file["y"][()]
    with h5py.File(y_path, "w", libver="latest") as file:  # the file format that records open writers
        file["y"] = labels
    _hold_open(y_path, crash=True).wait()
    line = one_line_error(capsys, "data", "info", root)
    assert "marked open for writing" in line and f"h5clear -s {y_path}" in line


@pytest.mark.parametrize(
    "content, expected",
    [
        (lambda good: b"<!DOCTYPE html><html><body>Sign in to Google Drive</body></html>", "is a web page, not HDF5"),
        (lambda good: gzip.compress(good), "holds gzip-compressed data"),
        (lambda good: good[: len(good) // 3], "is truncated ("),
        (lambda good: b"", "is empty (0 bytes)"),
        (lambda good: b"x,y\n1,2\n" * 20, "is not an HDF5 file (it starts with b'x,y"),
    ],
)
def test_h5_files_that_cannot_open_say_why(capsys, tmp_path, small, checkpoint_path, content, expected):
    root = write_h5(tmp_path / "h5", small)
    x_path = root / H5_NAME.format(split="valid", kind="x")
    x_path.write_bytes(content(x_path.read_bytes()))
    for argv in (["data", "info", root], ["predict", checkpoint_path, x_path, "--out", tmp_path / "p.csv"]):
        line = one_line_error(capsys, *argv)
        assert str(x_path) in line and expected in line, line
    assert not (tmp_path / "p.csv").exists()


def test_onnx_fallback_note_has_no_terminal_colour_codes(capsys, tmp_path, checkpoint_path, monkeypatch):
    real_export = torch.onnx.export

    def export(*args, dynamo=True, **options):
        if dynamo:  # what torch's dynamo exporter raises, colours included
            raise RuntimeError("Failed to export the model with torch.export. \x1b[96mThis is step 1/3\x1b[0m of exporting")
        return real_export(*args, dynamo=False, **options)

    monkeypatch.setattr(torch.onnx, "export", export)
    code, out, err = run_cli(capsys, "export", checkpoint_path, "--out", tmp_path / "model.onnx")
    assert code == 0, err
    note = next(line for line in out.splitlines() if line.startswith("note: the dynamo exporter failed"))
    assert "\x1b" not in out + err and "This is step 1/3 of exporting" in note


def test_a_full_disk_is_one_line_not_a_traceback(capsys, tmp_path, checkpoint_path, monkeypatch):
    import errno

    import pcamlab.deploy.predict

    def full(out, force):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr(pcamlab.deploy.predict, "_open_output", full)
    code, out, err = run_cli(capsys, "predict", checkpoint_path, sample_files(2)[0][0], "--out", tmp_path / "p.csv")
    assert code == 1 and err.count("\n") == 1 and "the disk is full" in err and "p.csv" in err, err


# Siblings of case 2 and 3 found later: the Kaggle submission template as Excel saves it, and run folders
# with names that are not UTF-8 in compare's CSV.


def test_submission_template_with_a_byte_order_mark_is_read(capsys, tmp_path, small, checkpoint_path):
    images = small["valid"][0]
    root = write_kaggle(tmp_path / "kaggle", small["train"][0], small["train"][1], test_images=images)
    ids = [kaggle_id(image) for image in images]
    template = tmp_path / "sample_submission.csv"
    template.write_bytes(("\ufeffId,Label\r\n" + "".join(f"{i},0\r\n" for i in reversed(ids))).encode("utf-8"))
    out = tmp_path / "submission.csv"
    code, stdout, err = run_cli(capsys, "predict", checkpoint_path, root / "test", "--format", "kaggle",
                                "--template", template, "--out", out)
    assert code == 0, err
    assert [row.split(",")[0] for row in out.read_text().splitlines()[1:]] == list(reversed(ids))
    template.write_bytes("id,label\ncaf\xe9,0\n".encode("latin-1"))
    line = one_line_error(capsys, "predict", checkpoint_path, root / "test", "--format", "kaggle",
                          "--template", template, "--out", tmp_path / "again.csv")
    assert "sample_submission.csv" in line and "is not UTF-8 text" in line


def test_compare_writes_non_utf8_run_names(capsys, tmp_path):
    run = tmp_path / LATIN1
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"roc_auc": 0.9, "n": 10}))
    code, out, err = run_cli(capsys, "compare", run, "--format", "csv")
    assert code == 0, err
    assert SHOWN in out and "\udce9" not in out
