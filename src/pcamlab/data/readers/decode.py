"""Decoding one patch image file into uint8 ``(96, 96, 3)`` RGB, and the cheap header checks, with one-line errors.

Every command that reads image files (the class-folder and Kaggle readers, ``pcamlab predict``, the web
service's uploads) decodes them here, so an image is accepted or refused the same way everywhere.

Example:
    >>> from pcamlab.data.readers.decode import decode_image_file
    >>> image = decode_image_file(Path("patch.png"))  # uint8 (96, 96, 3)
"""

from __future__ import annotations

import re
import struct
import warnings
from pathlib import Path

import numpy as np

from pcamlab.errors import DataError, plain_line
from pcamlab.fileio import printable

__all__ = ["PATCH_SIZE", "SKIP_HINT", "BadImageError", "check_image_array", "decode_image_file", "validate_headers"]

PATCH_SIZE = 96  # PCam patches are 96x96 pixels at 10x (level 2)

_RESIZE_FIX = f"PCam patches are {PATCH_SIZE}x{PATCH_SIZE}; crop or resize your patches to that size"

#: The advice of an unreadable file's message, naming the parameter (the CLI shows --skip-bad; the web
#: service, which has no such option, replaces it with its own: see pcamlab.serve.inputs).
SKIP_HINT = "pass skip_bad=True to skip"


class BadImageError(DataError):
    """One image file cannot be used (unreadable, truncated, wrong size or colour mode).

    ``load_split_arrays(..., skip_bad=True)`` skips these and counts them; every other
    :class:`DataError` (layout, labels, counts) always stops.
    """


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


def validate_headers(files: list[Path]) -> None:
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
