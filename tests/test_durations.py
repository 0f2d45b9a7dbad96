"""The one duration parser: every form users and Slurm write, a bare number in the unit its caller names."""

from __future__ import annotations

import pytest

from hpcqueue.durations import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90m", 5400.0),
        ("8h", 28800.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m", 5400.0),
        ("45s", 45.0),
        ("2.5h", 9000.0),
        ("02:03:04", 7384.0),
        ("03:04", 184.0),
        ("1-02:03:04", 93784.0),
        ("2-12", 2 * 86400.0 + 12 * 3600.0),
        ("00:01.500", 1.5),
    ],
)
def test_forms_with_a_unit_read_the_same_for_every_caller(text: str, seconds: float) -> None:
    assert parse_duration(text, bare_unit="s") == parse_duration(text, bare_unit="min") == seconds


def test_a_bare_number_is_in_the_unit_the_caller_names() -> None:
    # A user's deadline "3600" is seconds; Slurm's MaxTime "30" is minutes, as in sbatch --time.
    assert parse_duration("3600", bare_unit="s") == 3600.0
    assert parse_duration("30", bare_unit="min") == 1800.0
    assert parse_duration("1.5", bare_unit="s") == 1.5


@pytest.mark.parametrize("text", ["soon", "8x", "1h30", "", "h", "UNLIMITED", "1-", "1:2:3:4"])
def test_anything_else_is_an_error_naming_the_text_and_the_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"not a duration: .*use seconds or e\.g\. 90m, 8h, 1d, 1h30m"):
        parse_duration(text, bare_unit="s")
    with pytest.raises(ValueError, match=r"use minutes or e\.g\."):
        parse_duration(text, bare_unit="min")
