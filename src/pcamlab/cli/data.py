"""``pcamlab data``: inspect (``info``), convert (``convert``), download (``download``) datasets, and cut one from
annotated whole slides (``from-slides``).

A thin adapter: each subcommand calls one library function (``pcamlab.data.info.dataset_info``,
``pcamlab.data.convert.convert``, ``pcamlab.data.download.download_pcam``,
``pcamlab.slide.dataset.dataset_from_slides``), imported inside the command so ``pcamlab --help`` stays fast,
and prints what it did.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from pcamlab.cli._common import add_format_argument, progress_bar, seed_type

__all__ = ["register"]


def register(subparsers) -> None:
    """Add ``pcamlab data`` and its subcommands to the top-level parser."""
    parser = subparsers.add_parser(
        "data",
        help="datasets: inspect, convert, download PCam, cut one from annotated slides (from-slides)",
        description="Inspect, convert and download PCam datasets (h5, class folders, Kaggle layout), and cut a "
        "PCam-layout dataset from annotated whole slides (from-slides).",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", title="subcommands")
    parser.set_defaults(func=lambda args: _print_help(parser))

    info = commands.add_parser(
        "info",
        help="counts, class balance, pixel statistics, duplicates/leakage, contact sheets",
        description="Describe every split of a dataset; with --out also write info.json and pictures.",
    )
    info.add_argument("path", help="dataset folder, or 'sample' for the real sample shipped in pcamlab")
    add_format_argument(info, "layout (default: detected)", default="auto")
    info.add_argument("--out", help="folder for info.json, contact_<split>.png (and augment.png)")
    info.add_argument("--augment", action="store_true", help="also draw augmented patches (needs --out)")
    info.add_argument("--config", action="append", default=[],
                      help="run config YAML whose augment section --augment uses (repeatable: merged in order)")
    info.add_argument("--per-class", type=int, default=16, help="patches per class on each contact sheet")
    info.add_argument("--seed", type=seed_type, default=0, help="seed of the drawn patches and of Kaggle splits")
    info.add_argument("--valid-fraction", type=float, default=0.1, help="Kaggle layout: held-out fraction")
    info.add_argument("--skip-bad", action="store_true", help="count unreadable images instead of stopping")
    info.set_defaults(func=run_info)

    convert = commands.add_parser(
        "convert",
        help="write a dataset in another layout (h5, class folders, Kaggle)",
        description="Convert SRC into a new folder DST (written atomically; DST must not exist).",
    )
    convert.add_argument("src", help="source dataset folder, or 'sample'")
    convert.add_argument("dst", help="new folder to create")
    from pcamlab.data.convert import convert_targets

    convert.add_argument("--to", required=True, choices=convert_targets(), help="target layout")
    add_format_argument(convert, "source layout (default: detected)", default="auto")
    convert.add_argument(
        "--image-format", default="png", choices=["png", "jpg"],
        help="image files for --to folders: png (lossless, default) or jpg (JPEG sources copied as they are)",
    )
    convert.add_argument("--splits", nargs="+", help="splits to convert (default: all)")
    convert.add_argument("--valid-fraction", type=float, default=0.1, help="Kaggle source: held-out fraction")
    convert.add_argument("--seed", type=seed_type, default=0, help="Kaggle source: seed of the train/valid split")
    convert.add_argument("--skip-bad", action="store_true", help="leave out unreadable images, count them")
    convert.set_defaults(func=run_convert)

    download = commands.add_parser(
        "download",
        help="download the official PCam HDF5 files (verified, resumable)",
        description="Download, verify (md5) and decompress the official PCam files into DIR.",
    )
    download.add_argument("dataset", choices=["pcam"], help="dataset to download")
    download.add_argument("dest", metavar="DIR", help="folder to fill (created if missing)")
    download.add_argument("--base-url", help="folder URL of a mirror (default: Zenodo record 2546921)")
    download.add_argument(
        "--files", nargs="+", help="files or groups, e.g. valid_x valid_y, valid, meta, all (default: six x/y files)"
    )
    download.set_defaults(func=run_download)
    register_from_slides(commands)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _format_table(info: dict) -> str:
    header = ["split", "images", "label 0", "label 1", "unlabeled", "positive", "mean R G B", "std R G B", "dupl.", "skipped"]
    rows = []
    for split, summary in info["splits"].items():
        counts = summary["class_counts"]
        fraction = summary["positive_fraction"]
        rows.append([
            split,
            str(summary["count"]),
            str(counts.get("0", 0)),
            str(counts.get("1", 0)),
            str(counts.get("-1", 0)),
            "-" if fraction is None else f"{100 * fraction:.1f}%",
            " ".join(f"{value:.3f}" for value in summary["mean"]),
            " ".join(f"{value:.3f}" for value in summary["std"]),
            str(summary["duplicate_copies"]),
            str(summary["skipped"]),
        ])
    if all(row[4] == "0" for row in rows):  # no unlabeled split: drop that column
        header, rows = header[:4] + header[5:], [row[:4] + row[5:] for row in rows]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = ["  ".join(cell.rjust(width) if index else cell.ljust(width) for index, (cell, width) in enumerate(zip(row, widths))) for row in [header, *rows]]
    shapes = {tuple(summary["image_shape"] or ()) for summary in info["splits"].values()}
    dtypes = {summary["dtype"] for summary in info["splits"].values()}
    shape_text = ", ".join("x".join(str(size) for size in shape) for shape in shapes)
    lines.insert(0, f"dataset {info['root']} (format {info['format']}; images {shape_text} {', '.join(dtypes)})")
    lines.append("mean/std per channel on the [0, 1] scale; dupl. = exact duplicate copies within the split")
    if info.get("slides"):
        from pcamlab.data.slide_counts import slide_table

        lines += slide_table(info["slides"])
    if info["duplicates_across"]:
        for item in info["duplicates_across"]:
            lines.append(f"shared between {item['splits'][0]} and {item['splits'][1]}: {item['patches']} patches")
    for note in info.get("notes", []):
        lines.append(f"note: {note}")
    for warning in info["warnings"]:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from pcamlab.data.info import dataset_info, write_info_folder
    from pcamlab.errors import ConfigError

    if args.augment and not args.out:
        raise ConfigError("--augment writes a picture and needs --out DIR; add --out (e.g. --out runs/data-info)")
    augment_config = None
    if args.augment and args.config:
        from pcamlab.config import load_config

        augment_config = load_config(args.config).augment
    progress, close = progress_bar("reading", unit="img")
    try:
        info = dataset_info(
            args.path, args.format, valid_fraction=args.valid_fraction, seed=args.seed,
            skip_bad=args.skip_bad, progress=progress,
        )
    finally:
        close()
    print(_format_table(info))
    if not args.out:
        return 0
    written = write_info_folder(
        info, args.out, per_class=args.per_class, seed=args.seed, valid_fraction=args.valid_fraction,
        skip_bad=args.skip_bad, augment=args.augment, augment_config=augment_config,
    )
    print("wrote " + ", ".join(str(path) for path in written))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from pcamlab.data.convert import convert

    progress, close = progress_bar("converting", unit="img")
    try:
        result = convert(
            args.src, args.dst, to=args.to, format=args.format, progress=progress,
            image_format=args.image_format, splits=args.splits, valid_fraction=args.valid_fraction,
            seed=args.seed, skip_bad=args.skip_bad,
        )
    finally:
        close()
    counts = ", ".join(f"{split} {count}" for split, count in result["counts"].items())
    print(f"wrote {result['path']} ({result['format']}, from {result['source_format']}): {counts} images")
    for note in result.get("notes", []):
        print(f"note: {note}")
    if result["skipped_images"]:
        print(f"skipped {result['skipped_images']} unreadable images")
    if result["skipped_splits"]:
        print(f"left out unlabeled splits {result['skipped_splits']} ({result['format']} needs labels)")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from pcamlab.data.download import download_pcam

    paths = download_pcam(args.dest, base_url=args.base_url, files=args.files, progress=True)
    for path in paths:
        print(path)
    print(f"ready: pcamlab data info {shlex.quote(str(args.dest))}")
    return 0


def register_from_slides(commands) -> None:
    """``pcamlab data from-slides``: cut a PCam-layout dataset from annotated slides."""
    from pcamlab.cli.slide import add_annotation_arguments, add_cohort_arguments

    keep = argparse.SUPPRESS  # options not given keep FromSlidesOptions' defaults (declared once, there)
    parser = commands.add_parser(
        "from-slides", help="cut a PCam-layout dataset (h5 + meta CSVs) from annotated whole slides",
        description="Cut 96 px patches at 0.972 um/px from tissue of each slide, label 1 when the centre 32x32 "
        "holds annotated tumour (PCam's rule), sample them by a seeded plan printed before work starts, split "
        "by slide, and write PCam's HDF5 layout and meta CSVs to a new folder OUT. A slide without an "
        "annotation file is a normal slide. A killed run resumes slide by slide (OUT.partial/).",
    )
    parser.add_argument("slides", metavar="SLIDE", nargs="+", help="slide files")
    add_annotation_arguments(parser, "annotation file (one slide) or folder of <slide id>.xml / .geojson / "
                             "mask files; slides without one are normal slides")
    parser.add_argument("--out", required=True, metavar="DIR", help="new dataset folder")
    parser.add_argument("--reference", metavar="CSV", help="slide,label CSV (tumor/normal): every slide must be "
                        "listed; a tumour slide without annotations is an error")
    parser.add_argument("--split-csv", metavar="CSV", help="slide,split CSV (train/valid/test), e.g. by hospital "
                        "(default: seeded split by slide, tumour and normal slides separately)")
    parser.add_argument("--valid-fraction", type=float, default=keep,
                        help="share of slides in valid without --split-csv (default 0.2)")
    parser.add_argument("--test-fraction", type=float, default=keep,
                        help="share of slides in test without --split-csv (default 0)")
    parser.add_argument("--mpp", type=float, default=keep, help="patch resolution in um/px (default PCam's 0.972)")
    parser.add_argument("--slide-mpp", type=float, help="level-0 um/px of the slides; wins over their "
                        "metadata and TIFF resolution tags")
    parser.add_argument("--stride", type=int, default=keep,
                        help="step between candidate patches in patch pixels (default 96: no overlap)")
    parser.add_argument("--max-per-slide", type=int, default=keep, dest="max_patches_per_slide",
                        help="at most this many patches per slide (default 1000)")
    parser.add_argument("--no-balance", action="store_true",
                        help="keep every chosen negative (default: as many negatives as positives per split)")
    parser.add_argument("--min-tumour-fraction", type=float, default=keep,
                        help="label 1 when tumour covers more than this share of the centre 32x32 (default 0: "
                        "any tumour pixel, PCam's rule)")
    parser.add_argument("--min-tissue", type=float, default=keep, dest="min_tissue_fraction",
                        help="share of a patch that must be tissue (default 0.5)")
    parser.add_argument("--tissue-method", default=keep, choices=["saturation", "otsu"],
                        help="tissue rule (default: HSV saturation, PCam's)")
    parser.add_argument("--tissue-threshold", type=float, default=keep,
                        help="HSV saturation below which a pixel is glass (default 0.07)")
    parser.add_argument("--seed", type=seed_type, default=keep, help="seed of the split and sampling (default 0)")
    parser.add_argument("--no-resume", action="store_true", help="discard an unfinished OUT.partial/ and start again")
    add_cohort_arguments(parser, "workers given the same --out share OUT.partial/ with a lock per slide, and the "
                         "one that finds every slide cut writes OUT")
    parser.set_defaults(func=run_from_slides)


def _read_split_csv(path: str) -> dict[str, str]:
    from pcamlab.slide.reference import read_split_map

    return read_split_map(path)


def _print_plan(plan, already: int) -> None:
    from pathlib import Path

    from pcamlab.cli.slide import remarks

    options = plan.options
    print(f"plan: {len(plan.slides)} slides; {options.patch_size} px patches at {options.mpp:g} um/px, stride "
          f"{options.stride}; label 1 when tumour covers > {options.min_tumour_fraction:g} of the centre "
          f"{options.centre_size}x{options.centre_size}; tissue >= {options.min_tissue_fraction:g} of a patch "
          f"({options.tissue_method}); at most {options.max_patches_per_slide} per slide; "
          f"{'balanced' if options.balance else 'not balanced'}; seed {options.seed}")
    width = max(len(slide.slide_id) for slide in plan.slides)
    print(f"  {'slide':<{width}}  split  tissue  tumour  take 0  take 1  annotations")
    for slide in plan.slides:
        counts = slide.counts
        source = Path(slide.annotation).name if slide.annotation else "none: normal slide"
        print(f"  {slide.slide_id:<{width}}  {slide.split:<5}  {slide.tissue_patches:>6}  {slide.tumour_candidates:>6}  "
              f"{counts[0]:>6}  {counts[1]:>6}  {source}")
        for line in remarks(slide.notes, slide.warnings, prefix="    ", flags=FROM_SLIDES_FLAGS):
            print(line)
    for split, counts in plan.split_counts().items():
        print(f"  {split}: {counts[0] + counts[1]} patches ({counts[0]} label 0, {counts[1]} label 1)")
    for line in remarks(plan.notes, [], flags=FROM_SLIDES_FLAGS):
        print(line)
    if already:
        print(f"resuming: {already} of {len(plan.slides)} slides already cut (by an earlier run or another worker)")


# from-slides' flags for the parameters its notes name (--mpp is the patches' resolution, --slide-mpp the slides')
FROM_SLIDES_FLAGS = {"slide_mpp": "--slide-mpp", "split_map": "--split-csv", "class_map": "--class-map",
                     "mask_downsample": "--mask-downsample"}


def run_from_slides(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pcamlab import stopping
    from pcamlab.cli.slide import annotation_options, parse_shard
    from pcamlab.slide.cohort import resolve_shard
    from pcamlab.slide.dataset import FromSlidesOptions, dataset_from_slides
    from pcamlab.slide.reference import read_reference

    given = {name: getattr(args, name) for name in (
        "mpp", "stride", "min_tumour_fraction", "min_tissue_fraction", "tissue_method", "tissue_threshold",
        "max_patches_per_slide", "valid_fraction", "test_fraction", "seed") if hasattr(args, name)}
    options = FromSlidesOptions(**given, balance=not args.no_balance, slide_mpp=args.slide_mpp)
    share = resolve_shard(parse_shard(args.shard))
    progress, close = progress_bar("from-slides", unit="patch")
    try:
        result = dataset_from_slides(
            args.slides, args.out, annotations=args.annotations, options=options,
            reference=read_reference(args.reference) if args.reference else None,
            split_map=_read_split_csv(args.split_csv) if args.split_csv else None,
            annotation_options=annotation_options(args), resume=not args.no_resume,
            on_plan=_print_plan, progress=progress, shard=share, steal=not args.no_steal, stale_after=args.stale_after,
        )
    except stopping.Stopped:
        partial = Path(args.out).with_name(Path(args.out).name + ".partial")
        if partial.exists():  # stopped while cutting (while planning, nothing was written)
            print(f"from-slides: stopped; the slides cut so far are kept in {partial}, and the same command resumes "
                  "there", file=sys.stderr)
        raise
    finally:
        close()
    if not result.complete:
        print(f"share {share}: its slides are cut; other workers still cut theirs, and the last one writes "
              f"{result.path}")
        return 0
    counts = ", ".join(f"{split} {c[0] + c[1]} ({c[1]} tumour)" for split, c in result.counts.items())
    if not result.written:  # e.g. a late array task: another worker of the same plan wrote it
        print(f"already complete: {result.path} holds this plan's dataset ({counts}), written by another worker; "
              "nothing to do")
        return 0
    missing = "" if "valid" in result.counts else " (no valid split: see the note above)"
    print(f"wrote {result.path}: {counts}{missing}; PCam h5 layout + meta CSVs, slides.csv")
    print(f"next: pcamlab data info {shlex.quote(str(result.path))}")
    return 0
