"""Throughput and peak memory of ``data from-slides`` on a Camelyon-sized synthetic slide.

Writes one tumour slide and one normal slide with ``pcamlab slide synth-cohort`` in a child process (so its
memory does not count), then times :func:`pcamlab.slide.dataset.dataset_from_slides` in this process:
planning (tissue mask, annotations, choosing patches), cutting (reading patches) and writing the h5 files,
in patches per second, and the peak resident memory (RSS) of this process.

Usage:
    .venv/bin/python scripts/bench_from_slides.py                          # 24,576 x 24,576 px: 65,536 cells/slide
    .venv/bin/python scripts/bench_from_slides.py --width 4096 --height 3072 --max-per-slide 500   # a quick check
    .venv/bin/python scripts/bench_from_slides.py --patches ../shared/data/pcam-jpg --keep bench-out

A Camelyon16 slide is about 100,000 x 200,000 px at 0.243 um/px, i.e. 25,000 x 50,000 at PCam's 0.972 um/px
(about 135,000 patch positions, tens of thousands on tissue).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=24576, help="level-0 width of each slide (px at 0.972 um/px)")
    parser.add_argument("--height", type=int, default=24576, help="level-0 height of each slide")
    parser.add_argument("--max-per-slide", type=int, default=20000, help="patches cut per slide at most")
    parser.add_argument("--patches", help="pcam-jpg folder (default: the sample shipped in pcamlab)")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the cohort and dataset")
    args = parser.parse_args()

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-from-slides-"))
    cohort = root / "cohort"
    if not cohort.exists():
        command = [sys.executable, "-m", "pcamlab", "slide", "synth-cohort", str(cohort), "--normal", "1",
                   "--tumour", "1", "--split", "train", "--width", str(args.width), "--height", str(args.height)]
        if args.patches:
            command += ["--patches", args.patches]
        started = time.perf_counter()
        subprocess.run(command, check=True)
        print(f"cohort written in {time.perf_counter() - started:.1f} s (child process)")

    from pcamlab.slide.dataset import FromSlidesOptions, dataset_from_slides, plan_dataset
    from pcamlab.slide.reference import read_reference

    slides = sorted((cohort / "slides").glob("*.tif"))
    options = FromSlidesOptions(max_patches_per_slide=args.max_per_slide, valid_fraction=0.0, balance=False)
    reference = read_reference(cohort / "reference.csv")
    before = peak_rss_mib()
    started = time.perf_counter()
    plan = plan_dataset(slides, annotations=cohort / "annotations", options=options, reference=reference)
    planned = time.perf_counter() - started
    out = root / f"dataset-{int(time.time())}"
    started = time.perf_counter()
    result = dataset_from_slides(slides, out, annotations=cohort / "annotations", options=options,
                                 reference=reference)
    seconds = time.perf_counter() - started
    patches = sum(counts[0] + counts[1] for counts in result.counts.values())
    tissue = sum(slide.tissue_patches for slide in plan.slides)
    print(f"slides {len(slides)} of {args.width} x {args.height} px; tissue positions {tissue:,}; "
          f"patches written {patches:,}")
    print(f"plan alone {planned:.1f} s; from-slides total {seconds:.1f} s (plan + cut + h5) = "
          f"{patches / seconds:,.0f} patches/s")
    print(f"peak RSS {peak_rss_mib():,.0f} MiB (before from-slides {before:,.0f} MiB)")
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
