"""Readers of PCam patches in the three on-disk layouts, behind one contract.

Every reader returns ``(image, label)`` pairs where ``image`` is a ``numpy.ndarray`` uint8
``(96, 96, 3)`` RGB and ``label`` an ``int`` in {0, 1} (``-1`` for the unlabeled Kaggle ``test``
split). Layouts:

- ``h5``: the official release, ``camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5``.
- ``folders``: class folders ``<root>/<split>/{0,1}/*.{jpg,jpeg,png,tif,tiff}``, also the course
  layout ``<root>/train+val/{train,valid}/{0,1}/``. The embedded sample (``root="sample"``) is one.
- ``kaggle``: ``<root>/train/*.tif`` + ``<root>/train_labels.csv`` (Kaggle "Histopathologic Cancer
  Detection"), split into ``train``/``valid`` by a seeded stratified fraction, or by the split of
  each id in ``<root>/splits.csv`` where ``pcamlab data convert`` wrote one; ``<root>/test/*.tif``
  gives the ``test`` split (unlabeled, unless ``<root>/test_labels.csv`` lists its labels).

A new layout is one class registered in :data:`READERS` with ``detect``, ``splits``, ``__len__``,
``__getitem__``, ``name`` and ``validate``; its ``detect_order`` places it in auto-detection. The
config's ``data.format`` values, the CLI ``--format`` choices and auto-detection all read the registry
(:func:`format_choices`, :func:`detection_order`).

Example:
    >>> from pcamlab.data import open_split, load_split_arrays
    >>> reader = open_split("sample", "train")
    >>> image, label = reader[0]
    >>> images, labels, skipped = load_split_arrays(reader)
    >>> images.shape
    (800, 96, 96, 3)
"""

from __future__ import annotations

import csv
import os
import re
import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pcamlab.config import declare_choices
from pcamlab.config_ranges import check_field
from pcamlab.errors import ConfigError, DataError, did_you_mean, plain_line
from pcamlab.fileio import printable
from pcamlab.registry import Registry

__all__ = [
    "PATCH_SIZE",
    "IMAGE_SUFFIXES",
    "READERS",
    "PatchReader",
    "BadImageError",
    "H5Reader",
    "FoldersReader",
    "KaggleReader",
    "resolve_root",
    "sample_root",
    "detect_format",
    "detection_order",
    "format_choices",
    "available_splits",
    "open_split",
    "load_split_arrays",
    "usable_cpus",
    "decode_image_file",
    "check_image_array",
]

PATCH_SIZE = 96  # PCam patches are 96x96 pixels at 10x (level 2)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
H5_PATTERN = "camelyonpatch_level_2_split_{split}_{kind}.h5"
H5_SPLITS = ("train", "valid", "test")
H5_META_PATTERN = "camelyonpatch_level_2_split_{split}_meta.csv"  # slide of each row (column 'wsi')
KAGGLE_LABELS = "train_labels.csv"
KAGGLE_TEST_LABELS = "test_labels.csv"  # not Kaggle's: written by `data convert` for a labelled test split
KAGGLE_SPLITS = "splits.csv"  # not Kaggle's: `id,split` written by `data convert` to keep the source's splits
COURSE_FOLDER = "train+val"

READERS: Registry[type[PatchReader]] = Registry("data format")

_RESIZE_FIX = f"PCam patches are {PATCH_SIZE}x{PATCH_SIZE}; crop or resize your patches to that size"


#: The advice of an unreadable file's message, naming the parameter (the CLI shows --skip-bad; the web
#: service, which has no such option, replaces it with its own: see pcamlab.serve.inputs).
SKIP_HINT = "pass skip_bad=True to skip"


class BadImageError(DataError):
    """One image file cannot be used (unreadable, truncated, wrong size or colour mode).

    ``load_split_arrays(..., skip_bad=True)`` skips these and counts them; every other
    :class:`DataError` (layout, labels, counts) always stops.
    """


def sample_root() -> Path:
    """Folder of the real PCam sample shipped in the package (800 train + 200 valid patches)."""
    return Path(__file__).resolve().parent / "sample"


def resolve_root(root: str | os.PathLike) -> Path:
    """The dataset folder ``root`` names ('sample': the shipped sample), checked to be an existing folder.

    Raises:
        DataError: it does not exist, or is a file.
    """
    if str(root) == "sample":
        return sample_root()
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"dataset root {str(path)!r} does not exist; pass a folder holding PCam data "
            "(official .h5 files, class folders or the Kaggle layout) or 'sample' for the shipped sample"
        )
    if not path.is_dir():
        raise DataError(
            f"dataset root {str(path)!r} is a file, not a folder; pass the folder that holds it "
            f"({str(path.parent)!r})"
        )
    return path


# ----------------------------------------------------------------------------------------------
# Image decoding and checks shared by the file-based readers.

_MODE_FIXES = {
    "1": "is 1-bit black and white",
    "L": "is 8-bit grayscale",
    "LA": "is grayscale with alpha",
    "P": "is a palette image",
    "PA": "is a palette image with alpha",
    "RGBA": "is RGB with an alpha channel (RGBA)",
    "RGBX": "is RGB with a padding channel (RGBX)",
    "CMYK": "is CMYK",
    "YCbCr": "is YCbCr",
    "LAB": "is CIE Lab",
    "HSV": "is HSV",
    "I": "is 32-bit integer grayscale",
    "F": "is 32-bit float grayscale",
}


def _mode_message(name: str, mode: str) -> str:
    if mode.startswith("I;16") or mode in ("I", "F"):
        what = f"is {'16' if mode.startswith('I;16') else '32'}-bit grayscale (mode {mode!r})"
        how = "rescale it to 8 bits per channel and save as RGB, e.g. with numpy (value >> 8) then Pillow"
    else:
        what = f"{_MODE_FIXES.get(mode, 'is not RGB')} (mode {mode!r})"
        how = "convert it, e.g. Image.open(path).convert('RGB').save(path)"
    return f"image {name} {what}; pcamlab needs 8-bit RGB H&E patches: {how}"


