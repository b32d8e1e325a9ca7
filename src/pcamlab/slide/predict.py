"""Whole-slide tumour maps: tile a slide at the model's resolution, predict the tissue tiles, write the maps.

:func:`predict_slide` is the library entry point (the CLI and the web service call it):

1. open the slide (OpenSlide, else tiffslide; a file cut short is refused here) and find its microns per
   pixel (the ``mpp`` given, else its metadata, else its TIFF tags);
2. choose the pyramid level nearest the model's training resolution (the input contract's ``mpp``,
   PCam's 0.972 um/px by default); when no level is within 5% of it, read the next finer level and
   resample every region to the model's resolution (box filter); :mod:`pcamlab.slide.tiles`, shared
   with ``data from-slides``;
3. lay a grid of ``patch_size`` tiles at ``stride`` over the slide, compute a tissue mask on a low
   level (:mod:`pcamlab.slide.tissue`) and keep the tiles with enough tissue;
4. read regions with a bounded pool of reader threads running ahead of the model, predict them in
   batches through the Predictor, and write each batch's probabilities into a memory-mapped ``.npy``
   grid at once (memory does not grow with the slide; a killed run resumes from that file);
5. average overlapping tiles into the probability map and write the outputs (see :class:`SlideResult`).

A region that does not decode stops the slide with :class:`~pcamlab.slide.reader.DamagedSlideError`: no
tile of it is scored, and the partial folder is removed (its tiles came from a file that must be copied
again). Between batches the run checks the stop flag (:mod:`pcamlab.stopping`): a SIGINT or SIGTERM
ends it there, with every finished batch in the partial folder, and the same call resumes it.

Everything is written into a hidden ``.NAME.partial`` folder beside ``out_dir`` and renamed to
``out_dir`` only when complete, so ``out_dir`` is either absent or whole; a finished ``out_dir`` is never
overwritten.

Example:
    >>> from pcamlab.slide import load_predictor, predict_slide
    >>> predictor = load_predictor("runs/demo/best.safetensors")
    >>> result = predict_slide(predictor, "slide.tif", "out/slide", stride=48)
    >>> result.summary["score_max"], result.files["heatmap"]
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab import stopping
from pcamlab.errors import ConfigError, DataError, RunError, RunFolderError
from pcamlab.fileio import write_json_atomic
from pcamlab.runtime.fastest import SOURCE_HASH_KEY, runtime_of
from pcamlab.slide import outputs
from pcamlab.slide._model import PCAM_MPP, contract_value
from pcamlab.slide.grid import Grid
from pcamlab.slide.reader import DamagedSlideError, Slide, open_slide
from pcamlab.slide.tiles import LEVEL_TOLERANCE, plan_grid, read_tiles, tile_tissue
from pcamlab.slide.tissue import DEFAULT_SATURATION_THRESHOLD

__all__ = ["SlideResult", "plan_grid", "predict_slide", "OUTPUT_FILES", "LEVEL_TOLERANCE"]

REGION_PIXELS = 1024  # edge of one reader's region in pixels of the level read (bounds reader memory)
STATE_FILE = "state.json"
RUN_KEY = "run"  # summary.json's record of what produced the folder: the resume state plus threshold and top_k
TILE_FILE = "tile_probabilities.npy"
OUTPUT_FILES = {  # key -> file name in the slide's folder: the one list (the service reads it from here)
    "tile_probabilities": TILE_FILE,  # float32 (rows, cols) per tile, NaN = not predicted (glass)
    "probability_map": "probability_map.npy",  # float32 per stride cell, overlapping tiles averaged
    "heatmap": "heatmap.png",
    "overlay": "overlay.png",
    "thumbnail": "thumbnail.png",
    "tissue_mask": "tissue_mask.png",
    "tiles_csv": "tiles.csv",
    "geojson": "tumour_tiles.geojson",
    "summary": "summary.json",
    "report": "report.html",
}


@dataclass
class SlideResult:
    """What :func:`predict_slide` returns.

    Attributes:
        slide: the slide file.
        out_dir: the finished folder.
        summary: the content of ``summary.json`` (scores, areas, tiles, seconds, geometry).
        files: key of ``OUTPUT_FILES`` -> path.
        probability_map: float32 map per stride cell (NaN = no tissue tile), as written (None when skipped).
        skipped: ``out_dir`` was already finished by the same slide file, model and settings; nothing was done.
    """

    slide: Path
    out_dir: Path
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)
    probability_map: np.ndarray | None = None
    skipped: bool = False  # True when out_dir already held this result (same slide, model and settings)


def _model_name(predictor: Any) -> str:
    path = getattr(predictor, "path", None)
    return str(path) if path else type(predictor).__name__


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_sha256(predictor: Any) -> str | None:
    """SHA-256 of the checkpoint behind the predictor: for an ONNX export of a checkpoint, the checkpoint's
    own (stored in the export), so a checkpoint and its exports are one model whichever runtime runs it;
    else the model file's (None for an in-memory predictor without a path)."""
    session = getattr(predictor, "session", None)
    if session is not None:
        source = session.get_modelmeta().custom_metadata_map.get(SOURCE_HASH_KEY)
        if source:
            return source
    path = getattr(predictor, "path", None)
    if not path or not Path(path).is_file():
        return None
    status = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), status.st_size, status.st_mtime_ns)


