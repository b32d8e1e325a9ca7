"""RunFolder names a run folder's files once; no other module spells them out."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from pcamlab.runfolder import RunFolder

SRC = Path(__file__).resolve().parents[1] / "src" / "pcamlab"
# The training package is being rewritten on another branch; it switches to RunFolder once merged (then drop this).
NOT_YET = ("train/",)


def test_run_folder_paths_folds_and_state(tmp_path):
    run = RunFolder(tmp_path / "run")
    assert (run.config, run.history, run.summary, run.best, run.last, run.resume_state) == tuple(
        tmp_path / "run" / name for name in ("config.yaml", "history.csv", "summary.json", "best.safetensors",
                                             "last.safetensors", "resume.pt"))
    assert not run.is_run() and run.read_summary() is None and not run.finished()
    run.path.mkdir()
    run.history.write_text("epoch\n")
    assert run.is_run() and not run.finished()  # started, stopped before its end
    run.summary.write_text(json.dumps({"finished": True, "epochs_run": 3}))
    assert run.finished() and run.read_summary()["epochs_run"] == 3
    cv = RunFolder(tmp_path / "cv")
    fold = cv.fold(2, 3)
    assert fold.path == tmp_path / "cv" / "repeat-2" / "fold-3" and fold.fold_name() is None  # no folds.csv yet
    cv.path.mkdir()
    cv.folds.write_text("index,fold\n")
    assert fold.fold_name() == "repeat-2/fold-3" and run.fold_name() is None


def test_no_module_spells_out_a_run_folder_file_name():
    """``folder / "summary.json"`` anywhere but runfolder.py is a second declaration of the name."""
    names = {RunFolder.CONFIG, RunFolder.HISTORY, RunFolder.SUMMARY, RunFolder.BEST, RunFolder.LAST, RunFolder.RESUME,
             RunFolder.FOLDS, RunFolder.CV_SUMMARY}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative == "runfolder.py" or relative.startswith(NOT_YET):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
                    and node.right.value in names):
                offenders.append(f"{relative}:{node.lineno}: / {node.right.value!r}")
    assert offenders == [], "use pcamlab.runfolder.RunFolder:\n" + "\n".join(offenders)
