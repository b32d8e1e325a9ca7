"""RunFolder names a run folder's files once; no other module spells them out."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from pcamlab.runfolder import RunFolder

SRC = Path(__file__).resolve().parents[1] / "src" / "pcamlab"
# A slide result folder has a summary.json of its own, declared by the slide output list (slide/outputs.py).
OTHER_FOLDER_KINDS = ("slide/",)
NAMES = {RunFolder.CONFIG, RunFolder.HISTORY, RunFolder.SUMMARY, RunFolder.BEST, RunFolder.LAST, RunFolder.RESUME,
         RunFolder.TENSORBOARD, RunFolder.FOLDS, RunFolder.CV_SUMMARY, RunFolder.CV_RESULTS, RunFolder.FINAL,
         RunFolder.THRESHOLD_FIT}


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
    assert (cv.cv_results, cv.cv_summary, run.final) == (
        tmp_path / "cv" / "cv_results.csv", tmp_path / "cv" / "cv_summary.json", tmp_path / "run" / "final.json")
    assert run.threshold_fit.last == tmp_path / "run" / "threshold-fit" / "last.safetensors"


def _spelled_out(tree: ast.AST) -> list[tuple[int, str]]:
    """Where ``tree`` names a run folder file by its literal: ``folder / "summary.json"``, ``("best.safetensors",
    ...)``, ``f"{folder}/history.csv"`` or a fold folder ``f"repeat-{r}"`` / ``f"fold-{k}"``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAMES:
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.JoinedStr):
            parts = [part.value for part in node.values if isinstance(part, ast.Constant) and isinstance(part.value, str)]
            if any(part.endswith(tuple(f"/{name}" for name in NAMES)) for part in parts) or (
                    parts and isinstance(node.values[0], ast.Constant)
                    and parts[0].startswith((RunFolder.REPEAT_PREFIX, RunFolder.FOLD_PREFIX))):
                found.append((node.lineno, "f" + repr("".join(parts))))
    return found


def test_the_check_finds_every_way_of_spelling_a_name():
    source = '''
run / "summary.json"
for name in ("best.safetensors", "x"): pass
f"{run}/history.csv"
run / f"repeat-{r}" / f"fold-{k}"
"see summary.json for the facts"
f"{run} has no config.yaml"
'''
    assert sorted(line for line, _ in _spelled_out(ast.parse(source))) == [2, 3, 4, 5, 5]


def test_no_module_spells_out_a_run_folder_file_name():
    """``folder / "summary.json"`` anywhere but runfolder.py is a second declaration of the name (train/ too)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        if relative == "runfolder.py" or relative.startswith(OTHER_FOLDER_KINDS):
            continue
        offenders += [f"{relative}:{line}: {text}" for line, text in _spelled_out(ast.parse(path.read_text()))]
    assert offenders == [], "use pcamlab.runfolder.RunFolder:\n" + "\n".join(offenders)
