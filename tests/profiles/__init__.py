"""Helpers shared by the profile tests (and the CLI's): a measured profile written to a directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcqueue.profiles import Profile, ProfileMeta, find_profile, save_profile

SHIPPED = "llama-2-7b-chat.m1-pro.wilkins2024"


def measured_profile(
    root: Path,
    name: str,
    hardware: str,
    fp: dict[str, Any],
    model: str = "hpcqueue-demo",
    engine: str = "transformers",
) -> Path:
    """A measured profile in ``root`` (the shipped M1 points, re-labelled) with the given fingerprint,
    measured with ``engine``."""
    shipped = find_profile(SHIPPED)
    meta = ProfileMeta(
        name=name,
        model=model,
        hardware=hardware,
        engine=engine,
        source="measured",
        method="estimated",
        fingerprint=fp,
    )
    return save_profile(Profile(meta=meta, points=shipped.points), root)
