"""``hpcqueue ledger reconcile``: each Slurm task's energy in the ledger beside what Slurm's own energy
accounting (``sacct``'s ``ConsumedEnergyRaw``) says about its job.

The two measure different things, and the comparison says how:

- Slurm's energy plugins (``AcctGatherEnergyType``) read **whole nodes** (IPMI, Redfish, Cray
  ``pm_counters``, Lenovo ``xcc``) or the CPU packages and DRAM of the whole node (``rapl``). A job's figure
  is its node's energy while it ran, so it stands for the job alone only when the allocation held the node
  exclusively; a shared allocation is flagged, and when the CPUs cannot be compared the result says it
  cannot tell.
- ``rapl`` does not see GPUs: an NVIDIA GPU's energy is in Slurm's figure only with a whole-node plugin or
  the ``gpu`` energy plugin. hpcqueue's meters (``tasks.meter``) may read the GPUs alone.
- Many clusters gather no energy at all (``acct_gather_energy/none``, the default): then ``ConsumedEnergyRaw``
  is empty or 0 for every step, and the result says so plainly instead of comparing zeros.

The Slurm commands run through :mod:`hpcqueue.dispatch.slurm` (one ``sacct`` call for all the jobs, one
``scontrol show config``, one ``scontrol show node``); the comparison itself is the pure :func:`compare`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import select

from hpcqueue.dispatch import slurm
from hpcqueue.dispatch.slurm import NO_ENERGY_PLUGINS, EnergyRecord, Runner
from hpcqueue.errors import BatchNotFoundError, SlurmError
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.queries import LedgerReader
from hpcqueue.ledger.schema import BatchRow, TaskRow

#: What each Slurm energy plugin measures (the part after ``acct_gather_energy/``).
PLUGIN_SCOPES = {
    "rapl": "the CPU packages and DRAM of the whole node (RAPL): GPUs are not seen",
    "ipmi": "the whole node at its power supply (IPMI), GPUs included",
    "redfish": "the whole node at its power supply (Redfish), GPUs included",
    "pm_counters": "the whole node (Cray pm_counters), GPUs included",
    "xcc": "the whole node (Lenovo XClarity), GPUs included",
    "gpu": "the GPUs only, through Slurm's GPU plugin",
}
Exclusivity = Literal["exclusive", "shared", "unknown"]


@dataclass(frozen=True)
class TaskEnergy:
    """One Slurm task: the ledger's energy of it and Slurm's energy of its job.

    ``slurm_energy_j`` is None when Slurm reported none; ``ratio`` is ledger / Slurm (None unless both are
    positive). ``allocation`` says whether the job held its node alone (``unknown`` when sacct or the node
    list cannot tell).
    """

    batch_id: str
    task_index: int
    job_id: str
    node: str | None
    ledger_energy_j: float | None
    energy_method: str | None
    meter: str | None
    slurm_energy_j: float | None
    ratio: float | None
    allocation: Exclusivity
    note: str = ""


@dataclass(frozen=True)
class Reconciliation:
    """The comparison of the ledger's Slurm tasks with Slurm's energy accounting.

    ``energy_plugin`` is ``AcctGatherEnergyType`` (None when ``scontrol show config`` could not be read);
    ``energy_accounting`` is False when Slurm gathers no energy (no plugin, or every step's
    ``ConsumedEnergyRaw`` empty or 0). ``notes`` explain what the figures mean, in sentences.
    """

    energy_plugin: str | None
    energy_accounting: bool
    tasks: list[TaskEnergy]
    notes: list[str] = field(default_factory=list)
    not_in_sacct: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "energy_plugin": self.energy_plugin,
            "energy_accounting": self.energy_accounting,
            "notes": self.notes,
            "not_in_sacct": self.not_in_sacct,
            "tasks": [task.__dict__ for task in self.tasks],
        }


def slurm_tasks(
    ledger: LedgerReader, *, batch: str | None = None, where: LedgerFilter | None = None
) -> list[dict[str, Any]]:
    """The ledger's tasks that ran as Slurm jobs (``executor = 'slurm'`` with a job id) among those ``where``
    selects, in one batch when ``batch`` is given (BatchNotFoundError when it is not in the ledger)."""
    where = (
        (where or LedgerFilter()).narrowed(batch=batch) if batch is not None else (where or LedgerFilter())
    )
    with ledger.connect() as conn:
        if (
            batch is not None
            and conn.execute(select(BatchRow.id).where(BatchRow.id == batch)).first() is None
        ):
            raise BatchNotFoundError(
                f"batch {batch} is not in the ledger {ledger.masked_url}; "
                "`hpcqueue ledger batches` lists the recorded batches"
            )
        rows = conn.execute(
            select(
                TaskRow.batch_id,
                TaskRow.task_index,
                TaskRow.job_id,
                TaskRow.slurm_job_id,
                TaskRow.slurm_array_task_id,
                TaskRow.node,
                TaskRow.energy_j,
                TaskRow.energy_method,
                TaskRow.meter,
            )
            .where(TaskRow.executor == "slurm", *where.task_scope())
            .order_by(TaskRow.batch_id, TaskRow.task_index)
        ).mappings()
        tasks = [dict(row) for row in rows]
    return [task for task in tasks if slurm_job_id_of(task) is not None]


def slurm_job_id_of(task: Mapping[str, Any]) -> str | None:
    """The id sacct knows a task by: its ``job_id`` (``123_4``, as submitted), else the Slurm job id and
    array index the worker recorded; None when it has neither."""
    job_id = task.get("job_id")
    if job_id:
        try:
            slurm.split_job_id(str(job_id))
            return str(job_id)
        except ValueError:
            pass
    base = task.get("slurm_job_id")
    if not base:
        return None
    index = task.get("slurm_array_task_id")
    return f"{base}_{index}" if index is not None else str(base)


def job_energy(records: Sequence[EnergyRecord]) -> dict[str, float | None]:
    """Each job's energy in joules from its sacct lines: the job line's ``ConsumedEnergyRaw`` when it has
    one, else the largest of its steps' (the ``extern`` step spans the whole allocation; the steps overlap,
    so they are not added). None when no line of the job reported energy (empty or 0)."""
    job_line: dict[str, float | None] = {}
    steps: dict[str, list[float]] = {}
    for record in records:
        if record.step is None:
            job_line[record.job_id] = record.energy_j
        elif record.energy_j is not None:
            steps.setdefault(record.job_id, []).append(record.energy_j)
    energy: dict[str, float | None] = {}
    for job_id in {*job_line, *steps}:
        own = job_line.get(job_id)
        energy[job_id] = (own if own else max(steps.get(job_id, []), default=own)) or None
    return energy


def allocation_of(records: Sequence[EnergyRecord], cpus_by_node: Mapping[str, int] | None) -> Exclusivity:
    """``exclusive`` when the job held every CPU of its one node, ``shared`` when fewer, ``unknown`` when
    the job spans several nodes or its node's CPUs are not known."""
    line = next((r for r in records if r.step is None), None)
    if line is None or cpus_by_node is None or line.node is None or line.alloc_cpus is None:
        return "unknown"
    if line.alloc_nodes != 1 or line.node not in cpus_by_node:
        return "unknown"
    return "exclusive" if line.alloc_cpus >= cpus_by_node[line.node] else "shared"


