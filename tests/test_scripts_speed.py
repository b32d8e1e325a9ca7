"""The speed scripts run: the TF-Keras comparison's subset maker (no TensorFlow needed) and the step profiler."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _jpegs(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "valid"):
        for label in ("0", "1"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(per_class):
                Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(folder / f"{index:02d}.jpg")


def test_keras_subset_links_the_first_patches_of_each_class_and_refuses_to_overwrite(tmp_path):
    bench = _script("bench_keras_baseline")
    _jpegs(tmp_path / "source", 5)
    bench.make_subset(tmp_path / "source", tmp_path / "subset", train_per_class=3, valid_per_class=2)
    names = sorted(path.name for path in (tmp_path / "subset" / "train" / "1").iterdir())
    assert names == ["00.jpg", "01.jpg", "02.jpg"] and len(list((tmp_path / "subset" / "valid" / "0").iterdir())) == 2
    assert (tmp_path / "subset" / "train" / "1" / "00.jpg").resolve() == (tmp_path / "source" / "train" / "1" / "00.jpg").resolve()
    with pytest.raises(SystemExit, match="exists"):
        bench.make_subset(tmp_path / "source", tmp_path / "subset", train_per_class=3, valid_per_class=2)
    with pytest.raises(SystemExit, match="has 5 JPEGs; need 6"):
        bench.make_subset(tmp_path / "source", tmp_path / "other", train_per_class=3, valid_per_class=6)
    assert not (tmp_path / "other").exists()  # valid is short: nothing of train was written either
    with pytest.raises(SystemExit, match="does not exist"):
        bench.make_subset(tmp_path / "nowhere", tmp_path / "other", train_per_class=1, valid_per_class=1)


def test_profile_step_prints_the_op_table():
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "profile_step.py"), "--model", "baseline", "--batch-size", "4",
         "--steps", "2", "--rows", "3"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert "median step" in done.stdout and "patches/s" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.startswith("| `")]
    assert len(rows) == 3 and any("convolution" in row for row in rows)


@pytest.mark.parametrize("arguments, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--model", "nope"], "model.name must be one of"),
])
def test_profile_step_bad_arguments_are_one_line(arguments, message):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "profile_step.py"), *arguments],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
