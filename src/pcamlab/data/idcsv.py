"""One reader for every CSV that lists ids with values: labels, splits, templates, slide references.

pcamlab meets these files in several places: Kaggle's ``train_labels.csv`` (``id,label``), the
``splits.csv`` that ``data convert`` writes (``id,split``), the competition's ``sample_submission.csv``
(``id,label``; only the ids are read) and Camelyon16-style slide reference CSVs (``slide,label`` with
``Tumor``/``Normal`` or 1/0). Each is read by :func:`read_id_csv`, so each follows the same rules:

- text: UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"); ``\\r\\n`` or ``\\n`` line ends;
  an Excel workbook or other non-UTF-8 bytes are refused with the line of the first bad byte;
- separators: ``,``; ``;`` or tab when the header holds no comma (Excel with a comma decimal separator);
  Excel's ``sep=X`` first line;
- header: column names matched ignoring case, spaces, ``_`` and ``-`` (``Image ID`` = ``image_id``),
  each column by its name or one of its aliases (``slide`` | ``id`` | ``image``); columns in any order;
  other columns (a pandas index column from ``to_csv()`` without ``index=False``) are ignored and said;
- ids: surrounding spaces dropped; a folder (``train/<id>.tif``) and a known file suffix
  (:data:`ID_SUFFIXES`, e.g. ``.tif``, ``.svs``) dropped and said; an empty id is refused;
- rows: blank rows skipped; a row repeated with the same values counted once and said; the same id with
  different values (e.g. two labels) refused with both line numbers; a row shorter than the header, or
  with more filled cells than the header names, refused.

What is read "in a way the format does not prescribe but is unambiguous" is listed in
:attr:`IdTable.notes`, which commands show as ``note:`` lines. Everything else raises
:class:`~pcamlab.errors.DataError` naming the file and line.

A CSV whose rows are its items in order, with no id column of its own (PCam's meta CSV: row i describes
patch i of its split), is read by :func:`read_row_csv` with the same text, separator, header and row
rules; its "id" is the row's position, and a pandas index column is taken as that position (a note when
it does not count 0, 1, 2, ...). Rows are never merged: a repeated row is one more item.

Example:
    >>> from pcamlab.data.idcsv import Column, binary_label, read_id_csv
    >>> table = read_id_csv("train_labels.csv", [Column("label", parse=binary_label)])
    >>> table.ids[:2], table.column("label")["f38a6374c348f90b587e046aac6079959adf3835"]
    >>> reference = read_id_csv("reference.csv", [Column("label", aliases=("class",), parse=tumour_label)],
    ...                         id_column=SLIDE_ID)
    >>> labels = reference.column("label")   # {"tumor_001": 1, "normal_001": 0, ...}
    >>> meta = read_row_csv("camelyonpatch_level_2_split_train_meta.csv", [Column("wsi")])
    >>> meta.column("wsi")[0]   # the slide of patch 0
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pcamlab.data.walk import IMAGE_SUFFIXES, SLIDE_SUFFIXES
from pcamlab.errors import DataError
from pcamlab.fileio import printable

__all__ = [
    "ID_SUFFIXES",
    "Column",
    "Parsed",
    "IdTable",
    "RowTable",
    "ID",
    "SLIDE_ID",
    "read_id_csv",
    "read_row_csv",
    "binary_label",
    "tumour_label",
    "header_key",
]

#: File suffixes dropped from ids (``abc.tif`` -> ``abc``): patch images and whole-slide images.
ID_SUFFIXES = tuple(dict.fromkeys((*IMAGE_SUFFIXES, *SLIDE_SUFFIXES)))

_WORKBOOK_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0")  # .xlsx (a zip) and the old .xls (OLE2)
_INDEX_NAMES = ("", "unnamed0", "unnamed:0")  # header_key of pandas' index column: '' or 'Unnamed: 0'


class Parsed(NamedTuple):
    """What a column's ``parse`` returns when it read the cell in a way worth a note (e.g. ``1.0`` as 1).

    Rows that produced the same ``note`` are counted into one line of :attr:`IdTable.notes`.
    """

    value: Any
    note: str


@dataclass(frozen=True)
class Column:
    """One column of an id CSV: its name, the other names it may have, and how a cell is read.

    Attributes:
        name: the name rows are returned under (``IdTable.column(name)``) and messages use.
        aliases: other header names that mean this column (matched like ``name``: see :func:`header_key`).
        parse: ``parse(cell text) -> value`` or :class:`Parsed`; raises ``ValueError(reason)`` for a bad
            cell, where ``reason`` says what is allowed (e.g. ``"labels must be 0 or 1"``). The text is
            stripped of surrounding spaces first. Default: the text itself, which must not be empty.
        required: whether the header must have the column; a missing optional column gives ``default``.
        default: value of an optional column that the file does not have.
    """

    name: str
    aliases: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    required: bool = True
    default: Any = None

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def read(self, text: str) -> Any:
        if self.parse is not None:
            return self.parse(text)
        if not text:
            raise ValueError(f"{self.name} must not be empty")
        return text


#: The id column of Kaggle files and pcamlab's own (``id``; also ``image`` / ``image_id``).
ID = Column("id", aliases=("image", "image id", "imageid"))
#: The id column of slide CSVs (Camelyon16 ``reference.csv``): ``slide``, or ``id``/``image``/``name``/...
SLIDE_ID = Column("slide", aliases=("id", "image", "slide id", "slide name", "wsi", "name", "file", "filename"))


def header_key(name: str) -> str:
    """How header names are compared: lower case without spaces, ``_`` or ``-`` (``' Image_ID'`` -> ``'imageid'``)."""
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def binary_label(text: str) -> int | Parsed:
    """A 0/1 label; ``0.0``/``1.0`` (pandas writes floats) read as 0/1 with a note.

    Raises:
        ValueError: anything else (``labels must be 0 or 1``).
    """
    if text in ("0", "1"):
        return int(text)
    if text in ("0.0", "1.0"):
        return Parsed(int(text[0]), "labels are written as floats (0.0/1.0); read as 0/1")
    raise ValueError("labels must be 0 or 1")


_TUMOUR_WORDS = {"tumor": 1, "tumour": 1, "normal": 0}


def tumour_label(text: str) -> int | Parsed:
    """A slide or patch label: ``Tumor``/``Tumour`` = 1, ``Normal`` = 0 (any case), or 0/1 (``1.0`` too).

    The words are Camelyon16's (its ``reference.csv`` lists ``Tumor`` or ``Normal`` per test slide);
    both spellings of tumour are accepted.

    Raises:
        ValueError: anything else.
    """
    word = _TUMOUR_WORDS.get(text.lower())
    if word is not None:
        return word
    try:
        return binary_label(text)
    except ValueError:
        raise ValueError("labels must be Tumor/Tumour/Normal (any case) or 1/0") from None


@dataclass(frozen=True)
class IdTable(Mapping):
    """The rows of an id CSV: ``table[id]`` is that id's ``{column name: value}``, ids in file order.

    Attributes:
        path: the file read.
        columns: the value columns' names (``Column.name``), in the order asked.
        rows: id -> ``{column name: value}``, each id once, in order of first appearance.
        lines: id -> the 1-based line of its first row (for messages).
        notes: what was read in a way the format does not prescribe but is unambiguous.
    """

    path: Path
    columns: tuple[str, ...]
    rows: dict[str, dict[str, Any]]
    lines: dict[str, int] = field(repr=False)
    notes: tuple[str, ...] = ()

    def __getitem__(self, identifier: str) -> dict[str, Any]:
        return self.rows[identifier]

    def __iter__(self) -> Iterator[str]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def ids(self) -> list[str]:
        """The ids, in file order."""
        return list(self.rows)

    def column(self, name: str) -> dict[str, Any]:
        """id -> the value of column ``name``, in file order (e.g. ``{"tumor_001": 1, ...}``)."""
        if name not in self.columns:
            raise KeyError(f"{name!r} is not a column read from {printable(self.path)}; read: {list(self.columns)}")
        return {identifier: row[name] for identifier, row in self.rows.items()}


def _decode(path: Path, raw: bytes, hint: str) -> str:
    if raw.startswith(_WORKBOOK_MAGIC):
        raise DataError(
            f"{printable(path)!r} is an Excel workbook, not CSV text; save it as 'CSV UTF-8 (comma delimited)' "
            f"with the columns {hint}"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{printable(path)!r} is not UTF-8 text (byte 0x{raw[error.start]:02x} on line {line}); save it as "
            "'CSV UTF-8'"
        ) from None


def _dialect(path: Path, text: str, notes: list[str]) -> tuple[str, bool]:
    """``(delimiter, whether the first line is Excel's sep= line)``."""
    line = text.split("\n", 1)[0]
    first = line.strip()
    if first.lower().startswith("sep=") and len(first) == 5:
        notes.append(f"{path.name} starts with Excel's 'sep={first[4]}' line; read with that separator")
        return first[4], True
    if "," not in first:
        for candidate, what in ((";", "semicolons"), ("\t", "tabs")):
            if candidate in line:  # unstripped: a header that starts with an empty cell starts with a tab
                notes.append(f"{path.name} is separated by {what}, not commas; read as such")
                return candidate, False
    return ",", False


def _clean_id(text: str, suffixes: Sequence[str]) -> tuple[str, list[str]]:
    """The id in ``text`` (folder and known suffix dropped) and what was dropped (``"folder"``, ``"suffix"``)."""
    identifier, dropped = text, []
    if "/" in identifier or "\\" in identifier:
        identifier = re.split(r"[/\\]", identifier)[-1]
        dropped.append("folder")
    stem, dot, suffix = identifier.rpartition(".")
    if dot and stem and f".{suffix.lower()}" in suffixes:
        identifier = stem
        dropped.append("suffix")
    return identifier, dropped


def _locate_columns(path: Path, header: list[str], wanted: list[Column], line: int) -> dict[str, int]:
    """Position of each wanted column in ``header`` (optional ones absent from it are left out)."""
    keys = [header_key(cell) for cell in header]
    positions: dict[str, int] = {}
    for column in wanted:
        names = {header_key(name) for name in column.names()}
        found = [index for index, key in enumerate(keys) if key in names]
        if len(found) > 1:
            raise DataError(
                f"{printable(path)!r} line {line} has {len(found)} columns meaning {column.name!r} "
                f"({[header[index] for index in found]}); keep one: rename or delete the others"
            )
        if found:
            positions[column.name] = found[0]
        elif column.required:
            expected = ",".join(item.name for item in wanted if item.required)
            also = f" ({column.name!r} may also be named {list(column.aliases)})" if column.aliases else ""
            raise DataError(
                f"{printable(path)!r} line {line} is {header!r}; the header must name the columns {expected!r}{also}: "
                "add or fix the header row"
            )
    return positions


def read_id_csv(
    path: str | os.PathLike,
    columns: Sequence[Column] = (),
    *,
    id_column: Column = ID,
    id_suffixes: Sequence[str] = ID_SUFFIXES,
    what: str = "",
    headerless: bool = False,
) -> IdTable:
    """Read a CSV of ids and named value columns, with the rules of this module.

    Args:
        path: the CSV file.
        columns: the value columns to read (none: ids only, e.g. a submission template).
        id_column: the id column; its ``parse`` (if any) checks the cleaned id (folder and suffix dropped)
            and returns it, e.g. a Kaggle id pattern.
        id_suffixes: file suffixes dropped from ids (lower case, with the dot).
        what: what the file is, put before the path in the "does not exist" message (e.g. ``"template"``).
        headerless: accept a file without a header row (Camelyon16's ``reference.csv``): when the first row
            names no id column, the columns are taken by position (id, then ``columns`` in order) and any
            further cells (Camelyon16's lesion type and size) are ignored; said in :attr:`IdTable.notes`.

    Returns:
        An :class:`IdTable`: ``table[id] -> {column: value}``, ``table.column(name) -> {id: value}``,
        ``table.notes``. Ids in file order, each once.

    Raises:
        DataError: a missing file, a workbook or non-UTF-8 bytes, a header without the required columns (or
            with two columns of one meaning), a short row, a row with more filled cells than the header, an
            empty id, a bad cell (the column's ``parse`` reason), one id with two different values, or no rows.
            Each message names the file and its line.

    Example:
        >>> table = read_id_csv("splits.csv", [Column("split")])
        >>> table.column("split")["f38a6374c348f90b587e046aac6079959adf3835"]
        'train'
    """
    path = Path(path).expanduser()
    wanted = [id_column, *columns]
    hint = ",".join(column.name for column in wanted)
    notes: list[str] = []
    text, delimiter, sep_line, reader, header = _open_csv(path, hint, what, notes)
    try:
        header_line = reader.line_num
        if headerless and not _names_a_column(header, id_column):
            width = max(len(row) for row in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
            header = [column.name for column in wanted] + [""] * max(0, width - len(wanted))
            notes.append(f"{path.name} has no header row; read its columns by position as {hint}"
                         + (" (further columns ignored)" if width > len(wanted) else ""))
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
            if sep_line:
                next(reader, None)
        positions = _locate_columns(path, header, wanted, header_line)
        _note_layout(path, header, positions, wanted, notes)
        rows, lines, counts, examples, parsed_notes = _read_rows(path, reader, header, positions, wanted, id_suffixes,
                                                                 delimiter)
    except csv.Error as error:
        raise DataError(f"{printable(path)!r} line {reader.line_num} is not valid CSV ({error}); fix the quoting") from None
    if not rows:
        raise DataError(f"{printable(path)!r} has a header but no rows; it must list {hint} for every item")
    for count, note in (  # counted over distinct ids (a repeated row is one id), with a real cell as the example
        (counts["suffix"], f"ids carry the file suffix (e.g. {examples.get('suffix')}); read without it"),
        (counts["folder"], f"ids carry a folder (e.g. {examples.get('folder')}); read the file name only"),
        *((count, note) for note, count in parsed_notes.items()),
        (counts["repeated"], f"rows repeat an id{_same(columns)}; each id counted once"),
    ):
        if count:
            notes.append(f"{path.name}: {count} {note}")
    return IdTable(path, tuple(column.name for column in columns), rows, lines, tuple(notes))



def _open_csv(path: Path, hint: str, what: str, notes: list[str]):
    """Read ``path`` as text and find its dialect and header row (the opening every CSV here shares).

    Returns:
        ``(text, delimiter, sep_line, reader, header)``: ``reader`` is positioned after the header.

    Raises:
        DataError: a missing file or a folder, a workbook or non-UTF-8 bytes, an empty file or invalid CSV.
    """
    if not path.is_file():
        where = f"{what} " if what else ""
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"{where}{printable(path)!r} {state}; pass a CSV file with the columns {hint}")
    raw = path.read_bytes()
    text = _decode(path, raw, hint)
    if raw.startswith(b"\xef\xbb\xbf"):
        notes.append(f"{path.name} starts with a UTF-8 byte-order mark (Excel's CSV UTF-8); ignored")
    delimiter, sep_line = _dialect(path, text, notes)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        if sep_line:
            next(reader, None)
        header = next(reader, None)
        while header is not None and not "".join(header).strip():  # blank lines before the header
            header = next(reader, None)
    except csv.Error as error:
        raise DataError(f"{printable(path)!r} line {reader.line_num} is not valid CSV ({error}); fix the quoting") from None
    if header is None:
        raise DataError(f"{printable(path)!r} is empty; it must start with the header {hint}")
    return text, delimiter, sep_line, reader, header


def _check_row(path: Path, line: int, row: list[str], needed: int, header: list[str], wanted, positions, delimiter: str) -> None:
    """Refuse a row shorter than the columns read, or with filled cells past the header (a separator in a value)."""
    if len(row) < needed:
        raise DataError(
            f"{printable(path)!r} line {line} is {delimiter.join(row)!r}; each row needs "
            f"{' and '.join(_a(column.name) for column in wanted if column.name in positions)}: fix it"
        )
    if any(cell.strip() for cell in row[len(header):]):
        raise DataError(
            f"{printable(path)!r} line {line} has {len(row)} cells but the header names {len(header)} "
            f"columns ({delimiter.join(row)!r}); a separator inside a value? quote it or fix the row"
        )

def _names_a_column(header: list[str], column: Column) -> bool:
    names = {header_key(name) for name in column.names()}
    return any(header_key(cell) in names for cell in header)


def _note_layout(path: Path, header: list[str], positions: dict[str, int], wanted: list[Column], notes: list[str]) -> None:
    used = set(positions.values())
    extra = [header[index] for index in range(len(header)) if index not in used]
    names = " and ".join(column.name for column in wanted if column.name in positions)
    if extra:
        index_only = all(header_key(name) in _INDEX_NAMES for name in extra)
        described = "an unnamed index column (pandas to_csv without index=False)" if index_only else f"columns {extra}"
        notes.append(f"{path.name} has {described} besides {names}; read {names} only")
    order = [positions[column.name] for column in wanted if column.name in positions]
    if order != sorted(order):
        later = next(column.name for column in wanted[1:] if column.name in positions
                     and positions[column.name] < positions[wanted[0].name])
        notes.append(f"{path.name} lists {later} before {wanted[0].name}; read by the column names")


def _read_rows(path, reader, header, positions, wanted, id_suffixes, delimiter):
    rows: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    counts = {"suffix": 0, "folder": 0, "repeated": 0}  # over distinct ids: a repeated row adds nothing
    examples: dict[str, str] = {}  # the first cell that carried a folder / a suffix, shown in the note
    parsed_notes: dict[str, int] = {}
    id_position = positions[wanted[0].name]
    needed = max(positions.values()) + 1
    for row in reader:
        line = reader.line_num
        if not "".join(row).strip():
            continue
        _check_row(path, line, row, needed, header, wanted, positions, delimiter)
        cell = row[id_position].strip()
        identifier, dropped = _clean_id(cell, id_suffixes)
        row_notes: dict[str, int] = {}  # this row's notes, counted only when its id is new
        identifier = _parse_cell(path, line, wanted[0], identifier, None, row_notes, shown=cell)
        values = {}
        for column in wanted[1:]:
            if column.name not in positions:
                values[column.name] = column.default
                continue
            values[column.name] = _parse_cell(path, line, column, row[positions[column.name]].strip(), identifier,
                                              row_notes)
        if identifier in rows:
            if rows[identifier] != values:
                name = next(key for key in values if values[key] != rows[identifier][key])
                raise DataError(
                    f"{printable(path)!r} line {line} gives id {identifier} {name} {values[name]!r} but line "
                    f"{lines[identifier]} gave {rows[identifier][name]!r}; each id needs one {name}: remove the wrong row"
                )
            counts["repeated"] += 1
            continue
        rows[identifier] = values
        lines[identifier] = line
        for kind in dropped:
            counts[kind] += 1
            examples.setdefault(kind, cell)
        for note, count in row_notes.items():
            parsed_notes[note] = parsed_notes.get(note, 0) + count
    return rows, lines, counts, examples, parsed_notes


def _same(columns: Sequence[Column]) -> str:
    if not columns:
        return ""
    return f" with the same {columns[0].name}" if len(columns) == 1 else " with the same values"


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _parse_cell(path, line, column: Column, text: str, identifier, parsed_notes, shown: str | None = None):
    try:
        value = column.read(text)
    except ValueError as error:
        owner = f" (id {identifier})" if identifier is not None else ""
        raise DataError(
            f"{printable(path)!r} line {line}{owner} has {column.name} {shown if shown is not None else text!r}; "
            f"{error}: fix the row"
        ) from None
    if isinstance(value, Parsed):
        parsed_notes[value.note] = parsed_notes.get(value.note, 0) + 1
        return value.value
    return value


# ----------------------------------------------------------------------------------------------
# CSVs whose rows are their items in order (row i = item i).


@dataclass(frozen=True)
class RowTable:
    """The rows of a CSV whose i-th row describes item i (PCam's meta CSV: row i = patch i of its split).

    Attributes:
        path: the file read.
        columns: the value columns' names (``Column.name``), in the order asked.
        values: column name -> its values, one per row, in file order.
        lines: the 1-based line of each row (for messages).
        header: the header row as written.
        cells: every row's cells as written (:meth:`to_csv` writes chosen rows back unchanged).
        index_position: position of the pandas index column in ``header``, or None when there is none.
        notes: what was read in a way the format does not prescribe but is unambiguous.
    """

    path: Path
    columns: tuple[str, ...]
    values: dict[str, list[Any]] = field(repr=False)
    lines: tuple[int, ...] = field(repr=False)
    header: tuple[str, ...] = ()
    cells: tuple[tuple[str, ...], ...] = field(default=(), repr=False)
    index_position: int | None = None
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.lines)

    def column(self, name: str) -> list[Any]:
        """The values of column ``name``, one per row, in file order."""
        if name not in self.columns:
            raise KeyError(f"{name!r} is not a column read from {printable(self.path)}; read: {list(self.columns)}")
        return self.values[name]

    def to_csv(self, rows: Sequence[int]) -> str:
        """The header and the rows at positions ``rows`` (0-based, in that order) as comma-separated text.

        Cells are written as they were read; a pandas index column is numbered again from 0, so the result
        is read back with row i = the i-th of ``rows``.
        """
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.header)
        for number, row in enumerate(rows):
            cells = list(self.cells[row])
            if self.index_position is not None:
                cells[self.index_position] = str(number)
            writer.writerow(cells)
        return buffer.getvalue()


