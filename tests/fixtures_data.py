"""Tiny real-format PCam datasets written into a temporary folder, for any test to import.

The patches are REAL: decoded from the JPEGs of the sample shipped in the package
(``pcamlab.data.sample_root()``), chosen by a seeded generator. Each writer puts the same pixels and
labels into one on-disk layout, so readers can be compared across formats; ``write_bad_image`` and the
keyword options make the broken variants the error tests need.

Example:
    >>> from fixtures_data import sample_patches, write_h5  # tests/ is on sys.path under pytest
    >>> images, labels = sample_patches(8)
    >>> root = write_h5(tmp_path / "h5", {"train": (images, labels)})
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pcamlab.data import sample_root

__all__ = [
    "sample_patches",
    "sample_files",
    "tiny_splits",
    "write_h5",
    "write_folders",
    "write_course_layout",
    "write_kaggle",
    "write_all_formats",
    "write_bad_image",
    "kaggle_id",
]

H5_NAME = "camelyonpatch_level_2_split_{split}_{kind}.h5"


def sample_files(count: int = 12, split: str = "train", seed: int = 0) -> tuple[list[Path], np.ndarray]:
    """``count`` JPEG paths of the embedded sample (half per class, seeded) and their labels."""
    generator = np.random.default_rng(seed)
    files, labels = [], []
    for label in (0, 1):
        candidates = sorted((sample_root() / split / str(label)).glob("*.jpg"))
        size = count // 2 + (count % 2 if label == 0 else 0)
        chosen = sorted(generator.choice(len(candidates), size=size, replace=False).tolist())
        files += [candidates[index] for index in chosen]
        labels += [label] * size
    return files, np.asarray(labels, dtype=np.int64)


def sample_patches(count: int = 12, split: str = "train", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Decoded real patches: uint8 ``(count, 96, 96, 3)`` and int64 labels ``(count,)``, class 0 first."""
    files, labels = sample_files(count, split, seed)
    images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files])
    return images, labels


def tiny_splits(train: int = 12, valid: int = 8, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "valid": (images, labels)}`` from the sample's own splits."""
    return {"train": sample_patches(train, "train", seed), "valid": sample_patches(valid, "valid", seed)}


def write_h5(
    root: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    x_name: str = "x",
    y_name: str = "y",
    y_shape: tuple[int, ...] | None = None,
) -> Path:
    """Official PCam HDF5 pair files per split (``x`` chunked (1, 96, 96, 3) gzip, ``y`` (N, 1, 1, 1)).

    ``x_name``/``y_name``/``y_shape`` write broken variants; images and labels are stored as given
    (pass other dtypes or shapes to break those).
    """
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        with h5py.File(root / H5_NAME.format(split=split, kind="x"), "w") as file:
            chunks = (1, *images.shape[1:]) if images.ndim >= 2 and len(images) else None
            file.create_dataset(x_name, data=images, chunks=chunks, compression="gzip" if chunks else None)
        shape = y_shape or (len(labels), 1, 1, 1)
        with h5py.File(root / H5_NAME.format(split=split, kind="y"), "w") as file:
            file.create_dataset(y_name, data=np.asarray(labels).astype(np.uint8).reshape(shape))
    return root


def _write_image(path: Path, image: np.ndarray, image_format: str) -> Path:
    path = path.with_suffix("." + image_format)
    if image_format in ("jpg", "jpeg"):
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)  # png and tif: lossless
    return path


def write_folders(
    root: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    image_format: str = "png",
) -> Path:
    """Class folders ``root/<split>/{0,1}/NNN.<image_format>`` (file order = the given order)."""
    for split, (images, labels) in splits.items():
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            _write_image(folder / f"{index:03d}", image, image_format)
    return root


def write_original_jpegs(root: Path, split_files: dict[str, tuple[list[Path], np.ndarray]]) -> Path:
    """Class folders holding the sample's original JPEG bytes (what the shared pcam-jpg data holds)."""
    for split, (files, labels) in split_files.items():
        for path, label in zip(files, labels):
            folder = root / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / path.name)
    return root


def write_course_layout(
    root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], *, image_format: str = "png"
) -> Path:
    """The course layout ``root/train+val/{train,valid}/{0,1}/`` (returns ``root``)."""
    write_folders(root / "train+val", splits, image_format=image_format)
    return root


def kaggle_id(image: np.ndarray) -> str:
    """A Kaggle-like id (40 hex characters) made from the pixels."""
    return hashlib.sha1(image.tobytes()).hexdigest()


def write_kaggle(
    root: Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    test_images: np.ndarray | None = None,
    csv_rows: list[str] | None = None,
) -> Path:
    """Kaggle layout: ``train/<id>.tif``, ``train_labels.csv`` (``id,label``), optional ``test/<id>.tif``.

    ``csv_rows`` replaces the CSV body (after the header) to write broken variants.
    """
    (root / "train").mkdir(parents=True, exist_ok=True)
    rows = []
    for image, label in zip(images, labels):
        identifier = kaggle_id(image)
        _write_image(root / "train" / identifier, image, "tif")
        rows.append(f"{identifier},{int(label)}")
    body = rows if csv_rows is None else csv_rows
    (root / "train_labels.csv").write_text("id,label\n" + "\n".join(body) + "\n")
    if test_images is not None:
        (root / "test").mkdir(exist_ok=True)
        for image in test_images:
            _write_image(root / "test" / kaggle_id(image), image, "tif")
    return root


