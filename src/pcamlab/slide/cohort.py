"""A cohort of slides over many workers: which share a worker takes, a lock per slide, who did what.

A worker is one process of a cluster job (a Slurm array task, a torchrun rank, or any process started
by hand). Every worker is given the whole slide list and the same results folder; this module decides
what each one does, so that no slide is processed twice and none is lost when a worker dies:

- :func:`resolve_shard`: the worker's share, from ``shard`` when given, else the Slurm array
  (``SLURM_ARRAY_TASK_ID`` of ``SLURM_ARRAY_TASK_COUNT``, counted from ``SLURM_ARRAY_TASK_MIN`` in steps
  of ``SLURM_ARRAY_TASK_STEP``), else torchrun (``RANK`` of ``WORLD_SIZE``), else everything. torchrun
  inside an array task splits the task's share again by rank.
- :class:`Cohort`: per-slide locks in ``RESULTS/.cohort/locks/<slide id>.lock``, created atomically
  (``open(O_CREAT | O_EXCL)``, atomic on local disks and on NFSv3+), holding the owner's host, pid, start
  time and Slurm job; a heartbeat thread refreshes the lock's mtime while the slide is worked on. A lock
  whose owner is a dead process on this host is taken over at once; any other lock is taken over once
  its heartbeat is older than ``stale_after`` seconds (a worker killed on another node, or a node that
  died). Ages are measured with the file server's clock (the mtime of a file the worker touches), so
  clock skew between nodes does not matter. Failure records (``failed/<slide id>.json``) and a log per
  worker (``workers/<worker>.jsonl``: every slide it finished, skipped or failed) sit beside the locks.
- :meth:`Cohort.claim`: the slides this worker should process, in order: its own share first, then,
  with ``steal=True`` (the default), the unfinished and unlocked slides of the other shares, each taken
  from the end of its share (the other worker works from the front, so the two meet in the middle).
  Passes repeat until nothing is left to take, so a slide released by a stopped worker is picked up too.
- :func:`pcamlab.slide.cohort_status.cohort_status` (its own module): done / failed / running / missing for
  every slide (``pcamlab slide summary``), from these locks, failure records and worker logs.

Why stealing: a static share leaves a killed task's slides undone until it is resubmitted, and the
slowest share sets the job's end; with stealing the live workers finish them and the array ends when
the work does. See docs/cohorts.md for the measured comparison.

Example:
    >>> with Cohort("results", is_done=lambda key: Path("results", key, "summary.json").is_file()) as cohort:
    ...     for claim in cohort.claim(slides, shard=resolve_shard()):
    ...         predict_slide(predictor, claim.slide, Path("results") / claim.key)
    ...         claim.finish()
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcamlab.errors import ConfigError
from pcamlab.fileio import json_safe, process_running, write_json_atomic
from pcamlab.slide.batch import shard as take_share
from pcamlab.slide.batch import slide_folders

__all__ = ["COHORT_DIR", "STALE_AFTER", "Shard", "resolve_shard", "local_rank", "pick_device", "Worker",
           "Claim", "Cohort", "read_lock", "slide_result_done"]

COHORT_DIR = ".cohort"  # RESULTS/.cohort holds locks/, failed/ and workers/
STALE_AFTER = 300.0  # seconds without a heartbeat after which a lock of another host is taken over
HEARTBEAT_FRACTION = 0.1  # the holder refreshes its lock every stale_after / 10 seconds


@dataclass(frozen=True)
class Shard:
    """Share ``index`` (1-based) of ``count``, and where it came from (``source``, for messages)."""

    index: int
    count: int
    source: str = "all"

    def take(self, items: Sequence[Any]) -> list[Any]:
        """This share's items: item k (0-based) goes to share k % count + 1 (:func:`pcamlab.slide.batch.shard`)."""
        return take_share(items, self.index, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count} ({self.source})"


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    text = environ.get(name)
    if text is None or text == "":
        if default is None:
            raise ConfigError(f"{name} is not set, but the environment names a cluster share ({_named(environ)}); "
                              "set it, or give the share explicitly with shard=(index, count)", parameters=("shard",))
        return default
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer; got {text!r}; fix the job's environment or give the share "
                          "explicitly with shard=(index, count)", parameters=("shard",)) from None


