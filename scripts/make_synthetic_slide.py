"""Write a synthetic whole-slide image of real PCam patches and its ground truth (seeded).

A pyramidal, JPEG-tiled generic TIFF with resolution tags (tifffile): glass, normal tissue from label-0
patches, a tumour region from label-1 patches; ``<stem>.truth.png`` / ``.truth.json`` beside it (one
pixel per 96-pixel cell: 0 glass, 128 normal, 255 tumour). The library code is
``pcamlab.slide.synthetic.make_synthetic_slide``; the tests call it directly.

Usage:
    python scripts/make_synthetic_slide.py slide.tif --width 9600 --height 6720 --seed 7
    python scripts/make_synthetic_slide.py big.tif --width 25000 --height 50000   # Camelyon16-sized
    python scripts/make_synthetic_slide.py slide.tif --patches ../shared/data/pcam-jpg/valid  # other patches
"""

from __future__ import annotations

import argparse
import time

from pcamlab.slide.synthetic import PCAM_MPP, make_synthetic_slide, sample_pools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="TIFF to write (.tif)")
    parser.add_argument("--width", type=int, default=9600, help="level-0 width in pixels (default 9600)")
    parser.add_argument("--height", type=int, default=6720, help="level-0 height in pixels (default 6720)")
    parser.add_argument("--mpp", type=float, default=PCAM_MPP, help="level-0 um/px (default PCam's 0.972)")
    parser.add_argument("--tissue", type=float, default=0.4, help="share of the slide that is tissue")
    parser.add_argument("--tumour", type=float, default=0.15, help="share of the tissue that is tumour")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--patches", help="folder with 0/ and 1/ patch images (default: pcamlab's sample, valid)")
    parser.add_argument("--no-resolution", action="store_true", help="write no resolution tags (mpp unknown)")
    args = parser.parse_args()
    started = time.perf_counter()
    normal, tumour = sample_pools("valid", args.patches)
    slide = make_synthetic_slide(args.out, normal, tumour, width=args.width, height=args.height, mpp=args.mpp,
                                 tissue_fraction=args.tissue, tumour_fraction=args.tumour, seed=args.seed,
                                 resolution_tags=not args.no_resolution)
    cells = slide.truth.size
    print(f"wrote {slide.path} ({slide.level_dimensions[0][0]} x {slide.level_dimensions[0][1]} px, "
          f"{len(slide.level_dimensions)} levels, {slide.path.stat().st_size / 1e6:.1f} MB) and {slide.truth_path}: "
          f"{(slide.truth > 0).sum() / cells:.0%} tissue, {(slide.truth == 2).sum()} tumour cells; "
          f"{time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
