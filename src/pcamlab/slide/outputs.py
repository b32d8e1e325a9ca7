"""What a slide prediction leaves on disk: maps, pictures, QuPath GeoJSON, CSV and an HTML section.

Every writer takes the finished arrays and the slide's :class:`~pcamlab.slide.grid.Grid` and writes
one file atomically (``pcamlab.fileio``); none of them reads the slide again except for the thumbnail.

Example:
    >>> write_geojson(path, tile_probabilities, grid, threshold=0.5)
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pcamlab.fileio import atomic_path, write_text_atomic
from pcamlab.slide.grid import Grid

__all__ = [
    "QUPATH_CLASS",
    "average_overlaps",
    "write_tiles_csv",
    "write_geojson",
    "write_image_png",
    "write_mask_png",
    "write_heatmap_png",
    "write_overlay_png",
    "slide_section_html",
    "write_slide_report",
]

QUPATH_CLASS = {"name": "Tumor", "color": [200, 0, 0]}  # QuPath's built-in tumour class (its spelling)
COLOUR_MAP = "inferno"  # perceptually uniform, dark = low probability, yellow = high
NO_TISSUE_RGB = (235, 235, 235)  # map cells without a predicted tile


def average_overlaps(tiles: np.ndarray, cells_per_tile: int) -> np.ndarray:
    """Per-cell mean of the probabilities of every tile covering the cell (overlap averaging).

    Args:
        tiles: float32 ``(rows, cols)`` tile probabilities, NaN for tiles not predicted (glass).
        cells_per_tile: tile edge / stride (1 without overlap).

    Returns:
        float32 ``(rows + k - 1, cols + k - 1)`` map of stride-sized cells, NaN where no tile covers a cell.
    """
    k = int(cells_per_tile)
    rows, cols = tiles.shape
    known = np.isfinite(tiles)
    values = np.where(known, tiles, 0).astype(np.float64)
    total = np.zeros((rows + k - 1, cols + k - 1))
    count = np.zeros_like(total)
    for dy in range(k):
        for dx in range(k):
            total[dy:dy + rows, dx:dx + cols] += values
            count[dy:dy + rows, dx:dx + cols] += known
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def write_tiles_csv(path: Path, tiles: np.ndarray, grid: Grid) -> Path:
    """CSV of every predicted tile: grid row/col, level-0 x/y/width/height in pixels, probability (6 decimals)."""
    rows, cols = np.nonzero(np.isfinite(tiles))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["row", "col", "x", "y", "width", "height", "probability"])
        size = grid.tile_size_level0
        for row, col in zip(rows.tolist(), cols.tolist()):
            x, y = grid.tile_origin_level0(row, col)
            writer.writerow([row, col, x, y, size, size, f"{tiles[row, col]:.6f}"])
    return path


def write_geojson(path: Path, tiles: np.ndarray, grid: Grid, threshold: float) -> Path:
    """Tiles with probability >= ``threshold`` as a GeoJSON FeatureCollection that QuPath imports.

    Each tile is a Polygon feature in LEVEL-0 pixel coordinates (QuPath's image space; y down), with
    ``properties``: ``objectType`` "detection", ``classification`` {name "Tumor", color}, and
    ``measurements`` {"probability": p}. Drag the file onto the slide in QuPath (0.4+) or use
    File > Import objects.
    """
    features = []
    size = grid.tile_size_level0
    rows, cols = np.nonzero(np.isfinite(tiles) & (tiles >= threshold))
    for row, col in zip(rows.tolist(), cols.tolist()):
        x, y = grid.tile_origin_level0(row, col)
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {
                "objectType": "detection",
                "classification": dict(QUPATH_CLASS),
                "measurements": {"probability": round(float(tiles[row, col]), 6)},
            },
        })
    collection = {"type": "FeatureCollection", "features": features}
    write_text_atomic(path, json.dumps(collection, separators=(",", ":")) + "\n")
    return path


def write_image_png(path: Path, image: np.ndarray) -> Path:
    """A uint8 ``(H, W)`` or ``(H, W, 3)`` image as a PNG, written atomically."""
    from PIL import Image

    with atomic_path(path) as temporary:
        Image.fromarray(image).save(temporary, format="PNG")
    return path


def write_mask_png(path: Path, mask: np.ndarray) -> Path:
    """The tissue mask as a black (glass) / white (tissue) PNG at its own resolution."""
    return write_image_png(path, np.where(mask, 255, 0).astype(np.uint8))


def _colour(values: np.ndarray) -> np.ndarray:
    """float (H, W) probabilities -> uint8 RGB, NaN cells in NO_TISSUE_RGB."""
    from matplotlib import colormaps

    rgb = (colormaps[COLOUR_MAP](np.nan_to_num(values, nan=0.0))[..., :3] * 255).astype(np.uint8)
    rgb[~np.isfinite(values)] = NO_TISSUE_RGB
    return rgb


def _figure_with_colourbar(image: np.ndarray, title: str, extent_mm: tuple[float, float], path: Path) -> Path:
    """Draw an RGB image with a 0-1 probability colour bar and axes in millimetres, save it as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    from pcamlab.fileio import save_png

    width_mm, height_mm = extent_mm
    aspect = height_mm / max(width_mm, 1e-9)
    figure, axes = plt.subplots(figsize=(7.5, max(2.5, min(9.0, 6.2 * aspect + 0.8))))
    axes.imshow(image, extent=(0, width_mm, height_mm, 0), interpolation="nearest")
    axes.set_xlabel("mm")
    axes.set_ylabel("mm")
    axes.set_title(title, fontsize=10)
    mappable = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=COLOUR_MAP)
    figure.colorbar(mappable, ax=axes, fraction=0.046, pad=0.03, label="tumour probability")
    figure.tight_layout()
    save_png(figure, path, dpi=100)
    plt.close(figure)
    return path


