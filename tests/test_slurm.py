"""A cohort on a real Slurm cluster: docs/slurm/pcamlab-array.sbatch as an array job, one task killed mid-slide.

``.ci/slurm.sh`` starts a single-node Slurm (Debian's slurm-wlm with munge, on 127.0.0.1); this test submits
the shipped array script over six generated slides, kills (SIGKILL) the task working on the big slide
mid-slide, and checks what ``pcamlab slide summary`` reports; then resubmits, and checks that every slide
is done exactly once, that the killed slide resumed from its partial result, and that no lock, partial
folder or temporary file is left. Under ``CI=true`` a cluster that cannot start fails the test; elsewhere
it skips with the reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import require_service

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "tests" / "assets" / "slide_model.safetensors"
SCRIPT = REPO / "docs" / "slurm" / "pcamlab-array.sbatch"
SLURM_SH = REPO / ".ci" / "slurm.sh"
SLURM_DIR = Path(os.environ.get("PCAMLAB_SLURM_DIR", "/tmp/pcamlab-slurm"))


def _cannot(reason: str):
    require_service("slurm", reason)  # skips here, fails under CI=true (CI starts a cluster: .ci/slurm.sh)


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """The environment that reaches the cluster of .ci/slurm.sh (started here, and stopped, if not running)."""
    environment = {**os.environ, "PCAMLAB_SLURM_DIR": str(SLURM_DIR)}
    running = subprocess.run([str(SLURM_SH), "status"], env=environment).returncode == 0
    if not running:
        if os.geteuid() != 0:
            _cannot("the test cluster runs as root (munged -f, slurmd); run as root or start .ci/slurm.sh first")
        started = subprocess.run([str(SLURM_SH), "start"], env=environment, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            _cannot(f".ci/slurm.sh start failed: {started.stderr.strip().splitlines()[-1:] or started.returncode} "
                    "(.ci/slurm.sh install puts Debian's slurm-wlm and munge in)")
    environment["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    yield environment
    if not running:
        subprocess.run([str(SLURM_SH), "stop"], env=environment, timeout=60)


def run(command: list[str], environment: dict[str, str], timeout: float = 60) -> str:
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    return result.stdout


def wait_for_job(job: str, environment: dict[str, str], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not run(["squeue", "-h", "-j", job], environment).strip():
            return
        time.sleep(0.5)
    subprocess.run(["scancel", job], env=environment)
    pytest.fail(f"Slurm job {job} did not end within {timeout} s")


def job_states(job: str) -> dict[str, str]:
    """Array task id -> final state, from the job completion log (the test cluster has no sacct database)."""
    states = {}
    for line in (SLURM_DIR / "jobcomp.log").read_text().splitlines():
        fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
        if fields.get("ArrayJobId") == job:
            states[fields["ArrayTaskId"]] = fields["JobState"]
    return states


def test_an_array_job_with_a_killed_task_then_resubmitted_does_every_slide_once(slurm, tmp_path):
    from pcamlab.slide import make_synthetic_slide, sample_pools

    pools = sample_pools("valid")
    slides = [make_synthetic_slide(tmp_path / "slides" / "big.tif", *pools, width=3840, height=2880, seed=0).path]
    slides += [make_synthetic_slide(tmp_path / "slides" / f"small{index}.tif", *pools, width=960, height=960,
                                    seed=index + 1).path for index in range(5)]
    out, logs = tmp_path / "out", tmp_path / "logs"
    logs.mkdir()
    environment = {**slurm, "PCAMLAB": f"{sys.executable} -m pcamlab", "PYTHONPATH": str(REPO / "src"),
                   "PCAMLAB_EXTRA": "--stride 32 --batch-size 32 --no-steal"}
    submit = ["sbatch", "--parsable", "--array=0-2", "--cpus-per-task=1", "--mem=1G", "--time=10",
              f"--chdir={tmp_path}", f"--output={logs}/first-%A_%a.out", str(SCRIPT), str(MODEL), str(out),
              *map(str, slides)]
    job = run(submit, environment).strip().split(";")[0]
    # task 0's share is big.tif then small2.tif; kill it (SIGKILL: no clean-up at all) once big.tif is under way
    lock, grid = out / ".cohort" / "locks" / "big.lock", out / ".big.partial" / "tile_probabilities.npy"
    deadline = time.time() + 180
    while time.time() < deadline:
        try:
            if np.isfinite(np.load(grid)).sum() >= 256:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    else:
        pytest.fail(f"big.tif did not start within 180 s; logs: {[p.read_text()[-500:] for p in logs.iterdir()]}")
    holder = json.loads(lock.read_text())
    assert holder["job"] == f"Slurm job {job}_0"
    os.kill(holder["pid"], signal.SIGKILL)
    wait_for_job(job, environment)
    assert job_states(job) == {"0": "FAILED", "1": "COMPLETED", "2": "COMPLETED"}
    done_before = int(np.isfinite(np.load(grid)).sum())

    summary = subprocess.run([sys.executable, "-m", "pcamlab", "slide", "summary", str(out)], env=environment,
                             capture_output=True, text=True, timeout=120)
    assert summary.returncode == 1, summary.stderr  # not all done: says so
    lines = summary.stdout.splitlines()
    assert lines[0] == "6 slide(s): 4 done, 0 failed, 0 running, 2 missing", summary.stdout
    assert any(line.startswith("missing  big  a lock was left behind: its holder") and "has ended" in line
               for line in lines), summary.stdout
    assert any(line.rstrip() == "missing  small2" for line in lines), summary.stdout

    environment["PCAMLAB_EXTRA"] = "--stride 32 --batch-size 32"  # the same run, now with work stealing
    again = run([*submit[:6], "--wait", *submit[6:]], environment, timeout=600)
    job_again = again.strip().split(";")[0]
    assert set(job_states(job_again).values()) == {"COMPLETED"}

    summary = subprocess.run([sys.executable, "-m", "pcamlab", "slide", "summary", str(out), "--json"],
                             env=environment, capture_output=True, text=True, timeout=120)
    assert summary.returncode == 0, summary.stdout + summary.stderr
    states = [json.loads(line) for line in summary.stdout.splitlines()]
    assert sorted(state["key"] for state in states) == ["big", *(f"small{index}" for index in range(5))]
    assert all(state["state"] == "done" and len(state["finished_by"]) == 1 for state in states), states  # once each
    big = json.loads((out / "big" / "summary.json").read_text())
    assert big["tiles_resumed"] >= done_before > 0  # what the killed task predicted was kept, not redone
    left = [path for path in out.rglob("*") if path.name.endswith((".tmp", ".partial", ".lock", ".removing"))]
    assert not left and not list((out / ".cohort" / "locks").glob("*")), left
    worker_logs = [line for path in logs.iterdir() for line in path.read_text().splitlines()]
    assert any("taking over its lock" in line and "has ended" in line for line in worker_logs), worker_logs
