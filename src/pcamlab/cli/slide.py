"""``pcamlab slide``: inspect whole-slide images (``info``), map their tumour with a patch model (``predict``), score
the maps against annotations (``evaluate``), say which slides of a cohort are done (``summary``), and write a
synthetic cohort (``synth-cohort``).

A thin adapter over :mod:`pcamlab.slide`: ``info`` calls :func:`pcamlab.slide.slide_info`; ``predict``
loads the model once and calls :func:`pcamlab.slide.predict_slide` per slide of its shard, one folder
per slide under ``--out``, with a progress bar in tiles per second.
"""

from __future__ import annotations

import argparse
import sys

from pcamlab.cli._common import seed_type

__all__ = ["register", "register_evaluate", "parse_shard", "add_annotation_arguments", "annotation_options", "remarks",
           "add_cohort_arguments"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "slide", help="whole-slide images: info, heatmaps, evaluation against annotations, cohorts, synthetic cohorts",
        description="Inspect whole-slide images (info), map their tumour with a trained patch model (predict, "
        "sharded over a cluster's workers), score the maps against annotations (evaluate), say which slides of a "
        "cohort are done (summary), and write a synthetic cohort of real PCam patches (synth-cohort).",
    )
    commands = parser.add_subparsers(dest="slide_command", metavar="SUBCOMMAND", title="subcommands")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    info = commands.add_parser(
        "info", help="vendor, levels, dimensions, microns per pixel and a thumbnail of a slide",
        description="Print what a slide holds: backend, vendor, pyramid levels with their sizes, microns per "
        "pixel and where they come from, and a text thumbnail (or a PNG with --thumbnail).",
    )
    info.add_argument("slide", metavar="SLIDE", help="slide file (.svs, .tif, .ndpi, .mrxs, ...)")
    info.add_argument("--mpp", type=float, help="level-0 microns per pixel; wins over the slide's metadata and "
                      "TIFF resolution tags (shown beside them)")
    info.add_argument("--thumbnail", metavar="FILE.png", help="also write a PNG thumbnail (longer side --size) to "
                      "this new file (an existing file is never replaced)")
    info.add_argument("--size", type=int, default=1024, help="thumbnail longer side in pixels, 16 to 16384 "
                      "(default 1024)")
    info.add_argument("--json", action="store_true", help="print the facts as JSON")
    info.add_argument("--verify", action="store_true", help="also decode every tile of every level, so a damaged "
                      "tile is found now (exit 2) instead of mid-prediction (minutes for a 40x slide)")
    add_annotation_arguments(info, "also read this annotation file (ASAP .xml, QuPath .geojson, label mask "
                             ".png/.tif): regions and areas per class, outlines drawn on --thumbnail")
    info.set_defaults(func=run_info)
    register_synth_cohort(commands)

    predict = commands.add_parser(
        "predict", help="tumour heatmaps of slides from a patch model (one folder per slide)",
        description="Tile each slide at the model's training resolution (its contract's mpp, PCam's 0.972 "
        "um/px by default), predict every tissue tile, and write OUT/<slide name>/: probability maps (.npy), "
        "heatmap and overlay PNGs, tissue mask, tiles.csv, tumour_tiles.geojson (QuPath), summary.json and "
        "report.html. An interrupted slide resumes where it stopped; slides finished with the same model and settings are skipped, and a finished folder of other settings is refused (never overwritten).",
    )
    predict.add_argument("model", metavar="MODEL", help="checkpoint .safetensors, or exported .onnx / .pt")
    predict.add_argument("slides", metavar="SLIDE", nargs="+", help="slide files, or folders of them (searched at any depth)")
    predict.add_argument("--out", required=True, metavar="DIR", help="folder for one result folder per slide")
    predict.add_argument("--stride", type=int, help="tile step in model pixels, dividing the patch size "
                         "(default: the patch size; e.g. 48 or 32 overlap tiles and average them)")
    predict.add_argument("--mpp", type=float, help="level-0 microns per pixel of the slides; wins over their metadata "
                         "and TIFF resolution tags (e.g. when a scanner wrote wrong tags)")
    predict.add_argument("--tissue-method", default="saturation", choices=["saturation", "otsu"],
                         help="tissue mask rule (default: PCam's HSV saturation threshold)")
    predict.add_argument("--tissue-threshold", type=float, default=0.07,
                         help="HSV saturation below which a pixel is glass (default 0.07)")
    predict.add_argument("--min-tissue", type=float, default=0.25,
                         help="predict a tile when at least this share of it is tissue (default 0.25)")
    predict.add_argument("--threshold", type=float, help="tumour probability threshold (default: the model's)")
    predict.add_argument("--top-k", type=int, default=10, help="slide score: mean of the top k tiles (default 10)")
    predict.add_argument("--batch-size", type=int, default=128, help="tiles read and scored per step (default 128; on a CPU, forward passes of at most 32)")
    predict.add_argument("--readers", type=int, default=2, help="reader threads ahead of the model (default 2)")
    predict.add_argument("--device", default="cpu", help="auto, cpu or cuda[:N] (GPU: torch checkpoints only; default cpu)")
    predict.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnx", "int8"],
                         help="for a checkpoint: auto runs the fastest export of this very checkpoint timed on "
                         "this CPU (pcamlab export [--quantize int8] writes them beside it), else torch; "
                         "torch|onnx|int8 to choose (default auto; always torch on a GPU)")
    predict.add_argument("--backend", choices=["openslide", "tiffslide"], help="force a slide reader")
    add_cohort_arguments(predict, "workers given the same --out share it, with a lock per slide")
    predict.add_argument("--retry-failed", action="store_true",
                         help="try again the slides that failed before (a failure record in OUT/.cohort/failed)")
    predict.add_argument("--no-resume", action="store_true", help="start unfinished slides again from scratch")
    predict.set_defaults(func=run_predict)
    register_evaluate(commands)
    _register_summary(commands)


