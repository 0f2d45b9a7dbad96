"""Is each target's profile still about the hardware behind it? Checks, a cache of them, cheap warnings.

A measured profile records the fingerprint of the machine it was measured on (CPU model and count, GPUs,
driver, memory). When a partition's nodes are replaced or upgraded, the profile describes hardware that is
no longer there and the planner's predictions silently drift. :func:`check_targets` compares each target's
profile with the hardware the target runs on now: this machine's fingerprint for a local target, and for a
Slurm target the fingerprint read by a tiny job on that partition (:func:`remote_fingerprint`).

Statuses: ``ok`` (fingerprints agree), ``stale`` (they differ: re-measure), ``missing`` (no profile for the
target), ``unknown`` (cannot compare: an imported profile, whose fingerprint is mostly unknown, or a
partition whose fingerprint job did not finish). Each check names the command that refreshes the profile.

The last check of every (target, profile) is cached in ``<cache dir>/profile-checks.json`` so that
:func:`profile_warnings`, called by ``plan`` and ``submit``, can warn about stale profiles without
submitting jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hpcqueue.config import DEFAULT_ENGINE
from hpcqueue.errors import DispatchError, HpcqueueError, PlanningError
from hpcqueue.fileio import atomic_write_json
from hpcqueue.profiles.store import Profile, find_profile, find_profiles_for, profile_search_path

if TYPE_CHECKING:
    from hpcqueue.config import Settings, Target

Status = Literal["ok", "stale", "missing", "unknown"]
STATUSES: tuple[Status, ...] = ("ok", "stale", "missing", "unknown")

CHECKS_FILE = "profile-checks.json"
CACHE_FORMAT_VERSION = 1
#: The fingerprint job only reads /proc and asks the GPU driver: one minute of wall time is plenty.
FINGERPRINT_JOB_TIMEOUT_MIN = 5
#: How long ``check`` waits for a fingerprint job (queueing included) before calling the target unknown.
DEFAULT_WAIT_S = 600.0


@dataclass(frozen=True)
class ProfileCheck:
    """The outcome of checking one target's profile.

    ``differences`` lists what changed (stale), what is missing (missing) or why nothing could be compared
    (unknown); ``refresh`` is the command that measures the profile again on the target.
    """

    target: str
    profile: str | None
    status: Status
    differences: list[str]
    refresh: str
    hardware: str = ""
    source: str | None = None
    path: str | None = None
    checked_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refresh_command(
    target: str,
    model: str | None = None,
    config_path: str | os.PathLike[str] | None = None,
    engine: str = DEFAULT_ENGINE,
) -> str:
    """The shell command that measures ``target``'s profile again (``--model`` / ``--config`` when given,
    ``--engine`` for an engine other than transformers)."""
    parts = ["hpcqueue", "profile", target]
    if model:
        parts += ["--model", model]
    if engine != DEFAULT_ENGINE:
        parts += ["--engine", engine]
    if config_path:
        parts += ["--config", str(config_path)]
    return shlex.join(parts)


def checks_cache_path(cache: str | os.PathLike[str]) -> Path:
    """The checks cache file: ``cache`` itself when it names a ``.json`` file, else
    ``cache/profile-checks.json`` (``cache`` is then the cache directory, e.g. ``settings.cache_dir``)."""
    path = Path(cache).expanduser()
    return path if path.suffix == ".json" else path / CHECKS_FILE


def resolve_profile(
    target: Target,
    model: str,
    search_path: Sequence[str | os.PathLike[str]],
    default_engine: str = DEFAULT_ENGINE,
) -> tuple[Profile | None, str | None]:
    """The profile the planner would use for ``target`` (same rules as ``resolve_cost_models``: a profile of
    the target's engine, else ``default_engine``'s).

    Returns ``(profile, None)``, or ``(None, why)`` when there is none.
    """
    if target.profile:
        try:
            return find_profile(target.profile, search_path), None
        except PlanningError:
            return None, (
                f"no profile named {target.profile!r} (profile = {target.profile!r} in "
                f"[targets.{target.name}]); after measuring one, set profile to the new profile's name"
            )
    engine = target.engine or default_engine
    matches = find_profiles_for(model, target.hardware, search_path, engine=engine)
    if not matches:
        return None, f"no {engine} profile of model {model!r} on hardware {target.hardware!r}"
    return matches[0], None


def remote_fingerprint(
    target: Target, folder: str | os.PathLike[str], *, wait_s: float = DEFAULT_WAIT_S, poll_s: float = 2.0
) -> dict[str, Any]:
    """The fingerprint of a node of ``target``'s partition, read by a tiny Slurm job.

    The job gets the target's own executor parameters (partition, gres, account...) with a short time limit
    and runs ``hpcqueue.profiles.fingerprint.fingerprint``. Waits at most ``wait_s`` seconds (queueing
    included); a job still pending then is cancelled. Failures raise ``DispatchError`` saying why.
    """
    from hpcqueue.dispatch.executor import JobSpec, executor_parameters, submit
    from hpcqueue.profiles import fingerprint as fingerprint_mod

    params = executor_parameters(target)
    params.update(name=f"hpcqueue-fingerprint-{target.name}", timeout_min=FINGERPRINT_JOB_TIMEOUT_MIN)
    params.pop("slurm_array_parallelism", None)
    job = submit(
        fingerprint_mod.fingerprint,
        job=JobSpec(
            folder=Path(folder) / "%j",
            cluster=target.executor,
            parameters=params,
            what=f"the fingerprint job to target {target.name!r} (partition {target.partition!r})",
            python=target.python,
        ),
    )
    deadline = time.monotonic() + wait_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            raise DispatchError(
                f"the fingerprint job {job.job_id} on target {target.name!r} did not finish within "
                f"{wait_s:.0f} s (cancelled); try again when the partition is less busy, or give more time "
                "with --wait-s"
            )
        time.sleep(poll_s)
    try:
        result = job.result()
    except Exception as exc:  # the job's own exception, re-raised by submitit
        raise DispatchError(
            f"the fingerprint job {job.job_id} on target {target.name!r} failed: {exc}; "
            f"its log is under {folder}"
        ) from exc
    if not isinstance(result, dict):
        raise DispatchError(f"the fingerprint job {job.job_id} returned {type(result).__name__}, not a dict")
    return result


def check_targets(
    settings: Settings,
    *,
    model: str | None = None,
    current_fingerprints: Mapping[str, dict[str, Any]] | None = None,
    folder: str | os.PathLike[str] | None = None,
    wait_s: float = DEFAULT_WAIT_S,
    cache: str | os.PathLike[str] | None = None,
) -> list[ProfileCheck]:
    """Check every target of ``settings`` against the profile the planner would use for ``model``.

    ``current_fingerprints`` maps target names to fingerprints already known (no job is submitted for
    them). Otherwise a local target's current fingerprint is this machine's, a Slurm target's comes from
    :func:`remote_fingerprint` (job logs under ``folder``, default ``<cache dir>/fingerprint-jobs``).
    The results are stored in the checks cache (``cache``, default ``settings.cache_dir``) for
    :func:`profile_warnings`.
    """
    model = model or settings.model
    search_path = profile_search_path(settings.profile_dirs)
    known = dict(current_fingerprints or {})
    folder = Path(folder) if folder is not None else Path(settings.cache_dir) / "fingerprint-jobs"
    config_path = _config_for_refresh(settings)
    checks: list[ProfileCheck] = []
    digests: dict[tuple[str, str], str] = {}
    for target in settings.targets.values():
        engine = settings.engine_of(target)
        refresh = refresh_command(
            target.name, model if model != settings.model else None, config_path, engine
        )
        profile, why = resolve_profile(target, model, search_path, engine)
        if profile is None:
            checks.append(
                ProfileCheck(target.name, None, "missing", [why or ""], refresh, hardware=target.hardware)
            )
            continue
        digests[(target.name, profile.name)] = _digest(profile.meta.fingerprint)
        status, differences = _check_one(target, profile, known, folder, wait_s)
        checks.append(
            ProfileCheck(
                target.name,
                profile.name,
                status,
                differences,
                refresh,
                hardware=target.hardware,
                source=profile.meta.source,
                path=str(profile.path),
            )
        )
    _store_checks(checks_cache_path(cache if cache is not None else settings.cache_dir), checks, digests)
    return checks


def _check_one(
    target: Target, profile: Profile, known: dict[str, dict[str, Any]], folder: Path, wait_s: float
) -> tuple[Status, list[str]]:
    """Status and differences of one target's existing profile; fills ``known`` with fingerprints read."""
    if profile.meta.source == "imported":
        return "unknown", [
            "imported profile (measured elsewhere): nothing to compare with this target's hardware"
        ]
    if target.name not in known:
        try:
            known[target.name] = (
                _local_fingerprint()
                if target.executor == "local"
                else remote_fingerprint(target, folder, wait_s=wait_s)
            )
        except HpcqueueError as exc:
            return "unknown", [f"could not read the target's fingerprint: {exc}"]
    differences = _compare(profile.meta.fingerprint, known[target.name])
    return ("stale" if differences else "ok"), differences