def write_all_formats(tmp: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> dict:
    """Write the same patches in every layout; returns ``{"h5", "folders", "course", "kaggle": root}``.

    The Kaggle root gets every patch of every split in ``train/`` (Kaggle has no valid split).
    """
    splits = splits or tiny_splits()
    images = np.concatenate([pair[0] for pair in splits.values()])
    labels = np.concatenate([pair[1] for pair in splits.values()])
    return {
        "h5": write_h5(tmp / "h5", splits),
        "folders": write_folders(tmp / "folders", splits),
        "course": write_course_layout(tmp / "course", splits),
        "kaggle": write_kaggle(tmp / "kaggle", images, labels),
    }


def _png16(values: np.ndarray, significant_bits: int | None = None) -> bytes:
    """A 16-bit RGB PNG of uint16 ``(H, W, 3)`` values (Pillow cannot write one), optionally with sBIT."""
    import struct
    import zlib

    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))  # filter 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
    sbit = chunk(b"sBIT", bytes([significant_bits] * 3)) if significant_bits else b""
    return b"\x89PNG\r\n\x1a\n" + header + sbit + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def write_bad_image(path: Path, kind: str, source: np.ndarray | None = None) -> Path:
    """Write one broken image at ``path`` (suffix kept) and return it.

    Kinds: ``truncated`` (first half of a real JPEG/PNG), ``not-image`` (text), ``empty`` (0 bytes),
    ``grayscale``, ``rgba`` (a transparent 16x16 corner), ``rgba-opaque``, ``palette``, ``la``, ``cmyk``,
    ``16bit`` (16-bit grayscale PNG), ``16bit-rgb`` (16-bit RGB TIFF, value x 257, needs a .tif path),
    ``12bit-rgb`` (16-bit RGB TIFF holding 0..4095, as cameras write), ``12bit-rgb-declared`` (the same
    with MaxSampleValue 4095), ``16bit-png-rgb`` (value x 257), ``12bit-png-rgb`` (0..4095, no sBIT),
    ``12bit-png-rgb-sbit`` (0..4095 with sBIT 12), ``float-rgb`` (float32 RGB TIFF in [0, 1], which only
    tifffile reads), ``small`` (64x64 RGB).
    """
    image = source if source is not None else sample_patches(2)[0][0]
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    pillow_format = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}[suffix]
    if kind == "truncated":
        import io

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=pillow_format)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "not-image":
        path.write_text("this is not an image\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "grayscale":
        Image.fromarray(image).convert("L").save(path, format=pillow_format)
    elif kind in ("rgba", "rgba-opaque"):
        rgba = np.dstack([image, np.full(image.shape[:2], 255, dtype=np.uint8)])
        if kind == "rgba":
            rgba[:16, :16, 3] = 0  # a transparent corner: what lies behind it is unknown
        Image.fromarray(rgba, "RGBA").save(path, format="PNG" if pillow_format == "JPEG" else pillow_format)
    elif kind == "palette":
        Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(
            path, format="PNG" if pillow_format == "JPEG" else pillow_format
        )
    elif kind == "la":
        Image.fromarray(image).convert("LA").save(path, format="PNG")
    elif kind == "cmyk":
        Image.fromarray(image).convert("CMYK").save(path, format="JPEG" if pillow_format == "JPEG" else "TIFF")
    elif kind in ("12bit-rgb", "12bit-rgb-declared"):  # camera data in a 16-bit file: values 0..4095
        import tifffile

        values = np.rint(image.astype(np.float64) * 4095 / 255).astype(np.uint16)
        extratags = [(281, "H", 3, (4095, 4095, 4095))] if kind.endswith("declared") else []
        tifffile.imwrite(path, values, photometric="rgb", extratags=extratags)
    elif kind in ("16bit-png-rgb", "12bit-png-rgb", "12bit-png-rgb-sbit"):
        values = image.astype(np.uint16) * 257 if kind == "16bit-png-rgb" else np.rint(
            image.astype(np.float64) * 4095 / 255).astype(np.uint16)
        path.write_bytes(_png16(values, significant_bits=12 if kind.endswith("sbit") else None))
    elif kind == "16bit":
        gray = np.asarray(Image.fromarray(image).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(path, format="PNG" if pillow_format == "JPEG" else pillow_format)
    elif kind == "16bit-rgb":
        import tifffile

        tifffile.imwrite(path, image.astype(np.uint16) * 257, photometric="rgb")
    elif kind == "float-rgb":
        import tifffile

        tifffile.imwrite(path, image.astype(np.float32) / 255, photometric="rgb")
    elif kind == "small":
        Image.fromarray(image[:64, :64]).save(path, format=pillow_format)
    else:
        raise ValueError(f"unknown bad image kind {kind!r}")
    return path


def write_tiny_h5(folder, *, train: int = 32, valid: int = 16, seeds: tuple[int, int] = (5, 6)):
    """A small real-patch PCam HDF5 dataset (train and valid splits) for training tests; returns its root."""
    images, labels = sample_patches(train, split="train", seed=seeds[0])
    valid_images, valid_labels = sample_patches(valid, split="valid", seed=seeds[1])
    return write_h5(folder, {"train": (images, labels), "valid": (valid_images, valid_labels)})
