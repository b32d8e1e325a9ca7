"""One walker for every command that lists image or slide files in a folder.

The dataset readers (class folders, Kaggle ``train/`` and ``test/``), ``pcamlab predict`` on a folder,
slide batches and the service's slide root all list files through :func:`walk_files`, so they follow
the same rules:

- **symbolic links are followed**, to files and to folders (a dataset assembled from links to a shared
  copy is common on clusters); a folder reached twice (two links to it, or a link back to a folder above
  it: a loop) is listed once, the first time, and the repeat is said in a note. A link back up is never
  followed, also when it leads above the walked root (``train/1/up -> ..`` would otherwise list
  ``train/0/`` inside class folder ``1/``); a link that leads nowhere is skipped and said;
- **OS junk is skipped**: ``.DS_Store``, ``Thumbs.db``, ``desktop.ini``, ``ehthumbs.db``, AppleDouble
  files ``._*``, ``__MACOSX/`` (macOS zip archives), ``$RECYCLE.BIN/``, ``System Volume Information/``;
- **hidden entries are skipped**: any file or folder below the root whose name starts with ``.``. On
  Unix a dot name is how a file is hidden from ``ls`` and file dialogs, so a person counting their
  patches does not see it; hidden folders hold tools' copies and state (``.ipynb_checkpoints/`` holds
  Jupyter's copies of files, ``.git/``, ``.cache/``, ``.thumbnails/``), which would add duplicates or
  strangers to a dataset. Skipped hidden files with a wanted suffix are counted in a note, so nothing
  vanishes unsaid (OS junk is not counted: it never was data). The root itself may be hidden
  (``~/.data/pcam`` is read);
- **a flat walk says what it left**: with ``recursive=False`` (the Kaggle ``train/`` and ``test/``
  folders, whose ids are file names) sub-folders are not read, and a note counts them.

Files come back sorted by their path below the root (the same order on every machine), each path as
reached from the root (a file below a linked folder keeps the link in its path).

Example:
    >>> from pcamlab.data.walk import IMAGE_SUFFIXES, list_files
    >>> files = list_files("patches/", IMAGE_SUFFIXES)
    >>> listing = walk_files("patches/", IMAGE_SUFFIXES)
    >>> listing.files, listing.notes
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pcamlab.errors import DataError
from pcamlab.fileio import printable

__all__ = ["IMAGE_SUFFIXES", "SLIDE_SUFFIXES", "JUNK_NAMES", "JUNK_FOLDERS", "Listing", "walk_files", "list_files",
           "is_skipped_name", "is_junk_name"]

#: Patch image files pcamlab decodes (Pillow, with tifffile for TIFFs Pillow cannot read).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
#: Whole-slide files OpenSlide or tiffslide read (``pcamlab.slide.open_slide``).
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")
#: Files operating systems leave in folders (Finder, Explorer); never data.
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini", "ehthumbs.db", "icon\r"})
#: Folders operating systems and archivers leave; never data.
JUNK_FOLDERS = frozenset({"__macosx", "$recycle.bin", "system volume information"})


def is_skipped_name(name: str, folder: bool = False) -> bool:
    """Whether the walker skips an entry of this name: hidden (``.name``), AppleDouble ``._*`` or OS junk."""
    lowered = name.lower()
    return name.startswith(".") or lowered in JUNK_NAMES or (folder and lowered in JUNK_FOLDERS)


def is_junk_name(name: str, folder: bool = False) -> bool:
    """Whether an entry of this name is OS junk (``.DS_Store``, AppleDouble ``._*``, ``__MACOSX/``, ...), never
    data: skipped without being counted, unlike a hidden file (``.name``), which a person may have hidden."""
    lowered = name.lower()
    return name.startswith("._") or lowered in JUNK_NAMES or (folder and lowered in JUNK_FOLDERS)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass
class Listing:
    """What :func:`walk_files` found.

    Attributes:
        root: the folder walked.
        files: the files with a wanted suffix, sorted by their path below ``root``.
        hidden: hidden files with a wanted suffix that were skipped (``.name``; OS junk such as AppleDouble
            ``._name`` is not counted).
        not_walked: sub-folders not read because the walk was flat (``recursive=False``); hidden and junk
            folders are not counted.
        repeats: folders reached a second time through a link (listed once), as ``(link, target)``.
        broken: links that lead nowhere.
        outside: links leading outside ``root`` (only with ``inside_root=True``), not followed.
    """

    root: Path
    files: list[Path] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)
    not_walked: list[Path] = field(default_factory=list)
    repeats: list[tuple[Path, Path]] = field(default_factory=list)
    broken: list[Path] = field(default_factory=list)
    outside: list[Path] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """One line for each kind of thing skipped (commands show them as ``note:`` lines)."""
        notes = []
        if self.hidden:
            them = "it" if len(self.hidden) == 1 else "them"
            notes.append(f"{_count(len(self.hidden), 'hidden file')} skipped in {printable(self.root)} (names starting "
                         f"with '.', e.g. {printable(self.hidden[0].name)}): rename {them} to include {them}")
        if self.not_walked:
            notes.append(f"{_count(len(self.not_walked), 'sub-folder')} of {printable(self.root)} not read (e.g. "
                         f"{printable(self.not_walked[0].name)}/): this folder is read flat, its own files only; "
                         "move the files up to include them")
        loops = [(link, target) for link, target in self.repeats if _is_above(target, link)]
        if loops:
            link, target = loops[0]
            notes.append(f"symbolic link loop: {printable(link)} leads back to {printable(target)}; "
                         "its files are listed once")
        twice = [(link, target) for link, target in self.repeats if not _is_above(target, link)]
        if twice:
            link, target = twice[0]
            notes.append(f"{_count(len(twice), 'folder')} reached twice through links (e.g. {printable(link)} -> "
                         f"{printable(target)}); their files are listed once")
        if self.broken:
            notes.append(f"{_count(len(self.broken), 'symbolic link')} {'leads' if len(self.broken) == 1 else 'lead'} nowhere, "
                         "skipped, e.g. "
                         f"{printable(self.broken[0])}")
        if self.outside:
            notes.append(f"{_count(len(self.outside), 'link')} leading outside {printable(self.root)} not followed, "
                         f"e.g. {printable(self.outside[0])}")
        return notes

    def nothing_found(self) -> str:
        """What a "holds no file" message adds: the hidden files and unread sub-folders skipped, or ``""``.

        Example: ``" (1 hidden file skipped: .h.jpg; rename it to include it)"``.
        """
        parts = []
        if self.hidden:
            them = "it" if len(self.hidden) == 1 else "them"
            names = ", ".join(printable(path.name) for path in self.hidden[:3])
            parts.append(f"{_count(len(self.hidden), 'hidden file')} skipped: {names}{', ...' if len(self.hidden) > 3 else ''}; "
                         f"rename {them} to include {them}")
        if self.not_walked:
            names = ", ".join(f"{printable(path.name)}/" for path in self.not_walked[:3])
            parts.append(f"{_count(len(self.not_walked), 'sub-folder')} not read: {names}"
                         f"{', ...' if len(self.not_walked) > 3 else ''}; the folder is read flat")
        return f" ({'; '.join(parts)})" if parts else ""


def _is_above(target: Path, link: Path) -> bool:
    """Whether the folder ``target`` holds the link itself (following it leads back up: a loop)."""
    try:
        return link.parent.resolve().is_relative_to(target)
    except OSError:
        return False


def walk_files(
    root: str | os.PathLike,
    suffixes: Sequence[str],
    *,
    recursive: bool = True,
    inside_root: bool = False,
) -> Listing:
    """List the files of ``root`` whose suffix is one of ``suffixes``, with the rules of this module.

    Args:
        root: the folder to walk.
        suffixes: wanted file suffixes, lower case with the dot (``IMAGE_SUFFIXES``); matched ignoring
            case (``X.TIF`` counts as ``.tif``).
        recursive: walk sub-folders too (False: the files directly in ``root``).
        inside_root: do not follow links that lead outside ``root`` (the web service's slide root).

    Returns:
        A :class:`Listing`; ``listing.files`` sorted, ``listing.notes`` saying what was skipped.

    Raises:
        DataError: ``root`` is not a folder, or a folder below it cannot be read (permission denied).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        state = "does not exist" if not root.exists() else "is not a folder"
        raise DataError(f"folder {printable(root)!r} {state}; pass a folder of files")
    wanted = tuple(suffix.lower() for suffix in suffixes)
    listing = Listing(root)
    base = root.resolve()
    seen: dict[tuple[int, int], Path] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        key = _identity(folder)
        if key in seen:
            listing.repeats.append((folder, seen[key]))
            continue
        seen[key] = folder.resolve()
        for entry in _entries(folder):  # folders are pushed in reverse name order, so walked in name order
            path = Path(entry.path)
            link = entry.is_symlink()
            if link:
                target = _target(path)
                if target is None:
                    if not is_skipped_name(entry.name):
                        listing.broken.append(path)
                    continue
                if inside_root and not target.is_relative_to(base):
                    listing.outside.append(path)
                    continue
                if recursive and target.is_dir() and _is_above(target, path):
                    # a link back up (to the folder holding it or any folder above it, the root's own parents
                    # included): following it would list the root's siblings under this root (another class
                    # folder's patches under this label) or the same files again; a loop is listed once
                    listing.repeats.append((path, target))
                    continue
            if _is_dir(entry):
                if not is_skipped_name(entry.name, folder=True):
                    if recursive:
                        stack.append(path)
                    else:
                        listing.not_walked.append(path)
                continue
            if not entry.name.lower().endswith(wanted) or not _is_file(entry):
                continue
            if is_skipped_name(entry.name):
                if not is_junk_name(entry.name):
                    listing.hidden.append(path)
                continue
            listing.files.append(path)
    listing.files.sort(key=lambda path: path.relative_to(root).parts)
    return listing


def list_files(root: str | os.PathLike, suffixes: Sequence[str], *, recursive: bool = True) -> list[Path]:
    """The files of :func:`walk_files` only (sorted), for callers that show no notes."""
    return walk_files(root, suffixes, recursive=recursive).files


def _identity(folder: Path) -> tuple[int, int]:
    status = folder.stat()
    return status.st_dev, status.st_ino


def _target(path: Path) -> Path | None:
    """Where a link leads, or None when it leads nowhere (or in a circle of links)."""
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return resolved


def _entries(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name, reverse=True)  # popped from a stack: first name first
    except PermissionError:
        raise DataError(
            f"cannot list folder {printable(folder)!r}: permission denied; give your user read access (chmod a+rx) "
            "or move the folder out of the data"
        ) from None
    except OSError as error:
        raise DataError(f"cannot list folder {printable(folder)!r} ({error.strerror or error}); check the disk") from None


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links
    except OSError:
        return False


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()  # follows links
    except OSError:
        return False