def add_cohort_arguments(parser: argparse.ArgumentParser, shared: str) -> None:
    """``--shard``, ``--no-steal`` and ``--stale-after``: a worker's share of a cohort (``slide predict``,
    ``data from-slides``; :mod:`pcamlab.slide.cohort`). ``shared`` says what the workers share."""
    parser.add_argument("--shard", metavar="I/N", help="this worker's share of the slides (1 <= I <= N; slide k goes "
                        "to share k mod N + 1); default: from a Slurm array (SLURM_ARRAY_TASK_ID/COUNT) or torchrun "
                        f"(RANK/WORLD_SIZE), else all; {shared} (see docs/cohorts.md)")
    parser.add_argument("--no-steal", action="store_true", help="only this worker's share; by default a worker whose "
                        "share is done also takes the other shares' unfinished slides that no live worker holds")
    parser.add_argument("--stale-after", type=float, default=300.0, metavar="SECONDS",
                        help="take over a slide lock whose heartbeat is older than this (a worker killed on another "
                        "node; one killed on this node is noticed at once; default 300)")


def add_annotation_arguments(parser: argparse.ArgumentParser, help: str, *, required: bool = False) -> None:
    """``--annotations`` and the options of reading them, shared by ``slide info`` and ``data from-slides``."""
    parser.add_argument("--annotations", metavar="PATH", required=required, help=help)
    parser.add_argument("--class-map", metavar="NAME=CLASS", action="append", default=[],
                        help="map an annotation class name (ASAP group, QuPath class, mask value) to tumour, normal "
                        "or exclude (repeatable), e.g. --class-map 'Carcinoma=tumour'")
    parser.add_argument("--mask-downsample", type=float, metavar="D",
                        help="label masks: level-0 pixels per mask pixel (default: from the slide's width)")
    parser.add_argument("--no-repair", action="store_true",
                        help="refuse self-intersecting polygons instead of repairing them with a note")


ANNOTATION_FLAGS = {"class_map": "--class-map", "mask_downsample": "--mask-downsample"}  # what annotation notes name


