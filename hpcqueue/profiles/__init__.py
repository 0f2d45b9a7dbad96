"""Profiles: measured runtime and energy of a model on a hardware class over token counts.

``store`` reads, validates, writes and finds profile directories; ``wilkins2024`` derives the shipped
profiles from the published measurements of Wilkins, Keshav and Mortier (2024).
"""

from __future__ import annotations

from hpcqueue.profiles.store import (
    FORMAT_VERSION,
    POINT_COLUMNS,
    PROFILE_PATH_ENV,
    Profile,
    ProfileEntry,
    ProfileMeta,
    find_profile,
    find_profiles_for,
    list_profiles,
    load_profile,
    profile_search_path,
    save_profile,
    shipped_profiles_dir,
)

__all__ = [
    "FORMAT_VERSION",
    "POINT_COLUMNS",
    "PROFILE_PATH_ENV",
    "Profile",
    "ProfileEntry",
    "ProfileMeta",
    "find_profile",
    "find_profiles_for",
    "list_profiles",
    "load_profile",
    "profile_search_path",
    "save_profile",
    "shipped_profiles_dir",
]
