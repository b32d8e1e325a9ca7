"""Slide heatmap jobs for the server: a slide below the configured root -> tumour map, thumbnail, GeoJSON.

A job runs :func:`pcamlab.slide.predict_slide` with the server's one predictor, in a single background
thread (a slide takes minutes; patch requests keep their own pool), and keeps its results in a private
folder until the server stops. Slides are named by their path *relative to the slide root*; a name that
is absolute, climbs out with ``..``, or resolves (through a symbolic link) outside the root is refused,
so a client can read no other file of the machine. An ``mpp`` given with a job wins over the slide's own
metadata, as on the command line; a damaged slide (cut short, or a tile that does not decode) is refused
before the job starts, or ends the job with its one-line error, and no tile of it is scored.

Example:
    >>> jobs = SlideJobs(model.predictor, Path("/data/slides"))
    >>> job = jobs.submit("case_001.svs")
    >>> jobs.get(job.id).status
    'running'
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pcamlab.errors import ConfigError, DataError, RunError
from pcamlab.slide import OUTPUT_FILES

__all__ = ["SLIDE_SUFFIXES", "RESULT_FILES", "SlideJob", "SlideJobs", "SlideNotFound", "JobNotFound", "JobNotReady",
           "SlideQueueFull", "list_slides", "resolve_slide", "write_heat_layer"]

# Whole-slide formats OpenSlide or tiffslide read (pcamlab.slide.open_slide); listed for the page.
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
HEAT_LAYER_FILE = "heat_layer.png"  # the service's own file in the slide's folder, beside pcamlab slide's outputs
# What a finished job serves: name in the URL -> file in the slide's result folder (pcamlab slide's names are
# read from the one list of its outputs, pcamlab.slide.OUTPUT_FILES).
RESULT_FILES = {
    "thumbnail.png": OUTPUT_FILES["thumbnail"],  # the whole slide, RGB
    "heatmap.png": HEAT_LAYER_FILE,  # RGBA, same size as the thumbnail: the map placed on it, transparent off tissue
    "overlay.png": OUTPUT_FILES["overlay"],  # pcamlab slide's overlay with axes in mm and a colour bar
    "heatmap.geojson": OUTPUT_FILES["geojson"],  # tiles above the threshold, QuPath detections in level-0 pixels
}
MAX_LISTED = 1000  # slides listed for the page
MAX_KEPT = 16  # finished jobs whose results are kept; older ones are deleted


class SlideNotFound(DataError):
    """The named slide is not a slide file below the root (HTTP 404)."""


class JobNotFound(DataError):
    """No job has this id (HTTP 404)."""


class JobNotReady(DataError):
    """The job has not finished, or failed (HTTP 409)."""


class SlideQueueFull(DataError):
    """Too many slide jobs waiting (HTTP 503)."""


def list_slides(root: Path, limit: int = MAX_LISTED) -> list[str]:
    """Slide files below ``root`` (any depth; hidden entries, links leading outside it and files that do not
    open as slides skipped) as POSIX paths relative to it, sorted."""
    found: list[str] = []
    root = Path(root)
    base = root.resolve()
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        for name in sorted(files):
            path = Path(directory) / name
            if (not name.startswith(".") and name.lower().endswith(SLIDE_SUFFIXES)
                    and path.resolve().is_relative_to(base) and _opens(path)):
                found.append(path.relative_to(root).as_posix())
                if len(found) >= limit:
                    return sorted(found)
    return sorted(found)


def _opens(path: Path) -> bool:
    """Whether ``path`` opens as a slide (a text file named ``.tif`` does not)."""
    from pcamlab.errors import PcamlabError
    from pcamlab.slide import open_slide

    try:
        open_slide(path).close()
    except PcamlabError:
        return False
    return True


def _relative(message: str, path: Path, name: str) -> str:
    """``message`` with the slide's absolute server path replaced by its name relative to the root."""
    return message.replace(str(path), name)


def resolve_slide(root: Path, name: str) -> Path:
    """The file a slide name means, checked to lie below ``root``.

    Args:
        root: the server's slide root.
        name: a path relative to it, with ``/`` separators (as :func:`list_slides` gives).

    Raises:
        DataError: the name is empty, absolute, holds ``..``, a backslash or a NUL (400).
        SlideNotFound: no slide file of that name below the root, including a link leading outside it (404).
    """
    text = str(name)
    parts = PurePosixPath(text).parts
    if not text or "\x00" in text or "\\" in text or text.startswith("/") or ".." in parts or len(text) > 1000:
        raise DataError(
            f"slide {text[:200]!r} must be a path relative to the slide root, without '..' (as GET /v1/slides lists)"
        )
    base = Path(root).resolve()
    path = (base / text).resolve()
    if not path.is_relative_to(base) or not path.is_file() or not path.name.lower().endswith(SLIDE_SUFFIXES):
        raise SlideNotFound(f"no slide {text!r} below the slide root; GET /v1/slides lists the slides there")
    return path


