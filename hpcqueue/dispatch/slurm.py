"""The thin layer over Slurm's own commands: ``sacct``, ``scontrol`` and ``scancel``.

Parsing and formatting are done by pure functions (``parse_sacct``, ``parse_show_jobs``, ``slurm_seconds``,
``parse_time``, ``format_slurm_time``...) so that the formats Slurm prints and reads can be tested without a
cluster. The functions that run a command take a ``runner`` with the signature of ``subprocess.run``; tests
pass a fake one that returns recorded Slurm output.

Being gentle with the scheduler is the rule here: job states are read with one ``sacct`` call for all jobs
(never one call per job or per array task), and ``SacctPoller`` spaces those calls out while nothing changes;
a re-plan moves all the jobs bound for one begin time with one ``scontrol update``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from hpcqueue.durations import parse_duration
from hpcqueue.errors import SlurmError

logger = logging.getLogger(__name__)

Runner = Callable[..., "subprocess.CompletedProcess[str]"]
"""Anything called like ``subprocess.run(args, capture_output=True, text=True, check=False, ...)``."""

SACCT_FIELDS = ("JobID", "State", "Partition", "NodeList", "Start", "End", "Elapsed", "ExitCode")
"""The columns ``parse_sacct`` reads, in this order (``sacct --format=...``)."""

FAILED_STATES = frozenset(
    {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}
)
"""Terminal states in which the job did not complete its work."""

TERMINAL_STATES = frozenset({"COMPLETED"}) | FAILED_STATES
"""States after which a job will not run again (unless someone requeues it by hand)."""

COMMAND_TIMEOUT_S = 60.0
"""How long one Slurm command may take before it counts as failed (a hung slurmctld or slurmdbd)."""

DEFAULT_MAX_ARRAY_SIZE = 1001
"""Slurm's default ``MaxArraySize``."""

# "123", "123_4", "123_[5-9]", "123_[1,3-5:2%2]", "123+0" (heterogeneous job component).
_JOB_ID_RE = re.compile(r"^(?P<base>\d+)(?:_(?:(?P<task>\d+)|\[(?P<ranges>[^\]]*)\]))?(?:\+\d+)?$")
_CONFIG_LINE_RE = re.compile(r"^(?P<key>[^\s=]+)\s+=(?P<value>.*)$")