def annotation_options(args: argparse.Namespace) -> dict:
    """``class_map``, ``mask_downsample`` and ``repair`` keyword arguments from the annotation flags."""
    from pcamlab.errors import ConfigError

    if not args.annotations:
        given = [flag for flag, value in (("--class-map", args.class_map), ("--mask-downsample", args.mask_downsample),
                                          ("--no-repair", args.no_repair)) if value not in (None, False, [])]
        if given:
            raise ConfigError(f"{' and '.join(given)} set(s) how annotations are read, but no --annotations was given; "
                              "add --annotations FILE-or-FOLDER or drop them")
    class_map = {}
    for item in args.class_map:
        name, separator, kind = item.rpartition("=")
        if not separator or not name.strip():
            raise ConfigError(f"--class-map must be NAME=CLASS (CLASS tumour, normal or exclude); got {item!r}")
        class_map[name.strip()] = kind.strip().lower()
    return {"class_map": class_map, "mask_downsample": args.mask_downsample, "repair": not args.no_repair}


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/4"`` -> (2, 4); None -> None (the share comes from the environment). Raises ConfigError naming --shard."""
    from pcamlab.errors import ConfigError

    if text is None:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise ConfigError(f"--shard must be I/N with 1 <= I <= N, e.g. 2/4; got {text!r}")
    return index, count


def _text_thumbnail(image, columns: int = 64) -> str:
    """A few lines of characters, darker = more stain, for a quick look in a terminal."""
    import numpy as np
    from PIL import Image

    height, width = image.shape[:2]
    rows = max(1, int(round(columns * height / width / 2)))  # terminal cells are about twice as tall as wide
    grey = np.asarray(Image.fromarray(image).convert("L").resize((columns, rows), Image.Resampling.BOX))
    ramp = " .:-=+*#%@"
    background = max(float(np.percentile(grey, 95)), 1.0)  # the glass: brightest common grey
    darkness = np.clip((background - grey.astype(np.float32)) / background, 0, 1)
    indices = np.clip((darkness * 3.0 * (len(ramp) - 1)).astype(int), 0, len(ramp) - 1)  # stain is light: stretch
    return "\n".join("".join(ramp[i] for i in row) for row in indices)


def remarks(notes, warnings, prefix: str = "", flags: dict[str, str] | None = None) -> list[str]:
    """The slide reader's notes and warnings (an overridden or implausible mpp) as printed lines.

    The parameters they name become the command's flags: ``mpp`` -> ``--mpp`` (``slide info``, ``slide predict``)
    unless ``flags`` says otherwise (``data from-slides``: ``{"slide_mpp": "--slide-mpp"}``).
    """
    from pcamlab.cli.main import cli_message

    flags = {"mpp": "--mpp"} if flags is None else flags
    return ([f"{prefix}note: {cli_message(note, tuple(flags), flags)}" for note in notes]
            + [f"{prefix}warning: {cli_message(warning, tuple(flags), flags)}" for warning in warnings])