def write_heat_layer(path: Path, probability_map: np.ndarray, grid: Any, thumbnail_size: tuple[int, int]) -> Path:
    """The probability map as an RGBA PNG laid on the thumbnail: same size, transparent where no tissue tile.

    Args:
        path: PNG to write.
        probability_map: float32 per stride cell (NaN = not predicted).
        grid: the slide's :class:`pcamlab.slide.Grid` (where the map lies in level-0 pixels).
        thumbnail_size: (width, height) of the thumbnail in pixels.
    """
    from matplotlib import colormaps
    from PIL import Image

    from pcamlab.slide.outputs import COLOUR_MAP

    width, height = thumbnail_size
    scale = width / grid.slide_width_level0
    map_width = max(1, int(round(grid.map_width_level0 * scale)))
    map_height = max(1, int(round(grid.map_height_level0 * scale)))
    values = np.asarray(Image.fromarray(np.asarray(probability_map, dtype=np.float32), mode="F")
                        .resize((map_width, map_height), Image.Resampling.NEAREST))
    canvas = np.full((height, width), np.nan, dtype=np.float32)
    canvas[:min(height, map_height), :min(width, map_width)] = values[:height, :width]
    known = np.isfinite(canvas)
    rgba = (colormaps[COLOUR_MAP](np.nan_to_num(canvas, nan=0.0)) * 255).round().astype(np.uint8)  # (H, W, 4)
    rgba[..., 3] = np.where(known, 255, 0)
    from pcamlab.fileio import atomic_path

    with atomic_path(path) as temporary, open(temporary, "wb") as stream:
        Image.fromarray(rgba, mode="RGBA").save(stream, format="PNG")
    return path


@dataclass
class SlideJob:
    """One slide heatmap job.

    Attributes:
        id: 16 hex characters, unguessable.
        slide: the slide name as asked (relative to the root).
        stride: tile stride in model pixels (None = the patch size).
        mpp: level-0 microns per pixel given with the job; wins over the slide's own (None = the slide's own).
        status: ``queued``, ``running``, ``done`` or ``failed``.
        progress: share of the tissue tiles predicted (0-1).
        error: the one-line reason of a failure.
        summary: scores and areas of a finished slide (``pcamlab slide``'s summary.json, abridged).
        folder: the finished result folder.
    """

    id: str
    slide: str
    stride: int | None
    mpp: float | None = None
    status: str = "queued"
    progress: float = 0.0
    error: str | None = None
    summary: dict[str, Any] | None = None
    folder: Path | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """What GET /v1/slides/jobs/ID answers."""
        done = self.status == "done"
        return {
            "id": self.id, "slide": self.slide, "stride": self.stride, "mpp": self.mpp, "status": self.status,
            "progress": round(self.progress, 4), "error": self.error, "summary": self.summary,
            "results": {name: f"/v1/slides/jobs/{self.id}/{name}" for name in RESULT_FILES} if done else {},
        }


SUMMARY_KEYS = ("score_max", "score_top_k_mean", "top_k", "threshold", "tumour_area_mm2", "tissue_area_mm2",
                "tiles", "tiles_above_threshold", "slide_dimensions", "slide_mpp", "mpp_source", "recorded_mpp",
                "model_mpp", "stride", "seconds", "notes", "warnings")