def read_row_csv(path: str | os.PathLike, columns: Sequence[Column], *, what: str = "") -> RowTable:
    """Read a CSV whose i-th row describes item i, with the text, separator, header and row rules of this module.

    Args:
        path: the CSV file.
        columns: the named columns to read (at least one); other columns are kept as cells but not read.
        what: what the file is, put before the path in the "does not exist" message (e.g. ``"slide meta CSV"``).

    Returns:
        A :class:`RowTable`: ``len(table)`` rows, ``table.column(name)`` -> the values in row order.

    Raises:
        DataError: a missing file, a workbook or non-UTF-8 bytes, a header without a required column (or with
            two columns of one meaning), a short row, a row with more filled cells than the header, a bad cell
            (the column's ``parse`` reason) or no rows. Each message names the file and its line.

    Example:
        >>> table = read_row_csv("camelyonpatch_level_2_split_valid_meta.csv", [Column("wsi")])
        >>> len(table), table.column("wsi")[:2]
    """
    path = Path(path).expanduser()
    wanted = list(columns)
    hint = ",".join(column.name for column in wanted)
    notes: list[str] = []
    text, delimiter, sep_line, reader, header = _open_csv(path, hint, what, notes)
    try:
        positions = _locate_columns(path, header, wanted, reader.line_num)
        index_position = _index_column(path, header, positions, reader.line_num)
        values: dict[str, list[Any]] = {column.name: [] for column in wanted}
        lines: list[int] = []
        cells: list[tuple[str, ...]] = []
        parsed_notes: dict[str, int] = {}
        needed = max([*positions.values(), -1 if index_position is None else index_position]) + 1
        for row in reader:
            line = reader.line_num
            if not "".join(row).strip():
                continue
            _check_row(path, line, row, needed, header, wanted, positions, delimiter)
            for column in wanted:
                value = column.default if column.name not in positions else _parse_cell(
                    path, line, column, row[positions[column.name]].strip(), None, parsed_notes)
                values[column.name].append(value)
            lines.append(line)
            cells.append(tuple(row[: len(header)]) + ("",) * (len(header) - len(row)))
    except csv.Error as error:
        raise DataError(f"{printable(path)!r} line {reader.line_num} is not valid CSV ({error}); fix the quoting") from None
    if not lines:
        raise DataError(f"{printable(path)!r} has a header but no rows; it must list {hint} for every item")
    if index_position is not None:
        counted = [cell[index_position].strip() for cell in cells]
        if counted != [str(number) for number in range(len(cells))]:
            notes.append(f"{path.name}'s index column does not count 0, 1, 2, ... (e.g. rows were dropped); "
                         "read by row position: row i is item i")
    for note, count in parsed_notes.items():
        notes.append(f"{path.name}: {count} {note}")
    return RowTable(path, tuple(column.name for column in wanted), values, tuple(lines), tuple(header),
                    tuple(cells), index_position, tuple(notes))


def _index_column(path: Path, header: list[str], positions: dict[str, int], line: int) -> int | None:
    """Position of the pandas index column (named ``''`` or ``Unnamed: 0``, not a wanted column), or None."""
    used = set(positions.values())
    found = [index for index, name in enumerate(header) if index not in used and header_key(name) in _INDEX_NAMES]
    if len(found) > 1:
        raise DataError(
            f"{printable(path)!r} line {line} has {len(found)} index columns ({[header[index] for index in found]}); "
            "row i is item i, so keep one (pandas: to_csv(index=False) after read_csv(index_col=0))"
        )
    return found[0] if found else None