def run_info(args: argparse.Namespace) -> int:
    import json

    from pcamlab.slide import open_slide
    from pcamlab.slide.reader import describe_mpp_source

    from pcamlab.fileio import check_new_png, save_image_png

    if args.thumbnail:  # before any reading: a slide, an annotation file or an earlier result is never replaced
        check_new_png(args.thumbnail, "thumbnail")
    reading = annotation_options(args)
    with open_slide(args.slide, mpp=args.mpp) as slide:
        info = slide.info()
        thumbnail = slide.thumbnail(args.size if args.thumbnail else 256)
        if args.verify:
            from pcamlab import stopping
            from pcamlab.progress import progress_bar
            from pcamlab.slide.reader import verify_slide

            update, close = progress_bar("decoding every tile", sys.stderr.isatty(), unit="region")
            try:
                with stopping.safe_points():
                    decoded = verify_slide(slide, progress=update)
            finally:
                close()
    annotations = None
    if args.annotations:
        from pcamlab.slide.annotations import draw_annotations, read_annotations

        annotations = read_annotations(args.annotations, slide_dimensions=info.level_dimensions[0], **reading)
        thumbnail = draw_annotations(thumbnail, annotations, info.level_dimensions[0][0] / thumbnail.shape[1])
    if args.thumbnail:
        save_image_png(thumbnail, args.thumbnail, parameter="thumbnail")
    if args.json:
        facts = info.to_dict()
        if args.verify:
            facts["verified_pixels"] = decoded
        if annotations is not None:
            facts["annotations"] = _annotation_facts(annotations, info)
        print(json.dumps(facts, indent=2))
        return 0
    print(f"slide     {info.path}")
    print(f"reader    {info.backend} ({info.vendor})")
    if info.mpp:
        source = f"from {describe_mpp_source(info.mpp_source, info.vendor)}"
        if info.mpp_source == "given":
            source = "given with --mpp; the slide records none"
        if info.mpp_source == "given" and info.recorded_mpp:
            source = (f"given with --mpp; overrides {info.recorded_mpp[0]:.4g} x {info.recorded_mpp[1]:.4g} um/px "
                      f"from {describe_mpp_source(info.recorded_mpp_source, info.vendor)}")
        print(f"mpp       {info.mpp[0]:.4g} x {info.mpp[1]:.4g} um/px at level 0 ({source})")
    else:
        print("mpp       unknown (no metadata, no TIFF resolution tags): pass --mpp to predict")
    if info.objective_power:
        print(f"objective {info.objective_power:g}x")
    print("level  width x height    downsample  um/px")
    for level, ((width, height), downsample) in enumerate(zip(info.level_dimensions, info.level_downsamples)):
        mpp = f"{info.mpp[0] * downsample:.4g}" if info.mpp else "-"
        print(f"{level:>5}  {width:>7} x {height:<7}  {downsample:>10.4g}  {mpp}")
    if annotations is not None:
        print(_annotation_text(_annotation_facts(annotations, info)))
    print(_text_thumbnail(thumbnail))
    if args.thumbnail:
        print(f"thumbnail written to {args.thumbnail} ({thumbnail.shape[1]} x {thumbnail.shape[0]})")
    if args.verify:
        print(f"verified  every tile of the {len(info.level_dimensions)} level(s) decodes ({decoded / 1e6:,.1f} "
              "megapixels)")
    for line in remarks(info.notes, info.warnings):
        print(line)
    return 0


def _annotation_facts(annotations, info) -> dict:
    mpp = (info.mpp[0] + info.mpp[1]) / 2 if info.mpp else None
    return {
        "file": str(annotations.source), "format": annotations.format, "classes": annotations.summary(mpp),
        "source_classes": [{"name": name, "class": kind, "regions": count}
                           for name, kind, count in annotations.source_classes],
        "notes": list(annotations.notes),
    }


def _annotation_text(facts: dict) -> str:
    lines = [f"annotations {facts['file']} ({facts['format']})", "  class    regions    area mm2  from"]
    for name, values in facts["classes"].items():
        area = "-" if values["area_mm2"] is None else f"{values['area_mm2']:.4f}"
        sources = ", ".join(f"{item['name']} x{item['regions']}" for item in facts["source_classes"]
                            if item["class"] == name)
        lines.append(f"  {name:<8} {values['regions']:>7}  {area:>10}  {sources}")
    lines += remarks(facts["notes"], [], flags=ANNOTATION_FLAGS)
    return "\n".join(lines)


# predict_slide's parameters named in its messages -> slide predict's flags (a cohort's per-slide failure lines)
PREDICT_FLAGS = {"mpp": "--mpp", "tissue_threshold": "--tissue-threshold", "min_tissue_fraction": "--min-tissue"}


