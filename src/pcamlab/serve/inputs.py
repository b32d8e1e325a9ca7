"""Uploads to patches: image files, zip archives of them, and PCam-style ``.npy`` / ``.h5`` arrays.

Every upload becomes uint8 ``(H, W, 3)`` RGB patches with a name, or a one-line error that names the
upload and says how to fix it, the same messages ``pcamlab predict`` prints for files on disk
(:func:`pcamlab.data.readers.decode_image_file`). Nothing is unpickled: ``.npy`` files load with
``allow_pickle=False``. Limits are checked before pixels are decoded: the number of patches (an
array's shape or an archive's listing is read first) and each archive member's size.

Errors and the HTTP status ``pcamlab serve`` gives them:

- :class:`UnsupportedUpload` (415): a file kind the server does not read.
- :class:`TooManyPatches` (413): more patches than the server's ``max_images``.
- :class:`pcamlab.errors.DataError` (400), including ``BadImageError``: unreadable, not RGB, wrong size.

Example:
    >>> names, images = decode_uploads([Upload("a.png", png_bytes)], patch_size=96, max_images=512)
    >>> images.shape, images.dtype
    ((1, 96, 96, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from pcamlab.data.readers import IMAGE_SUFFIXES, SKIP_HINT, BadImageError, check_x_dataset, decode_image_file
from pcamlab.errors import DataError

__all__ = [
    "ARRAY_SUFFIXES",
    "ARCHIVE_SUFFIXES",
    "ACCEPTED",
    "MAX_MEMBER_BYTES",
    "Upload",
    "UnsupportedUpload",
    "TooManyPatches",
    "decode_uploads",
    "decode_one_image",
]

ARRAY_SUFFIXES = (".npy", ".h5", ".hdf5")
ARCHIVE_SUFFIXES = (".zip",)
ACCEPTED = (
    f"image files ({'/'.join(IMAGE_SUFFIXES)}), a .zip of them, or a PCam-style array "
    "(.npy or .h5 with dataset 'x') of uint8 (N, 96, 96, 3) RGB patches"
)
# A 96x96 RGB patch is 27 KB uncompressed; an archive member above this is not a patch (or a zip bomb).
MAX_MEMBER_BYTES = 4 * 2**20


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it and its bytes."""

    name: str
    data: bytes


class UnsupportedUpload(DataError):
    """An upload of a kind the server does not read (HTTP 415)."""


class TooManyPatches(DataError):
    """A request holds more patches than the server accepts (HTTP 413)."""


def _decode_upload(path: PurePosixPath, data: bytes) -> np.ndarray:
    """:func:`decode_image_file` with the service's advice: this API has no skip_bad, a file is left out."""
    try:
        return decode_image_file(path, data)
    except BadImageError as error:
        message = str(error).replace(f"delete it, or {SKIP_HINT} such files", "or leave it out of the request")
        raise BadImageError(message) from None


def _clean_name(name: str | None, index: int) -> str:
    """A printable name for messages and results (control characters dropped, at most 200 characters)."""
    text = "".join(character for character in str(name or "") if character.isprintable()).strip()
    return text[:200] or f"upload {index}"


class _Counter:
    def __init__(self, limit: int):
        self.limit = limit
        self.count = 0

    def add(self, count: int, where: str) -> None:
        self.count += count
        if self.count > self.limit:
            raise TooManyPatches(
                f"the request holds more than {self.limit} patches (reached at {where}); the server accepts "
                f"at most {self.limit} per request (its max_images): send them in several requests"
            )


