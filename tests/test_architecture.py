"""The rules of the house, enforced: import contracts (``.importlinter``, docs/ARCHITECTURE.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(*arguments: str) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("lint-imports")
    command = str(script) if script.exists() else shutil.which("lint-imports")
    if command is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([command, "--no-cache", *arguments], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_import_contracts_are_kept():
    result = _lint_imports()
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-3000:]
    assert "0 broken" in report
    for name in ("Layers:", "The library never imports the CLI", "Models import neither data nor train",
                 "do not import train", "Data imports neither models nor train"):
        assert name in report  # every contract of the issue is in the file and was checked


def test_a_broken_contract_fails_the_check(tmp_path):
    """The checker sees function-level imports: train imports the runtime inside train(), and is caught."""
    config = tmp_path / "contracts.ini"
    config.write_text(
        "[importlinter]\nroot_package = pcamlab\n\n"
        "[importlinter:contract:probe]\nname = probe\ntype = forbidden\n"
        "source_modules =\n    pcamlab.train.loop\nforbidden_modules =\n    pcamlab.runtime.memory\n"
    )
    result = _lint_imports("--config", str(config))
    assert result.returncode == 1 and "BROKEN" in result.stdout
    assert "pcamlab.train.loop -> pcamlab.runtime.memory" in result.stdout


def _raised_texts(path: Path) -> list[tuple[int, str]]:
    """The literal text of every ``raise`` statement's message in a module."""
    import ast

    texts = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Raise) and node.exc is not None:
            parts = [part.value for part in ast.walk(node.exc) if isinstance(part, ast.Constant) and isinstance(part.value, str)]
            texts.append((node.lineno, " ".join(parts)))
    return texts


def test_library_errors_name_parameters_and_config_fields_not_cli_flags():
    import re

    flag = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
    # HTTP answers of the service go to web clients, past any CLI that could translate them: they may name
    # the flag the server was started with.
    allowed = {("src/pcamlab/serve/app.py", "--slide-root")}
    offenders = []
    for path in sorted((REPO / "src" / "pcamlab").rglob("*.py")):
        if "cli" in path.relative_to(REPO / "src" / "pcamlab").parts:
            continue
        for line, text in _raised_texts(path):
            found = flag.search(text)
            if found and (str(path.relative_to(REPO)), found.group()) not in allowed:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {found.group()}")
    assert offenders == [], "library messages name CLI flags (name the parameter; the CLI adds the flag):\n" + "\n".join(offenders)


def test_the_cli_shows_the_flags_of_the_parameters_a_message_names():
    from pcamlab.cli.main import cli_message

    flags = {"out": "--out", "force": "--force", "exporter": "--exporter", "resume": "--resume"}
    assert cli_message("'runs/out/a.csv' exists; choose another out or pass force=True", ("out", "force"), flags) \
        == "'runs/out/a.csv' exists; choose another --out or pass --force"
    assert cli_message("failed (try exporter='legacy')", ("exporter",), flags) == "failed (try --exporter legacy)"
    assert cli_message("choose another out_dir (or resume=True)", ("out_dir", "resume"), flags) \
        == "choose another --out (or --resume)"
    assert cli_message("n must be positive", ("n",), flags) == "n must be positive"  # no such flag: unchanged
    assert cli_message("or pass resume=False to start again", ("resume",), {"no_resume": "--no-resume"}) \
        == "or pass --no-resume to start again"  # a negative flag
