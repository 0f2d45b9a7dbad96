"""Points every hpcqueue process started with this directory on ``PYTHONPATH`` at a fake powercap tree.

End-to-end tests run the real CLI and real worker processes; a monkeypatch in the test process does not
reach them. Python imports ``sitecustomize`` at start-up, so with ``HPCQUEUE_FAKE_POWERCAP`` (a
``/sys/class/powercap`` stand-in) and ``HPCQUEUE_FAKE_SYSFS`` (a ``/sys`` stand-in holding the CPU topology)
set, the RAPL backend of every such process looks there instead of at the machine's, and nothing else
changes. The counters are advanced by :class:`tests.fakes.powercap.RunningCounters` in the test process, as
the kernel advances them.
"""

from __future__ import annotations

import os
from pathlib import Path

_POWERCAP = os.environ.get("HPCQUEUE_FAKE_POWERCAP")
_SYSFS = os.environ.get("HPCQUEUE_FAKE_SYSFS")
if _POWERCAP and _SYSFS:
    from hpcqueue.meters import devices, rapl

    rapl.POWERCAP_ROOT = Path(_POWERCAP)
    devices.SYSFS_ROOT = Path(_SYSFS)