def _npy_patches(name: str, data: bytes, patch_size: int, counter: _Counter) -> np.ndarray:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in reader:
            raise ValueError(f"unsupported .npy version {version}")
        shape, _fortran, dtype = reader[version](stream)
    except (ValueError, EOFError, OSError) as error:
        raise DataError(
            f"cannot read upload {name!r} as a .npy array ({str(error).splitlines()[0] or type(error).__name__}); "
            "save it with numpy.save(path, x) where x is uint8 (N, 96, 96, 3)"
        ) from None
    if dtype.hasobject:
        raise DataError(f"upload {name!r} is an object array, which is never unpickled; send uint8 (N, 96, 96, 3) RGB")
    if len(shape) == 3:
        shape = (1, *shape)  # one patch (H, W, 3)
    if dtype != np.uint8:
        raise DataError(
            f"upload {name!r} holds a {dtype} array; it must be uint8 RGB: convert it, e.g. "
            "x = np.clip(x, 0, 255).astype('uint8') (times 255 first if it is in [0, 1])"
        )
    if len(shape) != 4 or tuple(shape[1:]) != (patch_size, patch_size, 3):
        raise DataError(
            f"upload {name!r} holds an array of shape {tuple(shape)}; it must be (N, {patch_size}, {patch_size}, 3) "
            f"uint8 RGB, channels last: transpose (N, 3, H, W) data to (N, H, W, 3) and crop or resize to "
            f"{patch_size}x{patch_size}"
        )
    counter.add(shape[0], name)
    stream.seek(0)
    try:
        array = np.load(stream, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise DataError(
            f"cannot read upload {name!r} as a .npy array ({str(error).splitlines()[0]}): it is truncated; send it again"
        ) from None
    return np.ascontiguousarray(array.reshape(shape))


def _h5_patches(name: str, data: bytes, patch_size: int, counter: _Counter) -> np.ndarray:
    import h5py

    try:
        file = h5py.File(io.BytesIO(data), "r")
    except (OSError, ValueError) as error:
        raise DataError(
            f"cannot open upload {name!r} as HDF5 ({str(error).splitlines()[0]}): the file is truncated or not HDF5 "
            "(official PCam files come gzipped: gunzip them first)"
        ) from None
    with file:
        dataset = file.get("x")
        if not isinstance(dataset, h5py.Dataset):
            names = list(file.keys())
            hint = " (this looks like a labels file: send the matching _x.h5 file)" if "y" in names else ""
            raise DataError(
                f"upload {name!r} has no dataset 'x' (it has {names}){hint}; the server reads PCam-style files "
                "whose dataset 'x' holds uint8 (N, 96, 96, 3) RGB patches"
            )
        check_x_dataset(name, tuple(dataset.shape), dataset.dtype, patch_size)
        counter.add(dataset.shape[0], name)
        try:
            return np.ascontiguousarray(dataset[()])
        except (OSError, RuntimeError) as error:
            raise DataError(f"cannot read dataset 'x' of upload {name!r} ({str(error).splitlines()[0]}): it is damaged") from None


def _zip_patches(name: str, data: bytes, counter: _Counter) -> tuple[list[str], list[np.ndarray]]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise DataError(f"cannot open upload {name!r} as a zip archive ({error}); zip the patches again") from None
    names, images = [], []
    with archive:
        members = []
        for info in sorted(archive.infolist(), key=lambda item: item.filename):
            path = PurePosixPath(info.filename)
            if info.filename.startswith("/") or "\\" in info.filename or ".." in path.parts:
                raise DataError(
                    f"zip upload {name!r} holds member {info.filename[:200]!r}, refused as an unsafe path (absolute, "
                    "'..' or a backslash); zip the patches with plain relative names"
                )
            hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.parts)
            if info.is_dir() or hidden or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            members.append(info)
        if not members:
            raise DataError(
                f"zip upload {name!r} holds no image file ({'/'.join(IMAGE_SUFFIXES)}); zip the patches themselves"
            )
        counter.add(len(members), name)
        for info in members:
            member = f"{name}/{info.filename}"
            if info.file_size > MAX_MEMBER_BYTES:
                raise TooManyPatches(
                    f"zip member {member!r} is {info.file_size} bytes uncompressed, over the {MAX_MEMBER_BYTES} "
                    "bytes a patch may have; zip only the 96x96 patches"
                )
            try:
                with archive.open(info) as stream:
                    content = stream.read(MAX_MEMBER_BYTES + 1)
            except (zipfile.BadZipFile, RuntimeError, OSError, ValueError, NotImplementedError) as error:
                raise DataError(f"cannot extract {member!r} ({error}); zip the patches again without encryption") from None
            if len(content) > MAX_MEMBER_BYTES:
                raise TooManyPatches(f"zip member {member!r} is larger than it claims; zip the patches again")
            names.append(member)
            images.append(_decode_upload(PurePosixPath(member), content))
    return names, images


def decode_one_image(upload: Upload) -> np.ndarray:
    """Decode one uploaded image file into uint8 ``(96, 96, 3)`` RGB.

    Raises:
        UnsupportedUpload: the name has no image suffix.
        BadImageError: unreadable, not RGB, 16-bit or the wrong size (the CLI's message).
    """
    name = _clean_name(upload.name, 0)
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        raise UnsupportedUpload(
            f"upload {name!r} is not an image file ({'/'.join(IMAGE_SUFFIXES)}); send one patch image"
        )
    return np.array(_decode_upload(PurePosixPath(name), upload.data))  # writable: torch warns on read-only


def decode_uploads(uploads: Sequence[Upload], *, patch_size: int, max_images: int) -> tuple[list[str], np.ndarray]:
    """Decode every upload into patches, in upload order (archive members sorted by name).

    Args:
        uploads: the files of one request.
        patch_size: the side the model takes (from its input contract).
        max_images: the most patches one request may hold.

    Returns:
        ``(names, images)``: a name per patch (``file``, ``file row i`` for arrays, ``archive/member``
        for zips) and uint8 ``(N, patch_size, patch_size, 3)``.

    Raises:
        UnsupportedUpload: a file of a kind the server does not read.
        TooManyPatches: more than ``max_images`` patches, or an archive member too large to be a patch.
        DataError: an unusable file (including ``BadImageError``), naming it.
    """
    if not uploads:
        raise DataError(f"no file uploaded; send {ACCEPTED}")
    counter = _Counter(max_images)
    names: list[str] = []
    images: list[np.ndarray] = []
    for index, upload in enumerate(uploads):
        name = _clean_name(upload.name, index)
        suffix = PurePosixPath(name).suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            counter.add(1, name)
            images.append(_decode_upload(PurePosixPath(name), upload.data))
            names.append(name)
        elif suffix in ARCHIVE_SUFFIXES:
            member_names, member_images = _zip_patches(name, upload.data, counter)
            names += member_names
            images += member_images
        elif suffix in ARRAY_SUFFIXES:
            read = _npy_patches if suffix == ".npy" else _h5_patches
            array = read(name, upload.data, patch_size, counter)  # (n, H, W, 3) uint8
            names += [f"{name} row {row}" for row in range(len(array))]
            images += list(array)
        else:
            raise UnsupportedUpload(f"upload {name!r} has suffix {suffix or '(none)'!r}, which the server does not read; send {ACCEPTED}")
    if not images:
        raise DataError(f"the uploads hold no patch; send {ACCEPTED}")
    return names, np.stack(images)  # (N, H, W, 3) uint8
