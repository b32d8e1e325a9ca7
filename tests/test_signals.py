"""Stopping by signal: SIGINT or SIGTERM at random moments stops each long command cleanly, and it resumes.

For ``train``, ``tune`` (two worker processes), ``slide predict`` and ``data convert``, the real CLI runs
as a subprocess on tiny inputs; once it handles SIGTERM (its stop handler is installed, as
``/proc/PID/status`` shows) a seeded random delay passes and the signal is sent: SIGINT to the whole
process group (what Ctrl+C in a terminal does), SIGTERM to the command's process alone (what ``timeout``,
Slurm's first signal or ``docker stop`` do). Then:

- the command exits with 130 (SIGINT) or 143 (SIGTERM) within :data:`STOP_SECONDS`, and no process of
  its group (tune's workers) outlives it;
- no temporary file is left anywhere under its folder (:data:`TEMPORARY`: pcamlab.fileio's
  ``.NAME.XXXX.tmp``, ``*.tmp.npy``, ``data convert``'s ``DST.tmp-PID-HEX``); only a command's documented
  resume state may stay (slide predict's ``.NAME.partial``), and it is gone once the resume finishes;
- no study trial is left RUNNING;
- the same command with resume (``--resume`` for train and tune when they left something to resume; the
  same command again for slide predict and data convert) finishes and its outputs are whole.

A signal that comes after the command's last safe point may let it finish (exit 0): that attempt counts
as a miss, its outputs must be whole, and the next draw comes from a shorter window. Output saying
"Exception ignored" (a signal raised where Python swallows it, e.g. a garbage-collection callback)
fails the test. The default suite stops each command a few times; ``-m slow`` many more times, and
tune too (each of its runs starts two worker processes: tens of seconds).

The test asserts behaviour only (exit codes, files, the study's trial states), so it holds whatever
the commands' loops look like inside.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pcamlab.runfolder import RunFolder
from fixtures_data import write_tiny_h5

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "assets" / "slide_model.safetensors"
STOP_SECONDS = 15.0  # "within a few seconds", with room for a loaded 2-core CI machine
READY_SECONDS = 90.0  # python + pcamlab start-up, on that machine
TEMPORARY = ("*.tmp", "*.tmp.*", "*.tmp-*")  # never left behind by a stopped command
TINY = ["model.name=simple-cnn", "model.options={width: 4, dropout: 0.0}", "train.batch_size=8", "train.precision=fp32",
        "train.threads=1", "train.patience=0", "train.time_budget_minutes=0", "evaluate.batch_size=64",
        "augment.dihedral=false"]

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc to see when a process handles SIGTERM")


def _sets(values: list[str]) -> list[str]:
    return [item for value in values for item in ("--set", value)]


@dataclass
class Command:
    """One command under test: how to run it, resume it, and tell whether its outputs are whole."""

    name: str
    args: Callable[[dict, Path], list[str]]  # (inputs, work folder) -> arguments after "pcamlab"
    resume: Callable[[dict, Path], list[str]]  # the command that finishes a stopped run
    finished: Callable[[dict, Path], None]  # asserts the outputs are whole
    window: float  # first guess (s) of how long it works once its stop handler is installed
    resume_state: tuple[str, ...] = ()  # names a stopped run may leave for its resume
    stopped: Callable[[dict, Path], None] = field(default=lambda inputs, work: None)  # more checks after a stop
    done: Callable[[Path], bool] = field(default=lambda work: False)  # the work was whole before the stop landed


# -- the commands ------------------------------------------------------------------------------

TRAIN_EPOCHS = 12


def _train_args(inputs: dict, work: Path) -> list[str]:
    return ["train", "--data", str(inputs["h5"]), "--out", str(work / "run"), "--no-progress",
            *_sets([*TINY, f"train.epochs={TRAIN_EPOCHS}"])]


def _train_resume(inputs: dict, work: Path) -> list[str]:
    if (work / "run").exists():
        return ["train", "--out", str(work / "run"), "--resume", "--no-progress"]
    return _train_args(inputs, work)  # stopped before the run folder existed: nothing to resume, start it


def _train_finished(inputs: dict, work: Path) -> None:
    summary = json.loads((work / "run" / "summary.json").read_text())
    assert summary.get("finished") and summary["epochs_run"] == TRAIN_EPOCHS, summary
    assert (work / "run" / "best.safetensors").is_file()
    history = (work / "run" / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == [str(epoch) for epoch in range(1, TRAIN_EPOCHS + 1)]


TUNE_TRIALS = 4


def _tune_args(inputs: dict, work: Path) -> list[str]:
    return ["tune", "--data", str(inputs["h5"]), "--space", str(inputs["space"]), "--out", str(work / "study"),
            "--trials", str(TUNE_TRIALS), "--workers", "2", "--threads", "1", "--sampler", "random", "--pruner", "none",
            *_sets([*TINY, "train.epochs=3"])]


def _tune_resume(inputs: dict, work: Path) -> list[str]:
    if (work / "study" / "study.json").is_file():
        return ["tune", "--out", str(work / "study"), "--resume", "--workers", "2", "--threads", "1"]
    assert not (work / "study").exists(), "a stopped study left a folder that neither resumes nor starts again"
    return _tune_args(inputs, work)


def _trials(work: Path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(f"sqlite:///{work / 'study' / 'study.db'}")
    try:
        return optuna.load_study(study_name="study", storage=storage).get_trials(deepcopy=False)
    finally:
        storage.engine.dispose()


def _tune_stopped(inputs: dict, work: Path) -> None:
    if (work / "study" / "study.db").is_file():
        running = [t.number for t in _trials(work) if t.state.name == "RUNNING"]
        assert running == [], f"trials {running} were left RUNNING"


def _tune_finished(inputs: dict, work: Path) -> None:
    trials = _trials(work)
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == TUNE_TRIALS and "RUNNING" not in states and "WAITING" not in states, states
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    assert all(t.number in retried for t in trials if t.state.name == "FAIL"), "a stopped trial was not retried"
    assert (work / "study" / "trials.csv").is_file() and (work / "study" / "report.html").is_file()


def _slide_args(inputs: dict, work: Path) -> list[str]:
    return ["slide", "predict", str(MODEL), str(inputs["slide"]), "--out", str(work / "maps"), "--stride", "32",
            "--batch-size", "32", "--readers", "1"]


def _slide_finished(inputs: dict, work: Path) -> None:
    summary = json.loads((work / "maps" / "slide" / "summary.json").read_text())
    assert summary["tiles"] > 0 and (work / "maps" / "slide" / "heatmap.png").is_file(), summary


def _convert_args(inputs: dict, work: Path) -> list[str]:
    return ["data", "convert", "sample", str(work / "converted"), "--to", "folders"]


def _convert_finished(inputs: dict, work: Path) -> None:
    files = [path for path in (work / "converted").rglob("*") if path.is_file()]
    images = [path for path in files if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif")]
    assert len(images) == inputs["sample_images"], (len(images), inputs["sample_images"])


COMMANDS = {
    "train": Command("train", _train_args, _train_resume, _train_finished, window=4.0,
                     done=lambda work: RunFolder(work / "run").finished()),
    "tune": Command("tune", _tune_args, _tune_resume, _tune_finished, window=25.0, stopped=_tune_stopped),
    "slide predict": Command("slide predict", _slide_args, _slide_args, _slide_finished, window=3.0,
                             resume_state=(".*.partial",)),
    "data convert": Command("data convert", _convert_args, _convert_args, _convert_finished, window=2.5),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    from pcamlab.data import open_split
    from pcamlab.slide import make_synthetic_slide, sample_pools

    root = tmp_path_factory.mktemp("signal-inputs")
    space = root / "space.yaml"
    space.write_text("params:\n  train.learning_rate: {float: [0.001, 0.01], log: true}\n")
    slide = make_synthetic_slide(root / "slide.tif", *sample_pools("valid"), width=3840, height=2880, seed=0)
    sample_images = sum(len(open_split("sample", split)) for split in ("train", "valid"))
    return {"h5": write_tiny_h5(root / "h5"), "space": space, "slide": slide.path, "sample_images": sample_images}


# -- one stop, and many ------------------------------------------------------------------------


def _start(args: list[str], log: Path) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    # its own process group (a terminal's Ctrl+C reaches every process of the group), with SIGINT's default
    # handling (a background job of a non-interactive shell would inherit SIGINT ignored)
    return subprocess.Popen([sys.executable, "-m", "pcamlab", *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env=environment, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _handles_sigterm(pid: int) -> bool:
    """True once the process catches SIGTERM (pcamlab's stop handler is installed)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


def _wait_until_ready(process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not _handles_sigterm(process.pid):
        assert process.poll() is None, f"ended before it handled signals ({process.returncode}):\n{log.read_text()[-2000:]}"
        assert time.monotonic() < deadline, "never installed its signal handler"
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_group(process: subprocess.Popen) -> None:
    if _group_alive(process.pid):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _leftovers(work: Path, allowed: tuple[str, ...]) -> list[str]:
    found = []
    for path in work.rglob("*"):
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in allowed):
            continue
        if any(fnmatch.fnmatch(part, pattern) for part in path.relative_to(work).parts[:-1] for pattern in allowed):
            continue  # inside a resume state folder: checked once the resume has finished
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in (*TEMPORARY, ".*.partial", "*.partial")):
            found.append(str(path.relative_to(work)))
    return found