def compare(
    tasks: Sequence[Mapping[str, Any]],
    records: Sequence[EnergyRecord],
    config: Mapping[str, str] | None,
    cpus_by_node: Mapping[str, int] | None,
) -> Reconciliation:
    """Set each task's ledger energy beside its job's Slurm energy (pure: the Slurm answers are given).

    ``config`` is ``scontrol show config`` (None: unreadable); ``cpus_by_node`` each node's CPU count
    (None: unknown, so no allocation can be called exclusive or shared).
    """
    plugin = None if config is None else config.get("AcctGatherEnergyType", "")
    plugin_off = plugin is not None and plugin.strip() in NO_ENERGY_PLUGINS
    by_job: dict[str, list[EnergyRecord]] = {}
    for record in records:
        by_job.setdefault(record.job_id, []).append(record)
    energies = job_energy(records)
    reported = any(value for value in energies.values())
    accounting = not plugin_off and reported
    compared: list[TaskEnergy] = []
    missing: list[str] = []
    for task in tasks:
        job_id = slurm_job_id_of(task)
        assert job_id is not None  # slurm_tasks keeps only tasks with one
        lines = by_job.get(job_id, [])
        if not lines:
            missing.append(job_id)
        slurm_j = energies.get(job_id) if accounting else None
        ledger_j = task.get("energy_j")
        allocation = allocation_of(lines, cpus_by_node)
        note = ""
        if allocation == "shared":
            note = "shared node: Slurm's figure includes other jobs' energy"
        elif accounting and lines and not slurm_j:
            note = "Slurm reported no energy for this job"
        compared.append(
            TaskEnergy(
                batch_id=str(task["batch_id"]),
                task_index=int(task["task_index"]),
                job_id=job_id,
                node=task.get("node") or next((r.node for r in lines if r.node), None),
                ledger_energy_j=None if ledger_j is None else float(ledger_j),
                energy_method=task.get("energy_method"),
                meter=task.get("meter"),
                slurm_energy_j=slurm_j,
                ratio=ledger_j / slurm_j if ledger_j and slurm_j else None,
                allocation=allocation,
                note=note,
            )
        )
    return Reconciliation(
        energy_plugin=plugin,
        energy_accounting=accounting,
        tasks=compared,
        notes=_notes(plugin, plugin_off, reported, compared, cpus_by_node, bool(records)),
        not_in_sacct=missing,
    )


