"""What machine and software a profile was measured on, and whether a machine still matches it.

``fingerprint()`` describes the hardware a sweep runs on (CPU model, logical CPUs, GPUs, driver, memory);
``software_versions()`` the libraries that produced the numbers; ``compare()`` lists the differences that
make a profile stale: a different CPU model or CPU count, other GPUs (names, count or memory), or another
NVIDIA driver major version. The host name is informational and never compared.

Nothing heavy is imported: NVML (``nvidia-ml-py``) only when it is installed, torch never (its version
and CUDA build are read from the installed files).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import platform
import re
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")
# GPUs of one model report the same total memory give or take ECC and driver reservations.
GPU_MEMORY_TOLERANCE = 0.05

# Keys of /proc/cpuinfo naming the CPU, by architecture: x86 "model name"; some ARM and POWER kernels use
# "Model name", "cpu model" (MIPS) or "cpu" (POWER).
_CPUINFO_KEYS = ("model name", "cpu model", "cpu")


def parse_cpuinfo(text: str) -> str | None:
    """The CPU model named in the text of ``/proc/cpuinfo`` (the first processor's), or None.

    Runs of whitespace are collapsed, so ``Intel(R) Xeon(R) Gold 6148  CPU`` compares equal however the
    kernel pads it.
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in _CPUINFO_KEYS and key not in fields and value.strip():
            fields[key] = " ".join(value.split())
    for key in _CPUINFO_KEYS:
        if key in fields:
            return fields[key]
    return None


def cpu_model(*, cpuinfo_text: str | None = None) -> str | None:
    """The CPU model of this machine: ``/proc/cpuinfo`` on Linux, ``sysctl machdep.cpu.brand_string`` on
    macOS; None when neither says. ``cpuinfo_text`` replaces the file's contents (tests)."""
    if cpuinfo_text is None and sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return " ".join(out.stdout.split()) or None
    if cpuinfo_text is None:
        try:
            cpuinfo_text = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return platform.processor() or None
    return parse_cpuinfo(cpuinfo_text)


def _job_cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):  # not every platform names these
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_gpus(nvml: Any = None) -> tuple[list[dict[str, Any]], str | None]:
    """GPUs NVML sees (``[{"name", "memory_mb", "uuid"}]``) and the driver version; ``([], None)`` without
    NVML or without a GPU.

    ``nvml`` is the ``pynvml`` module of ``nvidia-ml-py`` (imported here when None). NVML lists the GPUs the
    process may use: inside a Slurm job with device constraints, the job's GPUs.
    """
    if nvml is None:
        if importlib.util.find_spec("pynvml") is None:
            return [], None
        nvml = importlib.import_module("pynvml")
    try:
        nvml.nvmlInit()
    except Exception:  # no driver, no device: NVML raises its own NVMLError subclasses
        return [], None
    try:
        gpus: list[dict[str, Any]] = []
        for index in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu: dict[str, Any] = {
                "name": _text(nvml.nvmlDeviceGetName(handle)),
                "memory_mb": int(nvml.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)),
            }
            try:
                gpu["uuid"] = _text(nvml.nvmlDeviceGetUUID(handle))
            except Exception:
                gpu["uuid"] = None
            gpus.append(gpu)
        try:
            driver: str | None = _text(nvml.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        return gpus, driver
    except Exception:
        return [], None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def fingerprint(*, cpuinfo_text: str | None = None, nvml: Any = None) -> dict[str, Any]:
    """The hardware this process runs on, in the form of a profile's ``fingerprint``.

    Keys: ``cpu_model``; ``cpu_count`` (logical CPUs of this job's CPU set, what a sweep could use);
    ``node_cpu_count`` (logical CPUs of the whole node); ``gpus`` (``[{"name", "memory_mb", "uuid"}]``,
    empty without NVML or GPUs); ``driver`` (NVIDIA driver version or None); ``memory_gb`` (host memory);
    ``hostname`` (informational only). ``cpuinfo_text`` and ``nvml`` stand in for the OS in tests.
    """
    gpus, driver = nvml_gpus(nvml)
    return {
        "cpu_model": cpu_model(cpuinfo_text=cpuinfo_text),
        "cpu_count": _job_cpu_count(),
        "node_cpu_count": os.cpu_count(),
        "gpus": gpus,
        "driver": driver,
        "memory_gb": _memory_gb(),
        "hostname": socket.gethostname(),
    }


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_cuda_version() -> str | None:
    """The CUDA version torch was built for, read from ``torch/version.py`` without importing torch
    (or from ``torch.version`` when torch is already imported); None for CPU builds or without torch."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "version"):
        return getattr(torch.version, "cuda", None)
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "version.py"
        if path.is_file():
            match = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", path.read_text(), re.MULTILINE)
            return match.group(1) if match else None
    return None


def software_versions() -> dict[str, Any]:
    """Versions of what produced a profile's numbers: python, torch, transformers, tokenizers, accelerate,
    hpcqueue, nvidia-ml-py and the CUDA build of torch (None where not installed)."""
    return {
        "python": platform.python_version(),
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
        "tokenizers": _dist_version("tokenizers"),
        "accelerate": _dist_version("accelerate"),
        "hpcqueue": _dist_version("hpcqueue"),
        "nvidia-ml-py": _dist_version("nvidia-ml-py"),
        "cuda": torch_cuda_version(),
    }


def _driver_major(driver: Any) -> str | None:
    if driver is None:
        return None
    return str(driver).strip().split(".")[0] or None


def _gpu_list(value: Any) -> list[tuple[str, int | None]] | None:
    if value is None:
        return None
    gpus = []
    for gpu in value:
        if not isinstance(gpu, Mapping):
            continue
        memory = gpu.get("memory_mb")
        gpus.append((" ".join(str(gpu.get("name") or "").split()), int(memory) if memory else None))
    return sorted(gpus, key=lambda g: (g[0], g[1] or 0))


def compare(expected: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Differences between a profile's fingerprint (``expected``) and this machine's (``current``) that
    make the profile stale; an empty list means it still describes this hardware.

    Compared: ``cpu_model`` (whitespace-insensitive), ``cpu_count``, the GPUs (count, names and memory
    within 5 %) and the driver's major version. A key that is missing or None on either side is unknown and
    not compared; ``hostname``, ``memory_gb`` and GPU UUIDs never are (the same hardware class spans many
    nodes).
    """
    differences: list[str] = []
    exp_cpu, cur_cpu = expected.get("cpu_model"), current.get("cpu_model")
    if (
        exp_cpu is not None
        and cur_cpu is not None
        and " ".join(str(exp_cpu).split()) != " ".join(str(cur_cpu).split())
    ):
        differences.append(
            f"cpu_model: the profile was measured on {exp_cpu!r}, this machine has {cur_cpu!r}"
        )
    exp_n, cur_n = expected.get("cpu_count"), current.get("cpu_count")
    if exp_n is not None and cur_n is not None and int(exp_n) != int(cur_n):
        differences.append(f"cpu_count: the profile was measured with {exp_n} logical CPUs, here {cur_n}")
    exp_gpus, cur_gpus = _gpu_list(expected.get("gpus")), _gpu_list(current.get("gpus"))
    if exp_gpus is not None and cur_gpus is not None:
        if len(exp_gpus) != len(cur_gpus):
            differences.append(
                f"gpus: the profile was measured with {len(exp_gpus)} GPU(s) {_names(exp_gpus)}, "
                f"here {len(cur_gpus)} GPU(s) {_names(cur_gpus)}"
            )
        else:
            for (exp_name, exp_mb), (cur_name, cur_mb) in zip(exp_gpus, cur_gpus, strict=True):
                if exp_name != cur_name:
                    differences.append(f"gpus: the profile was measured on {exp_name!r}, here {cur_name!r}")
                elif exp_mb and cur_mb and abs(exp_mb - cur_mb) > GPU_MEMORY_TOLERANCE * exp_mb:
                    differences.append(f"gpus: {exp_name!r} had {exp_mb} MB when profiled, here {cur_mb} MB")
    exp_drv, cur_drv = _driver_major(expected.get("driver")), _driver_major(current.get("driver"))
    if exp_drv is not None and cur_drv is not None and exp_drv != cur_drv:
        differences.append(
            f"driver: the profile was measured with driver {expected.get('driver')} (major {exp_drv}), "
            f"here {current.get('driver')} (major {cur_drv})"
        )
    return differences


def _names(gpus: list[tuple[str, int | None]]) -> str:
    return "[" + ", ".join(name for name, _ in gpus) + "]"