def _stop_once(command: Command, inputs: dict, work: Path, signum: int, delay: float) -> float | None:
    """Run, signal after ``delay`` s, check the stop and the resume; None if stopped, else the seconds it worked."""
    work.mkdir(parents=True)
    log = work / "command.log"
    process = _start(command.args(inputs, work), log)
    try:
        _wait_until_ready(process, log)
        ready = time.monotonic()
        time.sleep(delay)
        if process.poll() is None:
            if signum == signal.SIGINT:
                os.killpg(process.pid, signum)  # Ctrl+C: the whole group
            else:
                os.kill(process.pid, signum)  # timeout, docker stop: the command's process
            try:
                code = process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{command.name} still ran {STOP_SECONDS:.0f} s after {signal.Signals(signum).name} "
                                     f"(sent {delay:.2f} s in):\n{log.read_text()[-3000:]}") from None
        else:
            code = process.returncode
        worked = time.monotonic() - ready
        deadline = time.monotonic() + 5
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _group_alive(process.pid), f"{command.name}: a process of its group outlived it (a worker?)"
    finally:
        _end_group(process)
    text = log.read_text()
    assert "Exception ignored" not in text, f"a signal was raised where Python swallows it:\n{text[-3000:]}"
    if code in (0, -signum):  # the signal came after the last safe point (or before it was sent, it had ended)
        assert code == 0 or not _leftovers(work, ()), text[-3000:]
        command.finished(inputs, work)
        return worked
    assert code == 128 + signum, (f"{command.name}: exit {code} after {signal.Signals(signum).name} sent {delay:.2f} s in; "
                                  f"expected {128 + signum}:\n{text[-3000:]}")
    leftovers = _leftovers(work, command.resume_state)
    assert leftovers == [], f"{command.name} stopped {delay:.2f} s in left temporary files: {leftovers}"
    command.stopped(inputs, work)
    if command.done(work):  # the signal landed after the run had finished (its last lines): nothing to resume
        command.finished(inputs, work)
        return worked
    resumed = subprocess.run([sys.executable, "-m", "pcamlab", *command.resume(inputs, work)], capture_output=True, text=True,
                             timeout=600, env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, f"{command.name}: the resume failed after a stop {delay:.2f} s in:\n{resumed.stdout[-2000:]}{resumed.stderr[-2000:]}"
    command.finished(inputs, work)
    assert _leftovers(work, ()) == [], f"{command.name}: temporary files or resume state left after the resume"
    return None


def _stop_at_random_moments(command: Command, inputs: dict, tmp_path: Path, seed: int, stops: int) -> None:
    """``stops`` stops at seeded random moments (misses, where it finished first, draw again from a shorter window)."""
    draw = random.Random(seed)
    window, done, misses = command.window, 0, 0
    while done < stops:
        signum = (signal.SIGINT, signal.SIGTERM)[(done + misses + seed) % 2]  # both signals, alternately
        delay = draw.uniform(0.0, window)
        worked = _stop_once(command, inputs, tmp_path / f"attempt-{done + misses}", signum, delay)
        print(f"{command.name}: {signal.Signals(signum).name} {delay:.2f} s in: "
              + ("stopped, resumed" if worked is None else f"finished first ({worked:.2f} s)"))
        if worked is None:
            done += 1
            continue
        misses += 1
        window = 0.6 * min(window, worked)
        assert misses <= max(3, stops), f"{command.name} finished before the signal {misses} times (last window {window:.2f} s)"


@pytest.mark.parametrize("name, seed", [("train", 1), ("train", 2), ("slide predict", 3), ("data convert", 4)])
def test_a_signal_at_a_random_moment_stops_the_command_cleanly_and_it_resumes(inputs, tmp_path, name, seed):
    _stop_at_random_moments(COMMANDS[name], inputs, tmp_path, seed, stops=1)


@pytest.mark.slow
@pytest.mark.parametrize("name, stops", [("train", 12), ("tune", 4), ("slide predict", 12), ("data convert", 12)])
def test_signals_at_many_random_moments_stop_each_command_cleanly_and_it_resumes(inputs, tmp_path, name, stops):
    _stop_at_random_moments(COMMANDS[name], inputs, tmp_path, seed=100 + len(name), stops=stops)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_one_tune_worker_fails_and_requeues_its_trial_and_the_study_finishes(inputs, tmp_path, signum):
    """A worker stopped alone (an operator's kill, an OOM guard's SIGTERM) leaves no RUNNING trial; the others finish."""
    work = tmp_path / "work"
    work.mkdir()
    log = work / "command.log"
    process = _start(_tune_args(inputs, work), log)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            if (work / "study" / "study.db").is_file():
                try:
                    running = [t for t in _trials(work) if t.state.name == "RUNNING" and t.user_attrs.get("worker")]
                except Exception:  # noqa: BLE001 - the database is being created or is busy
                    running = []
                victim = int(running[0].user_attrs["worker"].rsplit(":", 1)[1]) if running else None
            time.sleep(0.2)
        os.kill(victim, signum)
        assert process.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        _end_group(process)
    text = log.read_text()
    assert "stopped by a signal" in text and "Exception ignored" not in text, text[-3000:]
    trials = _trials(work)
    stopped = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{victim}") and t.state.name == "FAIL"]
    # the worker was mid-trial (that trial failed with the signal's name) or between trials (none failed)
    assert all(t.user_attrs["error"].startswith(f"interrupted ({signal.Signals(signum).name})") for t in stopped)
    _tune_finished(inputs, work)