def _named(environ: Mapping[str, str]) -> str:
    names = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE")
    return ", ".join(f"{name}={environ[name]}" for name in names if name in environ)


def resolve_shard(shard: tuple[int, int] | None = None, environ: Mapping[str, str] | None = None) -> Shard:
    """This worker's share of the cohort.

    Precedence: ``shard`` > Slurm array > torchrun > all slides. Inside a Slurm array task, torchrun's
    ranks split the task's share again: share ``task * WORLD_SIZE + RANK`` of ``count * WORLD_SIZE``.

    Args:
        shard: ``(index, count)`` with 1 <= index <= count, or None to read the environment.
        environ: the environment (default ``os.environ``).

    Raises:
        ConfigError: a share out of range, a Slurm array task id that is not one of
            ``SLURM_ARRAY_TASK_COUNT`` evenly spaced tasks (a list array such as ``--array=1,4``), ``RANK``
            without ``WORLD_SIZE`` (or the reverse), or a rank outside ``0..WORLD_SIZE-1``.
    """
    environ = os.environ if environ is None else environ
    if shard is not None:
        index, count = shard
        if not (isinstance(index, int) and isinstance(count, int) and 1 <= index <= count):
            raise ConfigError(f"shard must be (index, count) with 1 <= index <= count; got {shard!r}",
                              parameters=("shard",))
        return Shard(index, count, "given")
    task, tasks, source = 0, 1, []
    if "SLURM_ARRAY_TASK_ID" in environ or "SLURM_ARRAY_TASK_COUNT" in environ:
        task_id = _integer(environ, "SLURM_ARRAY_TASK_ID")
        tasks = _integer(environ, "SLURM_ARRAY_TASK_COUNT")
        first = _integer(environ, "SLURM_ARRAY_TASK_MIN", 0)
        step = _integer(environ, "SLURM_ARRAY_TASK_STEP", 1)
        last = _integer(environ, "SLURM_ARRAY_TASK_MAX", first + (max(tasks, 1) - 1) * max(step, 1))
        offset = task_id - first
        # SLURM_ARRAY_TASK_MAX too: every task of a list array (--array=1,4) sees the same environment, so each
        # one refuses, not only those whose id falls off the range
        if (tasks < 1 or step < 1 or offset < 0 or offset % step or offset // step >= tasks
                or last != first + (tasks - 1) * step):
            hint = f"{first}-{first + (max(tasks, 1) - 1) * max(step, 1)}" + (f":{step}" if step > 1 else "")
            raise ConfigError(
                f"Slurm array task {task_id} is not one of {tasks} evenly spaced tasks from {first} in steps of "
                f"{step} up to {last} (a list array such as 1,4?); submit a range of tasks (e.g. --array={hint}: "
                "finished slides are skipped) or give the share explicitly with shard=(index, count)",
                parameters=("shard",))
        task = offset // step
        source.append(f"Slurm array task {task_id}")
    rank, world = 0, 1
    if "RANK" in environ or "WORLD_SIZE" in environ:
        rank, world = _integer(environ, "RANK"), _integer(environ, "WORLD_SIZE")
        if not 0 <= rank < world:
            raise ConfigError(f"RANK must be in 0..WORLD_SIZE-1; got RANK={rank}, WORLD_SIZE={world}; fix the "
                              "launcher's environment or give the share with shard=(index, count)",
                              parameters=("shard",))
        source.append(f"torchrun rank {rank}")
    if not source:
        return Shard(1, 1, "all slides")
    return Shard(task * world + rank + 1, tasks * world, ", ".join(source))


def local_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """The worker's index among the workers of its node: ``LOCAL_RANK`` (torchrun), else ``SLURM_LOCALID``."""
    environ = os.environ if environ is None else environ
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        if environ.get(name, "").strip().isdigit():
            return int(environ[name])
    return None