def _notes(
    plugin: str | None,
    plugin_off: bool,
    reported: bool,
    tasks: Sequence[TaskEnergy],
    cpus_by_node: Mapping[str, int] | None,
    any_records: bool,
) -> list[str]:
    notes: list[str] = []
    if plugin_off:
        notes.append(
            f"This cluster has no energy accounting: AcctGatherEnergyType = {plugin or '(empty)'}, so Slurm "
            "records no energy for any job (ConsumedEnergyRaw is empty or 0). The ledger's figures come from "
            "hpcqueue's own meters only; there is nothing in Slurm to reconcile them with."
        )
        return notes
    if any_records and not reported:
        notes.append(
            "Slurm recorded no energy for these jobs: ConsumedEnergyRaw is empty or 0 for every job and step "
            f"(AcctGatherEnergyType = {plugin or 'unknown'}). The energy plugin is configured but gathered "
            "nothing on these nodes; there is nothing to reconcile."
        )
        return notes
    if plugin is None:
        notes.append("`scontrol show config` could not be read: which energy plugin Slurm uses is unknown.")
    else:
        name = plugin.removeprefix("acct_gather_energy/")
        scope = PLUGIN_SCOPES.get(name, f"whatever the {name} plugin measures (not a plugin hpcqueue knows)")
        notes.append(f"Slurm's energy (AcctGatherEnergyType = {plugin}) measures {scope}.")
        if name == "rapl":
            notes.append(
                "RAPL does not see GPUs: for a GPU task the ledger's figure (its meters read the GPUs) and "
                "Slurm's (CPUs and DRAM) cover different parts of the node and should not agree."
            )
    notes.append(
        "Slurm measures whole nodes: its figure is the job's alone only when the allocation held the node "
        "exclusively (sbatch --exclusive)."
    )
    if cpus_by_node is None:
        notes.append(
            "The nodes' CPU counts could not be read, so whether an allocation was exclusive is unknown."
        )
    shared = sum(task.allocation == "shared" for task in tasks)
    if shared:
        notes.append(f"{shared} task(s) shared their node: compare their figures with care.")
    unknown = sum(task.allocation == "unknown" for task in tasks)
    if unknown:
        notes.append(f"For {unknown} task(s) it cannot tell whether the allocation was exclusive.")
    return notes


def reconcile(
    ledger: LedgerReader,
    *,
    batch: str | None = None,
    where: LedgerFilter | None = None,
    runner: Runner = subprocess.run,
) -> Reconciliation:
    """Compare the ledger's Slurm tasks (of ``batch``, among those ``where`` selects) with Slurm's energy
    accounting: one ``sacct`` call for all their jobs, plus ``scontrol show config`` and ``show node``.

    A failing ``sacct`` raises SlurmError (there is nothing to compare without it); when ``scontrol`` fails
    the result says what it could not tell.
    """
    tasks = slurm_tasks(ledger, batch=batch, where=where)
    try:
        config: dict[str, str] | None = slurm.scontrol_config(runner=runner)
    except SlurmError:
        config = None
    if config is not None and config.get("AcctGatherEnergyType", "").strip() in NO_ENERGY_PLUGINS:
        records: list[EnergyRecord] = []
        if tasks:  # still ask sacct, to list the jobs it knows (and show it answers)
            records = slurm.sacct_energy([slurm_job_id_of(t) or "" for t in tasks], runner=runner)
        return compare(tasks, records, config, None)
    records = slurm.sacct_energy([slurm_job_id_of(t) or "" for t in tasks], runner=runner) if tasks else []
    try:
        cpus: dict[str, int] | None = slurm.node_cpus(runner=runner)
    except SlurmError:
        cpus = None
    return compare(tasks, records, config, cpus)
