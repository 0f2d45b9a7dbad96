"""Profile files: one directory per profile, ``meta.json`` + ``points.csv``, and where to find them.

A profile is the measured runtime and energy of one model on one hardware class over a grid of
input/output token counts. The format is documented in ``docs/profiles.md``; this module is its
single reader and writer, so every profile the planner sees has passed the same validation.

Search order (first match wins for a name): directories given by the caller (``profile_dirs`` in the
config), ``$HPCQUEUE_PROFILE_PATH`` (``os.pathsep``-separated), the user's data directory
(``<user data dir>/hpcqueue/profiles``), then the profiles shipped with hpcqueue.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hpcqueue.config import DEFAULT_ENGINE, ENGINES
from hpcqueue.errors import PlanningError
from hpcqueue.fileio import atomic_write_json, atomic_write_text, json_safe

FORMAT_VERSION = 1
META_FILE = "meta.json"
POINTS_FILE = "points.csv"
PROFILE_PATH_ENV = "HPCQUEUE_PROFILE_PATH"

Sweep = Literal["input", "output"]
SWEEPS: tuple[Sweep, ...] = ("input", "output")
SOURCES = ("imported", "measured", "calibrated")
METHODS = ("measured", "estimated")

POINT_COLUMNS: tuple[str, ...] = (
    "sweep",
    "input_tokens",
    "output_tokens",
    "batch_size",
    "trials",
    "runtime_s_mean",
    "runtime_s_ci95",
    "energy_j_mean",
    "energy_j_ci95",
    "energy_cpu_j_mean",
    "energy_cpu_j_ci95",
    "energy_gpu_j_mean",
    "energy_gpu_j_ci95",
    "total_tokens_mean",
)
_INT_COLUMNS = ("input_tokens", "output_tokens", "batch_size", "trials")
_REQUIRED_FLOAT_COLUMNS = ("runtime_s_mean", "energy_j_mean")
_OPTIONAL_FLOAT_COLUMNS = tuple(
    c for c in POINT_COLUMNS if c not in ("sweep", *_INT_COLUMNS, *_REQUIRED_FLOAT_COLUMNS)
)
_KEY_COLUMNS = ["sweep", "input_tokens", "output_tokens", "batch_size"]
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ProfileMeta(BaseModel):
    """The contents of ``meta.json``: what was measured, on what, how, and where the numbers come from.

    ``fingerprint`` holds ``cpu_model``, ``cpu_count``, ``gpus`` (``[{"name", "memory_mb"}]``) and
    ``driver``, with ``None`` where unknown, so a change of hardware behind a target can be detected.
    ``engine`` is the inference engine that produced the numbers (``transformers`` or ``vllm``): the same
    model on the same hardware costs differently under each, so the planner matches it to a target's
    engine. A ``meta.json`` without the key was written before engines existed and means ``transformers``;
    an engine this version does not know is kept and simply matches no target. ``idle_subtracted`` says
    per energy domain whether idle power was subtracted; ``idle_subtraction`` says how. Keys this version
    does not know are kept in ``extra`` and written back unchanged. Values are checked strictly (no string
    for a number, no number for a string).
    """

    model_config = ConfigDict(strict=True, extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(min_length=1)
    hardware: str = Field(min_length=1)
    engine: str = Field(default=DEFAULT_ENGINE, min_length=1)
    source: Literal["imported", "measured", "calibrated"]
    method: Literal["measured", "estimated"]
    model_aliases: list[str] = Field(default_factory=list)
    system: str | None = None
    source_detail: dict[str, Any] = Field(default_factory=dict)
    meters: dict[str, str] = Field(default_factory=dict)
    fingerprint: dict[str, Any] = Field(
        default_factory=lambda: {"cpu_model": None, "cpu_count": None, "gpus": [], "driver": None}
    )
    software: dict[str, Any] = Field(default_factory=dict)
    created: str | None = None
    idle_power_w: float | None = None
    idle_subtracted: dict[str, bool] = Field(default_factory=dict)
    idle_subtraction: str = ""
    kv_cache: bool | None = None
    batch_size_semantics: str = "prompts per generate call"
    filter: str = ""
    notes: str = ""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("format_version")
    @classmethod
    def _supported_version(cls, version: int) -> int:
        if version != FORMAT_VERSION:
            raise ValueError(
                f"format_version {version!r} is not supported by this hpcqueue (it reads format_version "
                f"{FORMAT_VERSION}); upgrade hpcqueue or re-create the profile"
            )
        return version

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to ``meta.json`` (``extra`` keys merged back at the top level)."""
        return {**self.extra, **self.model_dump(exclude={"extra"})}

    @classmethod
    def from_dict(cls, data: Any, where: str = "meta.json") -> ProfileMeta:
        """Validate a ``meta.json`` object; errors name the file and the key and list valid values."""
        if not isinstance(data, dict):
            raise PlanningError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {name: value for name, value in data.items() if name in cls.model_fields and name != "extra"}
        unknown = {name: value for name, value in data.items() if name not in known}
        try:
            return cls.model_validate({**known, "extra": unknown})
        except ValidationError as exc:
            raise PlanningError(_describe(exc.errors()[0], where)) from None