def run_predict(args: argparse.Namespace) -> int:
    """Predict the slides of this worker's share (then, unless --no-steal, any left undone), one lock each.

    Exit 0 when every slide it was given is done or held by a live worker (each held one is named: "left to
    HOST pid N (running, ...)"); 2 when a slide failed now or was skipped for its failure record.
    """
    import shlex
    from pathlib import Path

    from pcamlab import stopping
    from pcamlab.errors import DataError, RunFolderError
    from pcamlab.runtime.fastest import open_fastest
    from pcamlab.slide import open_slide, plan_grid
    from pcamlab.slide._model import PCAM_MPP, contract_value
    from pcamlab.slide.batch import slide_files, slide_folders
    from pcamlab.slide.cohort import Cohort, pick_device, resolve_shard, slide_result_done

    share = resolve_shard(parse_shard(args.shard))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {args.out!r} is a file; --out names a folder (one result folder per slide)")
    notes: list[str] = []
    slides = slide_files(args.slides, notes)  # folders listed by the walker every command uses
    for note in notes:
        print(f"note: {note}")
    keys = [folder.name for folder in slide_folders(slides, out)]  # raises when two slides share a folder
    is_done = slide_result_done(out)
    device, why = pick_device(args.device)
    predictor, runtime, reason = open_fastest(args.model, args.runtime, device=device)
    where = f" [share {share}]" if share.count > 1 else ""
    print(f"runtime {runtime} ({reason})" + (f" on {device} ({why})" if args.device == "auto" else "") + where)
    patch_size = int(contract_value(predictor.contract, "patch_size", 96))
    target_mpp = float(contract_value(predictor.contract, "mpp", PCAM_MPP))
    # Check this worker's slides before any work: a typo, a damaged copy or a missing mpp is found in seconds,
    # with nothing written; what the reader notes (an overridden or implausible mpp) is said once, up front.
    # One slide: its error is the command's. A cohort: the slide is recorded as failed and the rest go on.
    unusable = {}
    mine = list(zip(share.take(keys), share.take(slides)))
    for key, slide_path in mine:
        try:
            with open_slide(slide_path, mpp=args.mpp, backend=args.backend) as slide:
                plan_grid(slide, patch_size, args.stride or patch_size, target_mpp)
                for line in remarks(slide.notes, slide.warnings, prefix=f"{slide_path}: "):
                    print(line)
        except DataError as error:
            if len(slides) == 1:
                raise
            unusable[key] = error
    done = skipped = failed = 0
    for key, slide_path in mine:
        if is_done(key) and key not in unusable:  # checked against this model and these settings (ms), kept
            _predict_one(args, predictor, slide_path, out / key)
            print(f"{slide_path}: already finished in {out / key} with the same model and settings, skipped")
            skipped += 1
    with Cohort(out, is_done=is_done, stale_after=args.stale_after) as cohort, stopping.safe_points():
        for claim in cohort.claim(slides, shard=share, steal=not args.no_steal, retry_failed=args.retry_failed):
            stopping.check()
            if claim.took_over:
                print(f"{claim.slide}: taking over its lock: {claim.took_over}")
            try:
                if claim.key in unusable:
                    raise unusable[claim.key]
                result = _predict_one(args, predictor, claim.slide, out / claim.key)
            except DataError as error:
                if len(slides) == 1:  # one slide: its error is the command's, and nothing is left behind
                    claim.release()
                    raise
                claim.fail(error)
                from pcamlab.cli.main import cli_message

                message = cli_message(str(error), error.parameters, PREDICT_FLAGS)
                print(f"{claim.slide}: FAILED: {message} (recorded in {cohort.failed / claim.key}.json)")
                failed += 1
                continue
            if result.skipped:  # finished by another worker just now
                claim.skipped("finished with the same model and settings")
                skipped += 1
                continue
            summary = result.summary
            claim.finish(seconds=summary["seconds"], tiles=summary["tiles"], tiles_resumed=summary["tiles_resumed"])
            resumed = f", {summary['tiles_resumed']:,} resumed" if summary["tiles_resumed"] else ""
            print(
                f"{claim.slide}: score max {summary['score_max']:.3f} top-{summary['top_k']} mean "
                f"{summary['score_top_k_mean']:.3f}; tumour {summary['tumour_area_mm2']:.2f} mm2 of "
                f"{summary['tissue_area_mm2']:.1f} mm2 tissue; {summary['tiles']:,} tiles{resumed} "
                f"({summary['tiles_per_second'] or 0:,.0f} tiles/s), {summary['seconds']:.1f} s -> {result.out_dir}"
            )
            done += 1
        passed_over = dict(cohort.passed_over)
    failed_before = sorted(key for key, why in passed_over.items() if why == "failed before")
    for key in failed_before:
        print(f"{key}: skipped: failed before (see {cohort.failed / key}.json; --retry-failed tries it again)")
    left = {key: why for key, why in passed_over.items() if why != "failed before"}
    for key, why in left.items():
        print(f"{key}: {why}")
    counts = [f"{done} slide(s) done", f"{skipped} already finished", f"{failed} failed"]
    if failed_before:
        counts.append(f"{len(failed_before)} skipped: failed before (use --retry-failed)")
    if left:
        counts.append(f"{len(left)} left to other workers")
    print(", ".join(counts) + where + (f"; see pcamlab slide summary {shlex.quote(str(args.out))}"
                                       if failed or failed_before or left or share.count > 1 else ""))
    return 2 if failed or failed_before else 0


