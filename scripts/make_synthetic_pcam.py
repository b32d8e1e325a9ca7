"""Write a full-size PCam split in the official HDF5 layout, for scale tests of loading and training.

The official training split holds 262,144 patches: ``camelyonpatch_level_2_split_train_x.h5`` with
dataset ``x`` uint8 ``(N, 96, 96, 3)`` chunked ``(1, 96, 96, 3)`` (about 7.2 GB uncompressed) and
``..._y.h5`` with dataset ``y`` uint8 ``(N, 1, 1, 1)``. This script writes files of that shape quickly
and with bounded memory (one block of patches at a time), so streaming can be measured without the
real download.

Content (``--content``):

- ``sample`` (default): real patches from the sample shipped in the package, drawn with replacement,
  each turned by a random dihedral transform and given one of 257 patterns of +-``--noise`` uniform
  pixel noise (pixels first clipped to [noise, 255 - noise]), so the bytes differ per row and gzip
  compresses about as much as on real tissue (about 0.92 of the raw size at level 4, against 0.88
  for the shared 2,000-patch subset of decoded JPEGs at level 9). Labels are the sample's.
- ``random``: uniform random pixels (incompressible) and random labels.

Compression is off by default (fastest to write, and the same chunking as the official files, which
are distributed gzipped as whole files); ``--gzip 1..9`` compresses each chunk like the shared subset.

Usage:
    python scripts/make_synthetic_pcam.py /tmp/pcam-full                      # 262,144 train patches
    python scripts/make_synthetic_pcam.py /tmp/pcam-full --split valid --n 1024
    python scripts/make_synthetic_pcam.py /tmp/pcam-small --n 4096 --gzip 4 --content random

The files are large: write them outside the repository (e.g. under /tmp) and delete them after use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["OFFICIAL_TRAIN_COUNT", "make_synthetic_pcam", "main"]

OFFICIAL_TRAIN_COUNT = 262_144  # patches in the official PCam training split
PATCH_SHAPE = (96, 96, 3)
H5_NAME = "camelyonpatch_level_2_split_{split}_{kind}.h5"
CONTENTS = ("sample", "random")


def _sample_bank() -> tuple[np.ndarray, np.ndarray]:
    """Every patch of the shipped sample, decoded: uint8 (1000, 96, 96, 3) and int64 labels."""
    from pcamlab.data import load_split_arrays, open_split

    parts = [load_split_arrays(open_split("sample", split)) for split in ("train", "valid")]
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


def _dihedral_numpy(images: np.ndarray, k: int) -> np.ndarray:
    """Dihedral transform ``k`` (0..7, numbered as in ``pcamlab.data.augment``) on (B, H, W, 3)."""
    if k & 4:
        images = images.transpose(0, 2, 1, 3)
    if k & 2:
        images = images[:, ::-1]
    if k & 1:
        images = images[:, :, ::-1]
    return images


NOISE_PATCHES = 257  # distinct noise patterns; x 1000 sample patches x 8 transforms >> 262,144 rows


def _noise_bank(noise: int, generator: np.random.Generator) -> np.ndarray:
    """uint8 (NOISE_PATCHES, 96, 96, 3) noise in [0, 2 * noise], added then offset by -noise."""
    return generator.integers(0, 2 * noise + 1, size=(NOISE_PATCHES, *PATCH_SHAPE), dtype=np.uint8)


def _sample_block(
    bank: np.ndarray, bank_labels: np.ndarray, count: int, noise: int, noise_bank: np.ndarray | None,
    generator: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` transformed, noisy sample patches; ``bank`` must already lie in [noise, 255 - noise]."""
    picks = generator.integers(0, len(bank), size=count)
    images = bank[picks]  # (count, 96, 96, 3) uint8, a copy
    # one dihedral transform per group of 8 rows keeps this vectorised and still varies the rows
    transforms = generator.integers(0, 8, size=-(-count // 8))
    for group, k in enumerate(transforms):
        rows = slice(group * 8, (group + 1) * 8)
        images[rows] = _dihedral_numpy(images[rows], int(k))
    if noise_bank is not None:
        # uint8 in place, no overflow: bank pixels are in [noise, 255 - noise]
        images += noise_bank[generator.integers(0, len(noise_bank), size=count)]
        images -= np.uint8(noise)
    return images, bank_labels[picks]


def make_synthetic_pcam(
    directory: str | os.PathLike,
    count: int = OFFICIAL_TRAIN_COUNT,
    *,
    split: str = "train",
    content: str = "sample",
    gzip: int = 0,
    noise: int = 3,
    seed: int = 0,
    block: int = 2048,
    overwrite: bool = False,
    progress: Callable[[int, int], object] | None = None,
) -> dict:
    """Write ``camelyonpatch_level_2_split_<split>_{x,y}.h5`` with ``count`` patches into ``directory``.

    Each file is written under a temporary name and renamed when complete, so an interrupted run
    leaves no half-written file behind the official name.

    Args:
        directory: folder to write into (created if needed).
        count: number of patches (the official train split has 262,144).
        split: split name in the file names (``train``, ``valid``, ``test``).
        content: ``"sample"`` (real sample patches, transformed, with noise) or ``"random"``.
        gzip: gzip level of each chunk, 0 (off) to 9.
        noise: maximum absolute pixel noise added to sample patches (0 = exact copies).
        seed: seed of every random choice.
        block: patches generated and written at a time (memory is about 3 x block x 27,648 bytes).
        overwrite: replace existing files instead of refusing.
        progress: optional ``progress(done, total)`` called after each block.

    Returns:
        ``{"x_path", "y_path", "count", "bytes", "seconds", "class_counts"}``.

    Raises:
        ValueError: a bad argument, or the files exist and ``overwrite`` is off.

    Example:
        >>> make_synthetic_pcam("/tmp/pcam-full", 4096, gzip=1)["count"]
        4096
    """
    import h5py

    if count < 1 or block < 1:
        raise ValueError(f"count and block must be >= 1; got count={count}, block={block}")
    if content not in CONTENTS:
        raise ValueError(f"content must be one of {list(CONTENTS)}; got {content!r}")
    if not 0 <= noise <= 64:
        raise ValueError(f"noise must be from 0 to 64 grey levels; got {noise}")
    if not 0 <= gzip <= 9:
        raise ValueError(f"gzip must be a level from 0 (off) to 9; got {gzip}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x_path = directory / H5_NAME.format(split=split, kind="x")
    y_path = directory / H5_NAME.format(split=split, kind="y")
    existing = [str(path) for path in (x_path, y_path) if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]} already exists; delete it or pass overwrite=True (--overwrite)")

    started = time.perf_counter()
    generator = np.random.default_rng(seed)
    bank, bank_labels, noise_bank = None, None, None
    if content == "sample":
        bank, bank_labels = _sample_bank()
        if noise > 0:
            np.clip(bank, noise, 255 - noise, out=bank)
            noise_bank = _noise_bank(noise, generator)
    labels = np.empty(count, dtype=np.uint8)
    x_temporary = x_path.with_name(f".{x_path.name}.tmp-{os.getpid()}")
    y_temporary = y_path.with_name(f".{y_path.name}.tmp-{os.getpid()}")
    compression = {"compression": "gzip", "compression_opts": gzip} if gzip else {}
    try:
        with h5py.File(x_temporary, "w") as file:
            images = file.create_dataset(
                "x", shape=(count, *PATCH_SHAPE), dtype=np.uint8, chunks=(1, *PATCH_SHAPE), **compression
            )
            for start in range(0, count, block):
                size = min(block, count - start)
                if content == "sample":
                    pixels, block_labels = _sample_block(bank, bank_labels, size, noise, noise_bank, generator)
                else:
                    pixels = generator.integers(0, 256, size=(size, *PATCH_SHAPE), dtype=np.uint8)
                    block_labels = generator.integers(0, 2, size=size)
                images[start : start + size] = pixels  # (size, 96, 96, 3) -> size chunks
                labels[start : start + size] = block_labels
                if progress is not None:
                    progress(start + size, count)
        with h5py.File(y_temporary, "w") as file:
            file.create_dataset("y", data=labels.reshape(count, 1, 1, 1))
        os.replace(x_temporary, x_path)
        os.replace(y_temporary, y_path)
    finally:
        for path in (x_temporary, y_temporary):
            path.unlink(missing_ok=True)
    values, counts = np.unique(labels, return_counts=True)
    return {
        "x_path": x_path,
        "y_path": y_path,
        "count": count,
        "bytes": x_path.stat().st_size + y_path.stat().st_size,
        "seconds": round(time.perf_counter() - started, 2),
        "class_counts": {int(value): int(number) for value, number in zip(values, counts)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="folder to write into, e.g. /tmp/pcam-full (not inside the repository)")
    parser.add_argument("--n", type=int, default=OFFICIAL_TRAIN_COUNT, help="patches (default: %(default)s)")
    parser.add_argument("--split", default="train", help="split name in the file names (default: %(default)s)")
    parser.add_argument("--content", choices=CONTENTS, default="sample", help="pixels (default: %(default)s)")
    parser.add_argument("--gzip", type=int, default=0, help="gzip level per chunk, 0 = off (default: %(default)s)")
    parser.add_argument("--noise", type=int, default=3, help="max pixel noise on sample patches (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--block", type=int, default=2048, help="patches written at a time (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    arguments = parser.parse_args(argv)

    def show(done: int, total: int) -> None:
        print(f"\r{done:,}/{total:,} patches", end="", file=sys.stderr, flush=True)

    try:
        result = make_synthetic_pcam(
            arguments.directory, arguments.n, split=arguments.split, content=arguments.content,
            gzip=arguments.gzip, noise=arguments.noise, seed=arguments.seed, block=arguments.block,
            overwrite=arguments.overwrite, progress=show,
        )
    except ValueError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(
        f"wrote {result['x_path']} and {result['y_path'].name}: {result['count']:,} patches, "
        f"{result['bytes'] / 1e9:.2f} GB, classes {result['class_counts']}, in {result['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