@dataclass(frozen=True)
class JobState:
    """One job (or one array task) as ``sacct`` reports it, with Slurm's text turned into Python values.

    ``job_id`` is the id as sacct prints it: ``"123"``, ``"123_4"`` for an array task, or ``"123_[5-9]"`` for
    the not-yet-started remainder of an array straight out of ``parse_sacct`` (``sacct()`` expands those into
    one ``JobState`` per task). Times are epoch seconds, durations seconds.
    """

    job_id: str
    array_job_id: str | None
    array_task_id: int | None
    state: str
    partition: str | None
    node: str | None
    start: float | None
    end: float | None
    elapsed_s: float | None
    exit_code: str | None

    @property
    def finished(self) -> bool:
        """True when the job has reached a terminal state (see ``TERMINAL_STATES``)."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """True when Slurm reports the job COMPLETED (its script exited with 0)."""
        return self.state == "COMPLETED"


# ---------------------------------------------------------------------------------------------- pure parsing


def normalise_state(text: str) -> str:
    """``"CANCELLED by 0"`` → ``"CANCELLED"``, ``"cancelled+"`` → ``"CANCELLED"``: first word, upper case.

    sacct appends who cancelled a job, and truncates with ``+`` in fixed-width output; callers compare states
    against ``TERMINAL_STATES`` so both must go.
    """
    words = text.split()
    return words[0].rstrip("+").upper() if words else "UNKNOWN"


def slurm_seconds(text: str | None) -> float | None:
    """A duration as Slurm prints it (``Elapsed``, ``MaxTime``) in seconds; None for ``UNLIMITED``,
    ``INVALID``, ``Partition_Limit``, empty or anything else that is not a duration. A bare number is minutes,
    as in ``sbatch --time``; every form is read by :func:`hpcqueue.durations.parse_duration`.
    """
    if text is None or not text.strip():
        return None
    try:
        return parse_duration(text, bare_unit="min")
    except ValueError:
        return None


def parse_time(text: str | None) -> float | None:
    """sacct's ``2026-11-21T22:30:01`` (local time) → epoch seconds; None for Unknown/None/empty.

    Our commands run with ``SLURM_TIME_FORMAT=standard`` so this is the only format to expect.
    """
    if text is None:
        return None
    text = text.strip()
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def format_slurm_time(epoch: float) -> str:
    """Epoch seconds → ``2026-11-21T22:30:01`` in this machine's local time, to the second (truncated).

    This is how ``sbatch --begin/--deadline`` and ``scontrol update StartTime=`` read a time: as local time of
    the machine running them, which is the machine that formats it (the inverse of :func:`parse_time`).
    """
    return datetime.fromtimestamp(epoch).strftime("%Y-%m-%dT%H:%M:%S")


def expand_array_indices(ranges: str) -> list[int]:
    """The inside of ``123_[...]`` → task ids: ``"1-3,7"`` → [1, 2, 3, 7]; ``"0-6:2%2"`` → [0, 2, 4, 6].

    ``%N`` (the limit on running tasks) is dropped; ``:S`` is a step.
    """
    ranges = ranges.split("%", 1)[0]
    indices: list[int] = []
    for part in filter(None, ranges.split(",")):
        span, _, step = part.partition(":")
        low, _, high = span.partition("-")
        indices.extend(range(int(low), int(high or low) + 1, int(step or 1)))
    return indices


def split_job_id(job_id: str) -> tuple[str, int | None, list[int] | None]:
    """A sacct job id → (base id, array task id, remainder task ids).

    ``"123"`` → ("123", None, None); ``"123_4"`` → ("123", 4, None);
    ``"123_[5-7]"`` → ("123", None, [5, 6, 7]).
    Raises ValueError for text that is not a job id.
    """
    match = _JOB_ID_RE.match(job_id.strip())
    if match is None:
        raise ValueError(f"not a Slurm job id: {job_id!r}")
    if match["task"] is not None:
        return match["base"], int(match["task"]), None
    if match["ranges"] is not None:
        return match["base"], None, expand_array_indices(match["ranges"])
    return match["base"], None, None


def parse_sacct(text: str) -> list[JobState]:
    """Rows of ``sacct -X -P -n --format=JobID,State,Partition,NodeList,Start,End,Elapsed,ExitCode``.

    One ``JobState`` per line, in sacct's order; array remainders (``123_[5-9]``) are kept as one row (see
    ``expand_remainders``). Step lines (``123.batch``) and lines that are not job rows are skipped.
    """
    states: list[JobState] = []
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) < len(SACCT_FIELDS):
            continue
        job_id, state, partition, node, start, end, elapsed, exit_code = (f.strip() for f in fields[:8])
        if "." in job_id:
            continue
        try:
            base, task, remainder = split_job_id(job_id)
        except ValueError:
            logger.warning("skipping a sacct line with a job id hpcqueue does not understand: %r", line)
            continue
        is_array = task is not None or remainder is not None
        states.append(
            JobState(
                job_id=job_id,
                array_job_id=base if is_array else None,
                array_task_id=task,
                state=normalise_state(state),
                partition=partition or None,
                node=None if node in ("", "None assigned", "(null)") else node,
                start=parse_time(start),
                end=parse_time(end),
                elapsed_s=slurm_seconds(elapsed),
                exit_code=exit_code or None,
            )
        )
    return states


def expand_remainders(rows: Iterable[JobState]) -> dict[str, JobState]:
    """Key parsed sacct rows by job id, one entry per array task.

    A remainder row ``123_[5-9]`` becomes ``123_5`` ... ``123_9`` with the row's state (PENDING while they
    wait). A task listed on its own line always wins over a remainder that also covers it: sacct can keep a
    stale remainder record (``123_[4-6] CANCELLED``) next to ``123_4 RUNNING``. When a job appears twice
    (a requeued job listed with ``--duplicates``), the later line is the later record and wins.
    """
    explicit: dict[str, JobState] = {}
    from_ranges: dict[str, JobState] = {}
    for row in rows:
        if row.array_job_id is not None and row.array_task_id is None:
            _, _, indices = split_job_id(row.job_id)
            for index in indices or []:
                task_id = f"{row.array_job_id}_{index}"
                from_ranges[task_id] = replace(row, job_id=task_id, array_task_id=index)
        else:
            explicit[row.job_id] = row
    return {**from_ranges, **explicit}


def parse_key_values(text: str) -> dict[str, str]:
    """``scontrol show config`` lines (``Key   = Value``) or ``scontrol ... -o`` words (``Key=Value``) → dict.

    Only the first occurrence of a key is kept (later sections of ``show config`` repeat some names).
    """
    values: dict[str, str] = {}
    for line in text.splitlines():
        config_line = _CONFIG_LINE_RE.match(line)
        if config_line:
            values.setdefault(config_line["key"], config_line["value"].strip())
            continue
        for word in line.split():
            key, sep, value = word.partition("=")
            if sep and key:
                values.setdefault(key, value)
    return values


def parse_show_jobs(text: str) -> dict[str, dict[str, str]]:
    """``scontrol show job -o`` output (one record per line) → ``{job id: {key: value}}``.

    Array elements are keyed ``<ArrayJobId>_<task>``; a record for the not-yet-split rest of an array
    (``ArrayTaskId=1-5%2`` or ``0,3``) gives one entry per element, each with its own ``ArrayTaskId``. Other
    jobs are keyed by ``JobId``. Values are Slurm's text (``JobState``, ``EligibleTime``, ``StartTime``,
    ``Deadline``, ``TimeMin``...); times read with :func:`parse_time`.
    """
    jobs: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        record = parse_key_values(line)
        if "JobId" not in record:
            continue
        array_id, tasks = record.get("ArrayJobId"), record.get("ArrayTaskId")
        if not array_id or not tasks:
            jobs[record["JobId"]] = record
            continue
        try:
            indices = expand_array_indices(tasks)
        except ValueError:
            logger.warning("skipping a job record whose ArrayTaskId hpcqueue does not understand: %r", line)
            continue
        for index in indices:
            jobs[f"{array_id}_{index}"] = {**record, "ArrayTaskId": str(index)}
    return jobs


def base_job_id(job_id: str) -> str:
    """``"123_4"`` → ``"123"``: sacct is asked about whole arrays, as it omits pending tasks asked by id."""
    return re.split(r"[_+.]", job_id.strip(), maxsplit=1)[0]


# ---------------------------------------------------------------------------------------------- commands


def _run(args: Sequence[str], runner: Runner, *, what_to_check: str) -> str:
    """Run one Slurm command; its stdout, or a SlurmError that names the command, its stderr and the fix."""
    command = " ".join(args)
    env = {**os.environ, "SLURM_TIME_FORMAT": "standard"}
    try:
        done = runner(
            list(args), capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT_S, env=env
        )
    except FileNotFoundError as exc:
        raise SlurmError(
            f"`{args[0]}` was not found on PATH: hpcqueue needs the Slurm client commands. "
            'Run on a Slurm login node (or `module load slurm`), or use a target with executor = "local".'
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(
            f"`{command}` did not answer within {COMMAND_TIMEOUT_S:.0f} s; {what_to_check}"
        ) from exc
    if done.returncode != 0:
        # scontrol prints some errors ("Partition x not found") on stdout
        said = (done.stderr or "").strip() or (done.stdout or "").strip() or "(it printed nothing)"
        raise SlurmError(f"`{command}` failed with exit code {done.returncode}: {said}\n{what_to_check}")
    return done.stdout or ""


def sacct(job_ids: Sequence[str], *, runner: Runner = subprocess.run) -> dict[str, JobState]:
    """The current state of the given jobs, from ONE ``sacct`` call, keyed by job id (``"123"``, ``"123_4"``).

    Ids may be plain jobs, array tasks (``"123_4"``) or whole arrays (``"123"``: every task of the array is
    returned). Tasks that have not started yet are returned one by one (``"123_5"`` PENDING). A job that
    sacct does not know (yet: accounting lags submission slightly) is absent from the result.
    Raises SlurmError when sacct fails, for example when slurmdbd is down.
    """
    wanted = {job_id.strip() for job_id in job_ids if job_id.strip()}
    if not wanted:
        return {}
    bases = sorted({base_job_id(job_id) for job_id in wanted}, key=lambda b: (len(b), b))
    args = ["sacct", "-X", "-P", "-n", f"--format={','.join(SACCT_FIELDS)}", f"--jobs={','.join(bases)}"]
    output = _run(
        args,
        runner,
        what_to_check="Check that job accounting works: `sacct -X` should list recent jobs "
        "(AccountingStorageType in `scontrol show config`; is slurmdbd running?).",
    )
    by_id = expand_remainders(parse_sacct(output))
    return {
        job_id: state
        for job_id, state in by_id.items()
        if job_id in wanted or (state.array_job_id is not None and state.array_job_id in wanted)
    }


def show_jobs(job_ids: Sequence[str], *, runner: Runner = subprocess.run) -> dict[str, dict[str, str]]:
    """What slurmctld holds about jobs and array elements right now (``scontrol show job -o``), keyed as
    :func:`parse_show_jobs` keys them: whether each is still PENDING (``JobState``), when it may start
    (``EligibleTime``; ``StartTime`` is the expected start), its ``Deadline`` and ``TimeMin``.

    Asking for an array id returns all its elements; asking for ``123_4`` returns that element. One
    ``scontrol`` call per array or job (slurmctld answers from memory, not from the accounting database).
    Jobs slurmctld no longer knows (ended more than ``MinJobAge`` ago) are absent from the result.
    """
    wanted = {job_id.strip() for job_id in job_ids if job_id.strip()}
    found: dict[str, dict[str, str]] = {}
    for base in sorted({base_job_id(job_id) for job_id in wanted}, key=lambda b: (len(b), b)):
        try:
            output = _run(
                ["scontrol", "show", "job", "-o", base],
                runner,
                what_to_check="Check that slurmctld is reachable: `scontrol ping` should say UP.",
            )
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                continue  # ended long ago: slurmctld forgot it
            raise
        for job_id, record in parse_show_jobs(output).items():
            if job_id in wanted or record.get("JobId") in wanted or record.get("ArrayJobId") in wanted:
                found[job_id] = record
    return found


def scontrol_update_begin(
    job_ids: Sequence[str],
    begin_at: float,
    *,
    time_min: int | None = None,
    runner: Runner = subprocess.run,
) -> None:
    """Move the begin time of pending jobs or array elements (``123_4``) to ``begin_at`` (epoch seconds,
    rounded up to the second), with one ``scontrol update JobId=<ids> StartTime=<local time>`` call; with
    ``time_min`` (minutes) their ``TimeMin`` too, so that a job with a deadline still fits before it from its
    new begin (Slurm removes a job whose minimum time no longer does).

    Slurm splits a pending element out of its array to give it its own time. Only pending jobs can be moved:
    for a job that started, or one slurmctld does not know, this raises SlurmError naming it — scontrol has
    still moved the other ids (see :func:`show_jobs`).
    """
    ids = [job_id.strip() for job_id in job_ids if job_id.strip()]
    if not ids:
        return
    start = format_slurm_time(math.ceil(begin_at))
    extra = [] if time_min is None else [f"TimeMin={int(time_min)}"]
    _run(
        ["scontrol", "update", f"JobId={','.join(ids)}", f"StartTime={start}", *extra],
        runner,
        what_to_check="Only a pending job's begin time can be moved (`scontrol show job -o ID` shows its "
        "JobState and EligibleTime); the other ids were moved.",
    )


def scontrol_config(*, runner: Runner = subprocess.run) -> dict[str, str]:
    """``scontrol show config`` as a dict (``{"MaxArraySize": "1001", "SLURM_VERSION": "22.05.8", ...}``)."""
    output = _run(
        ["scontrol", "show", "config"],
        runner,
        what_to_check="Check that slurmctld is reachable: `scontrol ping` should say UP.",
    )
    return parse_key_values(output)


def max_array_size(*, runner: Runner = subprocess.run) -> int:
    """The cluster's ``MaxArraySize``: task ids must be below it, so an array has at most this many tasks.

    Slurm's default (1001) when the key is missing. 0 means the site has disabled job arrays.
    """
    value = scontrol_config(runner=runner).get("MaxArraySize")
    try:
        return int(value) if value is not None else DEFAULT_MAX_ARRAY_SIZE
    except ValueError as exc:
        raise SlurmError(f"`scontrol show config` printed MaxArraySize = {value!r}, not a number") from exc


def partition_names(*, runner: Runner = subprocess.run) -> list[str]:
    """Names of the partitions this cluster has (``scontrol show partition -o``), in Slurm's order."""
    output = _run(
        ["scontrol", "show", "partition", "-o"],
        runner,
        what_to_check="Check that slurmctld is reachable: `scontrol ping` should say UP.",
    )
    return [
        parse_key_values(line)["PartitionName"] for line in output.splitlines() if "PartitionName=" in line
    ]