def pick_device(device: str, environ: Mapping[str, str] | None = None,
                device_count: Callable[[], int] | None = None) -> tuple[str, str]:
    """One process per GPU: ``auto`` becomes ``cuda:<local rank mod GPUs>`` when GPUs are visible.

    Under Slurm, ask for one GPU per array task (``--gres=gpu:1``): Slurm then shows each task only its
    own GPU (``CUDA_VISIBLE_DEVICES``), and the local rank picks among several only where a node's
    workers share them (torchrun's ``--nproc-per-node``, ``srun --ntasks-per-node``).

    Returns:
        (device, why): e.g. ``("cuda:1", "LOCAL_RANK 1 of 4 GPUs")``; any ``device`` other than ``auto``
        is returned as given.
    """
    if device != "auto":
        return device, "given"
    if device_count is None:
        import torch

        device_count = torch.cuda.device_count if torch.cuda.is_available() else (lambda: 0)
    gpus = int(device_count())
    if gpus == 0:
        return "cpu", "no GPU visible"
    rank = local_rank(environ)
    if rank is None:
        return "cuda:0", f"{gpus} GPU(s) visible, no local rank"
    return f"cuda:{rank % gpus}", f"local rank {rank} of {gpus} GPU(s)"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc/PID/stat`` field 22): a reused pid has another."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


@dataclass(frozen=True)
class Worker:
    """Who holds a lock: enough to tell a live holder from a dead one and to find it in the job list."""

    host: str
    pid: int
    token: str  # unique per worker process and Cohort
    started: float  # epoch seconds
    process_start: str | None = None
    pid_namespace: str | None = None
    job: str | None = None  # "SLURM_ARRAY_JOB_ID_SLURM_ARRAY_TASK_ID", SLURM_JOB_ID, or torchrun rank

    @classmethod
    def this(cls, environ: Mapping[str, str] | None = None) -> Worker:
        environ = os.environ if environ is None else environ
        if environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"Slurm job {environ['SLURM_ARRAY_JOB_ID']}_{environ.get('SLURM_ARRAY_TASK_ID', '?')}"
        elif environ.get("SLURM_JOB_ID"):
            job = f"Slurm job {environ['SLURM_JOB_ID']}"
        elif environ.get("RANK"):
            job = f"rank {environ['RANK']}"
        else:
            job = None
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time(), _process_start(os.getpid()),
                   _pid_namespace(), job)

    @property
    def name(self) -> str:
        """File-name-safe identity: host, pid and the start time in ms."""
        return f"{self.host}-{self.pid}-{int(self.started * 1000)}"

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}" + (f" ({self.job})" if self.job else "")

    def is_dead(self) -> bool:
        """True only when this process surely ended: same host and pid namespace as us, and the pid is gone
        or belongs to a later process. A holder on another host is never judged here (its heartbeat is)."""
        if self.host != socket.gethostname() or self.pid_namespace != _pid_namespace():
            return False
        if self.pid == os.getpid():
            return False
        if not process_running(self.pid):
            return True
        return self.process_start is not None and _process_start(self.pid) not in (None, self.process_start)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Worker:
        return cls(**{name: values.get(name) for name in cls.__dataclass_fields__})


@dataclass
class Claim:
    """A slide this worker holds the lock of; settle it with :meth:`finish`, :meth:`fail` or :meth:`release`.

    Attributes:
        slide: the slide as given to :meth:`Cohort.claim`.
        key: the slide id (its result folder's name).
        took_over: why a previous holder's lock was taken (``None`` when the slide was free).
    """

    slide: Any
    key: str
    took_over: str | None
    _cohort: Cohort = field(repr=False)
    settled: bool = False

    def finish(self, **facts: Any) -> None:
        """The slide is done: log it with ``facts`` (e.g. seconds), drop an old failure record, release."""
        self._cohort._settle(self, "done", facts)

    def skipped(self, reason: str) -> None:
        """The slide was found done already (e.g. the same settings' result); logged, not counted as done."""
        self._cohort._settle(self, "skipped", {"reason": reason})

    def fail(self, error: BaseException) -> None:
        """The slide cannot be processed (e.g. a damaged file): write its failure record and release it."""
        self._cohort._settle(self, "failed", {"error": f"{type(error).__name__}: {error}"})

    def release(self) -> None:
        """Give the slide back unfinished, recording nothing (another worker may take it at once)."""
        self._cohort._settle(self, None, {})


