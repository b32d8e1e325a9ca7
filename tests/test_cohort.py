"""Cohorts over many workers (``pcamlab.slide.cohort``): the share from the environment, one lock per slide,
takeover of a dead or stale lock, work stealing, failure records and ``pcamlab slide summary``.

The real cluster (a Slurm array job, one task killed mid-slide, resubmitted) is ``tests/test_slurm.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pcamlab import stopping
from pcamlab.cli.main import main
from pcamlab.errors import ConfigError, DataError
from pcamlab.slide.cohort import Cohort, Shard, Worker, pick_device, resolve_shard
from pcamlab.slide.cohort_status import cohort_status

MODEL = Path(__file__).parent / "assets" / "slide_model.safetensors"


def done_marker(results: Path):
    return lambda key: (results / key / "summary.json").is_file()


def finish(results: Path, claim) -> None:
    """What a real worker does when a slide is done: the result folder, then the claim settled."""
    (results / claim.key).mkdir(parents=True, exist_ok=True)
    (results / claim.key / "summary.json").write_text("{}")
    claim.finish()


@pytest.mark.parametrize("environ, expected", [
    ({}, (1, 1)),
    ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"}, (1, 3)),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"}, (3, 3)),  # --array=1-3
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "2",
      "SLURM_ARRAY_TASK_STEP": "3"}, (2, 3)),  # --array=2-8:3 runs tasks 2, 5, 8
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "4", "SLURM_ARRAY_TASK_STEP": "2"}, (3, 3)),  # --array=0-4:2
    ({"RANK": "2", "WORLD_SIZE": "4"}, (3, 4)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1", "WORLD_SIZE": "4"}, (6, 8)),
])
def test_the_share_comes_from_slurm_or_torchrun(environ, expected):
    share = resolve_shard(None, environ)
    assert (share.index, share.count) == expected
    assert resolve_shard((2, 5), environ) == Shard(2, 5, "given")  # an explicit share wins over the environment


@pytest.mark.parametrize("environ, message", [
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1"},
     "not one of 2 evenly spaced tasks"),  # --array=1,4: a list, no position to compute
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "4", "SLURM_ARRAY_TASK_STEP": "1"},
     r"not one of 2 evenly spaced tasks from 1 in steps of 1 up to 4 .*--array=1-2:"),  # ... refused in every task
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "4", "SLURM_ARRAY_TASK_STEP": "2"}, r"--array=0-4:2:"),  # a step array: its own form
    ({"SLURM_ARRAY_TASK_ID": "2"}, "SLURM_ARRAY_TASK_COUNT is not set"),
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"}, "SLURM_ARRAY_TASK_ID must be an integer; got 'x'"),
    ({"RANK": "1"}, "WORLD_SIZE is not set"),
    ({"RANK": "4", "WORLD_SIZE": "4"}, "RANK must be in 0..WORLD_SIZE-1; got RANK=4"),
])
def test_a_bad_or_contradictory_environment_is_a_one_line_error(environ, message):
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_shard(None, environ)
    assert len(str(caught.value).splitlines()) == 1 and "shard=(index, count)" in str(caught.value)
    with pytest.raises(ConfigError, match="1 <= index <= count"):
        resolve_shard((4, 3), {})


def test_the_cli_takes_its_share_from_the_environment_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    assert main(["slide", "predict", str(MODEL), "a.svs", "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err.strip()
    assert "Slurm array task 7 is not one of 2" in error and "--shard" in error and len(error.splitlines()) == 1
    assert main(["slide", "predict", str(MODEL), "a.svs", "--out", str(tmp_path / "o"), "--shard", "3/2"]) == 2
    assert "--shard must be I/N" in capsys.readouterr().err


def test_one_process_per_gpu_picks_the_local_rank(monkeypatch):
    four = lambda: 4  # noqa: E731 - a node with 4 visible GPUs
    assert pick_device("auto", {"LOCAL_RANK": "2"}, four) == ("cuda:2", "local rank 2 of 4 GPU(s)")
    assert pick_device("auto", {"SLURM_LOCALID": "5"}, four)[0] == "cuda:1"  # more workers than GPUs: shared
    assert pick_device("auto", {"LOCAL_RANK": "1", "SLURM_LOCALID": "3"}, four)[0] == "cuda:1"  # torchrun first
    assert pick_device("auto", {}, four)[0] == "cuda:0"
    assert pick_device("auto", {"LOCAL_RANK": "1"}, lambda: 0) == ("cpu", "no GPU visible")
    assert pick_device("cuda:3", {"LOCAL_RANK": "1"}, four) == ("cuda:3", "given")


def test_claim_takes_its_share_then_steals_from_the_ends_of_the_others(tmp_path):
    slides = [f"/data/s{index}.svs" for index in range(7)]
    (tmp_path / "s3").mkdir()
    (tmp_path / "s3" / "summary.json").write_text("{}")  # finished already: never claimed
    with Cohort(tmp_path, is_done=done_marker(tmp_path)) as cohort:
        order = []
        for claim in cohort.claim(slides, shard=Shard(1, 3)):
            order.append(claim.key)
            finish(tmp_path, claim)
    # share 1: s0 s6 (s3 done); then share 2 from its end: s4 s1; then share 3 from its end: s5 s2
    assert order == ["s0", "s6", "s4", "s1", "s5", "s2"]
    with Cohort(tmp_path / "strict", is_done=done_marker(tmp_path / "strict")) as cohort:
        assert [claim.key for claim in cohort.claim(slides, shard=Shard(2, 3), steal=False)] == ["s1", "s4"]


def other_host(token: str = "other") -> Worker:
    return Worker("node-elsewhere", 4242, token, time.time())


def test_a_live_lock_is_passed_over_and_a_stale_one_taken_over_after_stale_after(tmp_path):
    slides = ["a.svs", "b.svs"]
    holder = Cohort(tmp_path, is_done=done_marker(tmp_path), worker=other_host())
    claims = holder.claim(slides)
    held = next(claims)  # a.svs, locked by a worker on another node
    assert held.key == "a" and (tmp_path / ".cohort" / "locks" / "a.lock").exists()
    now = [time.time()]
    thief = Cohort(tmp_path, is_done=done_marker(tmp_path), stale_after=300, clock=lambda: now[0])
    assert [claim.key for claim in thief.claim(slides)] == ["b"]  # a is live: passed over
    assert thief.passed_over["a"].startswith("left to node-elsewhere pid 4242 (running, heartbeat")
    now[0] += 299
    assert [claim.key for claim in thief.claim(slides)] == ["b"]  # b was given back unsettled; a still live
    now[0] += 2  # 301 s without a heartbeat
    claim = next(thief.claim(slides, shard=Shard(1, 1)))
    assert claim.key == "a" and "node-elsewhere pid 4242" in claim.took_over and "stale_after 300 s" in claim.took_over
    finish(tmp_path, claim)
    assert not (tmp_path / ".cohort" / "locks" / "a.lock").exists()
    held.release()  # the old holder comes back: it must not remove anything of someone else's
    thief.close()
    holder.close()
    log = (tmp_path / ".cohort" / "workers").glob("*.jsonl")
    events = [json.loads(line) for path in log for line in path.read_text().splitlines()]
    assert [event["event"] for event in events] == ["start", "done"] and "stale_after" in events[1]["took_over"]


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = Worker.this()
    dead = Worker(dead.host, int(ended.stdout), "dead-token", time.time(), None, dead.pid_namespace, "Slurm job 9_1")
    lock = tmp_path / ".cohort" / "locks" / "a.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps(dead.__dict__))  # a heartbeat of now: only the dead pid tells
    with Cohort(tmp_path, is_done=done_marker(tmp_path)) as cohort:
        claim = next(cohort.claim(["a.svs"]))
        assert claim.key == "a" and f"pid {dead.pid} (Slurm job 9_1) has ended" in claim.took_over
        assert json.loads(lock.read_text())["token"] == cohort.worker.token


def test_racing_workers_never_share_a_slide(tmp_path):
    """Eight workers (threads, each its own Worker) over 40 slides: each slide processed exactly once."""
    slides = [f"s{index:02d}.svs" for index in range(40)]
    processed: list[tuple[str, str]] = []
    start = threading.Barrier(8)
    errors = []

    def work(index: int) -> None:
        try:
            with Cohort(tmp_path, is_done=done_marker(tmp_path)) as cohort:
                start.wait()
                for claim in cohort.claim(slides, shard=Shard(index % 3 + 1, 3)):  # overlapping shares on purpose
                    processed.append((claim.key, cohort.worker.token))
                    time.sleep(0.002)
                    finish(tmp_path, claim)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    keys = [key for key, _ in processed]
    assert sorted(keys) == sorted(Path(slide).stem for slide in slides)  # all, and none twice
    assert len({token for _, token in processed}) > 1  # the work was shared
    assert not list((tmp_path / ".cohort").glob("locks/*"))  # no lock, no .removing file left


def _race_for_the_lock(results, go, leave, answers) -> None:
    cohort = Cohort(results, is_done=lambda key: False)
    go.wait(30)
    answers.put(int(cohort._try_lock("a", "a.svs")[0]))
    leave.wait(30)  # stay alive until all have answered: a winner that had ended would rightly be taken over


def test_racing_processes_for_one_lock_exactly_one_wins(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # forked: no second import of torch per process
    go, leave, answers = context.Event(), context.Event(), context.Queue()
    processes = [context.Process(target=_race_for_the_lock, args=(tmp_path, go, leave, answers)) for _ in range(4)]
    for process in processes:
        process.start()
    try:
        go.set()
        wins = sorted(answers.get(timeout=30) for _ in processes)
    finally:
        leave.set()
        for process in processes:
            process.join(30)
    assert wins == [0, 0, 0, 1]


def test_the_heartbeat_keeps_a_lock_fresh_and_a_stopped_worker_releases_it(tmp_path):
    with Cohort(tmp_path, is_done=done_marker(tmp_path), stale_after=0.5) as cohort:  # a beat every 0.05 s
        claims = cohort.claim(["a.svs", "b.svs"])
        claim = next(claims)
        lock = tmp_path / ".cohort" / "locks" / "a.lock"
        os.utime(lock, (time.time() - 3600, time.time() - 3600))
        time.sleep(0.3)
        assert time.time() - lock.stat().st_mtime < 0.3  # refreshed
        assert cohort.lock_state("a")[0] == "live"
    assert not lock.exists()
    stopping.request()
    try:
        with pytest.raises(stopping.Stopped):
            with Cohort(tmp_path, is_done=done_marker(tmp_path)) as cohort, stopping.safe_points():
                for claim in cohort.claim(["a.svs", "b.svs"]):
                    assert lock.exists()
                    stopping.check()
    finally:
        stopping.clear()
    assert not lock.exists() and not (tmp_path / ".cohort" / "locks").exists()  # released
    # its log stays: it was given two slides, and `slide summary` counts both (its first is not finished)
    states = cohort_status(tmp_path, is_done=done_marker(tmp_path))
    assert [(state.key, state.state) for state in states] == [("a", "missing"), ("b", "missing")]
    del claims


def test_failures_are_recorded_skipped_and_retried_on_request(tmp_path):
    slides = ["a.svs", "b.svs", "c.svs"]
    with Cohort(tmp_path, is_done=done_marker(tmp_path)) as cohort:
        for claim in cohort.claim(slides):
            if claim.key == "b":
                claim.fail(DataError("cannot read slide 'b.svs': not a TIFF"))
            else:
                finish(tmp_path, claim)
    record = json.loads((tmp_path / ".cohort" / "failed" / "b.json").read_text())
    assert record["error"] == "DataError: cannot read slide 'b.svs': not a TIFF" and record["slide"] == "b.svs"
    with Cohort(tmp_path, is_done=done_marker(tmp_path)) as cohort:
        assert list(cohort.claim(slides)) == []  # done or failed: nothing to take
        retried = list(cohort.claim(slides, retry_failed=True))
        assert [claim.key for claim in retried] == ["b"]


def test_summary_counts_every_slide_while_the_first_is_in_progress(tmp_path):
    slides = ["a.svs", "b.svs", "c.svs"]
    worker = Cohort(tmp_path, is_done=done_marker(tmp_path))
    claims = worker.claim(slides)
    first = next(claims)  # working on a; killed now (-9: no close), its log must already list the cohort
    states = cohort_status(tmp_path, is_done=done_marker(tmp_path))
    assert [(state.key, state.state) for state in states] == [("a", "running"), ("b", "missing"), ("c", "missing")]
    first.release()
    worker.close()
    idle = Cohort(tmp_path / "idle", is_done=done_marker(tmp_path / "idle"))
    (tmp_path / "idle" / "a").mkdir(parents=True)
    (tmp_path / "idle" / "a" / "summary.json").write_text("{}")
    assert list(idle.claim(["a.svs"])) == []
    idle.close()
    assert not (tmp_path / "idle" / ".cohort").exists()  # a worker that took no slide leaves no log


def test_status_says_done_failed_running_and_missing(tmp_path, capsys):
    slides = ["/d/a.svs", "/d/b.svs", "/d/c.svs", "/d/d.svs", "/d/e.svs"]
    with Cohort(tmp_path, is_done=done_marker(tmp_path)) as cohort:
        for claim in cohort.claim(slides):
            if claim.key == "a":
                finish(tmp_path, claim)
            elif claim.key == "b":
                claim.fail(DataError("no tissue found in slide 'b.svs'"))
            else:
                break  # c: released unfinished
    busy = Cohort(tmp_path, is_done=done_marker(tmp_path), worker=other_host("busy"))
    running = next(busy.claim(slides, shard=Shard(4, 5)))  # d, locked by a live worker elsewhere
    lock = tmp_path / ".cohort" / "locks" / "e.lock"
    lock.write_text(json.dumps(other_host("gone").__dict__))
    os.utime(lock, (time.time() - 900, time.time() - 900))  # e: a lock left by a worker that died 15 minutes ago
    states = {state.key: state for state in cohort_status(tmp_path, is_done=done_marker(tmp_path))}
    assert {key: state.state for key, state in states.items()} == {
        "a": "done", "b": "failed", "c": "missing", "d": "running", "e": "missing"}
    assert states["a"].finished_by == [cohort.worker.describe()] and "no tissue found" in states["b"].detail
    assert "node-elsewhere" in states["d"].detail and "900 s old" in states["e"].detail
    assert main(["slide", "summary", str(tmp_path)]) == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "5 slide(s): 1 done, 1 failed, 1 running, 2 missing"
    assert printed[1].startswith("failed   b  DataError: no tissue found") and printed[2].startswith("missing  c")
    assert main(["slide", "summary", str(tmp_path), "--slides", "/d/a.svs", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["finished_by"] == [cohort.worker.describe()]
    running.release()
    busy.close()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["slide", "summary", str(empty)]) == 2
    assert "holds no cohort records" in capsys.readouterr().err


def test_a_cohort_with_a_damaged_slide_finishes_the_rest_and_records_the_failure(tmp_path, capsys):
    from pcamlab.slide import make_synthetic_slide, sample_pools

    pools = sample_pools("valid")
    good = [make_synthetic_slide(tmp_path / f"good{index}.tif", *pools, width=960, height=960, seed=index).path
            for index in range(2)]
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(b"II*\x00" + bytes(4000))  # a TIFF header and nothing after it
    out = tmp_path / "out"
    command = ["slide", "predict", str(MODEL), str(good[0]), str(damaged), str(good[1]), "--out", str(out)]
    assert main(command) == 2
    printed = capsys.readouterr().out
    assert "damaged.tif: FAILED:" in printed and "2 slide(s) done, 0 already finished, 1 failed" in printed
    assert (out / "good0" / "summary.json").is_file() and (out / "good1" / "summary.json").is_file()
    assert (out / ".cohort" / "failed" / "damaged.json").is_file()
    assert main(["slide", "summary", str(out)]) == 1
    assert "3 slide(s): 2 done, 1 failed, 0 running, 0 missing" in capsys.readouterr().out
    assert main(command) == 2  # again: the failed slide is not retried (and says so), the finished ones are kept
    printed = capsys.readouterr().out
    assert printed.count("already finished") == 3 and "damaged: skipped: failed before" in printed
    assert "0 slide(s) done, 2 already finished, 0 failed, 1 skipped: failed before (use --retry-failed)" in printed
    # a slide locked by a live worker elsewhere is named, and left to it
    fresh = make_synthetic_slide(tmp_path / "fresh.tif", *pools, width=960, height=960, seed=5).path
    (out / ".cohort" / "locks").mkdir(parents=True, exist_ok=True)
    (out / ".cohort" / "locks" / "fresh.lock").write_text(json.dumps(other_host().__dict__))
    assert main(["slide", "predict", str(MODEL), str(fresh), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fresh: left to node-elsewhere pid 4242 (running, heartbeat" in printed, printed
    assert "0 slide(s) done, 0 already finished, 0 failed, 1 left to other workers" in printed


def test_from_slides_workers_share_the_slides_and_the_last_one_assembles(tmp_path):
    """data from-slides over two shares: each cuts its slides under a lock, the one that finds all cut writes out;
    the dataset is the one a single worker writes, and a task starting after the end succeeds without work."""
    import h5py

    from pcamlab.errors import RunFolderError
    from pcamlab.slide.cohort_synthetic import make_cohort
    from pcamlab.slide.dataset import FromSlidesOptions, dataset_from_slides

    cohort = make_cohort(tmp_path / "cohort", normal_slides=2, tumour_slides=2, split="train", seed=1, width=1536,
                         height=1152, lesions_per_slide=(1, 2))
    options = FromSlidesOptions(max_patches_per_slide=40, valid_fraction=0.5, seed=0)

    def run(out, shard=None, steal=True):
        return dataset_from_slides(cohort.slides, out, annotations=cohort.annotations_dir, options=options,
                                   shard=shard, steal=steal)

    alone = run(tmp_path / "alone")
    first = run(tmp_path / "shared", Shard(1, 2), steal=False)
    assert not first.complete and not (tmp_path / "shared").exists()
    done = sorted(path.name for path in (tmp_path / "shared.partial").glob("*.done.json"))
    assert done == sorted(f"{Path(slide).stem}.done.json" for slide in cohort.slides[0::2])
    second = run(tmp_path / "shared", Shard(2, 2), steal=False)
    assert second.complete and second.written and not (tmp_path / "shared.partial").exists()
    for name in ("camelyonpatch_level_2_split_train_x.h5", "camelyonpatch_level_2_split_valid_y.h5"):
        with h5py.File(tmp_path / "alone" / name) as one, h5py.File(tmp_path / "shared" / name) as two:
            key = next(iter(one))
            assert np.array_equal(one[key][:], two[key][:])
    assert second.counts == alone.counts
    late = run(tmp_path / "shared", Shard(1, 2))  # an array task that starts after the dataset is written
    assert late.complete and late.resumed_slides == len(cohort.slides) and not late.written  # says so, writes nothing
    with pytest.raises(RunFolderError, match="exists"):
        run(tmp_path / "shared")  # one worker alone: an existing dataset is refused, as before


def test_the_no_tissue_message_names_slide_predicts_flags():
    import argparse

    from pcamlab.cli.main import _command_flags, build_parser, cli_message
    from pcamlab.cli.slide import PREDICT_FLAGS

    message = "no tissue found in slide 'a.tif' (...); check the slide, or lower tissue_threshold / min_tissue_fraction"
    parameters = ("tissue_threshold", "min_tissue_fraction")
    expected = "check the slide, or lower --tissue-threshold / --min-tissue"
    assert cli_message(message, parameters, PREDICT_FLAGS).endswith(expected)  # a cohort's per-slide line
    parser = build_parser()
    args = parser.parse_args(["slide", "predict", "m.safetensors", "a.tif", "--out", "o"])
    assert cli_message(message, parameters, _command_flags(parser, args)).endswith(expected)  # one slide: main()
    assert isinstance(args, argparse.Namespace)
