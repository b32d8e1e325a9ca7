"""Many slides: which ones a shard of a cluster job takes, and the folder each one gets.

Example:
    >>> shard(["a.svs", "b.svs", "c.svs"], 2, 2)
    ['b.svs']
    >>> slide_folders(["x/a.svs", "y/b.tif"], Path("out"))
    [PosixPath('out/a'), PosixPath('out/b')]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pcamlab.data.walk import SLIDE_SUFFIXES, walk_files
from pcamlab.errors import ConfigError, DataError
from pcamlab.fileio import printable

__all__ = ["shard", "slide_folders", "slide_files"]


def slide_files(inputs: Sequence[str | os.PathLike], notes: list[str] | None = None) -> list[Path]:
    """The slides named by ``inputs``: a file is itself, a folder its slide files at any depth.

    Folders are listed by the walker every command uses (:func:`pcamlab.data.walk.walk_files`: links
    followed, a folder reached twice listed once, hidden entries and OS junk skipped), with the suffixes
    of :data:`pcamlab.data.walk.SLIDE_SUFFIXES`, sorted. A slide reached twice is listed once.

    Args:
        inputs: slide files and folders, in the order given.
        notes: list collecting the walker's notes (hidden files skipped, link loops, broken links).

    Raises:
        DataError: an input does not exist, or a folder holds no slide file.
    """
    found: dict[Path, Path] = {}
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            listing = walk_files(path, SLIDE_SUFFIXES)
            if notes is not None:
                notes.extend(listing.notes)
            if not listing.files:
                raise DataError(f"slide folder {printable(path)!r} holds no slide file ({'/'.join(SLIDE_SUFFIXES)}) at "
                                "any depth; pass slide files or a folder of them")
            paths = listing.files
        elif path.exists():
            paths = [path]
        else:
            raise DataError(f"slide {printable(path)!r} does not exist; pass slide files or a folder of them")
        for slide in paths:
            found.setdefault(slide.resolve(), slide)
    return list(found.values())


def shard(slides: Sequence[str | os.PathLike], index: int, count: int) -> list[str | os.PathLike]:
    """The slides of share ``index`` (1-based) of ``count``: slide k (0-based, in the given order) goes to
    share ``k % count + 1``, so every slide lands in exactly one share whatever the list length.

    Raises:
        ConfigError: ``index`` not in 1..``count``.
    """
    if not (isinstance(index, int) and isinstance(count, int) and 1 <= index <= count):
        raise ConfigError(f"shard must be index/count with 1 <= index <= count; got {index}/{count}")
    return [slide for position, slide in enumerate(slides) if position % count == index - 1]


def slide_folders(slides: Sequence[str | os.PathLike], out: Path) -> list[Path]:
    """``out/<file name without its suffix>`` for each slide (``.ome.tif`` loses both suffixes).

    Raises:
        DataError: two slides would share a folder (same name in different folders).
    """
    folders: dict[Path, str] = {}
    result = []
    for slide in slides:
        name = Path(slide).name
        for suffix in (".ome.tiff", ".ome.tif"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        else:
            name = Path(name).stem
        folder = out / name
        if folder in folders:
            if os.path.abspath(folders[folder]) == os.path.abspath(slide):
                raise DataError(f"slide {printable(slide)!r} is given twice; give each slide once",
                                parameters=("slides",))
            raise DataError(f"slides {printable(folders[folder])!r} and {printable(slide)!r} have the same slide id "
                            f"{name!r} (the file name without its suffix), which names each slide's results; rename "
                            "one", parameters=("slides",))
        folders[folder] = str(slide)
        result.append(folder)
    return result
