"""The ``powermetrics`` meter: CPU and GPU power of a Mac (Apple Silicon) from ``powermetrics``.

``powermetrics --samplers cpu_power,gpu_power -i <ms> -f plist`` runs as a subprocess for the metered
interval and prints one plist per sample, separated by NUL bytes. Each sample carries the interval it
covers (``elapsed_ns``) and the average power over it in milliwatts (``processor.cpu_power``,
``processor.gpu_power``; ``gpu.gpu_power`` on newer macOS). Energy is the sum of power × elapsed over the
samples (exact for interval averages), scaled to the metered duration (the samples never line up with
it exactly: the sample in progress when the meter stops is lost). Domains: ``cpu`` and ``gpu:0`` (the SoC's
integrated GPU). The text format (``-f text``) is parsed too, for recorded output.

powermetrics needs root: the meter runs it directly as root, or through ``sudo -n`` (no password prompt)
when the user may run it without a password (a sudoers rule for ``/usr/bin/powermetrics``).
"""

from __future__ import annotations

import os
import plistlib
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from hpcqueue.errors import MeterUnavailableError
from hpcqueue.meters.base import Meter, availability, probe_status, usable

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from hpcqueue.meters.base import Clocks, Measurement, MeterStatus

DEFAULT_INTERVAL_MS = 100
SUDOERS_HINT = (
    "let the user run it without a password: a sudoers rule such as "
    "`<user> ALL=(root) NOPASSWD: /usr/bin/powermetrics`"
)


@dataclass(frozen=True)
class PowerSample:
    """One powermetrics sample: average power over ``elapsed_s``."""

    elapsed_s: float
    cpu_power_w: float | None
    gpu_power_w: float | None


def _mw(value: Any) -> float | None:
    return float(value) / 1000.0 if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def parse_plist_samples(data: bytes) -> list[PowerSample]:
    """Parse ``-f plist`` output: NUL-separated plist documents, one per sample. Damaged pieces are skipped
    (the last one is often cut short when the process is stopped)."""
    samples: list[PowerSample] = []
    for chunk in data.split(b"\0"):
        chunk = chunk.strip()
        if not chunk:
            continue
        try:
            doc = plistlib.loads(chunk)
        except Exception:  # plistlib raises several types (ExpatError, ValueError, InvalidFileException)
            continue
        if not isinstance(doc, dict) or "elapsed_ns" not in doc:
            continue
        processor = doc.get("processor") or {}
        gpu = doc.get("gpu") or {}
        cpu_w = _mw(processor.get("cpu_power"))
        if cpu_w is None and "package_watts" in processor:  # Intel Macs report watts for the package
            cpu_w = float(processor["package_watts"])
        gpu_w = _mw(processor.get("gpu_power"))
        if gpu_w is None:
            gpu_w = _mw(gpu.get("gpu_power"))
        samples.append(PowerSample(float(doc["elapsed_ns"]) / 1e9, cpu_w, gpu_w))
    return samples


_TEXT_HEADER = re.compile(r"\*\*\* Sampled system activity .*?\(([\d.]+)ms elapsed\) \*\*\*")
_TEXT_POWER = re.compile(r"^\s*(CPU|GPU) Power:\s*([\d.]+)\s*(mW|W)\s*$", re.MULTILINE)
_TEXT_INTEL = re.compile(
    r"^Intel energy model derived package power \(CPUs\+GT\+SA\):\s*([\d.]+)W", re.MULTILINE
)


def parse_text_samples(text: str) -> list[PowerSample]:
    """Parse ``-f text`` output: one ``*** Sampled system activity (... ms elapsed) ***`` block per sample."""
    headers = list(_TEXT_HEADER.finditer(text))
    samples: list[PowerSample] = []
    for header, following in zip(headers, [*headers[1:], None], strict=True):
        block = text[header.end() : following.start() if following else len(text)]
        powers: dict[str, float] = {}
        for match in _TEXT_POWER.finditer(block):
            value = float(match.group(2))
            powers[match.group(1)] = value / 1000.0 if match.group(3) == "mW" else value
        intel = _TEXT_INTEL.search(block)
        if "CPU" not in powers and intel:
            powers["CPU"] = float(intel.group(1))
        samples.append(PowerSample(float(header.group(1)) / 1000.0, powers.get("CPU"), powers.get("GPU")))
    return samples


def integrate_j(
    samples: list[PowerSample], duration_s: float | None = None
) -> tuple[dict[str, float], float]:
    """Joules per domain from interval-average samples, and the seconds they cover.

    With ``duration_s`` the energy is the samples' mean power × ``duration_s`` (scaled by
    ``duration_s / covered``): the samples rarely line up with the metered interval exactly (the one in
    progress at stop is lost; the first starts when the process is up)."""
    covered_s = sum(s.elapsed_s for s in samples)
    energy: dict[str, float] = {}
    for domain, attr in (("cpu", "cpu_power_w"), ("gpu:0", "gpu_power_w")):
        values = [(getattr(s, attr), s.elapsed_s) for s in samples]
        if any(power is not None for power, _ in values):
            energy[domain] = sum((power or 0.0) * elapsed for power, elapsed in values)
    if duration_s is not None and covered_s > 0:
        energy = {k: v * duration_s / covered_s for k, v in energy.items()}
    return energy, covered_s


