"""Durations: the one parser, for values users write and values Slurm prints.

``parse_duration`` reads every form either side uses: unit suffixes (``"90m"``, ``"8h"``, ``"1d"``,
``"1h30m"``, ``"45s"``), Slurm's clock forms (``D-HH:MM:SS``, ``D-HH:MM``, ``D-HH``, ``HH:MM:SS``, ``MM:SS``,
with optional fractional seconds as sacct prints CPU times) and a bare number. A bare number is the one thing
the two sides disagree on — seconds in a user's ``deadline``, minutes in ``sbatch --time`` and Slurm's
``MaxTime`` — so every caller says which it means with ``bare_unit``.
"""

from __future__ import annotations

import re
from typing import Literal

BareUnit = Literal["s", "min"]

_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_BARE_S = {"s": 1.0, "min": 60.0}
_SUFFIXED = re.compile(r"^(?:\d+(?:\.\d*)?[smhd])+$")
_SUFFIX_PART = re.compile(r"(\d+(?:\.\d*)?)([smhd])")
_CLOCK = re.compile(r"^(?:(?P<days>\d+)-)?(?P<clock>\d+(?::\d+){0,2}(?:\.\d+)?)$")


def parse_duration(text: str, *, bare_unit: BareUnit) -> float:
    """Seconds in ``text``; a bare number (``"30"``) counts in ``bare_unit``.

    Raises ``ValueError`` naming the text and the accepted forms.
    """
    raw = text.strip().lower().replace(" ", "")
    if _SUFFIXED.match(raw):
        return sum(float(number) * _UNIT_S[unit] for number, unit in _SUFFIX_PART.findall(raw))
    match = _CLOCK.match(raw)
    if match is not None:
        parts = match["clock"].split(":")
        if match["days"]:
            # after a day count the fields are hours[:minutes[:seconds]]
            units = [3600.0, 60.0, 1.0][: len(parts)]
            days_s = int(match["days"]) * 86400.0
        else:
            units = {1: [_BARE_S[bare_unit]], 2: [60.0, 1.0], 3: [3600.0, 60.0, 1.0]}[len(parts)]
            days_s = 0.0
        return days_s + sum(float(part) * unit for part, unit in zip(parts, units, strict=True))
    try:
        return float(raw) * _BARE_S[bare_unit]  # "1e3", ".5": numbers the clock form does not cover
    except ValueError:
        pass
    bare = "seconds" if bare_unit == "s" else "minutes"
    raise ValueError(f"not a duration: {text!r}; use {bare} or e.g. 90m, 8h, 1d, 1h30m")