def write_heatmap_png(path: Path, probability_map: np.ndarray, grid: Grid, title: str) -> Path:
    """The probability map (one pixel per stride cell, grey where no tissue) with a colour bar."""
    return _figure_with_colourbar(_colour(probability_map), title, grid.extent_mm, path)


def write_overlay_png(path: Path, thumbnail: np.ndarray, probability_map: np.ndarray, grid: Grid, title: str,
                      alpha: float = 0.45) -> Path:
    """The map blended over the slide thumbnail (``alpha`` where a cell has a probability), with a colour bar."""
    from PIL import Image

    height, width = thumbnail.shape[:2]
    # The map covers the tile grid only: place it on a canvas of the whole slide in thumbnail pixels.
    scale = width / grid.slide_width_level0
    map_width = max(1, int(round(grid.map_width_level0 * scale)))
    map_height = max(1, int(round(grid.map_height_level0 * scale)))
    values = np.asarray(Image.fromarray(probability_map.astype(np.float32)).resize((map_width, map_height),
                                                                          Image.Resampling.NEAREST))
    canvas = np.full((height, width), np.nan, dtype=np.float32)
    canvas[:min(height, map_height), :min(width, map_width)] = values[:height, :width]
    known = np.isfinite(canvas)[..., None]
    blended = thumbnail.astype(np.float32) * (1 - alpha * known) + _colour(canvas).astype(np.float32) * (alpha * known)
    return _figure_with_colourbar(blended.round().astype(np.uint8), title, grid.slide_extent_mm, path)


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return " x ".join(_format(item) for item in value)
    return str(value)


def slide_section_html(summary: dict[str, Any], pictures: dict[str, Path]) -> str:
    """One ``<section>`` for a slide in the run report's style: score cards, pictures, facts table.

    Args:
        summary: the slide's ``summary.json`` content.
        pictures: title -> PNG path (embedded as base64, so the section stands alone).
    """
    escape = html.escape
    cards = [
        ("slide score (max tile probability)", summary["score_max"]),
        (f"mean of the top {summary['top_k']} tiles", summary["score_top_k_mean"]),
        ("tumour area, mm2", summary["tumour_area_mm2"]),
        ("tissue area, mm2", summary["tissue_area_mm2"]),
        ("tissue tiles predicted", summary["tiles"]),
        ("seconds", summary["seconds"]),
    ]
    parts = [f'<section class="slide"><h2>Slide {escape(summary["slide_name"])}</h2>',
             '<p class="subtitle">Tumour probability of every tissue tile, from the patch model '
             f'{escape(str(summary["model"]))} at {summary["model_mpp"]:.3g} um/px.</p>', '<div class="glance">']
    for label, value in cards:
        parts.append(f'<div class="card"><div class="value">{escape(_format(value))}</div>'
                     f'<div class="label">{escape(label)}</div></div>')
    parts.append("</div>")
    meanings = {
        "Heatmap": "Each square is one stride of the tile grid, coloured by the mean tumour probability of the "
                   "tiles covering it; grey is glass (no tile predicted). Bright regions are where the model "
                   "sees metastatic tumour.",
        "Overlay": "The same map over the slide thumbnail, to find the regions on the glass slide.",
        "Tissue mask": "White: tissue found by the mask (only tiles on it are predicted); black: glass.",
    }
    for title, path in pictures.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
                     f'<figcaption>{escape(title)}</figcaption>'
                     f'<p class="meaning">{escape(meanings.get(title, ""))}</p></figure>')
    rows = [(key, summary[key]) for key in (
        "slide", "backend", "vendor", "slide_dimensions", "slide_mpp", "mpp_source", "level", "level_mpp",
        "resampled", "patch_size", "stride", "threshold", "tiles", "tiles_resumed", "tiles_above_threshold",
        "tiles_per_second", "tissue_method", "tissue_threshold",
    ) if key in summary]
    parts.append("<table><tr><th>fact</th><th>value</th></tr>")
    parts += [f"<tr><td>{escape(key)}</td><td>{escape(_format(value))}</td></tr>" for key, value in rows]
    parts.append("</table></section>")
    return "\n".join(parts)


def write_slide_report(path: Path, summary: dict[str, Any], pictures: dict[str, Path]) -> Path:
    """A self-contained HTML page holding :func:`slide_section_html`, with the run report's CSS."""
    from pcamlab.evaluate.report import CSS

    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>pcamlab slide {html.escape(summary['slide_name'])}</title><style>{CSS}</style></head><body><main>"
        f"<h1>Whole-slide tumour map</h1>{slide_section_html(summary, pictures)}"
        "<footer>Written by pcamlab slide predict. Probabilities are from a patch classifier trained on PCam; "
        "they are a research aid, not a diagnosis.</footer></main></body></html>\n"
    )
    write_text_atomic(path, page)
    return path
