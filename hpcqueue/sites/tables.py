"""Reading a site's data files: CSV tables, columns found by name, times turned into UTC, and the checks
every series gets (no missing value, strictly increasing times, one regular step, values in range).

Every problem raises :class:`~hpcqueue.errors.SiteDataError` with the file and, where there is one, the line
(or the JSON element) it was found at, so the message says where to look. The readers in
:mod:`hpcqueue.sites.series` and :mod:`hpcqueue.sites.weather` are built from these pieces.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from hpcqueue.errors import SiteDataError

FloatArray = npt.NDArray[np.float64]
TimeArray = npt.NDArray[np.datetime64]
#: Says where row ``i`` of a table is in its file: ``"line 7"``, ``"hourly.time[5]"``.
Where = Callable[[int], str]

# An explicit UTC offset at the end of a time: Z, +02:00, -0400, +05.
_OFFSET = re.compile(r"\d(?:Z|[+-]\d{2}(?::?\d{2})?)$", re.IGNORECASE)
_UNIT_SUFFIX = re.compile(r"\s*\([^()]*\)$")


@dataclass(frozen=True)
class Table:
    """A CSV file's table, every cell as text; ``first_line`` is the file line of the first data row.

    ``metadata`` holds the block that Open-Meteo's CSV export puts above the table (``latitude``, ...,
    ``utc_offset_seconds``); it is empty for other files.
    """

    path: Path
    frame: pd.DataFrame
    first_line: int
    metadata: dict[str, str]

    def where(self, row: int) -> str:
        return f"line {self.first_line + row}"

    def column(self, what: str, candidates: Sequence[str], *, required: bool = True) -> str | None:
        """The table's column for ``what``: the first of ``candidates`` found, compared case-insensitively,
        first by the whole header, then by the header without a trailing unit in parentheses
        (Open-Meteo writes ``temperature_2m (°C)``)."""
        headers = [str(c) for c in self.frame.columns]
        for strip in (False, True):
            names = {_normal(h, strip): h for h in reversed(headers)}
            for candidate in candidates:
                if _normal(candidate, False) in names:
                    return names[_normal(candidate, False)]
        if not required:
            return None
        raise SiteDataError(
            f"{self.path}: no column for {what}: expected one of {', '.join(map(repr, candidates))}; "
            f"found {', '.join(map(repr, headers)) or 'no columns'}"
        )

    def numbers(self, column: str) -> FloatArray:
        """A column as float64; a missing or non-numeric cell is an error naming its line."""
        raw = self.frame[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            row = int(bad[0])
            cell = "" if pd.isna(raw.iloc[row]) else str(raw.iloc[row]).strip()
            problem = "is missing" if cell == "" else f"is not a finite number: {cell!r}"
            raise SiteDataError(f"{self.path}: {self.where(row)}: {column} {problem}")
        return values

    def times(self, column: str, *, local_offset_s: float = 0.0) -> TimeArray:
        """A column of ISO 8601 times as UTC (see :func:`utc_times`)."""
        return utc_times(self.frame[column], self.path, self.where, column, local_offset_s=local_offset_s)


def _normal(header: str, strip_unit: bool) -> str:
    name = header.strip().lower()
    return _UNIT_SUFFIX.sub("", name) if strip_unit else name


def read_table(path: str | Path, what: str) -> Table:
    """Read the CSV file ``path`` (``what`` names it in errors: "carbon intensity CSV").

    An Open-Meteo CSV export (a ``latitude,longitude,...`` line, its values, a blank line, then the table)
    is recognised: the block becomes ``metadata`` and the table ends at the next blank line (a ``daily``
    table may follow). Elsewhere a blank line inside the table is an error at its line; trailing ones are
    ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise SiteDataError(f"{path}: {what} not found" + (" (a directory)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SiteDataError(f"{path}: cannot read the {what}: {e}") from None
    lines = text.splitlines()
    metadata: dict[str, str] = {}
    header_line = 1
    if lines and lines[0].strip().lower().startswith("latitude,"):
        metadata = _open_meteo_metadata(lines, path)
        header_line = 1 + next((i for i in range(2, len(lines)) if lines[i].strip()), len(lines))
        end = next((i for i in range(header_line, len(lines)) if not lines[i].strip()), len(lines))
        text = "\n".join(lines[header_line - 1 : end])
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,
            index_col=False,
        )
    except pd.errors.EmptyDataError:
        raise SiteDataError(f"{path}: the {what} is empty") from None
    except (pd.errors.ParserError, ValueError) as e:
        raise SiteDataError(f"{path}: cannot parse the {what} as CSV: {e}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    # Trailing blank lines (and rows of empty cells) are not data.
    filled = (frame != "").any(axis=1).to_numpy()
    frame = frame.iloc[: int(np.flatnonzero(filled)[-1]) + 1 if filled.any() else 0]
    if frame.empty:
        raise SiteDataError(f"{path}: the {what} has a header but no rows")
    table = Table(path=path, frame=frame, first_line=header_line + 1, metadata=metadata)
    blank = np.flatnonzero(~filled[: len(frame)])
    if blank.size:
        raise SiteDataError(f"{path}: {table.where(int(blank[0]))} is empty")
    return table


def _open_meteo_metadata(lines: list[str], path: Path) -> dict[str, str]:
    if len(lines) < 2:
        raise SiteDataError(f"{path}: an Open-Meteo CSV needs a metadata line with values, then the table")
    keys = [k.strip().lower() for k in lines[0].split(",")]
    values = [v.strip() for v in lines[1].split(",")]
    return dict(zip(keys, values, strict=False))


def utc_times(
    raw: pd.Series | Sequence[str],
    path: Path,
    where: Where,
    column: str,
    *,
    local_offset_s: float = 0.0,
) -> TimeArray:
    """ISO 8601 times as naive ``datetime64[s]`` meaning UTC.

    A time with an explicit offset (``+00:00``, ``-04:00``, ``Z``) is converted with it; a time without one
    is on the file's own clock, ``local_offset_s`` ahead of UTC (0: it is UTC), so UTC = local − offset.
    """
    text = pd.Series(raw, dtype=str).str.strip()
    moments = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = np.flatnonzero(moments.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        cell = str(text.iloc[row])
        problem = "is missing" if cell in ("", "nan", "None") else f"is not an ISO 8601 time: {cell!r}"
        raise SiteDataError(f"{path}: {where(row)}: {column} {problem}")
    utc = moments.dt.tz_convert(None).to_numpy(dtype="datetime64[s]")
    if local_offset_s:
        naive = ~text.str.contains(_OFFSET).to_numpy(dtype=bool)
        utc = utc - naive * np.timedelta64(round(local_offset_s), "s")
    return utc


def regular_step_s(times: TimeArray, path: Path, where: Where, what: str) -> float:
    """The one step of ``times`` (s), after checking they are strictly increasing and evenly spaced.

    Errors name the first duplicate, the first time that goes backwards, or the first gap.
    """
    if times.size < 2:
        raise SiteDataError(
            f"{path}: {what} has {times.size} time(s); a series needs at least two to know its step "
            "(for a value that does not change, give a number in the config instead)"
        )
    diffs = np.diff(times).astype(np.int64)
    not_after = np.flatnonzero(diffs <= 0)
    if not_after.size:
        i = int(not_after[0])
        problem = "is a duplicate of" if diffs[i] == 0 else "is earlier than"
        raise SiteDataError(
            f"{path}: {where(i + 1)}: {what} time {format_time(times[i + 1])} (UTC) {problem} the one at "
            f"{where(i)}; times must be strictly increasing"
        )
    step = int(diffs.min())
    off = np.flatnonzero(diffs != step)
    if off.size:
        i = int(off[0])
        gap = diffs[i] % step == 0
        problem = (
            f"gap: nothing from {format_time(times[i] + np.timedelta64(step, 's'))} to "
            f"{format_time(times[i + 1])} (UTC)"
            if gap
            else f"irregular step: {format_step(float(diffs[i]))} after {format_time(times[i])} (UTC)"
        )
        raise SiteDataError(
            f"{path}: {where(i + 1)}: {what} {problem}; the step elsewhere is {format_step(float(step))}"
        )
    return float(step)


def check_range(
    values: FloatArray,
    path: Path,
    where: Where,
    what: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
) -> None:
    """Every value within [minimum, maximum]; the first one outside is an error naming its place."""
    outside = np.zeros(values.shape, dtype=bool)
    if minimum is not None:
        outside |= values < minimum
    if maximum is not None:
        outside |= values > maximum
    bad = np.flatnonzero(outside)
    if bad.size:
        i = int(bad[0])
        if maximum is None:
            bounds = f"must not be below {minimum:g}"
        elif minimum is None:
            bounds = f"must not be above {maximum:g}"
        else:
            bounds = f"must be within {minimum:g}..{maximum:g}"
        raise SiteDataError(f"{path}: {where(i)}: {what} {values[i]:g} {bounds}")


def format_time(moment: np.datetime64) -> str:
    """``2023-01-01 07:00`` (seconds only when they are not zero)."""
    text = str(np.datetime_as_string(moment.astype("datetime64[s]"), unit="s")).replace("T", " ")
    return text[:-3] if text.endswith(":00") else text


def format_step(step_s: float) -> str:
    """``1 h``, ``15 min``, ``30 s``, ``1 d``."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if step_s >= size and step_s % size == 0:
            return f"{step_s / size:g} {unit}"
    return f"{step_s:g} s"