def _predict_one(args: argparse.Namespace, predictor, slide_path, folder):
    """One slide through predict_slide with a tiles/s progress bar (it stops at a batch on SIGINT/SIGTERM)."""
    from pathlib import Path

    from tqdm.auto import tqdm

    from pcamlab import stopping
    from pcamlab.errors import RunFolderError
    from pcamlab.slide import predict_slide

    bar = tqdm(total=0, desc=Path(slide_path).name, unit="tile", leave=False,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def progress(done_tiles: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.n = bar.last_print_n = done_tiles
            bar.refresh()
        else:
            bar.update(done_tiles - bar.n)

    try:
        return predict_slide(
            predictor, slide_path, folder, stride=args.stride, mpp=args.mpp, tissue_method=args.tissue_method,
            tissue_threshold=args.tissue_threshold, min_tissue_fraction=args.min_tissue, threshold=args.threshold,
            top_k=args.top_k, batch_size=args.batch_size, readers=args.readers, backend=args.backend,
            resume=not args.no_resume, progress=progress,
        )
    except RunFolderError as error:  # main() shows the parameters it names as this command's flags
        if "out_dir" in error.parameters:
            raise
        raise RunFolderError(f"{error} (or pass another out_dir)", parameters=(*error.parameters, "out_dir")) from None
    except stopping.Stopped:
        print(f"{slide_path}: stopped; what was predicted is kept beside {folder}, and the same command "
              "resumes it", file=sys.stderr)
        raise
    finally:
        bar.close()


def _register_summary(commands: argparse._SubParsersAction) -> None:
    summary = commands.add_parser(
        "summary", help="which slides of a cohort's results are done, failed, running or missing",
        description="Read a results folder that slide predict workers shared (OUT/<slide>/ and OUT/.cohort/) and "
        "list every slide as done, failed (with its error), running (locked by a live worker) or missing. Exit 0 "
        "when every slide is done, 1 otherwise.",
    )
    summary.add_argument("results", metavar="RESULTS", help="the --out folder of slide predict")
    summary.add_argument("--slides", nargs="+", metavar="SLIDE",
                         help="the cohort's slides (default: every slide a worker was given, from OUT/.cohort)")
    summary.add_argument("--stale-after", type=float, default=300.0, metavar="SECONDS",
                         help="a lock without a heartbeat for this long counts as left behind (default 300)")
    summary.add_argument("--json", action="store_true", help="print one JSON object per slide")
    summary.set_defaults(func=run_summary)


def run_summary(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from pcamlab.errors import RunFolderError
    from pcamlab.slide.cohort import slide_result_done
    from pcamlab.slide.cohort_status import cohort_status

    if not Path(args.results).is_dir():
        raise RunFolderError(f"results folder {args.results!r} does not exist or is not a folder; give the --out "
                             "folder of slide predict")
    states = cohort_status(args.results, is_done=slide_result_done(args.results), slides=args.slides,
                           stale_after=args.stale_after)
    counts = {name: sum(state.state == name for state in states) for name in ("done", "failed", "running", "missing")}
    if args.json:
        for state in states:
            print(json.dumps(asdict(state)))
    else:
        print(f"{len(states)} slide(s): " + ", ".join(f"{count} {name}" for name, count in counts.items()))
        for state in states:
            if state.state != "done" or len(state.finished_by) > 1:
                extra = f"; finished {len(state.finished_by)} times" if len(state.finished_by) > 1 else ""
                print(f"{state.state:<8} {state.key}  {state.detail}{extra}".rstrip())
    return 0 if counts["done"] == len(states) else 1


def register_synth_cohort(commands: argparse._SubParsersAction) -> None:
    """``pcamlab slide synth-cohort``: a synthetic cohort of slides of real PCam patches, with annotations."""
    parser = commands.add_parser(
        "synth-cohort", help="write a synthetic cohort: slides of real PCam patches, annotations, reference.csv",
        description="Write OUT/slides/*.tif (pyramidal TIFFs of real PCam patches at 0.972 um/px), "
        "OUT/annotations/<id>.xml (ASAP) and <id>.geojson (QuPath) for tumour slides (macro-, micro-metastases "
        "and isolated tumour cells), OUT/reference.csv (slide,label) and OUT/lesions.csv. Training cohorts use "
        "train-split patches only, test cohorts valid-split patches only.",
    )
    parser.add_argument("out", metavar="OUT", help="new folder for the cohort")
    parser.add_argument("--normal", type=int, default=2, help="normal slides (default 2)")
    parser.add_argument("--tumour", type=int, default=2, help="tumour slides (default 2)")
    parser.add_argument("--split", choices=["train", "valid"], default="valid",
                        help="patches from this PCam split: train (slides normal_/tumor_NNN) or valid (test_NNN; default)")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed of everything (default 0)")
    parser.add_argument("--width", type=int, default=4096, help="level-0 width in pixels, 768 to 50,000 (default 4096 = 4 mm)")
    parser.add_argument("--height", type=int, default=3072, help="level-0 height in pixels, 768 to 50,000 (default 3072 = 3 mm)")
    parser.add_argument("--patches", metavar="DIR", help="folder with train/ and valid/ of 0/ 1/ patch folders "
                        "(e.g. ../shared/data/pcam-jpg; default: the sample shipped in pcamlab)")
    parser.add_argument("--pool-size", type=int, default=2000, help="patches loaded per class, >= 1 (default 2000)")
    parser.set_defaults(func=run_synth_cohort)


def run_synth_cohort(args: argparse.Namespace) -> int:
    from collections import Counter

    from pcamlab.progress import progress_bar
    from pcamlab.slide.cohort_synthetic import make_cohort

    progress, close = progress_bar("slides", unit="slide")
    try:
        cohort = make_cohort(args.out, normal_slides=args.normal, tumour_slides=args.tumour, split=args.split,
                             seed=args.seed, width=args.width, height=args.height, patches=args.patches,
                             pool_size=args.pool_size, progress=progress)
    except Exception as error:
        from pcamlab.errors import PcamlabError

        if isinstance(error, PcamlabError) and "out" in error.parameters:
            raise type(error)(f"{error} (OUT)", parameters=error.parameters) from None
        raise
    finally:
        close()
    categories = Counter(lesion.category for lesion in cohort.lesions)
    tumour = sum(cohort.reference.values())
    print(f"wrote {len(cohort.slides)} slides ({len(cohort.slides) - tumour} normal, {tumour} tumour) to "
          f"{cohort.slides_dir}; {len(cohort.lesions)} lesions (" + ", ".join(
              f"{categories[name]} {name}" for name in ("macro", "micro", "itc")) + f") in {cohort.annotations_dir} "
          f"(.xml ASAP, .geojson QuPath); {cohort.reference_csv}; {cohort.root / 'lesions.csv'}")
    return 0


def register_evaluate(commands: argparse._SubParsersAction) -> None:
    """``slide evaluate``: score ``slide predict`` results against annotations (slide ROC, FROC, Dice)."""
    evaluate = commands.add_parser(
        "evaluate", help="score slide predict results against annotations: slide ROC AUC, FROC, Dice",
        description="Score the per-slide folders of `slide predict` the way Camelyon16 did: slide level (max, "
        "top-k mean and a learned aggregator of map features, cross-validated over slides: ROC AUC with a "
        "bootstrap 95% CI, sensitivity and specificity at thresholds chosen on training slides), lesion level "
        "(the challenge's FROC), pixel level (Dice, IoU, tile ROC AUC). Writes OUT/metrics.json, slides.csv, "
        "detections/<slide>.csv (the challenge's format), slide_roc.png, froc.png and report.html.",
    )
    evaluate.add_argument("results", metavar="RESULTS", help="the --out folder of slide predict (one folder per slide)")
    add_annotation_arguments(evaluate, "folder of <slide id>.xml (ASAP) / .geojson (QuPath) / mask annotation "
                             "files; normal slides need none", required=True)
    evaluate.add_argument("--reference", required=True, metavar="CSV",
                          help="reference CSV, one row per slide: slide,label (tumor/normal or 1/0)")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="evaluation folder to create")
    evaluate.add_argument("--detection", default="local_maxima", choices=["local_maxima", "components"],
                          help="lesion detections from a map: local maxima after smoothing, or one per connected "
                          "region above --detection-threshold (default local_maxima)")
    evaluate.add_argument("--detection-threshold", type=float, default=0.5,
                          help="lowest probability of a detection (default 0.5)")
    evaluate.add_argument("--smoothing-um", type=float, default=50.0,
                          help="Gaussian sigma before local maxima, in um (default 50)")
    evaluate.add_argument("--min-distance-um", type=float, default=200.0,
                          help="local maxima closer than this are one lesion, in um (default 200)")
    evaluate.add_argument("--aggregator", default="random_forest", choices=["random_forest", "logistic"],
                          help="learned slide score on map features (default random_forest)")
    evaluate.add_argument("--folds", type=int, default=5, help="folds of the cross-validation over slides (default 5)")
    evaluate.add_argument("--top-k", type=int, default=10, help="slide score: mean of the top k tiles (default 10)")
    evaluate.add_argument("--threshold", type=float,
                          help="map threshold for Dice/IoU (default: each slide's slide predict threshold)")
    evaluate.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the slide ROC AUC CI "
                          "(default 1000; 0 = none)")
    evaluate.add_argument("--itc-axis", default="major_axis", choices=["major_axis", "feret"],
                          help="longest axis of a lesion for the ITC rule (default major_axis, as the official code)")
    evaluate.add_argument("--report-slides", type=int, default=40,
                          help="most slides drawn in report.html, wrong ones first (default 40)")
    evaluate.add_argument("--seed", type=seed_type, default=0, help="seed of the folds, the forest and the bootstrap")
    evaluate.add_argument("--mixed-models", action="store_true", help="score results predicted by different models "
                          "together (refused by default: their summary.json record different model_sha256)")
    evaluate.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from pcamlab.progress import progress_bar
    from pcamlab.slide.evaluation import DetectionOptions, evaluate_slides

    detection = DetectionOptions(method=args.detection, threshold=args.detection_threshold,
                                 smoothing_um=args.smoothing_um, min_distance_um=args.min_distance_um)
    update, close = progress_bar("scoring slides", sys.stderr.isatty(), unit="slide")
    try:
        evaluation = evaluate_slides(
            args.results, args.annotations, args.reference, args.out, detection=detection, top_k=args.top_k,
            threshold=args.threshold, aggregator=args.aggregator, folds=args.folds, seed=args.seed,
            bootstrap=args.bootstrap, itc_axis=args.itc_axis, report_slides=args.report_slides,
            mixed_models=args.mixed_models, progress=update,
            **annotation_options(args),
        )
    finally:
        close()
    metrics = evaluation.metrics
    slide, lesion, pixel = metrics["slide"], metrics["lesion"], metrics["pixel"]

    def number(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(f"{slide['slides']} slides ({slide['tumour_slides']} tumour, {slide['normal_slides']} normal), "
          f"{slide['scores']['aggregator']['folds']}-fold cross-validation over slides")
    for name, values in slide["scores"].items():
        interval = values["roc_auc_ci"]
        ci = f" (95% CI {interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
        print(f"  slide ROC AUC {name:<11} {number(values['roc_auc'])}{ci}  sensitivity "
              f"{number(values['sensitivity'])} specificity {number(values['specificity'])}")
    rates = "  ".join(f"{rate}: {number(value)}" for rate, value in lesion["sensitivity_at"].items())
    print(f"  FROC {number(lesion['froc'])} ({lesion['lesions_hit']} of {lesion['lesions']} lesions hit, "
          f"{lesion['false_positives']} false positives; sensitivity at FP/slide {rates})")
    print(f"  Dice {number(pixel['dice_mean'])} IoU {number(pixel['iou_mean'])} (mean over tumour slides), "
          f"tile ROC AUC {number(pixel['tile_roc_auc'])}")
    wrong = slide["wrong"]
    if wrong:
        print("  wrong slides, worst first: " + ", ".join(f"{row['slide']} ({row['error']})" for row in wrong[:5])
              + (" ..." if len(wrong) > 5 else ""))
    for note in metrics["warnings"]:
        print(f"  note: {note}")
    print(f"-> {evaluation.files['report']}")
    return 0
