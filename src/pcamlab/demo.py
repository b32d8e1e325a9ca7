"""``pcamlab demo``: the whole workflow on the real PCam sample shipped in the package.

Trains the default model (``pcamlab.models.default_model()``: simple-cnn width 16, the model of
configs/default.yaml) on 800 real patches, evaluates the best checkpoint on the 200 validation patches
(from other slides), explains it (first-layer filters, Grad-CAM, feature maps, confident mistakes) and
writes everything, with the run report, into one run folder.

Example:
    >>> result = run_demo("runs/demo")
    >>> result["metrics"]["roc_auc"]
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from pcamlab.runfolder import RunFolder

__all__ = ["run_demo", "demo_config_path", "demo_run_dir"]

DEFAULT_RUN_DIR = Path("runs/demo")


def demo_run_dir(out_dir: str | Path | None = None) -> Path:
    """The folder a demo writes into: ``out_dir`` when given and free, else ``runs/demo`` or the first free
    ``runs/demo-2``, ``runs/demo-3``... (a second demo starts a new folder; runs are never overwritten).

    Raises:
        RunFolderError: ``out_dir`` was given and already holds files.
    """
    from pcamlab.errors import RunFolderError

    if out_dir is not None:
        out = Path(out_dir)
        if out.exists() and any(out.iterdir()):
            raise RunFolderError(f"{str(out)!r} already holds a run; choose another out_dir (runs are never overwritten)",
                           parameters=("out_dir",))
        return out
    out, number = DEFAULT_RUN_DIR, 1
    while out.exists() and any(out.iterdir()):
        number += 1
        out = DEFAULT_RUN_DIR.with_name(f"{DEFAULT_RUN_DIR.name}-{number}")
    return out


def demo_config_path() -> Path:
    """The packaged demo recipe (``pcamlab/configs/demo.yaml``)."""
    return Path(str(resources.files("pcamlab") / "configs" / "demo.yaml"))


def run_demo(
    out_dir: str | Path,
    *,
    overrides: list[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train, evaluate and explain on the shipped sample; returns paths and key numbers."""
    from pcamlab.config import load_config
    from pcamlab.evaluate.plots import plot_training_curves
    from pcamlab.evaluate.report import write_report
    from pcamlab.evaluate.run import evaluate_checkpoint
    from pcamlab.explain import run_explain
    from pcamlab.train.loop import train

    say = log or (lambda line: None)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    config = load_config(demo_config_path(), overrides or [])
    summary = train(config, out_dir, progress=progress, log=say)
    run = RunFolder(out_dir)
    best = run.best
    metrics = evaluate_checkpoint(best, config.data.path, config.data.valid_split, out_dir, format=config.data.format)
    say("explaining: filters, Grad-CAM, feature maps and confident mistakes on the validation patches")
    explained = run_explain(best, config.data.path, config.data.valid_split, out_dir / "explain-valid")
    plot_training_curves(run.history, out_dir / "training_curves.png")
    files = {name: out_dir / name for name in ("metrics.json", "roc.png", "confusion_matrix.png")}
    files["first_layer_filters.png"] = Path(explained["files"]["first_layer_filters"])
    files.update({name: out_dir / name for name in (
        RunFolder.BEST, RunFolder.HISTORY, "training_curves.png", "explain-valid", RunFolder.TENSORBOARD,
    )})
    files["report.html"] = write_report(out_dir)
    return {
        "metrics": metrics,
        "summary": summary,
        "files": files,
        "wall_seconds": time.perf_counter() - started,
    }
