"""Extending pcamlab: a new data format is one file (``tests/toy_npz_reader.py``), picked up everywhere."""

from __future__ import annotations

import importlib
import sys

import pytest

from pcamlab.data.convert import WRITERS, convert, convert_targets
from pcamlab.data.readers import READERS, detect_format, format_choices


@pytest.fixture
def npz_format():
    """Import the one-file reader (it registers itself); forget it afterwards so other tests see 3 formats."""
    module = importlib.import_module("toy_npz_reader")
    yield module
    READERS._items.pop("npz", None)
    WRITERS._items.pop("npz", None)
    sys.modules.pop("toy_npz_reader", None)


def test_a_reader_in_one_file_is_a_config_value_a_cli_choice_a_detected_layout_and_trains(npz_format, tmp_path):
    from pcamlab.cli.main import build_parser
    from pcamlab.config import load_config
    from pcamlab.errors import ConfigError
    from pcamlab.train.loop import train

    assert format_choices() == ("auto", "h5", "kaggle", "npz", "folders")  # detection order: specific first
    assert "npz" in convert_targets()
    args = build_parser().parse_args(["train", "--format", "npz", "--out", str(tmp_path / "x")])
    assert args.format == "npz"

    root = convert("sample", tmp_path / "sample-npz", to="npz")["path"]  # the convert target, from its writer
    assert sorted(path.name for path in root.iterdir()) == ["train.npz", "valid.npz"]
    assert detect_format(root) == "npz"

    config = load_config(overrides=[
        f"data.path={root}", "data.format=npz", "model.name=simple-cnn", "model.options={width: 4}",
        "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=16", "train.device=cpu",
        "train.precision=fp32",
    ])
    summary = train(config, tmp_path / "run", progress=False)
    assert summary["finished"] and summary["data"]["format"] == "npz" and summary["data"]["valid_patches"] == 200

    with pytest.raises(ConfigError, match=r"data.format must be one of \['auto', 'h5', 'kaggle', 'npz', 'folders'\]"):
        load_config(overrides=["data.format=npy"])


def test_without_the_file_the_format_is_unknown():
    from pcamlab.config import load_config
    from pcamlab.errors import ConfigError

    assert "npz" not in format_choices()
    with pytest.raises(ConfigError, match=r"data.format must be one of \['auto', 'h5', 'kaggle', 'folders'\]; got 'npz'"):
        load_config(overrides=["data.format=npz"])