def check_image_array(image: np.ndarray, name: str) -> np.ndarray:
    """Check that a decoded array is a uint8 ``(96, 96, 3)`` RGB patch and return it.

    Args:
        image: decoded pixels.
        name: file or row shown in the error message.

    Raises:
        BadImageError: wrong dtype (e.g. 16-bit), channel count or size, with the fix.
    """
    if image.dtype != np.uint8:
        how = (
            "(image * 255).round().astype('uint8') for floats in [0, 1]"
            if np.issubdtype(image.dtype, np.floating)
            else "(image >> 8).astype('uint8') for 16-bit"
        )
        raise BadImageError(
            f"image {name} has dtype {image.dtype} ({image.dtype.itemsize * 8}-bit); pcamlab needs "
            f"8-bit RGB: rescale it to uint8, e.g. {how}, and save it again"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 2)):
        raise BadImageError(
            f"image {name} is grayscale (shape {image.shape}); pcamlab needs RGB H&E patches: "
            "convert it to 3 channels, e.g. Image.open(path).convert('RGB').save(path)"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        channels = image.shape[2] if image.ndim == 3 else "?"
        raise BadImageError(
            f"image {name} has shape {image.shape} ({channels} channels); pcamlab needs (H, W, 3) RGB: "
            "drop the alpha/extra channels, e.g. Image.open(path).convert('RGB').save(path)"
        )
    if image.shape[:2] != (PATCH_SIZE, PATCH_SIZE):
        raise BadImageError(
            f"image {name} is {image.shape[1]}x{image.shape[0]} pixels (width x height); {_RESIZE_FIX}"
        )
    return image


def _too_large(name: str, error: Exception) -> BadImageError:
    """Pillow's DecompressionBombError (a header declaring hundreds of millions of pixels) as the size error."""
    declared = re.search(r"\((\d+) pixels\)", str(error))
    pixels = f"{int(declared.group(1)):,} pixels" if declared else "more pixels than Pillow's safety limit"
    return BadImageError(f"image {name} declares {pixels} (a decompression bomb, not decoded); {_RESIZE_FIX}")


def _unreadable(name: str, error: Exception) -> BadImageError:
    if isinstance(error, PermissionError):
        return BadImageError(
            f"cannot read image {name}: permission denied; give your user read access (e.g. chmod a+r on it) "
            "or copy the file somewhere you can read it"
        )
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if reason.startswith("cannot identify image file"):
        reason = "not a recognised image format"
    return BadImageError(
        f"cannot decode image {name} ({reason}): the file is truncated or not an image; copy it again "
        f"from the source, delete it, or {SKIP_HINT} such files", parameters=("skip_bad",)
    )


#: Pillow modes converted to RGB because the conversion is exact and needs no choice.
_EXACT_TO_RGB = ("P", "RGBX", "YCbCr")
#: Pillow modes whose alpha channel is dropped when every pixel is opaque.
_WITH_ALPHA = ("RGBA", "PA", "RGBa")


def _declared_bits(image, raw: bytes | None) -> tuple[int, int | None]:
    """``(bits per sample, declared maximum value or None)`` from a PNG or TIFF header.

    Pillow opens 16-bit RGB PNG and TIFF files as 8-bit ``RGB`` (it keeps the high byte), so the file's
    own header is read: PNG IHDR bit depth and ``sBIT`` significant bits, TIFF ``BitsPerSample`` (258)
    and ``MaxSampleValue`` (281).
    """
    if image.format == "PNG" and raw is not None and raw[12:16] == b"IHDR":
        bits = raw[24]
        significant = None
        position = 8
        while position + 8 <= len(raw):  # walk the chunks before the image data for sBIT
            length = int.from_bytes(raw[position : position + 4], "big")
            kind = raw[position + 4 : position + 8]
            if kind == b"sBIT" and length >= 3:
                significant = max(raw[position + 8 : position + 11])
            if kind in (b"IDAT", b"IEND"):
                break
            position += 12 + length
        declared = (1 << significant) - 1 if significant and significant < bits else None
        return bits, declared
    tags = getattr(image, "tag_v2", None)
    if image.format == "TIFF" and tags is not None:
        per_sample = tags.get(258, (8,))
        bits = max(per_sample) if isinstance(per_sample, tuple) else int(per_sample)
        maximum = tags.get(281)
        maximum = max(maximum) if isinstance(maximum, tuple) else maximum
        declared = int(maximum) if maximum and int(maximum) < (1 << bits) - 1 else None
        return bits, declared
    return 8, None


def _png_16bit(raw: bytes) -> np.ndarray:
    """The full 16-bit values of an RGB PNG, which Pillow hands over as their high bytes only.

    Pillow's PNG decoder runs twice over the file: once as usual (big-endian samples: the high byte),
    once with the raw mode ``RGB;16L`` (which takes the other byte); the value is ``high * 256 + low``.
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(raw)) as image:
        high = np.asarray(image, dtype=np.uint8).astype(np.uint16)
    with Image.open(io.BytesIO(raw)) as image:
        image.tile = [image.tile[0]._replace(args="RGB;16L")]
        low = np.asarray(image, dtype=np.uint8)
    return high * 256 + low


def _to_8bit(values: np.ndarray, bits: int, declared: int | None, name: str) -> np.ndarray:
    """Scale more-than-8-bit samples to uint8 by the real bit depth, or refuse when it is unknown.

    The maximum is the file's declared one (PNG sBIT, TIFF MaxSampleValue) when the data respects it,
    else ``2**bits - 1``. Data that uses only 12 bits of a 16-bit file without saying so (a camera's raw
    range) would come out nearly black (at most 15 of 255): that is refused, never guessed.
    """
    largest = int(values.max())
    if declared is not None and largest <= declared:
        maximum = declared
    else:  # no declaration, or data beyond it (a PNG scaled up to full range, as its spec asks)
        maximum = (1 << bits) - 1
        if bits > 12 and largest < 4096:
            used = max(largest, 1).bit_length()
            raise BadImageError(
                f"image {name} is {bits}-bit but its largest value is {largest} (it uses {used} bits, e.g. a "
                f"camera's raw range) and the file does not say its real bit depth, so read as {bits}-bit it "
                f"would be nearly black; rescale it to 8-bit RGB with the real range, e.g. "
                f"(value * 255 / {(1 << max(used, 8)) - 1}).round().astype('uint8'), or record the depth "
                "(TIFF MaxSampleValue, PNG sBIT)"
            )
    scaled = np.rint(values.astype(np.float32) * (255.0 / maximum))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def decode_image_file(path: Path, data: bytes | None = None) -> np.ndarray:
    """Decode one image file into uint8 ``(96, 96, 3)`` RGB, with one-line errors.

    JPEG/PNG/TIFF decode with Pillow; a TIFF Pillow cannot read falls back to tifffile. What is exact
    is converted and what needs a choice is refused:

    - palette (``P``), ``RGBX`` and ``YCbCr`` images become RGB; an alpha channel (``RGBA``, ``PA``,
      palette transparency) is dropped when every pixel is opaque, refused otherwise (the background
      behind transparent pixels is unknown);
    - 16-bit (or 10/12/14-bit) RGB PNG and TIFF files are scaled to 8 bits by the bit depth the file
      declares (PNG ``sBIT``, TIFF ``MaxSampleValue``), else by their container depth; data that fits
      in 12 bits of a 16-bit file without saying so is refused (it would be read nearly black);
    - grayscale, CMYK, Lab, HSV and float images are refused with the conversion to make.

    Args:
        path: the file; with ``data`` only its name (messages) and suffix (TIFF fallback) are used.
        data: the file's bytes when they are already in memory (an upload to ``pcamlab serve``).

    Raises:
        BadImageError: unreadable or truncated file, a mode that needs a choice, an unknown bit depth,
            or the wrong size.
    """
    name = printable(path)
    with warnings.catch_warnings(record=True) as caught:  # Pillow warns, rather than fails, on some damage
        warnings.simplefilter("always")
        array = _decode(path, data, name)
    cut = [str(warning.message) for warning in caught if _TRUNCATION.search(str(warning.message))]
    if cut:
        raise BadImageError(
            f"cannot decode image {name} (Pillow: {plain_line(cut[0], 80)}): the file is truncated; copy it again "
            f"from the source, delete it, or {SKIP_HINT} such files", parameters=("skip_bad",)
        )
    return array


#: Pillow warnings that mean the file ends before its own header says it does.
_TRUNCATION = re.compile(r"Truncated File Read|larger than file|image file is truncated", re.IGNORECASE)


def _decode(path: Path, data: bytes | None, name: str) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        raw = data if data is not None else Path(path).read_bytes()  # the content decides, not the suffix
        source = io.BytesIO(raw)  # one read serves Pillow and the PNG header
        with Image.open(source) as image:
            if image.size != (PATCH_SIZE, PATCH_SIZE):
                raise BadImageError(
                    f"image {name} is {image.size[0]}x{image.size[1]} pixels (width x height); "
                    f"{_RESIZE_FIX}"
                )
            mode = image.mode
            if mode == "P" and "transparency" in image.info:
                mode = "PA"
            if mode == "RGB":
                bits, declared = _declared_bits(image, raw)
                if bits > 8:
                    values = _png_16bit(raw) if image.format == "PNG" else _read_tiff(path, data)
                    return check_image_array(_to_8bit(values, bits, declared, name), name)
                image.load()
                array = np.asarray(image, dtype=np.uint8)
            elif mode in _EXACT_TO_RGB:
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            elif mode in _WITH_ALPHA:
                rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
                transparent = int((rgba[..., 3] < 255).sum())
                if transparent:
                    raise BadImageError(
                        f"image {name} has an alpha channel with {transparent} transparent pixels; pcamlab will not "
                        "guess what lies behind them: flatten it onto the slide background and save it as RGB, e.g. "
                        "Image.alpha_composite(Image.new('RGBA', im.size, 'white'), im).convert('RGB')"
                    )
                array = rgba[..., :3]
            else:
                raise BadImageError(_mode_message(name, image.mode))
    except BadImageError:
        raise
    except Image.DecompressionBombError as error:
        raise _too_large(name, error) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error) as error:
        if isinstance(error, PermissionError) or Path(path).suffix.lower() not in (".tif", ".tiff"):
            raise _unreadable(name, error) from None
        array = _decode_tiff(path, error, data)
        if array.dtype == np.uint16 and array.ndim == 3 and array.shape[-1] == 3:
            array = _to_8bit(array, 16, None, name)
    return check_image_array(array, name)


def _read_tiff(path: Path, data: bytes | None = None) -> np.ndarray:
    import io

    import tifffile

    return np.asarray(tifffile.imread(path if data is None else io.BytesIO(data)))


def _decode_tiff(path: Path, pillow_error: Exception, data: bytes | None = None) -> np.ndarray:
    try:
        return _read_tiff(path, data)
    except Exception:  # tifffile raises many types; the Pillow error is the clearer one
        raise _unreadable(printable(path), pillow_error) from None


# ----------------------------------------------------------------------------------------------
# The reader contract.


def check_x_dataset(path: str | os.PathLike, shape: tuple, dtype: np.dtype, patch_size: int = PATCH_SIZE) -> None:
    """Raise a one-line DataError unless an HDF5 dataset 'x' is uint8 (N, patch_size, patch_size, 3)."""
    if dtype != np.uint8:
        raise DataError(
            f"{str(path)!r} dataset 'x' has dtype {dtype}; it must be uint8 RGB: convert it, "
            "e.g. x = np.clip(x, 0, 255).astype('uint8') (times 255 first if it is in [0, 1])"
        )
    if len(shape) != 4 or shape[1:] != (patch_size, patch_size, 3):
        raise DataError(
            f"{str(path)!r} dataset 'x' has shape {shape}; it must be (N, {patch_size}, {patch_size}, 3) "
            f"uint8 RGB, channels last: transpose (N, 3, H, W) data to (N, H, W, 3) and crop or resize "
            f"to {patch_size}x{patch_size}"
        )


class PatchReader:
    """Base of every reader: a sized, indexable split of ``(image, label)`` pairs.

    Attributes:
        root: dataset folder (the resolved one, e.g. below ``train+val/`` for the course layout).
        split: split name, e.g. ``"train"``.
        format: registered name of the layout (``"h5"``, ``"folders"``, ``"kaggle"``).
        labels: int64 array ``(N,)`` of every label, read without decoding any image.
        skip_bad: default of ``load_split_arrays(..., skip_bad=...)`` for this reader.
        notes: what was read in a way the layout does not prescribe but is unambiguous (e.g. Kaggle ids
            written with their .tif suffix); commands show these lines.
    """

    format = ""
    notes: list[str] = []  # read-only default; readers assign their own list
    #: what detection looks for, listed in "no recognisable layout" errors.
    looks_for = ""
    #: place in auto-detection, lowest first: layouts recognised by specific file names before generic ones.
    detect_order = 50
    #: whether ``reader[i]`` may be called from several threads at once (one image file per item:
    #: Pillow releases the GIL while it decodes, so :func:`load_split_arrays` decodes with threads).
    thread_safe = False

    root: Path
    split: str
    labels: np.ndarray
    skip_bad: bool

    @classmethod
    def detect(cls, root: Path) -> bool:
        """Whether ``root`` looks like this layout (cheap: file names only)."""
        raise NotImplementedError

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        """Splits present under ``root``."""
        raise NotImplementedError

    @classmethod
    def no_splits_error(cls, root: Path) -> DataError:
        """The error for a folder detected as this layout that holds no complete split."""
        return DataError(
            f"{str(root)!r} looks like the {cls.format} layout but holds no complete split; looked for "
            f"{cls.looks_for}: add the files"
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """File (or file and row) of item ``index``, for messages and CSVs.

        Printable: the bytes of a file name that is not UTF-8 appear as ``\\xe9`` escapes
        (:func:`pcamlab.fileio.printable`), so any UTF-8 file can hold it.
        """
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for split {self.split!r} of {len(self)} patches")
        return index

    def _check_labels(self, where: str, locate: Callable[[int], str] | None = None) -> None:
        allowed = (-1,) if getattr(self, "unlabeled", False) else (0, 1)
        bad = np.flatnonzero(~np.isin(self.labels, allowed))
        if bad.size:
            first = int(bad[0])
            raise DataError(
                f"{where}: label {int(self.labels[first])} at {(locate or self.name)(first)} "
                f"({bad.size} bad labels); "
                "labels must be 0 (no tumour) or 1 (tumour in the centre 32x32 region): fix the labels"
            )

    def class_counts(self) -> dict[int, int]:
        """Number of patches per label, e.g. ``{0: 400, 1: 400}``."""
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(value): int(count) for value, count in zip(values, counts)}

    def validate(self) -> dict:
        """Check the whole split cheaply: counts, labels and every image's size and mode.

        Images are not decoded (file headers only; HDF5: dataset shape and dtype), so unreadable
        or truncated files are found when loading. Raises :class:`DataError` with the fix.

        Returns:
            ``{"format", "split", "count", "class_counts"}``.
        """
        if len(self) == 0:
            raise DataError(f"split {self.split!r} under {str(self.root)!r} is empty; add patches to it")
        self._check_labels(f"split {self.split!r}")
        self._validate_images()
        return {
            "format": self.format,
            "split": self.split,
            "count": len(self),
            "class_counts": self.class_counts(),
        }

    def _validate_images(self) -> None:
        """Per-layout cheap image checks (headers only)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, count={len(self)})"


