"""The README's Python API block runs as it stands, and ``pcamlab`` exports its public names (issue 9 3.4)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import pcamlab

REPO = Path(__file__).resolve().parents[1]


def _readme_snippet() -> str:
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_api_block_runs_twice_and_prints_the_truth(tmp_path, monkeypatch, capsys):
    """Issue 22: the block printed '200 of 200 patches called tumour' and raised when run a second time."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where its run folders go
    for _ in range(2):
        namespace: dict = {}
        exec(compile(_readme_snippet(), "README.md (Python API)", "exec"), namespace)
        assert (Path(namespace["run"]) / "best.safetensors").is_file()
        probabilities, labels = namespace["probabilities"], namespace["labels"]
        assert probabilities.dtype == np.float32 and probabilities.shape == (200,)
        assert np.all((probabilities >= 0) & (probabilities <= 1))
        assert namespace["model"].training is False and namespace["contract"] == namespace["predictor"].contract
        called = probabilities >= namespace["threshold"]
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert line == (f"{called.sum()} of 200 patches called tumour at {namespace['threshold']:.3f}; "
                        f"{(called == labels).sum()} calls right ({labels.sum()} are tumour)")
        assert 0 < called.sum() < 200  # a threshold chosen on validation, not 0.5 on an untrained model


def test_public_names_are_exported_and_import_stays_light():
    for name in pcamlab.__all__:
        assert getattr(pcamlab, name) is not None, name
    assert pcamlab.train_model.__module__ == "pcamlab.train.loop"
    assert pcamlab.load_predictor.__module__ == "pcamlab.runtime.predictor"
    probe = "import sys, pcamlab; print('torch' in sys.modules)"  # the CLI's --help imports pcamlab
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
