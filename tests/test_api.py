"""The README's Python API block runs as it stands, and ``pcamlab`` exports its public names (issue 9 3.4)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import pcamlab

REPO = Path(__file__).resolve().parents[1]


def _readme_snippet() -> str:
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_api_block_runs(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_snippet(), "README.md (Python API)", "exec"), namespace)
    assert (tmp_path / "runs" / "api" / "best.safetensors").is_file()
    probabilities = namespace["probabilities"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (200,)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert namespace["model"].training is False and namespace["contract"] == namespace["predictor"].contract
    assert "patches called tumour at" in capsys.readouterr().out


def test_public_names_are_exported_and_import_stays_light():
    for name in pcamlab.__all__:
        assert getattr(pcamlab, name) is not None, name
    assert pcamlab.train_model.__module__ == "pcamlab.train.loop"
    assert pcamlab.load_predictor.__module__ == "pcamlab.runtime.predictor"
    probe = "import sys, pcamlab; print('torch' in sys.modules)"  # the CLI's --help imports pcamlab
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