def profile_warnings(
    targets: Sequence[Target],
    model: str,
    search_path: Sequence[str | os.PathLike[str]] | None,
    cache: str | os.PathLike[str] | None,
    *,
    config_path: str | os.PathLike[str] | None = None,
    default_engine: str = DEFAULT_ENGINE,
) -> list[str]:
    """Warnings about the targets' profiles that cost no job: for ``plan`` and ``submit``.

    A target's profile is one of its engine (its own ``engine``, else ``default_engine``: pass
    ``Settings.engine``), as the planner picks it.

    Warns about targets without a profile, local targets whose measured profile differs from this machine,
    and Slurm targets whose profile the last ``hpcqueue profiles check`` found stale (read from ``cache``,
    the checks file or its directory; a cached result no longer applies once the profile is re-measured).
    Imported profiles give no warning. Every warning names the command that refreshes the profile.
    """
    dirs = profile_search_path() if search_path is None else list(search_path)
    cached = _load_checks(checks_cache_path(cache)) if cache is not None else {}
    warnings: list[str] = []
    for target in targets:
        engine = target.engine or default_engine
        refresh = refresh_command(target.name, model, config_path, engine)
        profile, why = resolve_profile(target, model, dirs, engine)
        if profile is None:
            warnings.append(f"target {target.name!r} has no profile: {why}; measure one with: {refresh}")
            continue
        if profile.meta.source != "measured":
            continue
        if target.executor == "local":
            try:
                differences = _compare(profile.meta.fingerprint, _local_fingerprint())
            except HpcqueueError as exc:
                warnings.append(f"target {target.name!r}: could not read this machine's fingerprint: {exc}")
                continue
            when = "now"
        else:
            record = cached.get(target.name, {}).get(profile.name)
            if not record or record.get("status") != "stale":
                continue
            if record.get("profile_digest") != _digest(profile.meta.fingerprint):
                continue  # the profile was measured again since that check
            differences = list(record.get("differences") or [])
            when = "by the check of " + time.strftime("%Y-%m-%d %H:%M", time.localtime(record["checked_at"]))
        if differences:
            warnings.append(
                f"profile {profile.name!r} of target {target.name!r} is stale (found {when}): "
                f"{'; '.join(differences)}. Its predictions describe other hardware; "
                f"refresh it with: {refresh}"
            )
    return warnings