class SlideJobs:
    """Slide heatmap jobs of one server: one runs at a time, ``max_queued`` may wait.

    Args:
        predictor: the server's predictor (``contract`` + ``predict_proba``).
        root: the folder slides may be read from.
        batch_size: tiles per forward pass.
        max_queued: jobs waiting before new ones are refused (:class:`SlideQueueFull`).

    Raises:
        ConfigError: ``root`` is not a folder.
    """

    def __init__(self, predictor: Any, root: Path, *, batch_size: int = 64, max_queued: int = 4):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ConfigError(f"slide_root must be an existing folder of slides; got {str(self.root)!r}")
        self.predictor = predictor
        self.batch_size = batch_size
        self.max_queued = max_queued
        self.work = Path(tempfile.mkdtemp(prefix="pcamlab-serve-slides-"))
        self._jobs: OrderedDict[str, SlideJob] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcamlab-slide-job")
        self._stopping = threading.Event()

    def list(self) -> list[str]:
        """The slides below the root (see :func:`list_slides`)."""
        return list_slides(self.root)

    def check(self, path: Path, name: str, stride: int | None, mpp: float | None) -> None:
        """Open the slide and plan its grid, so a bad slide or option fails before a job is made.

        Raises:
            DamagedSlideError: the slide is cut short or its first tile does not decode.
            DataError: the file does not open as a slide, its resolution is unknown (and no ``mpp`` given) or
                implausible, or the model's patch does not fit; ConfigError: a stride not dividing the patch
                size. Messages name the slide relative to the root.
        """
        from pcamlab.errors import PcamlabError
        from pcamlab.slide import MissingResolutionError, open_slide, plan_grid
        from pcamlab.slide._model import PCAM_MPP, contract_value

        contract = self.predictor.contract
        patch_size = int(contract_value(contract, "patch_size", 96))
        try:
            with open_slide(path, mpp=mpp) as opened:
                plan_grid(opened, patch_size, patch_size if stride is None else stride,
                          float(contract_value(contract, "mpp", PCAM_MPP)))
        except MissingResolutionError as error:
            raise DataError(_relative(f"{error}; in the request: \"mpp\": 0.25", path, name)) from None
        except PcamlabError as error:
            raise type(error)(_relative(str(error), path, name)) from None

    def submit(self, slide: str, stride: int | None = None, mpp: float | None = None) -> SlideJob:
        """Start (or find) the job for ``slide`` at ``stride``; a finished or running one is returned as is.

        Args:
            slide: the slide's path relative to the root.
            stride: tile step in model pixels (None = the patch size).
            mpp: level-0 microns per pixel; wins over the slide's metadata and TIFF tags.

        Raises:
            DataError / SlideNotFound: a bad or unknown slide name, a file that is not a slide, an unknown or
                implausible resolution; ConfigError: a bad stride (all checked before a job is made).
            SlideQueueFull: ``max_queued`` jobs already wait.
        """
        path = resolve_slide(self.root, slide)
        self.check(path, slide, stride, mpp)
        with self._lock:
            for job in self._jobs.values():
                if job.slide == slide and job.stride == stride and job.mpp == mpp and job.status != "failed":
                    return job
            waiting = sum(job.status == "queued" for job in self._jobs.values())
            if waiting >= self.max_queued:
                raise SlideQueueFull(
                    f"{waiting} slide jobs are already waiting (limit {self.max_queued}); retry when one has finished"
                )
            job = SlideJob(secrets.token_hex(8), slide, stride, mpp)
            self._jobs[job.id] = job
            self._evict()
        self._executor.submit(self._run, job, path)
        return job

    def get(self, job_id: str) -> SlideJob:
        """The job with this id.

        Raises:
            JobNotFound: no such job (or it was evicted).
        """
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFound(f"no slide job {job_id[:40]!r} on this server; start one with POST /v1/slides/jobs")
        return job

    def result(self, job_id: str, name: str) -> Path:
        """The file ``name`` (a key of ``RESULT_FILES``) of a finished job.

        Raises:
            JobNotFound: unknown job or result name.
            JobNotReady: the job is queued, running or failed.
        """
        job = self.get(job_id)
        if name not in RESULT_FILES:
            raise JobNotFound(f"a slide job has no result {name!r}; results are {list(RESULT_FILES)}")
        if job.status != "done" or job.folder is None:
            reason = f": {job.error}" if job.error else ""
            raise JobNotReady(f"slide job {job.id} is {job.status}{reason}; poll GET /v1/slides/jobs/{job.id}")
        return job.folder / RESULT_FILES[name]

    def _run(self, job: SlideJob, path: Path) -> None:
        from PIL import Image

        from pcamlab.errors import PcamlabError
        from pcamlab.slide import Grid, predict_slide

        job.status = "running"

        def progress(done: int, total: int) -> None:
            if self._stopping.is_set():  # predict_slide stops at the next batch when its callback raises
                raise RunError("the server stopped before the slide was finished")
            job.progress = done / total if total else 1.0

        try:
            folder = self.work / job.id / "slide"
            result = predict_slide(self.predictor, path, folder, stride=job.stride, mpp=job.mpp,
                                   batch_size=self.batch_size, resume=False, progress=progress)
            with Image.open(result.files["thumbnail"]) as thumbnail:
                size = thumbnail.size
            write_heat_layer(folder / HEAT_LAYER_FILE, result.probability_map,
                             Grid(**result.summary["grid"]), size)
            job.summary = {key: result.summary.get(key) for key in SUMMARY_KEYS}
            job.folder = folder
            job.progress = 1.0
            job.status = "done"
        except PcamlabError as error:
            job.error, job.status = _relative(str(error), path, job.slide).replace(str(self.work), "<work>"), "failed"
        except Exception as error:  # a bug or an I/O failure: reported on the job, never lost in a thread
            message = _relative(f"the slide job failed ({type(error).__name__}: {error})", path, job.slide)
            job.error, job.status = message.replace(str(self.work), "<work>"), "failed"
        finally:
            job.finished = time.time()

    def _evict(self) -> None:
        """Drop the oldest finished jobs (and their files) beyond ``MAX_KEPT``; called with the lock held."""
        finished = [job for job in self._jobs.values() if job.status in ("done", "failed")]
        for job in finished[: max(0, len(finished) - MAX_KEPT)]:
            del self._jobs[job.id]
            shutil.rmtree(self.work / job.id, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop the running job at its next batch, drop queued ones, delete every result."""
        self._stopping.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.work, ignore_errors=True)
