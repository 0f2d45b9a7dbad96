from __future__ import annotations

import pytest

from hpcqueue.errors import ConfigError
from hpcqueue.meters.hardware import HARDWARE_CLASSES, get_hardware, nominal_cpu_power_w


def test_the_documented_classes_exist_with_their_vendor_figures() -> None:
    assert {"cpu-generic", "m1-pro", "a100-40g", "v100-16g", "xeon-6148"} <= set(HARDWARE_CLASSES)
    assert get_hardware("a100-40g").gpu_power_w == 400.0
    assert get_hardware("v100-16g").gpu_power_w == 300.0
    assert get_hardware("xeon-6148").cpu_power_w == 150.0
    assert get_hardware("m1-pro").cpu_power_w == 30.0
    assert get_hardware("cpu-generic").cpu_power_w_per_cpu == 10.0


def test_unknown_class_error_lists_every_known_class() -> None:
    with pytest.raises(ConfigError, match="'h100-80g'") as info:
        get_hardware("h100-80g")
    assert "known classes: a100-40g, cpu-generic, m1-pro, v100-16g, xeon-6148" in str(info.value)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("name", "cpus", "expected_w"),
    [
        ("cpu-generic", 4, 40.0),  # 10 W per logical CPU of the job
        ("cpu-generic", 1, 10.0),
        ("xeon-6148", 40, 150.0),  # a whole socket (40 logical CPUs) is its TDP
        ("xeon-6148", 80, 300.0),  # the whole two-socket node
        ("xeon-6148", 4, 15.0),
        ("m1-pro", 10, 30.0),  # the whole package
        ("a100-40g", 16, 225.0 * 16 / 128),  # host CPUs of a 16-CPU job on an EPYC 7742 node
    ],
)
def test_nominal_cpu_power_is_the_job_cpu_set_share_of_the_package(
    name: str, cpus: int, expected_w: float
) -> None:
    assert nominal_cpu_power_w(name, cpus) == pytest.approx(expected_w)


def test_override_wins_and_must_be_positive() -> None:
    assert nominal_cpu_power_w("xeon-6148", 4, override=65.0) == 65.0
    with pytest.raises(ConfigError, match="nominal_power_w must be > 0"):
        nominal_cpu_power_w("xeon-6148", 4, override=0.0)


def test_override_does_not_hide_an_unknown_class() -> None:
    with pytest.raises(ConfigError, match="known classes"):
        nominal_cpu_power_w("no-such-node", 4, override=65.0)


def test_zero_cpus_is_rejected() -> None:
    with pytest.raises(ConfigError, match="cpus must be a positive integer"):
        nominal_cpu_power_w("cpu-generic", 0)