def partition_info(name: str, *, runner: Runner = subprocess.run) -> dict[str, str]:
    """``scontrol show partition NAME -o`` as a dict (``MaxTime``, ``Nodes``, ``TRES``, ``State``...).

    An unknown partition raises SlurmError listing the partitions that exist.
    """
    try:
        output = _run(
            ["scontrol", "show", "partition", name, "-o"],
            runner,
            what_to_check="Check that slurmctld is reachable: `scontrol ping` should say UP.",
        )
    except SlurmError as exc:
        if "not found" not in str(exc):
            raise
        try:
            known = ", ".join(partition_names(runner=runner)) or "(none)"
        except SlurmError:
            known = "(could not list them: run `sinfo -s`)"
        raise SlurmError(
            f"Slurm has no partition {name!r}. Partitions on this cluster: {known}. "
            "Fix the target's `partition` in the cluster config."
        ) from exc
    info = parse_key_values(output)
    if info.get("PartitionName") != name:
        raise SlurmError(
            f"`scontrol show partition {name} -o` printed no partition record: {output.strip()!r}"
        )
    return info


def partition_time_limit_min(name: str, *, runner: Runner = subprocess.run) -> int | None:
    """The partition's ``MaxTime`` in whole minutes; None when it is UNLIMITED."""
    value = partition_info(name, runner=runner).get("MaxTime", "UNLIMITED")
    seconds = slurm_seconds(value)
    return None if seconds is None else int(seconds // 60)


def queued_with_comment(comment: str, *, runner: Runner = subprocess.run) -> set[str]:
    """The ids (an array's base id) of this user's queued or running jobs whose ``--comment`` is ``comment``,
    from one ``squeue`` call. hpcqueue comments every job it submits with its batch
    (:func:`hpcqueue.dispatch.jobs.batch_comment`), so the batch's jobs can be found without its records."""
    import getpass

    output = _run(
        ["squeue", "--noheader", f"--user={getpass.getuser()}", "--format=%F|%k"],
        runner,
        what_to_check="Check that slurmctld answers: `squeue --me` should list your jobs.",
    )
    found = set()
    for line in output.splitlines():
        job_id, _, text = line.strip().partition("|")
        if job_id and text.strip() == comment:
            found.add(job_id)
    return found


def scancel(job_ids: Sequence[str], *, runner: Runner = subprocess.run) -> None:
    """Cancel jobs, array tasks or whole arrays with one ``scancel`` call; nothing to do for an empty list.

    Cancelling a job that already ended is not an error (scancel only warns).
    """
    ids = [job_id.strip() for job_id in job_ids if job_id.strip()]
    if not ids:
        return
    _run(
        ["scancel", *ids],
        runner,
        what_to_check="Check the job ids with `squeue --me`; only the job's owner or an admin may cancel it.",
    )


def slurm_available() -> tuple[bool, str]:
    """(True, "") when ``sbatch`` and ``sacct`` are on PATH, else (False, a sentence saying what is missing).

    Cheap (no command is run), so callers can ask before offering Slurm targets.
    """
    missing = [command for command in ("sbatch", "sacct") if shutil.which(command) is None]
    if not missing:
        return True, ""
    return False, (
        f"{' and '.join(missing)} not found on PATH: this machine has no Slurm client commands "
        "(run on a login node of the cluster, `module load slurm`, or use the local executor)"
    )


# ---------------------------------------------------------------------------------------------- polling


class SacctPoller:
    """Reads job states for many jobs while being gentle with slurmdbd.

    At most one sacct call per interval: the interval starts at ``min_interval_s`` and grows by ``backoff``
    (up to ``max_interval_s``) after every call in which no state changed; any change resets it. Jobs (and
    array elements asked by id) already seen in a terminal state are not asked about again; an array asked by
    its id alone is, as accounting may list its elements late. ``states(..., force=True)`` calls sacct now,
    for all the given ids. A failed sacct call is logged as a warning and the last known states are returned,
    so a slurmdbd hiccup does not stop whoever is waiting on the jobs.
    """

    def __init__(
        self,
        *,
        min_interval_s: float = 5.0,
        max_interval_s: float = 60.0,
        backoff: float = 1.5,
        runner: Runner = subprocess.run,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self.backoff = backoff
        self.interval_s = min_interval_s
        self.num_calls = 0
        self._runner = runner
        self._clock = clock
        self._last_call: float | None = None
        self._known: dict[str, JobState] = {}
        self._asked: set[str] = set()
        #: The error of the last sacct call, None when it answered: callers must not read absence as news.
        self.last_error: SlurmError | None = None

    def states(self, job_ids: Sequence[str], force: bool = False) -> dict[str, JobState]:
        """The last known state of each job (and of each task of each array id) among ``job_ids``."""
        wanted = {job_id.strip() for job_id in job_ids if job_id.strip()}
        to_ask = wanted if force else {job_id for job_id in wanted if not self._settled(job_id)}
        if to_ask and (force or self._due(new_ids=bool(to_ask - self._asked))):
            self._poll(to_ask)
        return self._select(wanted)

    def _due(self, *, new_ids: bool) -> bool:
        if self._last_call is None:
            return True
        # ids never asked about only wait for the minimum interval, not the backed-off one
        interval = self.min_interval_s if new_ids else self.interval_s
        return self._clock() - self._last_call >= interval

    def _poll(self, job_ids: set[str]) -> None:
        self._last_call = self._clock()
        self.num_calls += 1
        self._asked |= job_ids
        try:
            fresh = sacct(sorted(job_ids), runner=self._runner)
        except SlurmError as exc:
            logger.warning("sacct call #%d failed; job states may be out of date: %s", self.num_calls, exc)
            self.last_error = exc
            self.interval_s = min(self.interval_s * self.backoff, self.max_interval_s)
            return
        self.last_error = None
        changed = any(
            (previous := self._known.get(job_id)) is None or previous.state != state.state
            for job_id, state in fresh.items()
        )
        # The fresh answer replaces what was known about the asked ids: an incomplete record seen earlier
        # (an array listed as one job) must not linger next to its tasks.
        stale = [k for k, s in self._known.items() if k in job_ids or s.array_job_id in job_ids]
        for key in stale:
            del self._known[key]
        self._known.update(fresh)
        if changed:
            self.interval_s = self.min_interval_s
        else:
            self.interval_s = min(self.interval_s * self.backoff, self.max_interval_s)

    def _settled(self, job_id: str) -> bool:
        # Right after a job ends, accounting may briefly hold an incomplete record (no partition, an array
        # not yet split into its tasks): such a record is not final, so the job is asked about again. An
        # array asked about as a whole never settles: slurmctld hands its elements to slurmdbd one by one and
        # late, and no answer says how many are still to come (only the elements asked by id settle).
        state = self._known.get(job_id)
        return state is not None and state.finished and bool(state.partition)

    def _select(self, wanted: set[str]) -> dict[str, JobState]:
        return {
            job_id: state
            for job_id, state in self._known.items()
            if job_id in wanted or (state.array_job_id is not None and state.array_job_id in wanted)
        }


# ---------------------------------------------------------------------------------------------- energy

SACCT_ENERGY_FIELDS = ("JobID", "State", "NodeList", "AllocNodes", "AllocCPUS", "ConsumedEnergyRaw")
"""The columns ``parse_sacct_energy`` reads, in this order: every line, steps included (no ``-X``)."""

NO_ENERGY_PLUGINS = frozenset({"", "(null)", "none", "acct_gather_energy/none"})
"""``AcctGatherEnergyType`` values meaning Slurm gathers no energy at all."""


@dataclass(frozen=True)
class EnergyRecord:
    """One line of ``sacct`` energy output: a job or array task (``step`` None) or one of its steps
    (``"batch"``, ``"extern"``, ``"0"``). ``energy_j`` is ``ConsumedEnergyRaw`` in joules, None when sacct
    printed nothing; ``alloc_cpus`` the CPUs the allocation held (None for a step that does not say)."""

    job_id: str
    step: str | None
    state: str
    node: str | None
    alloc_nodes: int | None
    alloc_cpus: int | None
    energy_j: float | None


def parse_sacct_energy(text: str) -> list[EnergyRecord]:
    """Rows of ``sacct -P -n --format=JobID,State,NodeList,AllocNodes,AllocCPUS,ConsumedEnergyRaw``, in
    sacct's order, steps included: ``123_4`` → job ``123_4``, ``123_4.batch`` → its step ``batch``. Array
    remainders (``123_[5-9]``, never started) and lines that are not job rows are skipped."""
    records: list[EnergyRecord] = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) < len(SACCT_ENERGY_FIELDS):
            continue
        job_text, state, node, alloc_nodes, alloc_cpus, energy = fields[: len(SACCT_ENERGY_FIELDS)]
        job_id, _, step = job_text.partition(".")
        try:
            _, _, remainder = split_job_id(job_id)
        except ValueError:
            logger.warning("skipping a sacct line with a job id hpcqueue does not understand: %r", line)
            continue
        if remainder is not None:
            continue
        records.append(
            EnergyRecord(
                job_id=job_id,
                step=step or None,
                state=normalise_state(state),
                node=None if node in ("", "None assigned", "(null)") else node,
                alloc_nodes=_int_or_none(alloc_nodes),
                alloc_cpus=_int_or_none(alloc_cpus),
                energy_j=_energy_or_none(energy),
            )
        )
    return records


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _energy_or_none(text: str) -> float | None:
    # sacct prints an empty field when no energy was gathered, and 18446744073709551614 (NO_VAL64) on some
    # versions for a step that never reported.
    if not text.isdigit() or int(text) >= 2**63:
        return None
    return float(text)


def sacct_energy(job_ids: Sequence[str], *, runner: Runner = subprocess.run) -> list[EnergyRecord]:
    """``ConsumedEnergyRaw`` of the given jobs and array tasks (``"123_4"``) and of all their steps, from ONE
    ``sacct`` call (``--parsable2 --noheader``, every step). Only the asked ids (and, for an array id, its
    tasks) are returned. Raises SlurmError when sacct fails."""
    wanted = {job_id.strip() for job_id in job_ids if job_id.strip()}
    if not wanted:
        return []
    bases = sorted({base_job_id(job_id) for job_id in wanted}, key=lambda b: (len(b), b))
    args = [
        "sacct",
        "--parsable2",
        "--noheader",
        f"--format={','.join(SACCT_ENERGY_FIELDS)}",
        f"--jobs={','.join(bases)}",
    ]
    output = _run(
        args,
        runner,
        what_to_check="Check that job accounting works: `sacct` should list recent jobs "
        "(AccountingStorageType in `scontrol show config`; is slurmdbd running?).",
    )
    return [
        record
        for record in parse_sacct_energy(output)
        if record.job_id in wanted or base_job_id(record.job_id) in wanted
    ]


def node_cpus(*, runner: Runner = subprocess.run) -> dict[str, int]:
    """Each node's CPU count (``CPUTot``), from one ``scontrol show node -o`` call: whether an allocation
    held a whole node."""
    output = _run(
        ["scontrol", "show", "node", "-o"],
        runner,
        what_to_check="Check that slurmctld is reachable: `scontrol ping` should say UP.",
    )
    cpus: dict[str, int] = {}
    for line in output.splitlines():
        record = parse_key_values(line)
        name, total = record.get("NodeName"), record.get("CPUTot", "")
        if name and total.isdigit():
            cpus[name] = int(total)
    return cpus
