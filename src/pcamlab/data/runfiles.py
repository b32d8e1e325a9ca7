"""One reader for the run files pcamlab wrote, in this version and earlier ones.

``summary.json``, ``metrics.json``, ``cv_summary.json``, ``study.json``, ``history.csv`` and ``cv_results.csv`` are read by
``compare``, ``report``, the tuning report and the web service. Versions before ``fileio.json_safe``
wrote bare ``NaN`` and ``Infinity`` (not JSON: RFC 8259 has no such numbers; browsers and ``jq`` refuse
the whole file) and older files lack keys added since. Read here, they all look like new files:

- a number that is not finite (``NaN``, ``Infinity``, ``-Infinity`` in JSON; ``nan``, ``inf`` or an empty
  cell in ``history.csv``) is ``None``, as :func:`pcamlab.fileio.json_safe` writes it today;
- a missing key is ``None`` to whoever reads it with ``.get``;
- every place that shows a value to a person shows ``None`` as :data:`UNDEFINED` (``"—"``), never
  ``nan``, ``inf`` or ``None`` (the web page's own formatter does the same for JSON ``null``).
  Machine-readable outputs (CSV cells, JSON) keep it empty / ``null``.

Example:
    >>> from pcamlab.data.runfiles import read_json, read_run_csv, shown
    >>> metrics = read_json("runs/a/metrics.json")      # {"roc_auc": None, ...} for a bare NaN
    >>> shown(metrics.get("roc_auc"))
    '—'
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from typing import Any

from pcamlab.errors import DataError
from pcamlab.fileio import printable

__all__ = ["UNDEFINED", "read_json", "read_run_csv", "is_undefined", "finite", "shown"]

#: How a person sees a value that is not defined (a NaN metric, a key an older version did not write).
UNDEFINED = "—"


def _decode(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as error:
        raise DataError(f"{printable(path)!r} cannot be read ({error.strerror or error}); check the file") from None
    except UnicodeDecodeError as error:
        raise DataError(
            f"{printable(path)!r} is not UTF-8 text (byte offset {error.start}); re-run the step that writes it"
        ) from None


def read_json(path: str | os.PathLike, *, expect: type | None = dict) -> Any:
    """Parse a run's JSON file, old versions' bare ``NaN``/``Infinity`` read as ``None``.

    Args:
        path: the file.
        expect: the type the top level must have (``dict`` for every run file); None accepts any.

    Returns:
        The parsed value; non-finite numbers anywhere in it are ``None``.

    Raises:
        DataError: the file cannot be read, is not JSON, or its top level is not ``expect``.
    """
    path = Path(path)
    text = _decode(path)
    try:
        values = json.loads(text, parse_constant=lambda name: None, parse_float=_float)
    except json.JSONDecodeError as error:
        raise DataError(f"{printable(path)!r} is not readable JSON ({error}); re-run the step that writes it") from None
    if expect is not None and not isinstance(values, expect):
        raise DataError(
            f"{printable(path)!r} must hold a JSON {'object' if expect is dict else expect.__name__}; got "
            f"{type(values).__name__}: re-run the step that writes it"
        )
    return values


def _float(text: str) -> float | None:
    value = float(text)  # 1e999 parses as inf
    return value if math.isfinite(value) else None


def read_run_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's CSV (``history.csv``: one per epoch; ``cv_results.csv``, ``trials.csv``), numbers as
    ``int``/``float``, undefined ones ``None``.

    Cells holding ``nan``, ``inf``, ``-inf`` or nothing are ``None``; a column a row lacks is absent from
    it (read with ``.get``). Other text stays text.

    Raises:
        DataError: the file cannot be read, is not UTF-8 or not CSV.
    """
    path = Path(path)
    text = _decode(path)
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise DataError(f"{printable(path)!r} is not readable CSV ({error}); re-run the step that writes it") from None
    return [{(key or "").strip(): _cell(value) for key, value in row.items() if key is not None} for row in rows]


def _cell(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else None


def is_undefined(value: Any) -> bool:
    """Whether ``value`` is an undefined number: ``None``, NaN or infinite."""
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def finite(value: Any) -> Any:
    """``value``, or ``None`` where it is an undefined number (for values already in memory)."""
    return None if is_undefined(value) else value


def shown(value: Any, decimals: int = 4) -> str:
    """A value as a person sees it: :data:`UNDEFINED` for an undefined number, floats to ``decimals`` places."""
    if is_undefined(value):
        return UNDEFINED
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value)
