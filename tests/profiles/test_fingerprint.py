"""hpcqueue.profiles.fingerprint: what machine a profile was measured on, and when it no longer matches.

The OS is faked where it differs between machines: /proc/cpuinfo text and NVML (a stub with the calls
nvidia-ml-py makes).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

from hpcqueue.profiles.fingerprint import compare, fingerprint, parse_cpuinfo, software_versions

CPUINFO_XEON = """\
processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 85
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu vme de pse

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
"""

CPUINFO_POWER9 = """\
processor\t: 0
cpu\t\t: POWER9, altivec supported
clock\t\t: 3800.000000MHz
revision\t: 2.2 (pvr 004e 1202)
"""

CPUINFO_ARM_NO_NAME = """\
processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm
CPU implementer\t: 0x41
"""


@dataclass
class _Memory:
    total: int


class FakeNvml:
    """The pynvml calls fingerprint() makes, answering for the given GPUs."""

    NVMLError = RuntimeError

    def __init__(self, gpus: list[tuple[str, int]], driver: str = "535.104.05", *, init_fails: bool = False):
        self.gpus = gpus
        self.driver = driver
        self.init_fails = init_fails
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.init_fails:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return self.gpus[handle][0].encode()  # older nvidia-ml-py versions return bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        return _Memory(total=self.gpus[handle][1] * 1024 * 1024)

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-0000-{handle}"

    def nvmlSystemGetDriverVersion(self) -> str:
        return self.driver


def test_cpu_model_is_read_from_cpuinfo_whatever_the_architecture() -> None:
    assert parse_cpuinfo(CPUINFO_XEON) == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"
    assert parse_cpuinfo(CPUINFO_POWER9) == "POWER9, altivec supported"
    assert parse_cpuinfo(CPUINFO_ARM_NO_NAME) is None
    padded = CPUINFO_XEON.replace("Gold 6148 CPU", "Gold 6148   CPU")
    assert parse_cpuinfo(padded) == parse_cpuinfo(CPUINFO_XEON)


def test_fingerprint_lists_gpus_and_driver_from_nvml() -> None:
    nvml = FakeNvml([("NVIDIA A100-SXM4-40GB", 40960), ("NVIDIA A100-SXM4-40GB", 40960)])
    fp = fingerprint(cpuinfo_text=CPUINFO_XEON, nvml=nvml)
    assert fp["cpu_model"] == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"
    assert fp["gpus"] == [
        {"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960, "uuid": "GPU-0000-0"},
        {"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960, "uuid": "GPU-0000-1"},
    ]
    assert fp["driver"] == "535.104.05"
    assert nvml.shutdowns == 1
    assert fp["cpu_count"] >= 1 and fp["node_cpu_count"] >= fp["cpu_count"]
    assert fp["memory_gb"] > 0 and fp["hostname"]


def test_fingerprint_without_a_gpu_has_none(no_energy_counters: Any) -> None:
    fp = fingerprint(cpuinfo_text=CPUINFO_XEON, nvml=FakeNvml([], init_fails=True))
    assert fp["gpus"] == [] and fp["driver"] is None
    # a machine without an NVIDIA driver (faked: the NVML library cannot initialise) finds nothing either
    real = fingerprint()
    assert real["gpus"] == [] and real["driver"] is None
    assert real["cpu_model"]


def _fp(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cpu_model": "AMD EPYC 7742 64-Core Processor",
        "cpu_count": 16,
        "gpus": [{"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960, "uuid": "GPU-a"}],
        "driver": "535.104.05",
        "memory_gb": 512.0,
        "hostname": "gpu01",
    }
    return {**base, **changes}


def test_same_hardware_on_another_node_is_not_stale() -> None:
    other_node = _fp(
        hostname="gpu17",
        memory_gb=1024.0,
        driver="535.54.03",  # same major version
        gpus=[{"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 40536, "uuid": "GPU-b"}],  # ECC reserve
        cpu_model="AMD  EPYC 7742 64-Core   Processor",
    )
    assert compare(_fp(), other_node) == []


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"cpu_model": "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"}, "cpu_model"),
        ({"cpu_count": 8}, "cpu_count"),
        ({"gpus": [{"name": "NVIDIA V100-SXM2-16GB", "memory_mb": 16160}]}, "V100"),
        ({"gpus": [{"name": "NVIDIA A100-SXM4-40GB", "memory_mb": 81920}]}, "81920 MB"),
        ({"gpus": []}, "0 GPU"),
        ({"driver": "550.54.14"}, "major 550"),
    ],
)
def test_a_hardware_change_makes_the_profile_stale(change: dict[str, Any], needle: str) -> None:
    differences = compare(_fp(), _fp(**change))
    assert len(differences) == 1 and needle in differences[0], differences


def test_unknown_fields_are_not_compared() -> None:
    imported = {
        "cpu_model": None,
        "cpu_count": None,
        "gpus": [{"name": "NVIDIA A100-SXM4-40GB"}],
        "driver": None,
    }
    assert compare(imported, _fp()) == []
    assert compare({}, _fp()) == []


def test_software_versions_are_read_without_importing_torch() -> None:
    code = (
        "import sys, json\n"
        "from hpcqueue.profiles.fingerprint import software_versions\n"
        "v = software_versions()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(json.dumps(v))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    import json

    versions = json.loads(out.stdout)
    assert versions["torch"] == importlib.metadata.version("torch")
    assert versions["transformers"] == importlib.metadata.version("transformers")
    assert versions["hpcqueue"] == importlib.metadata.version("hpcqueue")
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    import torch

    assert versions["cuda"] == torch.version.cuda  # None on this CPU build
    assert software_versions()["cuda"] == torch.version.cuda