def _describe(error: Mapping[str, Any], where: str) -> str:
    """pydantic's first complaint about a meta.json as a sentence naming the file, the key and what is
    valid."""
    key = str(error["loc"][0]) if error["loc"] else "(top level)"
    value = error.get("input")
    if key == "engine":
        return f"{where}: key 'engine' is {value!r}; it names an inference engine: {', '.join(ENGINES)}"
    if error["type"] in ("missing", "string_too_short") or (
        key in ("name", "model", "hardware", "source", "method") and not isinstance(value, str)
    ):
        return f"{where}: key {key!r} is required and must be a non-empty string"
    if error["type"] == "literal_error":
        valid = get_args(ProfileMeta.model_fields[key].annotation)
        return f"{where}: key {key!r} is {value!r}; valid values: {', '.join(valid)}"
    if key == "format_version" and error["type"] == "value_error":
        return f"{where}: {error['msg'].removeprefix('Value error, ')}"
    nullable = ProfileMeta.model_fields[key].default is None if key in ProfileMeta.model_fields else False
    expected = error["msg"].removeprefix("Input should be ").removeprefix("a valid ")
    return f"{where}: key {key!r} must be a {expected}{' or null' if nullable else ''}, got {value!r}"


@dataclass
class Profile:
    """One profile: its metadata and its measured points (one row per grid point, ``POINT_COLUMNS``)."""

    meta: ProfileMeta
    points: pd.DataFrame
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.meta.name

    def sweep(self, sweep: Sweep) -> pd.DataFrame:
        """The points of one sweep, sorted by the swept token count."""
        rows = self.points[self.points["sweep"] == sweep]
        key = "input_tokens" if sweep == "input" else "output_tokens"
        return rows.sort_values([key, "batch_size"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class ProfileEntry:
    """A profile found on the search path, described by its ``meta.json`` only (points not read)."""

    name: str
    directory: Path
    meta: ProfileMeta


def validate_points(points: pd.DataFrame, where: str = "points.csv") -> pd.DataFrame:
    """Check and normalise a points table; errors name the file, the column and the CSV line.

    Returns a copy with the columns in ``POINT_COLUMNS`` order, integer token counts and float values.
    CSV line numbers in messages count the header as line 1.
    """
    missing = [c for c in POINT_COLUMNS if c not in points.columns]
    if missing:
        raise PlanningError(
            f"{where}: missing column(s) {', '.join(missing)}; a points file has the columns "
            f"{', '.join(POINT_COLUMNS)}"
        )
    if points.empty:
        raise PlanningError(f"{where}: no points; a profile needs at least one measured point per sweep")
    out = pd.DataFrame(index=pd.RangeIndex(len(points)))
    csv_line = np.arange(len(points)) + 2

    sweep = points["sweep"].astype("string").str.strip().reset_index(drop=True)
    bad = ~sweep.isin(SWEEPS).fillna(False).to_numpy(dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PlanningError(
            f"{where}: line {csv_line[i]}: column 'sweep' is {sweep.iloc[i]!r}; valid values: input, output"
        )
    out["sweep"] = sweep.astype(str).to_numpy()

    for column in (*_INT_COLUMNS, *_REQUIRED_FLOAT_COLUMNS, *_OPTIONAL_FLOAT_COLUMNS):
        raw = points[column].reset_index(drop=True)
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        unparsable = np.isnan(values) & raw.notna().to_numpy() & (raw.astype("string").str.strip() != "")
        if unparsable.any():
            i = int(np.flatnonzero(unparsable)[0])
            raise PlanningError(
                f"{where}: line {csv_line[i]}: column {column!r}: {raw.iloc[i]!r} is not a number"
            )
        if column in _INT_COLUMNS or column in _REQUIRED_FLOAT_COLUMNS:
            empty = ~np.isfinite(values)
            if empty.any():
                i = int(np.flatnonzero(empty)[0])
                raise PlanningError(f"{where}: line {csv_line[i]}: column {column!r} needs a finite value")
        if column in _INT_COLUMNS:
            bad = (values < 1) | (values != np.round(values))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise PlanningError(
                    f"{where}: line {csv_line[i]}: column {column!r} must be a whole number >= 1, "
                    f"got {raw.iloc[i]!r}"
                )
            out[column] = values.astype(np.int64)
        else:
            out[column] = values
    bad = out["runtime_s_mean"].to_numpy() <= 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise PlanningError(f"{where}: line {csv_line[i]}: column 'runtime_s_mean' must be > 0")
    for column in [c for c in POINT_COLUMNS if c.endswith("_ci95")]:
        bad = out[column].to_numpy() < 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise PlanningError(f"{where}: line {csv_line[i]}: column {column!r} (a half-width) must be >= 0")
    dup = out.duplicated(_KEY_COLUMNS).to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        raise PlanningError(
            f"{where}: line {csv_line[i]}: a second row for the same sweep, input_tokens, output_tokens "
            "and batch_size; merge the trials into one row"
        )
    return out[list(POINT_COLUMNS)]


def load_profile(directory: str | os.PathLike[str]) -> Profile:
    """Read and validate the profile in ``directory`` (``meta.json`` + ``points.csv``)."""
    directory = Path(directory)
    meta_path = directory / META_FILE
    points_path = directory / POINTS_FILE
    meta = _read_meta(meta_path)
    if meta.name != directory.name:
        raise PlanningError(
            f"{meta_path}: 'name' is {meta.name!r} but the directory is {directory.name!r}; "
            "a profile's directory is named after it: rename one of them"
        )
    try:
        raw = pd.read_csv(points_path, dtype=str, keep_default_na=True)
    except FileNotFoundError:
        raise PlanningError(
            f"{points_path}: missing; a profile directory holds meta.json and points.csv"
        ) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PlanningError(f"{points_path}: not a readable CSV file: {exc}") from None
    points = validate_points(raw, str(points_path))
    return Profile(meta=meta, points=points, path=directory)


def save_profile(profile: Profile, root: str | os.PathLike[str]) -> Path:
    """Write ``profile`` to ``root/<name>/`` (each file atomically); returns the profile's directory.

    The points are validated first, so a profile that would not load again is never written.
    """
    name = profile.meta.name
    if not _NAME_RE.match(name):
        raise PlanningError(
            f"profile name {name!r} is not usable as a directory name; use letters, digits, '.', '_' and '-'"
        )
    points = validate_points(profile.points, f"profile {name!r} points")
    points = points.sort_values(_KEY_COLUMNS, kind="stable").reset_index(drop=True)
    directory = Path(root) / name
    buffer = io.StringIO()
    points.to_csv(buffer, index=False, float_format="%.10g", lineterminator="\n")
    atomic_write_text(directory / POINTS_FILE, buffer.getvalue())
    atomic_write_json(directory / META_FILE, json_safe(profile.meta.to_dict()))
    return directory


def shipped_profiles_dir() -> Path:
    """The profiles that come with hpcqueue: inside the wheel, or ``profiles/`` of a source checkout."""
    try:
        packaged = resources.files("hpcqueue") / "_shipped_profiles"
        if packaged.is_dir():
            return Path(str(packaged))
    except (ModuleNotFoundError, NotADirectoryError):  # pragma: no cover - zipped installs
        pass
    import hpcqueue

    return Path(hpcqueue.__file__).resolve().parents[1] / "profiles"


def user_profiles_dir() -> Path:
    """Where a user's own profiles go (measured or imported); searched before the shipped ones."""
    return Path(platformdirs.user_data_dir("hpcqueue")) / "profiles"


def profile_search_path(extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> list[Path]:
    """Directories searched for profiles, first match first: ``extra_dirs``, ``$HPCQUEUE_PROFILE_PATH``,
    the user's data directory, the shipped profiles. Directories that do not exist are kept (so
    messages can say where hpcqueue looked); duplicates are dropped.
    """
    candidates: list[Path] = [Path(d).expanduser() for d in extra_dirs]
    env = os.environ.get(PROFILE_PATH_ENV, "")
    candidates += [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
    candidates.append(user_profiles_dir())
    candidates.append(shipped_profiles_dir())
    seen: set[Path] = set()
    result: list[Path] = []
    for path in candidates:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            result.append(path)
    return result


def list_profiles(search_path: Sequence[str | os.PathLike[str]] | None = None) -> list[ProfileEntry]:
    """Every profile on the search path, by name; a name found twice is taken from the earlier directory.

    Only ``meta.json`` files are read. A broken ``meta.json`` is an error naming the file (fix or remove it).
    """
    dirs = profile_search_path() if search_path is None else [Path(d) for d in search_path]
    entries: dict[str, ProfileEntry] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for meta_path in sorted(root.glob(f"*/{META_FILE}")):
            name = meta_path.parent.name
            if name in entries or name.startswith("."):
                continue
            entries[name] = ProfileEntry(name=name, directory=meta_path.parent, meta=_read_meta(meta_path))
    return list(entries.values())


def find_profile(name: str, search_path: Sequence[str | os.PathLike[str]] | None = None) -> Profile:
    """Load the profile called ``name`` from the first directory of the search path that has it."""
    if not _NAME_RE.match(name):  # it becomes a path: no '/', no '..'
        raise PlanningError(f"{name!r} is not a profile name: use letters, digits, '.', '_' and '-'")
    dirs = profile_search_path() if search_path is None else [Path(d) for d in search_path]
    for root in dirs:
        candidate = root / name
        if (candidate / META_FILE).is_file():
            return load_profile(candidate)
    available = [e.name for e in list_profiles(dirs)]
    raise PlanningError(
        f"no profile named {name!r}; searched {', '.join(str(d) for d in dirs) or '(no directories)'}; "
        f"available: {', '.join(available) or '(none)'}. Fix the name, or add the directory holding it "
        f"to profile_dirs in the config or to ${PROFILE_PATH_ENV}"
    )


def model_matches(meta: ProfileMeta, model: str) -> bool:
    """Whether ``model`` names the profile's model: its id or an alias (case-insensitive), or a local
    directory whose name is the last part of the model id (``/models/Llama-2-7b-chat-hf``)."""
    wanted = model.strip().lower()
    names = {meta.model.lower(), *(a.lower() for a in meta.model_aliases)}
    if wanted in names:
        return True
    basename = Path(model.rstrip("/")).name.lower()
    return bool(basename) and basename == meta.model.rsplit("/", 1)[-1].lower()


def find_profiles_for(
    model: str,
    hardware: str,
    search_path: Sequence[str | os.PathLike[str]] | None = None,
    engine: str | None = None,
) -> list[Profile]:
    """Profiles of ``model`` (id or alias) on ``hardware`` (measured with ``engine``, when given), best first.

    Order: search-path order (a user's own profiles before shipped ones); within that, profiles
    measured here (``source = "measured"``) before imported ones, then by name.
    """
    entries = [
        e
        for e in list_profiles(search_path)
        if e.meta.hardware == hardware
        and model_matches(e.meta, model)
        and (engine is None or e.meta.engine == engine)
    ]
    dirs = profile_search_path() if search_path is None else [Path(d) for d in search_path]
    dir_rank = {Path(d).resolve(): i for i, d in enumerate(dirs)}
    entries.sort(
        key=lambda e: (
            dir_rank.get(e.directory.parent.resolve(), len(dir_rank)),
            e.meta.source != "measured",
            e.name,
        )
    )
    return [load_profile(e.directory) for e in entries]


def _read_meta(meta_path: Path) -> ProfileMeta:
    try:
        text = meta_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanningError(
            f"{meta_path}: missing; a profile directory holds meta.json and points.csv"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanningError(f"{meta_path}: not valid JSON: line {exc.lineno}: {exc.msg}") from None
    return ProfileMeta.from_dict(data, str(meta_path))


def t_critical_95(dof: int) -> float:
    """The two-sided 95 % critical value of Student's t with ``dof`` degrees of freedom (t_{0.975, dof})."""
    from scipy import stats  # imported here: only profile sweeps need it, not planning

    if dof < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {dof}")
    return float(stats.t.ppf(0.975, dof))


def ci95_half_width(std: np.ndarray | pd.Series, n: np.ndarray | pd.Series) -> np.ndarray:
    """Half-width of the 95 % t-interval of a mean: t_{0.975, n-1} · s / √n (NaN when n < 2).

    ``std`` is the sample standard deviation (ddof = 1) and ``n`` the number of trials.
    """
    from scipy import stats

    std_a = np.asarray(std, dtype=float)
    n_a = np.asarray(n, dtype=float)
    out = np.full(np.broadcast(std_a, n_a).shape, np.nan)
    ok = np.broadcast_to(n_a, out.shape) >= 2
    if np.any(ok):
        n_ok = np.broadcast_to(n_a, out.shape)[ok]
        out[ok] = stats.t.ppf(0.975, n_ok - 1) * np.broadcast_to(std_a, out.shape)[ok] / np.sqrt(n_ok)
    return out