def _config_for_refresh(settings: Settings) -> str | None:
    """The config to name in a refresh command: only one the user chose (not the default user config)."""
    from hpcqueue.config import default_config_path

    if settings.config_path is None:
        return None
    if Path(settings.config_path).resolve() == default_config_path().resolve():
        return None
    return str(settings.config_path)


def _local_fingerprint() -> dict[str, Any]:
    from hpcqueue.profiles import fingerprint as fingerprint_mod

    return dict(fingerprint_mod.fingerprint())


def _compare(expected: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    from hpcqueue.profiles import fingerprint as fingerprint_mod

    return list(fingerprint_mod.compare(dict(expected), dict(current)))


def _digest(fingerprint: Mapping[str, Any]) -> str:
    """A short digest of a profile's recorded fingerprint: tells whether a cached check still applies."""
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_checks(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError):
        return {}  # a damaged cache only loses old results; the next check rewrites it
    checks = data.get("checks") if isinstance(data, dict) else None
    return checks if isinstance(checks, dict) else {}


def _store_checks(path: Path, checks: Sequence[ProfileCheck], digests: Mapping[tuple[str, str], str]) -> None:
    """Merge ``checks`` into the cache file (per target and profile), under a lock, written atomically."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=30):
        stored = _load_checks(path)
        for check in checks:
            if check.profile is None:
                continue
            record = check.to_dict()
            record["profile_digest"] = digests.get((check.target, check.profile))
            stored.setdefault(check.target, {})[check.profile] = record
        atomic_write_json(
            path, {"format_version": CACHE_FORMAT_VERSION, "updated_at": time.time(), "checks": stored}
        )