def _state(slide: Slide, grid: Grid, predictor: Any, settings: dict[str, Any]) -> dict[str, Any]:
    """What a partial run must match to be resumed: the slide file, the geometry, the model, the settings."""
    status = slide.path.stat()
    contract = getattr(predictor, "contract", {})
    contract_dict = contract if isinstance(contract, dict) else getattr(contract, "to_dict", lambda: {})()
    return {
        "slide": str(slide.path.resolve()), "slide_bytes": status.st_size, "slide_mtime_ns": status.st_mtime_ns,
        "grid": asdict(grid), "model_sha256": _model_sha256(predictor),
        "contract": json.loads(json.dumps(contract_dict, default=str)), "settings": settings,
    }


class _Readers:
    """A bounded pool of reader threads, each with its own open slide, producing tile batches in order."""

    def __init__(self, slide_path: Path, backend: str, mpp: float | None, grid: Grid, workers: int):
        self.slide_path, self.backend, self.mpp, self.grid = slide_path, backend, mpp, grid
        self.local = threading.local()
        self.opened: list[Slide] = []
        self.lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="slide-reader")

    def _slide(self) -> Slide:
        slide = getattr(self.local, "slide", None)
        if slide is None:
            slide = open_slide(self.slide_path, mpp=self.mpp, backend=self.backend)
            self.local.slide = slide
            with self.lock:
                self.opened.append(slide)
        return slide

    def read(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 (N, patch, patch, 3) tiles at (rows, cols), from one region read covering all of them."""
        return read_tiles(self._slide(), self.grid, *self.grid.tile_origins_level0(rows, cols)), rows, cols

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        for slide in self.opened:
            slide.close()


def _chunks(todo_rows: np.ndarray, todo_cols: np.ndarray, grid: Grid) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group the tiles to predict into blocks whose region is about REGION_PIXELS on a side when read."""
    span = max(1, int((REGION_PIXELS / grid.read_scale - grid.patch_size) // grid.stride) + 1)  # tiles per block side
    block = (todo_rows // span) * (grid.cols // span + 1) + todo_cols // span
    order = np.argsort(block, kind="stable")
    blocks, starts = np.unique(block[order], return_index=True)
    ends = list(starts[1:]) + [len(order)]
    return [(todo_rows[order[s:e]], todo_cols[order[s:e]]) for s, e in zip(starts, ends)]


def _predict_tiles(predictor: Any, readers: _Readers, chunks: list, tiles_grid: np.ndarray, batch_size: int,
                   workers: int, progress: Callable[[int, int], object] | None, done: int, total: int) -> int:
    """Read chunks ahead with the pool, predict in batches, write each batch into the memory map. Returns tiles done."""
    pending: collections.deque = collections.deque()
    queue_depth = 2 * workers  # regions read ahead of the model: bounds memory
    next_chunk = 0
    buffer_tiles, buffer_rows, buffer_cols, buffered = [], [], [], 0

    def flush(count: int) -> None:
        """Predict the first ``count`` buffered tiles and write them; the rest stay buffered."""
        nonlocal buffer_tiles, buffer_rows, buffer_cols, buffered, done
        images = np.concatenate(buffer_tiles) if len(buffer_tiles) > 1 else buffer_tiles[0]
        rows, cols = np.concatenate(buffer_rows), np.concatenate(buffer_cols)
        buffer_tiles, buffer_rows, buffer_cols = [images[count:]], [rows[count:]], [cols[count:]]
        buffered = len(images) - count
        images, rows, cols = images[:count], rows[:count], cols[:count]
        probabilities = np.asarray(predictor.predict_proba(images, batch_size=len(images)), dtype=np.float32)
        if probabilities.shape != (len(images),):
            raise RunError(f"the predictor returned shape {probabilities.shape} for {len(images)} tiles; expected "
                           f"({len(images)},): a Predictor's predict_proba must return one probability per patch")
        tiles_grid[rows, cols] = probabilities
        tiles_grid.flush()
        done += len(images)
        if progress is not None:
            progress(done, total)
        stopping.check()  # a safe point: this batch is on disk, the partial folder resumes from here

    while next_chunk < len(chunks) or pending:
        while next_chunk < len(chunks) and len(pending) < queue_depth:
            pending.append(readers.pool.submit(readers.read, *chunks[next_chunk]))
            next_chunk += 1
        tiles, rows, cols = pending.popleft().result()
        buffer_tiles.append(tiles)
        buffer_rows.append(rows)
        buffer_cols.append(cols)
        buffered += len(tiles)
        while buffered >= batch_size:
            flush(batch_size)
    if buffered:
        flush(buffered)
    return done


def _remove_leftovers(partial: Path) -> None:
    """Remove from a resumed partial folder everything but its tile grid and state: the killed run's temporary
    files (``.thumbnail.png.*.tmp``, ``probability_map.tmp.npy``) and outputs it had begun, all written again."""
    for path in partial.iterdir():
        if path.name in (TILE_FILE, STATE_FILE):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _open_partial(partial: Path, state: dict[str, Any], shape: tuple[int, int], resume: bool) -> np.ndarray:
    """The memory-mapped tile grid of the partial folder: reopened when its state matches, else new."""
    state_path = partial / STATE_FILE
    if partial.exists():
        previous = None
        try:
            previous = json.loads(state_path.read_text())
            if isinstance(previous, dict):  # older states also held the model file's path
                previous.pop("model", None)
        except (OSError, json.JSONDecodeError):
            pass  # no state written yet: the previous run died while creating the folder; start again
        if previous is not None and resume and previous == state:
            try:
                tiles = np.load(partial / TILE_FILE, mmap_mode="r+")
                if tiles.shape == shape and tiles.dtype == np.float32:
                    _remove_leftovers(partial)
                    return tiles
            except (OSError, ValueError):
                pass
        if previous is not None and previous != state and resume:
            raise RunFolderError(
                f"{str(partial)!r} holds an unfinished run of other settings (differs in: "
                f"{_differences_text(previous, state)}); run with the same settings to resume it, or pass "
                "resume=False to start again", parameters=("resume",)
            )
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    tiles = np.lib.format.open_memmap(partial / TILE_FILE, mode="w+", dtype=np.float32, shape=shape)
    tiles[:] = np.nan
    tiles.flush()
    write_json_atomic(state_path, state)  # last: marks the folder resumable
    return tiles


def _differences_text(old: Any, new: dict[str, Any]) -> str:
    """What differs between two run records, the model and the settings first, at most 6 named."""
    if not isinstance(old, dict):
        return "no readable settings recorded"
    first = ("model_sha256", "slide", "threshold", "top_k", "grid.stride")
    changed = sorted(_differences(old, new), key=lambda key: (not (key in first or key.startswith("settings.")),
                                                             first.index(key) if key in first else len(first)))
    more = f" and {len(changed) - 6} more" if len(changed) > 6 else ""
    return ", ".join(changed[:6]) + more


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys (one level of nesting, as ``grid.stride``) whose values differ between two run records."""
    changed = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            changed += [f"{key}.{name}" for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
        elif before != after:
            changed.append(key)
    return changed


def _finished(out_dir: Path, record: dict[str, Any]) -> SlideResult:
    """The finished ``out_dir`` as a skipped result when it was made by the same run ``record``; else refuse."""
    try:
        summary = json.loads((out_dir / OUTPUT_FILES["summary"]).read_text())
    except (OSError, ValueError):
        summary = {}
    recorded = summary.get(RUN_KEY) if isinstance(summary, dict) else None
    if isinstance(recorded, dict):  # older records also held the model file's path; the model is its SHA-256
        recorded = {key: value for key, value in recorded.items() if key != "model"}
    current = json.loads(json.dumps(record, default=str))
    if recorded != current:
        raise RunFolderError(
            f"{str(out_dir)!r} holds a finished slide result of other settings or another model (differs in: "
            f"{_differences_text(recorded, current)}); it is never overwritten: choose another out_dir, or delete "
            "that folder to redo it", parameters=("out_dir",)
        )
    return SlideResult(Path(record["slide"]), out_dir, summary,
                       {key: out_dir / name for key, name in OUTPUT_FILES.items()}, None, skipped=True)


def predict_slide(
    predictor: Any,
    slide_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    stride: int | None = None,
    mpp: float | None = None,
    tissue_method: str = "saturation",
    tissue_threshold: float = DEFAULT_SATURATION_THRESHOLD,
    min_tissue_fraction: float = 0.25,
    threshold: float | None = None,
    top_k: int = 10,
    batch_size: int = 128,
    readers: int = 2,
    backend: str | None = None,
    resume: bool = True,
    progress: Callable[[int, int], object] | None = None,
) -> SlideResult:
    """Predict every tissue tile of a whole-slide image and write its tumour maps into ``out_dir``.

    Args:
        predictor: a Predictor (``contract`` + ``predict_proba(uint8 (N, H, W, 3)) -> (N,)``), e.g. from
            :func:`pcamlab.slide.load_predictor` (torch checkpoint, ONNX or TorchScript).
        slide_path: the slide (anything :func:`pcamlab.slide.open_slide` reads).
        out_dir: the slide's folder to create (must not exist, or be empty).
        stride: step between tiles in model pixels; must divide the patch size. Default: the patch size
            (no overlap). Smaller strides overlap tiles and average them into a smoother map.
        mpp: level-0 microns per pixel; when given it wins over the slide's metadata and TIFF tags
            (``summary.json`` keeps the slide's own as ``recorded_mpp`` and a note).
        tissue_method: ``"saturation"`` (PCam's rule) or ``"otsu"``.
        tissue_threshold: HSV saturation cut for ``"saturation"`` (0-1, default 0.07).
        min_tissue_fraction: a tile is predicted when at least this share of it is tissue (0-1].
        threshold: probability at which a tile counts as tumour (default: the model's contract threshold).
        top_k: the slide score ``score_top_k_mean`` averages the ``top_k`` highest tile probabilities.
        batch_size: tiles per ``predict_proba`` call.
        readers: reader threads running ahead of the model (each keeps 2 regions in flight at most).
        backend: force ``"openslide"`` or ``"tiffslide"``.
        resume: continue an unfinished run of the same settings found beside ``out_dir`` (else start over).
        progress: called as ``progress(tiles_done, tiles_total)`` after each batch (resumed tiles count as done).
            An exception raised by it stops the run (e.g. a service cancelling a job); what was predicted
            stays in the partial folder and the same call later resumes from it. So does a stop request
            (:func:`pcamlab.stopping.check` runs after each batch and raises ``Stopped``).

    Returns:
        A :class:`SlideResult`; the folder holds ``OUTPUT_FILES``: the tile and cell probability arrays
        (float32 ``.npy``, NaN = no tissue), ``heatmap.png`` and ``overlay.png`` with a colour bar,
        ``thumbnail.png``, ``tissue_mask.png``, ``tiles.csv`` (level-0 pixel boxes and probabilities),
        ``tumour_tiles.geojson`` (tiles >= threshold, for QuPath), ``summary.json`` and ``report.html``.

    Raises:
        DamagedSlideError: the slide is cut short (before anything is written) or a region of it does not
            decode (the partial folder is removed; nothing of the slide is kept).
        DataError: unreadable or unsupported slide, unknown resolution (``MissingResolutionError``), no
            tissue found, or a model patch that does not fit the slide. Raised before anything is written.
        pcamlab.stopping.Stopped: a stop was requested (SIGINT/SIGTERM); the partial folder resumes.
        ConfigError: a parameter out of range (stride, fractions, batch size, readers, top_k).
        RunFolderError: ``out_dir`` is a file or already holds files, holds a finished result of another slide
            file, model or settings (a finished result of the same ones is returned with ``skipped=True``), or
            an unfinished run of other settings is in the way (exit code 2).
        RunError: the predictor returned the wrong shape.

    Example:
        >>> result = predict_slide(load_predictor("model.onnx"), "slide.tif", "out/slide", stride=48)
        >>> round(result.summary["score_max"], 3)
        0.991
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    for name, value, low in (("batch_size", batch_size, 1), ("readers", readers, 1), ("top_k", top_k, 1)):
        if not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
    if not 0 < min_tissue_fraction <= 1:
        raise ConfigError(f"min_tissue_fraction must be in (0, 1]; got {min_tissue_fraction!r}, e.g. 0.25")
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"out_dir {str(out_dir)!r} is a file, not a folder; choose another out_dir")
    for parent in out_dir.parents:
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(f"out_dir {str(out_dir)!r} lies below {str(parent)!r}, which is a file, not a "
                                 "folder; choose another out_dir")
    finished = (out_dir / OUTPUT_FILES["summary"]).is_file()
    if out_dir.exists() and not finished and any(out_dir.iterdir()):
        raise RunFolderError(f"{str(out_dir)!r} already holds files; it is never overwritten: choose another "
                             "out_dir or delete it")
    contract = predictor.contract
    patch_size = int(contract_value(contract, "patch_size", 96))
    target_mpp = float(contract_value(contract, "mpp", PCAM_MPP))
    threshold = float(contract_value(contract, "threshold", 0.5) if threshold is None else threshold)
    if not 0 <= threshold <= 1:
        raise ConfigError(f"threshold must be a probability in [0, 1]; got {threshold!r}")
    stride = patch_size if stride is None else stride

    with open_slide(slide_path, mpp=mpp, backend=backend) as slide:
        grid = plan_grid(slide, patch_size, stride, target_mpp)
        settings = {"tissue_method": tissue_method, "tissue_threshold": tissue_threshold,
                    "min_tissue_fraction": min_tissue_fraction, "backend": slide.backend}
        state = _state(slide, grid, predictor, settings)
        if finished:  # decided before the tissue mask: a finished slide is checked in milliseconds
            return _finished(out_dir, {**state, "threshold": threshold, "top_k": top_k})
        mask, mask_downsample, fractions = tile_tissue(slide, grid, method=tissue_method, threshold=tissue_threshold)
        thumbnail = slide.thumbnail(1024)
        tissue = fractions >= min_tissue_fraction
        if not tissue.any():
            raise DataError(
                f"no tissue found in slide {str(slide.path)!r} (tissue_method={tissue_method!r}, saturation "
                f"threshold {tissue_threshold}, {mask.mean():.1%} of the mask is tissue, no tile has "
                f"{min_tissue_fraction:.0%}); check the slide, or lower tissue_threshold / min_tissue_fraction",
                parameters=("tissue_threshold", "min_tissue_fraction"),
            )
        info = slide.info()

    partial = out_dir.parent / f".{out_dir.name}.partial"
    record = {**state, "threshold": threshold, "top_k": top_k}
    tiles_grid = _open_partial(partial, state, (grid.rows, grid.cols), resume)

    todo_rows, todo_cols = np.nonzero(tissue & ~np.isfinite(np.asarray(tiles_grid)))
    total = int(tissue.sum())
    resumed = total - len(todo_rows)
    if progress is not None:
        progress(resumed, total)
    inference_started = time.perf_counter()
    pool = _Readers(Path(slide_path), info.backend, mpp, grid, readers)
    try:
        try:
            _predict_tiles(predictor, pool, _chunks(todo_rows, todo_cols, grid), tiles_grid, batch_size, readers,
                           progress, resumed, total)
        finally:
            pool.close()
    except DamagedSlideError:
        del tiles_grid
        shutil.rmtree(partial, ignore_errors=True)  # tiles of a file that must be copied again: keep none
        raise
    inference_seconds = time.perf_counter() - inference_started

    tiles = np.array(tiles_grid)  # (rows, cols) float32, small: one value per tile
    del tiles_grid
    probability_map = outputs.average_overlaps(tiles, grid.cells_per_tile)
    known = tiles[np.isfinite(tiles)]
    top = np.sort(known)[::-1][:top_k]
    files = {key: partial / name for key, name in OUTPUT_FILES.items()}
    np.save(files["probability_map"].with_suffix(".tmp.npy"), probability_map)
    os.replace(files["probability_map"].with_suffix(".tmp.npy"), files["probability_map"])
    name = Path(slide_path).name
    summary = {
        "slide": str(Path(slide_path)), "slide_name": name, "backend": info.backend, "vendor": info.vendor,
        "slide_dimensions": list(info.level_dimensions[0]), "slide_mpp": grid.mpp0, "mpp_source": info.mpp_source,
        "recorded_mpp": list(info.recorded_mpp) if info.recorded_mpp else None,
        "recorded_mpp_source": info.recorded_mpp_source, "notes": list(info.notes), "warnings": list(info.warnings),
        "level": grid.level, "level_mpp": grid.mpp0 * grid.level_downsample, "resampled": grid.read_scale != 1.0,
        "read_scale": grid.read_scale, "model": _model_name(predictor), "runtime": runtime_of(predictor),
        "model_mpp": grid.model_mpp,
        "contract_mpp": target_mpp, "patch_size": patch_size, "stride": stride, "threshold": threshold,
        "score_max": float(known.max()), "top_k": int(len(top)), "score_top_k_mean": float(top.mean()),
        "tumour_area_mm2": float(np.sum(probability_map >= threshold) * grid.cell_area_mm2),
        "tissue_area_mm2": float(mask.sum() * (mask_downsample * grid.mpp0 / 1000) ** 2),
        "tiles": total, "tiles_resumed": resumed, "tiles_grid": grid.rows * grid.cols,
        "tiles_above_threshold": int(np.sum(known >= threshold)),
        "inference_seconds": round(inference_seconds, 3),
        "tiles_per_second": round((total - resumed) / inference_seconds, 1) if inference_seconds > 0 else None,
        "tissue_method": tissue_method, "tissue_threshold": tissue_threshold,
        "min_tissue_fraction": min_tissue_fraction, "grid": asdict(grid), RUN_KEY: record,
    }
    title = f"{name}: max {summary['score_max']:.3f}, tumour {summary['tumour_area_mm2']:.2f} mm2"
    outputs.write_mask_png(files["tissue_mask"], mask)
    outputs.write_image_png(files["thumbnail"], thumbnail)
    outputs.write_heatmap_png(files["heatmap"], probability_map, grid, title)
    outputs.write_overlay_png(files["overlay"], thumbnail, probability_map, grid, title)
    outputs.write_tiles_csv(files["tiles_csv"], tiles, grid)
    outputs.write_geojson(files["geojson"], tiles, grid, threshold)
    summary["seconds"] = round(time.perf_counter() - started, 3)
    outputs.write_slide_report(files["report"], summary, {
        "Heatmap": files["heatmap"], "Overlay": files["overlay"], "Tissue mask": files["tissue_mask"]})
    write_json_atomic(files["summary"], summary)
    (partial / STATE_FILE).unlink()
    if out_dir.exists():
        out_dir.rmdir()  # checked empty above
    os.replace(partial, out_dir)
    return SlideResult(Path(slide_path), out_dir, summary,
                       {key: out_dir / name for key, name in OUTPUT_FILES.items()}, probability_map)