class _Heartbeat(threading.Thread):
    """Refreshes a lock's mtime every ``interval`` seconds and notices when the lock is no longer ours."""

    def __init__(self, path: Path, token: str, interval: float):
        super().__init__(name=f"lock-heartbeat-{path.stem}", daemon=True)
        self.path, self.token, self.interval = path, token, interval
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if read_lock(self.path).get("token") != self.token:
                    self.lost = True
                    return
                os.utime(self.path)  # on NFS the server sets the time
            except OSError:
                self.lost = True
                return


def read_lock(path: Path) -> dict[str, Any]:
    """A lock's (or failure record's) JSON, or {} while its creator has not written it yet (or it is damaged)."""
    try:
        values = json.loads(path.read_text())
    except ValueError:
        return {}
    return values if isinstance(values, dict) else {}


class Cohort:
    """The bookkeeping of one results folder shared by many workers; use it as a context manager.

    Args:
        results: the results folder (``RESULTS/.cohort`` holds the locks, failure records and worker logs).
        is_done: ``is_done(key)`` is True when the slide ``key``'s result is complete (e.g. its
            ``summary.json`` exists); checked before and again after taking a lock.
        stale_after: seconds without a heartbeat after which another host's lock is taken over.
        clock: ``clock()`` -> epoch seconds to age locks with; default the file server's clock (the mtime
            of a file this worker touches in the lock folder), which holds under clock skew between nodes.
        worker: who this is (default :meth:`Worker.this`).
    """

    def __init__(self, results: str | os.PathLike, *, is_done: Callable[[str], bool], stale_after: float = STALE_AFTER,
                 clock: Callable[[], float] | None = None, worker: Worker | None = None):
        if not (isinstance(stale_after, (int, float)) and stale_after > 0):
            raise ConfigError(f"stale_after must be a number of seconds > 0; got {stale_after!r}, e.g. {STALE_AFTER:g}",
                              parameters=("stale_after",))
        self.results = Path(results)
        self._made_results = not self.results.exists()  # removed again at close when nothing was written
        self.root = self.results / COHORT_DIR
        self.locks, self.failed, self.logs = self.root / "locks", self.root / "failed", self.root / "workers"
        self.is_done, self.stale_after, self.clock = is_done, float(stale_after), clock
        self.worker = worker or Worker.this()
        self.log_path = self.logs / f"{self.worker.name}.jsonl"
        self._held: dict[str, tuple[Claim, _Heartbeat]] = {}
        self._start: dict[str, Any] | None = None
        self._logged = False  # this worker's log holds its start line
        self._worked = False  # some slide was settled with an event, or held when the worker stopped
        self.passed_over: dict[str, str] = {}  # after claim(): undone slides it did not take, and why
        self._probe = self.locks / f".clock.{self.worker.token}"

    def __enter__(self) -> Cohort:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(stopped=isinstance(error, KeyboardInterrupt))

    def close(self, *, stopped: bool = False) -> None:
        """Release every lock still held (a loop ended by an error or a stop: the slide is free for others;
        its partial result stays for whoever resumes it) and remove the cohort folders when they are empty.
        This worker's log goes too when it settled no slide, unless ``stopped`` mid-slide."""
        if self._held and stopped:
            self._worked = True  # stopped mid-slide (SIGTERM, Ctrl+C): its log says which slides the cohort has
        for claim, _ in list(self._held.values()):
            claim.release()
        self._probe.unlink(missing_ok=True)
        if self._logged and not self._worked:  # a worker that took no slide leaves no log
            self.log_path.unlink(missing_ok=True)
        for folder in (self.locks, self.logs, self.root, *([self.results] if self._made_results else [])):
            # a run that wrote nothing leaves nothing
            try:
                folder.rmdir()
            except OSError:
                pass

    def now(self) -> float:
        """Epoch seconds by the clock locks are aged with (see ``clock``)."""
        if self.clock is not None:
            return self.clock()
        try:
            self.locks.mkdir(parents=True, exist_ok=True)
            self._probe.touch()
            os.utime(self._probe)
            return self._probe.stat().st_mtime
        except OSError:
            return time.time()

    def lock_state(self, key: str, now: float | None = None) -> tuple[str, Worker | None, str]:
        """``("free" | "live" | "dead" | "stale", holder, why)`` of the slide ``key``'s lock."""
        path = self.locks / f"{key}.lock"
        try:
            mtime = path.stat().st_mtime
            values = read_lock(path)
        except FileNotFoundError:
            return "free", None, ""
        holder = Worker.from_dict(values) if values.get("token") else None
        age = (self.now() if now is None else now) - mtime
        if holder is not None and holder.is_dead():
            return "dead", holder, f"its holder {holder.describe()} has ended"
        if age > self.stale_after:
            who = holder.describe() if holder else "an unknown worker"
            return "stale", holder, f"the heartbeat of {who} is {age:.0f} s old (stale_after {self.stale_after:g} s)"
        return "live", holder, f"heartbeat {max(age, 0):.0f} s ago"

    def _try_lock(self, key: str, slide: Any) -> tuple[bool, str | None]:
        """Take the slide's lock: create it, or take over a dead or stale one. (taken, why taken over)."""
        path = self.locks / f"{key}.lock"
        record = json.dumps(json_safe({**self.worker.__dict__, "slide": os.fspath(slide), "claimed": time.time()}))
        took_over = None
        for _ in range(3):
            try:
                self.locks.mkdir(parents=True, exist_ok=True)
                descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileNotFoundError:  # the folder was tidied away by a finishing worker: make it again
                continue
            except FileExistsError:
                state, holder, why = self.lock_state(key)
                if state not in ("dead", "stale"):
                    return False, None
                token = holder.token if holder else None
                if _remove_if(path, lambda values: values.get("token") == token):
                    took_over = why
                continue  # create it now (another worker may beat us to it: O_EXCL decides)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
                handle.flush()
                os.fsync(handle.fileno())
            return True, took_over
        return False, None

    @contextlib.contextmanager
    def exclusive(self, name: str) -> Iterator[bool]:
        """Hold the cohort-wide lock ``name`` (e.g. ``"assembly"``: one worker writes what all made) while inside.

        Yields True when this worker holds it, False when a live worker does; dead and stale holders are
        taken over as for slides. Released on exit.
        """
        key = f".{name}"
        got, _ = self._try_lock(key, name)
        if not got:
            yield False
            return
        claim = Claim(name, key, None, self)
        heartbeat = _Heartbeat(self.locks / f"{key}.lock", self.worker.token, self.stale_after * HEARTBEAT_FRACTION)
        self._held[key] = (claim, heartbeat)
        heartbeat.start()
        try:
            yield True
        finally:
            claim.release()

    def claim(self, slides: Sequence[Any], *, shard: Shard | None = None, steal: bool = True,
              retry_failed: bool = False) -> Iterator[Claim]:
        """Yield the slides this worker should process, each with its lock held, until none is left.

        Finished slides (``is_done``), slides with a failure record (unless ``retry_failed``) and slides
        locked by a live worker are passed over. A yielded :class:`Claim` is settled by the caller; one left
        unsettled is released when the next is asked for (and not offered again by this call).

        Args:
            slides: every slide of the cohort (paths), the same list in every worker.
            shard: this worker's share (default: all slides).
            steal: after its own share, also take the other shares' unfinished, unlocked slides.
            retry_failed: try slides with a failure record again.

        Raises:
            DataError: two slides would share a result folder (same file name in different folders).
        """
        shard = shard or Shard(1, 1)
        keys = [folder.name for folder in slide_folders(slides, self.results)]
        by_key = dict(zip(keys, slides))
        order = shard.take(keys)
        if steal and shard.count > 1:  # each other share from its end, the nearest following share first
            for offset in range(1, shard.count):
                other = Shard((shard.index - 1 + offset) % shard.count + 1, shard.count)
                order += other.take(keys)[::-1]
        self._start = {"event": "start", "worker": self.worker.__dict__, "shard": str(shard), "steal": steal,
                       "slides": [os.fspath(slide) for slide in slides], "time": time.time()}
        self._log(None)  # at once: `slide summary` counts the whole cohort while the first slide runs
        offered: set[str] = set()  # a slide this worker gave back unfinished is not taken again by it
        taken = True
        while taken:
            taken = False
            passed: dict[str, str] = {}
            for key in order:
                if key in offered or self.is_done(key):
                    continue
                if not retry_failed and (self.failed / f"{key}.json").exists():
                    passed[key] = "failed before"
                    continue
                got, took_over = self._try_lock(key, by_key[key])
                if not got:
                    state, holder, why = self.lock_state(key)
                    passed[key] = (f"left to {holder.describe() if holder else 'a worker starting up'} (running, {why})"
                                   if state == "live" else "locked by another worker")
                    continue
                claim = Claim(by_key[key], key, took_over, self)
                heartbeat = _Heartbeat(self.locks / f"{key}.lock", self.worker.token,
                                       self.stale_after * HEARTBEAT_FRACTION)
                self._held[key] = (claim, heartbeat)
                heartbeat.start()
                if self.is_done(key):  # finished by another worker between the check and the lock
                    claim.release()
                    continue
                taken = True
                offered.add(key)
                yield claim
                if not claim.settled:
                    claim.release()
            self.passed_over = passed

    def _settle(self, claim: Claim, event: str | None, facts: dict[str, Any]) -> None:
        if claim.settled:
            return
        claim.settled = True
        _, heartbeat = self._held.pop(claim.key)
        heartbeat.stopped.set()
        if event is not None:
            facts = {**facts, "lost_lock": True} if heartbeat.lost else facts
            if event == "failed":
                write_json_atomic(self.failed / f"{claim.key}.json", {
                    "slide": os.fspath(claim.slide), "error": facts["error"], "worker": self.worker.__dict__,
                    "time": time.time()})
            elif event == "done":
                (self.failed / f"{claim.key}.json").unlink(missing_ok=True)
            self._log({"event": event, "slide": claim.key, "took_over": claim.took_over, **facts})
        _remove_if(self.locks / f"{claim.key}.lock", lambda values: values.get("token") == self.worker.token)

    def _log(self, entry: dict[str, Any] | None) -> None:
        """Append one line to this worker's own log (only this process writes it: safe on NFS); its start line
        (the slides it was given) first. ``None``: the start line alone."""
        self.logs.mkdir(parents=True, exist_ok=True)
        lines = [] if self._logged or self._start is None else [self._start]
        if entry is not None:
            lines.append({**entry, "time": time.time()})
            self._worked = True
        if not lines:
            return
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(json_safe(line)) + "\n" for line in lines)
            handle.flush()
            os.fsync(handle.fileno())
        self._logged = self._logged or self._start is not None


def _remove_if(path: Path, belongs: Callable[[dict[str, Any]], bool]) -> bool:
    """Remove the lock at ``path`` when ``belongs(its content)``; True when removed.

    Renamed aside first (atomic) and checked there, so a lock that another worker created in the
    meantime is never deleted: it is linked back (``link`` fails rather than overwrite a newer lock).
    """
    aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.removing")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if belongs(read_lock(aside)):
        aside.unlink()
        return True
    try:
        os.link(aside, path)
    except FileExistsError:
        pass  # a third worker locked it meanwhile; the one we moved notices at its next heartbeat
    aside.unlink()
    return False


def slide_result_done(results: str | os.PathLike) -> Callable[[str], bool]:
    """``is_done`` for ``slide predict`` results: the slide's folder holds its ``summary.json`` (written last,
    and the folder appears whole: :func:`pcamlab.slide.predict_slide` renames it into place when complete)."""
    from pcamlab.slide.predict import OUTPUT_FILES

    results = Path(results)
    return lambda key: (results / key / OUTPUT_FILES["summary"]).is_file()
