"""Which devices the job may charge: its CPU set, the CPU packages holding it, and its GPUs.

A meter measures only what was allocated to the job, never the whole node. The CPU set comes from the
process's affinity (Slurm restricts it to the job's cores); its CPUs map to packages (sockets) through
``/sys/devices/system/cpu/cpuN/topology/physical_package_id``. GPUs come from the environment, in this order:

1. ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-<uuid>`` prefixes; what the CUDA runtime of the job sees);
2. ``SLURM_STEP_GPUS``, ``SLURM_JOB_GPUS``, ``GPU_DEVICE_ORDINAL`` (node-level indices Slurm hands out);
3. inside a Slurm job (``SLURM_JOB_ID`` set) with none of these: no GPUs;
4. outside Slurm (a workstation): every GPU of the machine.

The sysfs root is a parameter so that tests can point it at a fake tree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SYSFS_ROOT = Path("/sys")

GpuSource = Literal[
    "CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL", "slurm-none", "all"
]
_SLURM_GPU_VARS: tuple[GpuSource, ...] = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "GPU_DEVICE_ORDINAL")
_CPU_DIR = re.compile(r"^cpu(\d+)$")


def allocated_cpus() -> frozenset[int]:
    """Logical CPU ids of the job's CPU set (the process's affinity), or all CPUs where it is unknown."""
    if hasattr(os, "sched_getaffinity"):
        return frozenset(os.sched_getaffinity(0))
    return frozenset(range(os.cpu_count() or 1))


def cpu_package_map(sysfs_root: Path | None = None) -> dict[int, int]:
    """Every logical CPU of the node → its physical package id, read from sysfs topology.

    A CPU without a readable ``physical_package_id`` (some VMs and containers) is put in package 0: a
    one-socket view is the only safe reading when the topology is hidden.
    """
    cpu_root = (sysfs_root or SYSFS_ROOT) / "devices" / "system" / "cpu"
    mapping: dict[int, int] = {}
    try:
        entries = list(cpu_root.iterdir())
    except OSError:
        return mapping
    for entry in entries:
        match = _CPU_DIR.match(entry.name)
        if not match:
            continue
        try:
            package = int((entry / "topology" / "physical_package_id").read_text().strip())
        except (OSError, ValueError):
            package = 0
        mapping[int(match.group(1))] = max(package, 0)
    return mapping


@dataclass(frozen=True)
class CpuPackages:
    """The packages (sockets) holding the job's CPUs, and how much of them the job owns."""

    job_cpus: frozenset[int]
    packages: tuple[int, ...]  # physical package ids holding at least one of the job's CPUs
    package_cpus: int  # logical CPUs of those packages in total (the job's and anyone else's)

    @property
    def job_share(self) -> float:
        """The job's CPUs as a share of the logical CPUs of its packages (1.0: the packages are its own)."""
        return len(self.job_cpus) / self.package_cpus if self.package_cpus else 1.0


def job_packages(cpus: frozenset[int] | None = None, *, sysfs_root: Path | None = None) -> CpuPackages:
    """The packages holding ``cpus`` (default: the job's CPU set). Without sysfs topology: package 0."""
    job = allocated_cpus() if cpus is None else frozenset(cpus)
    mapping = cpu_package_map(sysfs_root)
    packages = sorted({mapping.get(cpu, 0) for cpu in job}) or [0]
    package_cpus = sum(1 for package in mapping.values() if package in packages)
    return CpuPackages(job_cpus=job, packages=tuple(packages), package_cpus=max(package_cpus, len(job)))


@dataclass(frozen=True)
class GpuSelection:
    """The job's GPUs as the environment names them, before they are matched to the driver's devices.

    ``ids`` is None for "every GPU of the machine"; otherwise each entry is a node-level index ("0") or a
    UUID (prefix) such as "GPU-8f2c...". ``source`` says which variable decided.
    """

    source: GpuSource
    ids: tuple[str, ...] | None

    @property
    def describe(self) -> str:
        """One line for logs and ``doctor``: which GPUs, and from where."""
        if self.ids is None:
            return "all GPUs of the machine (not in a Slurm job and CUDA_VISIBLE_DEVICES unset)"
        if self.source == "slurm-none":
            return "none (Slurm job without GPUs: no CUDA_VISIBLE_DEVICES / SLURM_*_GPUS)"
        shown = ",".join(self.ids) if self.ids else "(empty)"
        return f"{shown} from {self.source}"


def _parse_ids(value: str) -> tuple[str, ...]:
    """Split a device list the way the CUDA runtime reads it: stop at the first invalid entry."""
    ids: list[str] = []
    for raw in value.split(","):
        item = raw.strip()
        if item.isdigit() or re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z/-]+", item):
            ids.append(item)
        else:
            break
    return tuple(ids)


def allocated_gpus(environ: Mapping[str, str] | None = None) -> GpuSelection:
    """Which GPUs the job was given, from its environment (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    if "CUDA_VISIBLE_DEVICES" in env:
        return GpuSelection("CUDA_VISIBLE_DEVICES", _parse_ids(env["CUDA_VISIBLE_DEVICES"]))
    for var in _SLURM_GPU_VARS:
        if env.get(var, "").strip():
            return GpuSelection(var, _parse_ids(env[var]))
    if env.get("SLURM_JOB_ID"):
        return GpuSelection("slurm-none", ())
    return GpuSelection("all", None)


def resolve_gpu_indices(
    selection: GpuSelection, device_count: int, uuid_of: Callable[[int], str]
) -> tuple[list[int], list[str]]:
    """Match a selection to driver (NVML) indices; returns (indices, problems).

    Indices beyond ``device_count``, UUIDs that match no device (or several) and MIG instances are left out,
    each with a problem message. ``uuid_of(index)`` asks the driver for a device's UUID ("GPU-...").
    """
    if selection.ids is None:
        return list(range(device_count)), []
    indices: list[int] = []
    problems: list[str] = []
    uuids: Sequence[str] | None = None
    for item in selection.ids:
        if item.isdigit():
            index = int(item)
            if index < device_count:
                indices.append(index)
            else:
                problems.append(f"{selection.source} names GPU {index} but the driver sees {device_count}")
            continue
        if item.startswith("MIG-"):
            problems.append(f"{item} is a MIG instance: its energy cannot be read separately")
            continue
        if uuids is None:
            uuids = [uuid_of(i) for i in range(device_count)]
        matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(item)]
        if len(matches) == 1:
            indices.append(matches[0])
        else:
            what = "no" if not matches else "more than one"
            problems.append(f"{selection.source} entry {item} matches {what} GPU of the driver")
    return sorted(dict.fromkeys(indices)), problems
