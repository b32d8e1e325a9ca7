"""Which slides of a cohort's results are done, failed, running or missing (``pcamlab slide summary``).

Read from what the workers of :mod:`pcamlab.slide.cohort` leave in ``RESULTS/.cohort/``: every worker's log
(``workers/<worker>.jsonl``: the slides it was given and every slide it finished, skipped or failed), the
locks (``locks/<slide id>.lock``: live, or left behind by a dead or stale worker) and the failure records
(``failed/<slide id>.json``). Nothing is written.

Example:
    >>> for state in cohort_status("results", is_done=slide_result_done("results")):
    ...     print(state.state, state.key, state.detail)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcamlab.errors import DataError
from pcamlab.slide.batch import slide_folders
from pcamlab.slide.cohort import COHORT_DIR, STALE_AFTER, Cohort, Worker, read_lock

__all__ = ["SlideState", "cohort_status"]


@dataclass
class SlideState:
    """One slide of :func:`cohort_status`: ``state`` is done, failed, running or missing."""

    key: str
    slide: str | None
    state: str
    detail: str = ""
    finished_by: list[str] = field(default_factory=list)  # workers that logged it done (one, unless redone)


def cohort_status(results: str | os.PathLike, *, is_done: Callable[[str], bool], slides: Sequence[Any] | None = None,
                  stale_after: float = STALE_AFTER) -> list[SlideState]:
    """The state of every slide of a cohort's results folder.

    Args:
        results: the results folder the workers shared.
        is_done: as for :class:`Cohort`.
        slides: the cohort's slides; default every slide some worker was given (from the worker logs) and
            every slide with a lock or failure record.
        stale_after: as for :class:`Cohort`; a dead or stale lock counts as missing, not running.

    Returns:
        One :class:`SlideState` per slide, in the order of ``slides`` (else sorted by id).

    Raises:
        DataError: ``slides`` is None and the folder holds no cohort records (nothing tells which slides
            belong to it), or two slides would share a result folder.
    """
    results = Path(results)
    cohort = Cohort(results, is_done=is_done, stale_after=stale_after)
    events: list[dict[str, Any]] = []
    for log in sorted(cohort.logs.glob("*.jsonl")):
        who = log.stem
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed worker
            if isinstance(event, dict):
                if event.get("event") == "start" and isinstance(event.get("worker"), dict):
                    who = Worker.from_dict(event["worker"]).describe()
                events.append({**event, "by": who})
    if slides is None:  # every slide a worker was given, then any other with a lock or a failure record
        named: dict[str, Any] = {}
        for event in events:
            if event.get("event") == "start":
                given = event.get("slides", [])
                named.update((folder.name, slide) for folder, slide in zip(slide_folders(given, results), given))
        records = [*cohort.locks.glob("*.lock"), *cohort.failed.glob("*.json")]
        for path in records:
            named.setdefault(path.stem, read_lock(path).get("slide") or path.stem)
        if not named:
            raise DataError(f"{str(results)!r} holds no cohort records ({COHORT_DIR}/ is missing or empty); pass the "
                            "cohort's slides to say which results to expect", parameters=("slides",))
        keys = sorted(named)
        slides = [named[key] for key in keys]
    else:
        keys = [folder.name for folder in slide_folders(slides, results)]
    finished: dict[str, list[str]] = {}
    for event in events:
        if event.get("event") == "done":
            finished.setdefault(event.get("slide"), []).append(event["by"])
    now = cohort.now()
    states = []
    for key, slide in zip(keys, slides):
        done_by = finished.get(key, [])
        if is_done(key):
            states.append(SlideState(key, os.fspath(slide), "done", "", done_by))
            continue
        lock, holder, why = cohort.lock_state(key, now)
        failure = cohort.failed / f"{key}.json"
        if lock == "live":
            states.append(SlideState(key, os.fspath(slide), "running",
                                     f"on {holder.describe() if holder else 'a worker starting up'}, {why}"))
        elif failure.exists():
            try:
                record = json.loads(failure.read_text())
            except ValueError:
                record = {}
            worker = record.get("worker")
            who = Worker.from_dict(worker).describe() if isinstance(worker, dict) else ""
            states.append(SlideState(key, os.fspath(slide), "failed", str(record.get("error", "unreadable failure record"))
                                     + (f" (on {who})" if who else "")))
        else:
            states.append(SlideState(key, os.fspath(slide), "missing",
                                     f"a lock was left behind: {why}" if lock in ("dead", "stale") else ""))
    cohort.close()
    return states