def _unknown_split(root: Path, split: str, available: list[str], layout: str) -> DataError:
    return DataError(
        f"split {split!r} not found in {layout} dataset {str(root)!r}; available splits: {available}"
        f"{did_you_mean(split, available)}"
    )


# ----------------------------------------------------------------------------------------------
# Official HDF5 files.


@READERS.register("h5")
class H5Reader(PatchReader):
    """The official PCam HDF5 files: ``camelyonpatch_level_2_split_<split>_{x,y}.h5``.

    ``x`` holds dataset ``x`` uint8 ``(N, 96, 96, 3)``, ``y`` holds dataset ``y`` uint8 ``(N, 1, 1, 1)``.
    Labels are read once at open; the image file is opened lazily on the first ``__getitem__`` and
    re-opened in a forked process (the pid is stored), so the reader can go into DataLoader workers.
    Images are read one row at a time (``x[i]``), which is what the (1, 96, 96, 3) chunking favours.
    """

    format = "h5"
    looks_for = "h5: camelyonpatch_level_2_split_{train,valid,test}_{x,y}.h5"
    detect_order = 10  # exact file names

    def __init__(self, root: Path, split: str, *, skip_bad: bool = False, **options):
        self.root, self.split, self.skip_bad = root, split, skip_bad
        available = self.splits(root)
        self.x_path = root / H5_PATTERN.format(split=split, kind="x")
        self.y_path = root / H5_PATTERN.format(split=split, kind="y")
        present = [path for path in (self.x_path, self.y_path) if path.exists()]
        gzipped = [Path(f"{path}.gz") for path in (self.x_path, self.y_path) if Path(f"{path}.gz").exists()]
        if split not in available:
            if gzipped:
                raise DataError(
                    f"{str(gzipped[0])!r} is still gzip-compressed; decompress it first: gunzip -k {gzipped[0]}"
                )
            if len(present) == 1:
                missing = self.y_path if present[0] == self.x_path else self.x_path
                raise DataError(
                    f"{str(missing)!r} is missing (found {present[0].name}); each split needs both the "
                    "_x (images) and _y (labels) files: download or copy the missing one"
                )
            raise _unknown_split(root, split, available, "h5")
        self._file = None
        self._images = None
        self._pid = None
        self.count = self._check_x()
        self.labels = self._read_labels()
        if len(self.labels) != self.count:
            raise DataError(
                f"{self.x_path.name} has {self.count} images but {self.y_path.name} has {len(self.labels)} "
                f"labels in {str(root)!r}; the _x and _y files of one split must match: use the pair from "
                "the same release"
            )
        self._check_labels(f"{str(self.y_path)!r} dataset 'y'", locate=lambda index: f"row {index}")

    @classmethod
    def _present(cls, root: Path, suffix: str = "") -> list[str]:
        return [
            split
            for split in H5_SPLITS
            if all((root / (H5_PATTERN.format(split=split, kind=kind) + suffix)).exists() for kind in "xy")
        ]

    @classmethod
    def detect(cls, root: Path) -> bool:
        return any(root.glob("camelyonpatch_level_2_split_*.h5")) or any(
            root.glob("camelyonpatch_level_2_split_*.h5.gz")
        )

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        return cls._present(root)

    @classmethod
    def no_splits_error(cls, root: Path) -> DataError:
        gzipped = sorted(root.glob("camelyonpatch_level_2_split_*.h5.gz"))
        if gzipped:
            return DataError(
                f"{str(gzipped[0])!r} is still gzip-compressed ({len(gzipped)} .h5.gz files in {str(root)!r}, no "
                f"usable .h5 pair); decompress them first: gunzip -k {root / 'camelyonpatch_level_2_split_*.h5.gz'}"
            )
        for split in H5_SPLITS:
            x_path, y_path = (root / H5_PATTERN.format(split=split, kind=kind) for kind in "xy")
            if x_path.exists() != y_path.exists():
                present, missing = (x_path, y_path) if x_path.exists() else (y_path, x_path)
                return DataError(
                    f"{str(missing)!r} is missing (found {present.name}); each split needs both the _x (images) "
                    "and _y (labels) files: download or copy the missing one"
                )
        found = sorted(path.name for path in root.glob("camelyonpatch_level_2_split_*.h5"))
        return DataError(
            f"{str(root)!r} holds {found} but no complete _x/_y pair of the splits {list(H5_SPLITS)}; each split "
            "needs camelyonpatch_level_2_split_<split>_x.h5 (images) and _y.h5 (labels): rename or add the files"
        )

    @staticmethod
    def _open(path: Path):
        from pcamlab.hdf5 import open_hdf5

        return open_hdf5(path)  # one line naming why: locked, compressed, a web page, truncated, ...

    @staticmethod
    def _dataset(file, name: str, path: Path):
        if name not in file:
            names = list(file.keys())
            raise DataError(
                f"{str(path)!r} has no dataset {name!r} (it has {names}); official PCam files hold "
                f"dataset {name!r}: rename it, e.g. with h5py: f[{name!r}] = f[{names[0] if names else 'old'!r}]"
            )
        return file[name]

    def _check_x(self) -> int:
        from pcamlab.hdf5 import damaged_structure

        with self._open(self.x_path) as file, damaged_structure(self.x_path):
            images = self._dataset(file, "x", self.x_path)
            shape, dtype = tuple(images.shape), images.dtype
        check_x_dataset(self.x_path, shape, dtype)
        return shape[0]

    def _read_labels(self) -> np.ndarray:
        from pcamlab.hdf5 import damaged_structure

        with self._open(self.y_path) as file, damaged_structure(self.y_path):
            labels = self._dataset(file, "y", self.y_path)
            shape, dtype = tuple(labels.shape), labels.dtype
            if not (len(shape) >= 1 and all(size == 1 for size in shape[1:])):
                raise DataError(
                    f"{str(self.y_path)!r} dataset 'y' has shape {shape}; it must be (N, 1, 1, 1) or (N,), "
                    "one label per image: reshape it"
                )
            if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_)):
                raise DataError(
                    f"{str(self.y_path)!r} dataset 'y' has dtype {dtype}; it must be an integer type "
                    "(uint8 0/1 in the official files): convert it with astype('uint8')"
                )
            values = labels[()]  # whole dataset in one read: N bytes
        return np.asarray(values).reshape(shape[0]).astype(np.int64)

    def _ensure_open(self):
        if self._images is None or self._pid != os.getpid():
            # A forked worker must not share the parent's HDF5 handle: open a fresh one.
            from pcamlab.hdf5 import damaged_structure

            self._file = self._open(self.x_path)
            with damaged_structure(self.x_path):
                self._images = self._file["x"]
            self._pid = os.getpid()
        return self._images

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        images = self._ensure_open()
        try:
            image = images[index]  # (96, 96, 3) uint8, one chunk
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as error:  # a damaged chunk or index
            raise BadImageError(
                f"cannot read {self.name(index)} ({plain_line(error, 120)}): that part of the file is damaged; "
                f"copy or download the file again, or {SKIP_HINT} such rows", parameters=("skip_bad",)
            ) from None
        return image, int(self.labels[index])

    def name(self, index: int) -> str:
        return printable(f"{self.x_path} row {index}")

    def close(self) -> None:
        """Close the image file (it re-opens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._images = self._pid = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = state["_images"] = state["_pid"] = None  # h5py handles do not pickle
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ----------------------------------------------------------------------------------------------
# Class folders.


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        path
        for path in folder.iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()
    )  # dot files (e.g. macOS ._name.jpg) are metadata, not images


@READERS.register("folders")
class FoldersReader(PatchReader):
    """Class folders ``<root>/<split>/{0,1}/*.{jpg,jpeg,png,tif,tiff}`` (folder name = label).

    The course layout ``<root>/train+val/{train,valid}/{0,1}/`` is found and descended into, and
    so is a root that holds the class folders ``{0,1}/`` directly (its split is then its own folder
    name). Items are ordered by label, then file name. Decoding uses Pillow (TIFFs that Pillow cannot
    read fall back to tifffile).
    """

    format = "folders"
    thread_safe = True  # one image file per item
    detect_order = 90  # any class folders: the most generic, tried last
    looks_for = (
        "folders: <root>/<split>/{0,1}/*.{jpg,jpeg,png,tif,tiff}, or <root>/train+val/{train,valid}/{0,1}/"
    )

    def __init__(self, root: Path, split: str, *, skip_bad: bool = False, **options):
        base = self.base(root)
        self.root, self.split, self.skip_bad = base, split, skip_bad
        available = self.splits(root)
        if split not in available:
            raise _unknown_split(base, split, available, "folders")
        folder = self._split_folder(base, split)
        self.files: list[Path] = []
        labels: list[int] = []
        for label in (0, 1):
            class_folder = folder / str(label)
            if not class_folder.is_dir():
                continue
            files = _image_files(class_folder)
            if not files:
                others = sorted(path.name for path in class_folder.iterdir())[:3]
                seen = f" (it holds {others}...)" if others else ""
                raise DataError(
                    f"class folder {str(class_folder)!r} has no images{seen}; put its "
                    f"{'/'.join(IMAGE_SUFFIXES)} patches there or remove the folder"
                )
            self.files += files
            labels += [label] * len(files)
        self.labels = np.asarray(labels, dtype=np.int64)

    @staticmethod
    def base(root: Path) -> Path:
        """The folder that holds the split folders (descends into ``train+val/``)."""
        course = root / COURSE_FOLDER
        return course if course.is_dir() else root

    @staticmethod
    def _has_classes(folder: Path) -> bool:
        return (folder / "0").is_dir() or (folder / "1").is_dir()

    @classmethod
    def _split_folder(cls, base: Path, split: str) -> Path:
        return base if cls._has_classes(base) and split == base.name else base / split

    @classmethod
    def detect(cls, root: Path) -> bool:
        return bool(cls.splits(root))

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        base = cls.base(root)
        if cls._has_classes(base):
            return [base.name]
        return sorted(
            child.name for child in base.iterdir() if child.is_dir() and cls._has_classes(child)
        )

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        return decode_image_file(self.files[index]), int(self.labels[index])

    def name(self, index: int) -> str:
        return printable(self.files[index])

    def _validate_images(self) -> None:
        _validate_headers(self.files)


def _validate_headers(files: list[Path]) -> None:
    """Read every file's header (not its pixels) to check size and colour mode."""
    from PIL import Image, UnidentifiedImageError

    for path in files:
        try:
            with Image.open(path) as image:
                mode, size = image.mode, image.size
                header = None
                if image.format == "PNG":
                    with open(path, "rb") as stream:
                        header = stream.read(64)  # signature, IHDR and an sBIT right after it
                deep = mode == "RGB" and _declared_bits(image, header)[0] > 8
        except Image.DecompressionBombError as error:
            raise _too_large(printable(path), error) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
            if path.suffix.lower() in (".tif", ".tiff") and not isinstance(error, PermissionError):
                decode_image_file(path)  # tifffile fallback says what is wrong
                continue
            raise _unreadable(printable(path), error) from None
        if mode not in ("RGB", *_EXACT_TO_RGB, *_WITH_ALPHA):
            raise BadImageError(_mode_message(printable(path), mode))
        if mode != "RGB" or deep:  # rare: the pixels decide (transparency, the bit depth really used)
            decode_image_file(path)
            continue
        if size != (PATCH_SIZE, PATCH_SIZE):
            raise BadImageError(
                f"image {printable(path)} is {size[0]}x{size[1]} pixels (width x height); {_RESIZE_FIX}"
            )


# ----------------------------------------------------------------------------------------------
# Kaggle "Histopathologic Cancer Detection".

_KAGGLE_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


@READERS.register("kaggle")
class KaggleReader(PatchReader):
    """Kaggle layout: ``train/<id>.tif`` with ``train_labels.csv`` (header ``id,label``), ``test/<id>.tif``.

    Kaggle ships no validation split, so ``train`` and ``valid`` are made from the labelled images by
    a stratified split: for each class, ids sorted, permuted with ``numpy.random.default_rng(seed)``,
    and the first ``round(valid_fraction * count)`` go to ``valid``. The same seed gives the same split.
    Where ``splits.csv`` (header ``id,split``, one row per id of ``train_labels.csv``) sits beside
    ``train_labels.csv``, as ``pcamlab data convert --to kaggle`` writes it, the splits are those of
    the source instead (``valid_fraction`` and ``seed`` are then unused; ``split_source`` says which).

    The ``test`` split (a ``test/`` folder) has NO labels (``labels`` all ``-1``; evaluation refuses
    it) unless ``test_labels.csv`` (header ``id,label``) lists a label for every ``test/*.tif``.
    """

    format = "kaggle"
    thread_safe = True  # one image file per item
    looks_for = "kaggle: <root>/train/*.tif with <root>/train_labels.csv (id,label), optional <root>/test/*.tif"
    detect_order = 20  # a named label file

    def __init__(
        self,
        root: Path,
        split: str,
        *,
        valid_fraction: float = 0.1,
        seed: int = 0,
        skip_bad: bool = False,
        **options,
    ):
        self.root, self.split, self.skip_bad = root, split, skip_bad
        self.valid_fraction, self.seed = valid_fraction, seed
        available = self.splits(root)
        if split not in available:
            raise _unknown_split(root, split, available, "kaggle")
        if split == "test":
            self._open_test(root)
            return
        self.unlabeled = False
        ids, labels, self.notes = self._read_csv(root / KAGGLE_LABELS)
        files = self._match_files(root / "train", root / KAGGLE_LABELS, ids)
        assigned = self._read_splits(root, ids)
        if assigned is not None:
            self.split_source = f"{KAGGLE_SPLITS} (the splits of the converted source)"
            chosen = np.flatnonzero(assigned == split)
        else:
            if not 0.0 < valid_fraction < 1.0:
                raise ConfigError(
                    f"data.valid_fraction must be between 0 and 1 (exclusive) to split the Kaggle train set; "
                    f"got {valid_fraction!r}: use e.g. 0.1"
                )
            self.split_source = f"stratified random split, valid_fraction={valid_fraction}, seed={seed}"
            chosen = self._split_indices(ids, labels, split)
        self.files = [files[index] for index in chosen]
        self.ids = [ids[index] for index in chosen]
        self.labels = labels[chosen]
        if len(self.files) == 0:
            raise DataError(
                f"Kaggle split {split!r} of {str(root)!r} is empty with valid_fraction={valid_fraction}; "
                "add labelled images or change data.valid_fraction"
            )

    @classmethod
    def detect(cls, root: Path) -> bool:
        return (root / KAGGLE_LABELS).is_file() and (root / "train").is_dir()

    @classmethod
    def splits(cls, root: Path, **options) -> list[str]:
        found = cls._split_names(root) if cls.detect(root) else []
        if (root / "test").is_dir():
            found.append("test")
        return found

    @staticmethod
    def _split_names(root: Path) -> list[str]:
        """Splits of the labelled images: those named in ``splits.csv`` (in order of appearance), or train/valid."""
        path = root / KAGGLE_SPLITS
        if not path.is_file():
            return ["train", "valid"]
        with open(path, newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            next(rows, None)
            names = dict.fromkeys(row[1].strip() for row in rows if len(row) >= 2 and row[1].strip())
        return list(names)

    def _open_test(self, root: Path) -> None:
        folder = root / "test"
        self.files = _image_files(folder)
        if not self.files:
            raise DataError(f"Kaggle test folder {str(folder)!r} has no .tif images; add them or remove it")
        labels_path = root / KAGGLE_TEST_LABELS
        self.unlabeled = not labels_path.is_file()
        if self.unlabeled:
            self.labels = np.full(len(self.files), -1, dtype=np.int64)
            return
        ids, labels, self.notes = self._read_csv(labels_path)
        self.files = self._match_files(folder, labels_path, ids)
        self.ids, self.labels = ids, labels

    @staticmethod
    def _read_splits(root: Path, ids: list[str]) -> np.ndarray | None:
        """The split of every id from ``splits.csv``, in the order of ``ids``; ``None`` without the file."""
        path = root / KAGGLE_SPLITS
        if not path.is_file():
            return None
        assigned: dict[str, str] = {}
        with open(path, newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header is None or [cell.strip().lower() for cell in header[:2]] != ["id", "split"]:
                raise DataError(
                    f"{str(path)!r} line 1 is {header!r}; the header must be 'id,split': fix it, or delete the "
                    "file to split train/ at random by data.valid_fraction and data.seed"
                )
            for line, row in enumerate(rows, start=2):
                if not row or not "".join(row).strip():
                    continue
                if len(row) < 2 or not row[1].strip() or row[1].strip() == "test":
                    raise DataError(
                        f"{str(path)!r} line {line} is {row!r}; each row must be 'id,split' with a split other "
                        "than 'test' (test images live in test/): fix the row"
                    )
                assigned[row[0].strip()] = row[1].strip()
        missing = [image_id for image_id in ids if image_id not in assigned]
        if missing:
            raise DataError(
                f"{str(path)!r} gives no split for {len(missing)} ids of {KAGGLE_LABELS}, e.g. {missing[0]}; "
                "add an 'id,split' row for each, or delete the file to split at random by data.valid_fraction"
            )
        return np.asarray([assigned[image_id] for image_id in ids], dtype=object)

    @staticmethod
    def _read_csv(path: Path) -> tuple[list[str], np.ndarray, list[str]]:
        """Read ``train_labels.csv`` (or ``test_labels.csv``): ``(ids, int64 labels, notes)``.

        Besides Kaggle's own ``id,label``, reads the dialects spreadsheets and pandas write when each
        is unambiguous, and says so in ``notes``: a UTF-8 byte-order mark (Excel's "CSV UTF-8"), ``;``
        or tab separators (Excel with a comma decimal separator) and Excel's ``sep=`` first line,
        columns in another order or beside an unnamed index column (``DataFrame.to_csv()`` without
        ``index=False``), ids carrying the file suffix or a folder (``train/<id>.tif``), labels
        written as floats (``1.0``), and rows repeated with the same label. Anything else raises.
        """
        notes: list[str] = []
        raw = path.read_bytes()
        if raw.startswith(b"PK\x03\x04") or raw.startswith(b"\xd0\xcf\x11\xe0"):
            raise DataError(
                f"{str(path)!r} is an Excel workbook, not CSV text; save it as 'CSV UTF-8 (comma delimited)' with "
                "the columns id,label"
            )
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as error:
            line = raw[: error.start].count(b"\n") + 1
            raise DataError(
                f"{str(path)!r} is not UTF-8 text (byte 0x{raw[error.start]:02x} on line {line}); save it as "
                "'CSV UTF-8' (Kaggle ids are plain hex names)"
            ) from None
        if raw.startswith(b"\xef\xbb\xbf"):
            notes.append(f"{path.name} starts with a UTF-8 byte-order mark (Excel's CSV UTF-8); ignored")
        lines = text.splitlines()
        first_line = 1
        delimiter = ","
        if lines and lines[0].strip().lower().startswith("sep=") and len(lines[0].strip()) == 5:
            delimiter = lines[0].strip()[4]
            lines, first_line = lines[1:], 2
            notes.append(f"{path.name} starts with Excel's 'sep={delimiter}' line; read with that separator")
        elif lines and "," not in lines[0]:
            for candidate, what in ((";", "semicolons"), ("\t", "tabs")):
                if candidate in lines[0]:
                    delimiter = candidate
                    notes.append(f"{path.name} is separated by {what}, not commas; read as such")
                    break
        rows = csv.reader(lines, delimiter=delimiter)
        header = next(rows, None)
        cells = [cell.strip().lower() for cell in header] if header else []
        if "id" in cells and "label" in cells:
            id_column, label_column = cells.index("id"), cells.index("label")
            extra = [header[i] for i in range(len(cells)) if i not in (id_column, label_column)]
            if extra:
                index_column = [name for name in extra if name.strip() in ("", "Unnamed: 0")]
                what = "an unnamed index column (pandas to_csv without index=False)" if index_column else f"columns {extra}"
                notes.append(f"{path.name} has {what} besides id and label; read id and label only")
            elif (id_column, label_column) != (0, 1):
                notes.append(f"{path.name} lists label before id; read by the column names")
        else:
            raise DataError(
                f"{str(path)!r} line {first_line} is {header!r}; the header must name the columns id and label "
                "(Kaggle format 'id,label'): add or fix the header row"
            )
        ids, labels, seen = [], [], {}
        suffixed = foldered = floats = repeated = 0
        for line, row in enumerate(rows, start=first_line + 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) <= max(id_column, label_column):
                raise DataError(
                    f"{str(path)!r} line {line} is {delimiter.join(row)!r}; each row needs an id and a label: fix it"
                )
            image_id, text = row[id_column].strip(), row[label_column].strip()
            if "/" in image_id or "\\" in image_id:
                image_id = re.split(r"[/\\]", image_id)[-1]
                foldered += 1
            stem, dot, suffix = image_id.rpartition(".")
            if dot and f".{suffix.lower()}" in IMAGE_SUFFIXES and stem:
                image_id = stem
                suffixed += 1
            if not _KAGGLE_ID.match(image_id):
                raise DataError(
                    f"{str(path)!r} line {line} has id {row[id_column]!r}; ids are file names of train/*.tif "
                    "without .tif (letters, digits, _ . -): fix it"
                )
            if text in ("0.0", "1.0"):
                text = text[0]
                floats += 1
            if text not in ("0", "1"):
                raise DataError(
                    f"{str(path)!r} line {line} (id {image_id}) has label {text!r}; labels must be 0 or 1: "
                    "fix the row"
                )
            if image_id in seen:
                first, first_label = seen[image_id]
                if first_label != int(text):
                    raise DataError(
                        f"{str(path)!r} line {line} gives id {image_id} label {text} but line {first} gave "
                        f"{first_label}; each image needs one label: remove the wrong row"
                    )
                repeated += 1
                continue
            seen[image_id] = (line, int(text))
            ids.append(image_id)
            labels.append(int(text))
        if not ids:
            raise DataError(f"{str(path)!r} has no rows; it must list 'id,label' for every image of its folder")
        for count, what in (
            (suffixed, "ids carry the file suffix (e.g. <id>.tif); read as file names"),
            (foldered, "ids carry a folder (e.g. train/<id>.tif); read the file name only"),
            (floats, "labels are written as floats (0.0/1.0); read as 0/1"),
            (repeated, "rows repeat an id with the same label; each image counted once"),
        ):
            if count:
                notes.append(f"{path.name}: {count} {what}")
        return ids, np.asarray(labels, dtype=np.int64), notes

    @staticmethod
    def _match_files(folder: Path, labels_path: Path, ids: list[str]) -> list[Path]:
        on_disk = {path.stem: path for path in _image_files(folder)}
        missing = [image_id for image_id in ids if image_id not in on_disk]
        if missing and len(missing) == len(ids) and on_disk:  # not a few lost files: ids and names disagree
            example = next(iter(on_disk.values())).name
            raise DataError(
                f"none of the {len(ids)} ids in {str(labels_path)!r} names a file in {str(folder)!r} (id "
                f"{ids[0]!r}, files like {example!r}); the ids must be the image file names without their suffix: "
                "fix the id column (or point data.path at the folder that holds these images)"
            )
        if missing:
            raise DataError(
                f"{str(labels_path)!r} lists {len(missing)} ids with no file in {str(folder)!r}, "
                f"e.g. {missing[0]}.tif; copy the missing images or delete their rows"
            )
        listed = set(ids)
        extra = sorted(stem for stem in on_disk if stem not in listed)
        if extra:
            raise DataError(
                f"{len(extra)} images in {str(folder)!r} have no row in {labels_path.name}, e.g. "
                f"{on_disk[extra[0]].name}; add 'id,label' rows for them or move them out of {folder.name}/"
            )
        return [on_disk[image_id] for image_id in ids]

    def _split_indices(self, ids: list[str], labels: np.ndarray, split: str) -> np.ndarray:
        generator = np.random.default_rng(self.seed)
        valid = []
        for label in (0, 1):
            members = np.flatnonzero(labels == label)
            # sorted by id, so the split does not depend on the order of the CSV rows
            members = members[np.argsort(np.asarray(ids, dtype=object)[members], kind="stable")]
            count = int(round(self.valid_fraction * len(members)))
            valid.append(generator.permutation(members)[:count])
        valid_indices = np.sort(np.concatenate(valid))
        if split == "valid":
            return valid_indices
        return np.setdiff1d(np.arange(len(labels)), valid_indices)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        index = self._check_index(index)
        return decode_image_file(self.files[index]), int(self.labels[index])

    def name(self, index: int) -> str:
        return printable(self.files[index])

    def _validate_images(self) -> None:
        _validate_headers(self.files)


# ----------------------------------------------------------------------------------------------
# Public functions.


def detection_order() -> list[str]:
    """Registered reader names in the order ``auto`` tries them (``detect_order``, then name)."""
    return sorted(READERS.names(), key=lambda name: (READERS.get(name).detect_order, name))


def format_choices() -> tuple[str, ...]:
    """Allowed values of ``data.format``: ``auto`` and every registered reader, in detection order."""
    return ("auto", *detection_order())


declare_choices("data.format", format_choices)  # the config's allowed values are the registry's


def detect_format(root: str | os.PathLike) -> str:
    """Name of the layout found in ``root``: ``"h5"``, ``"folders"`` or ``"kaggle"``.

    Args:
        root: dataset folder, or ``"sample"`` for the shipped sample.

    Raises:
        DataError: the folder does not exist or matches no layout (the message lists what was looked for).

    Example:
        >>> detect_format("sample")
        'folders'
    """
    path = resolve_root(root)
    for name in detection_order():
        if READERS.get(name).detect(path):
            return name
    entries = sorted(child.name for child in path.iterdir())
    shown = f"{entries[:8]}{'...' if len(entries) > 8 else ''}" if entries else "nothing"
    archives = [name for name in entries if name.lower().endswith(ARCHIVE_SUFFIXES)]
    if archives:
        raise DataError(
            f"no recognisable PCam layout in {str(path)!r}: it holds archives {archives[:4]} that were never "
            f"unpacked; unpack them there first (e.g. {_unpack_command(path / archives[0])}) and run the command again"
        )
    looked = "; ".join(READERS.get(name).looks_for for name in READERS.names())
    raise DataError(
        f"no recognisable PCam layout in {str(path)!r} (it holds {shown}); looked for {looked}: "
        "arrange the files like one of these or pass the folder that holds them"
    )


ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".7z", ".rar", ".gz")


def _unpack_command(archive: Path) -> str:
    name = archive.name.lower()
    if name.endswith(".zip"):
        return f"unzip {archive} -d {archive.parent}"
    if ".tar" in name or name.endswith(".tgz"):
        return f"tar -xf {archive} -C {archive.parent}"
    if name.endswith(".gz"):
        return f"gunzip -k {archive}"
    return f"7z x {archive}"


def _reader_class(path: Path, format: str) -> type[PatchReader]:
    if format == "auto":
        return READERS.get(detect_format(path))
    cls = READERS.get(format, field="data.format")
    if not cls.detect(path):
        raise DataError(
            f"{str(path)!r} is not in the {format} layout (looked for {cls.looks_for}); "
            "fix data.format (or use auto) or point data.path at the right folder"
        )
    return cls


def available_splits(root: str | os.PathLike, format: str = "auto") -> list[str]:
    """Splits present in ``root``, e.g. ``["train", "valid"]``.

    Raises:
        DataError: the folder is missing, matches no layout, or holds no complete split (e.g. only the
            gzip-compressed PCam downloads).

    Example:
        >>> available_splits("sample")
        ['train', 'valid']
    """
    path = resolve_root(root)
    cls = _reader_class(path, format)
    found = cls.splits(path)
    if not found:  # finding nothing is not success: say what is there instead
        raise cls.no_splits_error(path)
    return found


def open_split(
    root: str | os.PathLike,
    split: str,
    format: str = "auto",
    *,
    valid_fraction: float = 0.1,
    seed: int = 0,
    skip_bad: bool = False,
) -> PatchReader:
    """Open one split of a dataset as a :class:`PatchReader` (no image is decoded yet).

    Args:
        root: dataset folder, or ``"sample"`` for the real sample shipped in the package.
        split: e.g. ``"train"``, ``"valid"``, ``"test"``.
        format: ``"auto"`` (detected), ``"h5"``, ``"folders"`` or ``"kaggle"``.
        valid_fraction: Kaggle layout only: fraction of labelled images held out as ``valid``.
        seed: Kaggle layout only: seed of that stratified split.
        skip_bad: default for ``load_split_arrays``: skip unreadable images instead of stopping.

    Raises:
        DataError: missing folder, unknown layout or split, bad labels or counts (one line with the fix).
        ConfigError: unknown ``format`` or invalid ``valid_fraction``.

    Example:
        >>> reader = open_split("sample", "valid")
        >>> len(reader), reader.class_counts()
        (200, {0: 100, 1: 100})
    """
    check_field("data.valid_fraction", valid_fraction)
    check_field("data.seed", seed)
    path = resolve_root(root)
    cls = _reader_class(path, format)
    reader = cls(path, split, valid_fraction=valid_fraction, seed=seed, skip_bad=skip_bad)
    if len(reader) == 0:
        raise DataError(f"split {split!r} of {str(reader.root)!r} is empty; add patches to it")
    return reader


def usable_cpus() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else all; >= 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def load_split_arrays(
    reader: PatchReader,
    *,
    skip_bad: bool = False,
    progress: Callable[[int, int], object] | None = None,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode a whole split into memory.

    Readers whose items are one image file each (``reader.thread_safe``: class folders, Kaggle) are
    decoded by a pool of threads: Pillow releases the GIL while it decodes, so two cores decode about
    twice as fast (measured in the README's "Time to AUC"). HDF5 is read by the calling thread only
    (h5py serialises every call).

    Args:
        reader: an opened split.
        skip_bad: skip images that cannot be used (unreadable, truncated, wrong size or mode) and
            count them, instead of raising. ``reader.skip_bad`` also turns this on.
        progress: optional ``progress(done, total)`` callable, called from the calling thread every 256
            images (or so) and at the end.
        threads: decoding threads for a thread-safe reader; 0 = one per usable CPU core, at most 8.

    Returns:
        ``(images, labels, skipped)``: uint8 ``(N, 96, 96, 3)``, int64 ``(N,)`` and the number of
        images skipped (N = ``len(reader) - skipped``), in the reader's order.

    Raises:
        BadImageError: an image cannot be used and ``skip_bad`` is off (the first bad one in the
            reader's order).

    Example:
        >>> images, labels, skipped = load_split_arrays(open_split("sample", "valid"))
        >>> images.shape, labels.shape, skipped
        ((200, 96, 96, 3), (200,), 0)
    """
    skip_bad = skip_bad or getattr(reader, "skip_bad", False)
    total = len(reader)
    images = np.empty((total, PATCH_SIZE, PATCH_SIZE, 3), dtype=np.uint8)
    labels = np.empty(total, dtype=np.int64)
    if threads <= 0:
        threads = min(8, usable_cpus())
    if threads > 1 and total >= 512 and getattr(reader, "thread_safe", False):
        return _load_split_threaded(reader, images, labels, skip_bad, progress, threads)
    kept = 0
    for index in range(total):
        try:
            image, label = reader[index]
        except BadImageError:
            if not skip_bad:
                raise
        else:
            images[kept] = image
            labels[kept] = label
            kept += 1
        if progress is not None and ((index + 1) % 256 == 0 or index + 1 == total):
            progress(index + 1, total)
    return images[:kept], labels[:kept], total - kept


def _load_split_threaded(
    reader: PatchReader,
    images: np.ndarray,
    labels: np.ndarray,
    skip_bad: bool,
    progress: Callable[[int, int], object] | None,
    threads: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`load_split_arrays` for a thread-safe reader: chunks of 256 items decoded by ``threads`` threads."""
    from concurrent.futures import ThreadPoolExecutor

    total = len(reader)
    good = np.ones(total, dtype=bool)

    def decode_chunk(start: int) -> tuple[int, BadImageError | None]:
        stop = min(start + 256, total)
        for index in range(start, stop):
            try:
                images[index], labels[index] = reader[index]
            except BadImageError as error:
                good[index] = False
                if not skip_bad:
                    return stop, error
        return stop, None

    done = 0
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pcamlab-decode") as pool:
        futures = [pool.submit(decode_chunk, start) for start in range(0, total, 256)]
        try:
            for future in futures:  # in order: the first bad image in the reader's order is the one raised
                stop, error = future.result()
                if error is not None:
                    raise error
                done = stop
                if progress is not None:
                    progress(done, total)
        finally:
            for future in futures:
                future.cancel()
    if good.all():
        return images, labels, 0
    return images[good], labels[good], int(total - good.sum())