@dataclass(frozen=True)
class PowermetricsProbe:
    """What the probe of this machine found: usable or not, why, and the command prefix (``sudo -n``)."""

    available: bool
    reason: str
    prefix: tuple[str, ...] = ()

    @property
    def domains(self) -> tuple[str, ...]:
        return ("cpu", "gpu:0") if self.available else ()


@lru_cache(maxsize=1)
def _probe_default() -> PowermetricsProbe:
    return PowermetricsProbe(*probe())


def probe(
    *,
    system: str | None = None,
    which: Callable[[str], str | None] = shutil.which,
    is_root: bool | None = None,
    sudo_ok: Callable[[str], bool] | None = None,
) -> tuple[bool, str, tuple[str, ...]]:
    """(usable, why, command prefix): macOS, powermetrics on PATH, and root or password-less sudo for it."""
    system = system or os.uname().sysname
    if system != "Darwin":
        return False, f"powermetrics runs on macOS only (this is {system})", ()
    path = which("powermetrics")
    if path is None:
        return False, "powermetrics is not on PATH (it ships with macOS in /usr/bin)", ()
    if is_root if is_root is not None else os.geteuid() == 0:
        return True, f"{path} as root", ()
    check = sudo_ok or _sudo_ok
    if check(path):
        return True, f"{path} through password-less sudo", ("sudo", "-n")
    return False, f"powermetrics needs root and `sudo -n {path}` is not allowed: {SUDOERS_HINT}", ()


def _sudo_ok(path: str) -> bool:
    try:
        done = subprocess.run(
            ["sudo", "-n", path, "-n", "1", "-i", "1", "--samplers", "cpu_power"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def powermetrics_available() -> tuple[bool, str]:
    """(usable, why); cached."""
    return availability(_probe_default())


def powermetrics_status() -> MeterStatus:
    """The backend's status for ``meter_statuses()`` / ``doctor``."""
    return probe_status(PowermetricsMeter, _probe_default())


def build_powermetrics_meter(**kwargs: Any) -> PowermetricsMeter:
    """A powermetrics meter, or ``MeterUnavailableError`` with the probe's reason."""
    found = usable(PowermetricsMeter, _probe_default())
    return PowermetricsMeter(prefix=found.prefix, **kwargs)


class PowermetricsMeter(Meter, name="powermetrics", method="measured"):
    """Runs powermetrics for the metered interval and integrates its samples."""

    def __init__(
        self,
        *,
        interval_ms: int = DEFAULT_INTERVAL_MS,
        prefix: tuple[str, ...] = (),
        executable: str = "powermetrics",
        **clocks: Unpack[Clocks],
    ) -> None:
        super().__init__(**clocks)
        self.interval_ms = interval_ms
        self.command = [
            *prefix,
            executable,
            "--samplers",
            "cpu_power,gpu_power",
            "-i",
            str(interval_ms),
            "-f",
            "plist",
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self._output = bytearray()
        self._reader: threading.Thread | None = None

    def _drain(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        fd = self._process.stdout.fileno()
        while chunk := os.read(fd, 65536):
            self._output.extend(chunk)

    def _begin(self) -> None:
        self._output = bytearray()
        try:
            self._process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as e:
            raise MeterUnavailableError(f"meter 'powermetrics': cannot run {self.command[0]}: {e}") from e
        self._reader = threading.Thread(target=self._drain, name="hpcqueue-powermetrics", daemon=True)
        self._reader.start()
        self._mark_start()

    def _end(self) -> Measurement:
        duration_s = self._elapsed_s()
        assert self._process is not None
        # Wait for at least one complete sample so that a short interval is still measured.
        deadline = time.monotonic() + 2 * self.interval_ms / 1000.0 + 1.0
        while b"\0" not in self._output and self._process.poll() is None and time.monotonic() < deadline:
            time.sleep(self.interval_ms / 4000.0)
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        stderr = self._process.stderr.read() if self._process.stderr is not None else b""
        samples = parse_plist_samples(bytes(self._output))
        if not samples:
            message = (stderr or b"").decode(errors="replace").strip() or "no sample was printed"
            raise MeterUnavailableError(f"meter 'powermetrics' returned no power sample: {message}")
        energy_j, covered_s = integrate_j(samples, duration_s)
        return self._measurement(
            energy_j,
            duration_s,
            details={
                "source": "powermetrics cpu_power,gpu_power (mW, interval averages)",
                "interval_ms": self.interval_ms,
                "samples": len(samples),
                "covered_s": covered_s,
                "energy": "mean sampled power × duration_s",
            },
        )
