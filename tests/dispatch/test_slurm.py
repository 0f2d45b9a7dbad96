"""hpcqueue.dispatch.slurm: parsing of Slurm's output, the commands it runs, and the gentle sacct poller.

Unit tests fake only the outside world: the Slurm commands (a runner returning recorded output) and the clock.
Tests marked ``slurm`` run the real commands against the local cluster that ``make test`` starts.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hpcqueue.dispatch import slurm
from hpcqueue.dispatch.slurm import JobState, SacctPoller, SlurmError
from hpcqueue.errors import HpcqueueError

# Recorded from Slurm 22.05 with
#   sacct -X -P -n --format=JobID,State,Partition,NodeList,Start,End,Elapsed,ExitCode -j 1,2,3,4,5,11,12
# 1: a finished 3-task array; 2: a 10-task array with tasks running and the rest pending; 3: cancelled;
# 4: exit 3; 11: hit its time limit; 12: an array with a %2 running limit.
SACCT_MIXED = """\
3|CANCELLED by 0|gpu|gpu01|2026-11-21T23:05:58|2026-11-21T23:06:01|00:00:03|0:0
4|FAILED|gpu|gpu01|2026-11-21T23:05:58|2026-11-21T23:05:59|00:00:01|3:0
5|COMPLETED|gpu|gpu01|2026-11-21T23:05:59|2026-11-21T23:06:01|00:00:02|0:0
11|TIMEOUT|gpu|gpu01|2026-11-21T23:06:16|2026-11-21T23:07:25|00:01:09|0:0
1_0|COMPLETED|lowpower|lp01|2026-11-21T23:05:58|2026-11-21T23:05:59|00:00:01|0:0
1_1|COMPLETED|lowpower|lp01|2026-11-21T23:05:58|2026-11-21T23:05:59|00:00:01|0:0
1_2|COMPLETED|lowpower|lp01|2026-11-21T23:05:59|2026-11-21T23:06:00|00:00:01|0:0
2_0|RUNNING|lowpower|lp01|2026-11-21T23:05:59|Unknown|00:00:02|0:0
2_[1-9]|PENDING|lowpower|None assigned|Unknown|Unknown|00:00:00|0:0
12_0|COMPLETED|gpu|gpu01|2026-11-21T23:06:16|2026-11-21T23:06:21|00:00:05|0:0
12_[1-5%2]|PENDING|gpu|None assigned|Unknown|Unknown|00:00:00|0:0
"""

# Recorded after `scancel 2_5 2_6` while 2_4 was running: sacct kept a stale remainder record that still
# covers 2_4 and 2_5, which have their own, newer lines.
SACCT_STALE_REMAINDER = """\
2_3|COMPLETED|lowpower|lp01|2026-11-21T23:06:31|2026-11-21T23:07:01|00:00:30|0:0
2_4|RUNNING|lowpower|lp01|2026-11-21T23:07:00|Unknown|00:00:11|0:0
2_5|CANCELLED by 0|lowpower|lp01|2026-11-21T23:07:01|2026-11-21T23:07:09|00:00:08|0:0
2_[4-6]|CANCELLED by 0|lowpower|None assigned|None|2026-11-21T23:07:09|00:00:00|0:0
"""

# Recorded with --duplicates after `scontrol requeue 10`: the old allocation, then the current record.
SACCT_REQUEUED = """\
10|REQUEUED|gpu|gpu01|2026-11-21T23:06:11|2026-11-21T23:06:12|00:00:01|0:0
10|PENDING|gpu|None assigned|Unknown|Unknown|00:00:00|0:0
"""

# States that the local cluster cannot produce, in the same format as a production cluster prints them.
SACCT_FAILURES = """\
7001|NODE_FAIL|gpu|gpu[03-04]|2026-11-19T08:00:00|2026-11-21T10:04:05|2-02:04:05|0:0
7002|OUT_OF_MEMORY|gpu|gpu07|2026-11-21T09:00:00|2026-11-21T09:10:00|00:10:00|0:125
7003_4|PREEMPTED|lowpower|lp12|2026-11-21T09:00:00|2026-11-21T09:00:30|00:00:30|0:15
7004|BOOT_FAIL|gpu|gpu09|None|2026-11-21T09:00:00|00:00:00|0:0
7005|DEADLINE|gpu|None assigned|None|2026-11-21T09:00:00|00:00:00|0:0
"""

SACCT_DB_DOWN_STDERR = """\
sacct: error: slurm_persist_conn_open_without_init: \
failed to open persistent connection to host:localhost:6819: Connection refused
sacct: error: Sending PersistInit msg: Connection refused
sacct: error: Problem talking to the database: Connection refused
"""

SCONTROL_CONFIG = """\
Configuration data as of 2026-11-21T23:06:23
AccountingStorageType   = accounting_storage/slurmdbd
AcctGatherNodeFreq      = 0 sec
ClusterName             = hpcqueue
MaxArraySize            = 40001
MaxJobCount             = 10000
SchedulerParameters     = batch_sched_delay=0,sched_min_interval=100000
SLURM_VERSION           = 22.05.8
TaskProlog              = (null)

Cgroup Support Configuration:
MaxArraySize            = 7

Slurmctld(primary) at vm is UP
"""

SCONTROL_PARTITION_GPU = (
    "PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=1-12:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=gpu[01-04] PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=9642M,node=1,billing=2,gres/gpu=2\n"
)
SCONTROL_PARTITION_LOWPOWER = SCONTROL_PARTITION_GPU.replace(
    "PartitionName=gpu", "PartitionName=lowpower"
).replace("MaxTime=1-12:00:00", "MaxTime=UNLIMITED")


# Recorded with `scontrol show job -o 547` (SLURM_TIME_FORMAT=standard) for an array submitted with --begin,
# --deadline, --time=10 and --time-min=2, after `scontrol update JobId=547_2 StartTime=...` moved element 2
# (Slurm split it out of the array as job 548); elements 0-1 are still one record.
SCONTROL_SHOW_JOB_547 = (
    "JobId=547 ArrayJobId=547 ArrayTaskId=0-1 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901559 Nice=0 Account=root QOS=normal JobState=PENDING Reason=BeginTime Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 "
    "TimeMin=00:02:00 SubmitTime=2026-11-30T17:57:25 EligibleTime=2026-11-30T18:07:25 "
    "AccrueTime=2026-11-30T18:07:25 StartTime=2026-11-30T18:07:25 EndTime=2026-11-30T18:17:25 "
    "Deadline=2026-11-30T18:57:25 SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T17:57:25 "
    "Scheduler=Main Partition=lowpower AllocNode:Sid=localhost:13853 ReqNodeList=(null) ExcNodeList=(null) "
    "NodeList= NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,mem=1G,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 "
    "MinMemoryCPU=1G MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
    "Licenses=(null) Network=(null) Command=(null) WorkDir=/home/alice/project "
    "StdErr=/tmp/hqexp/p_547_4294967294.out "
    "StdIn=/dev/null StdOut=/tmp/hqexp/p_547_4294967294.out Power= \n"
    "JobId=548 ArrayJobId=547 ArrayTaskId=2 JobName=wrap UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901559 Nice=0 Account=root QOS=normal JobState=PENDING Reason=BeginTime Dependency=(null) "
    "Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:00 TimeLimit=00:10:00 "
    "TimeMin=00:02:00 SubmitTime=2026-11-30T17:57:25 EligibleTime=2026-11-30T18:17:25 "
    "AccrueTime=2026-11-30T18:17:25 StartTime=2026-11-30T18:17:25 EndTime=2026-11-30T18:27:25 "
    "Deadline=2026-11-30T18:57:25 SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-11-30T17:57:25 "
    "Scheduler=Main Partition=lowpower AllocNode:Sid=localhost:13853 ReqNodeList=(null) ExcNodeList=(null) "
    "NodeList= NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* "
    "TRES=cpu=1,mem=1G,node=1,billing=1 Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=1 "
    "MinMemoryCPU=1G MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
    "Licenses=(null) Network=(null) Command=(null) WorkDir=/home/alice/project StdErr=/tmp/hqexp/p_547_2.out "
    "StdIn=/dev/null StdOut=/tmp/hqexp/p_547_2.out Power= \n"
)
# `scontrol show job -o 540` for a plain job (trimmed to the keys hpcqueue reads), and what scontrol says
# of a job it no longer knows.
SCONTROL_SHOW_JOB_540 = (
    "JobId=540 JobName=wrap JobState=RUNNING Reason=None TimeLimit=UNLIMITED TimeMin=N/A "
    "SubmitTime=2026-11-30T17:44:33 EligibleTime=2026-11-30T17:44:33 StartTime=2026-11-30T17:44:33 "
    "Deadline=N/A Partition=gpu NodeList=gpu01\n"
)
SCONTROL_INVALID_JOB = "slurm_load_jobs error: Invalid job id specified\n"


@dataclass
class FakeSlurm:
    """Stands in for the Slurm commands: answers each command name with a scripted result, records calls."""

    replies: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    def reply(self, command: str, stdout: str = "", *, returncode: int = 0, stderr: str = "") -> FakeSlurm:
        self.replies.setdefault(command, []).append((returncode, stdout, stderr))
        return self

    def __call__(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        self.kwargs.append(kwargs)
        key = " ".join(args[:3]) if args[0] == "scontrol" else args[0]
        queue = self.replies.get(key)
        if not queue:
            raise FileNotFoundError(2, "No such file or directory", args[0])
        returncode, stdout, stderr = queue.pop(0) if len(queue) > 1 else queue[0]
        return subprocess.CompletedProcess(args, returncode, stdout, stderr)


# ------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:03", 3.0),
        ("02:03:04", 7384.0),
        ("03:04", 184.0),
        ("1-02:03:04", 93784.0),
        ("12-00:00:00", 12 * 86400.0),
        ("2-12", 2 * 86400.0 + 12 * 3600.0),
        ("1-01:30", 86400.0 + 3600.0 + 1800.0),
        ("30", 1800.0),
        ("00:01.500", 1.5),
        ("UNLIMITED", None),
        ("INVALID", None),
        ("Partition_Limit", None),
        ("", None),
        (None, None),
    ],
)
def test_slurm_seconds_reads_every_slurm_form(text: str | None, seconds: float | None) -> None:
    assert slurm.slurm_seconds(text) == seconds


def test_parse_time_reads_local_time(paris_time: None) -> None:
    # 22:30:01 in Paris in November (UTC+1) is 21:30:01 UTC
    assert (
        slurm.parse_time("2026-11-21T22:30:01")
        == datetime.fromisoformat("2026-11-21T21:30:01+00:00").timestamp()
    )
    assert slurm.parse_time("Unknown") is None
    assert slurm.parse_time("None") is None
    assert slurm.parse_time("") is None


def test_format_slurm_time_writes_local_time_as_sbatch_reads_it(paris_time: None) -> None:
    # 21:30:01 UTC is 22:30:01 in Paris in November (UTC+1); fractions of a second are dropped
    epoch = datetime.fromisoformat("2026-11-21T21:30:01.9+00:00").timestamp()
    assert slurm.format_slurm_time(epoch) == "2026-11-21T22:30:01"
    assert slurm.parse_time(slurm.format_slurm_time(epoch)) == int(epoch)


@pytest.mark.parametrize(
    ("job_id", "expected"),
    [
        ("123", ("123", None, None)),
        ("123_4", ("123", 4, None)),
        ("123_[5-9]", ("123", None, [5, 6, 7, 8, 9])),
        ("12_[1-5%2]", ("12", None, [1, 2, 3, 4, 5])),
        ("7_[1,3,10-12]", ("7", None, [1, 3, 10, 11, 12])),
        ("7_[0-6:2]", ("7", None, [0, 2, 4, 6])),
        ("55+1", ("55", None, None)),
    ],
)
def test_split_job_id(job_id: str, expected: tuple[str, int | None, list[int] | None]) -> None:
    assert slurm.split_job_id(job_id) == expected


def test_split_job_id_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a Slurm job id"):
        slurm.split_job_id("abc")


def test_parse_sacct_reads_each_row(paris_time: None) -> None:
    rows = {row.job_id: row for row in slurm.parse_sacct(SACCT_MIXED)}

    assert list(rows) == ["3", "4", "5", "11", "1_0", "1_1", "1_2", "2_0", "2_[1-9]", "12_0", "12_[1-5%2]"]
    assert rows["3"].state == "CANCELLED" and rows["3"].finished and not rows["3"].succeeded
    assert rows["4"].state == "FAILED" and rows["4"].exit_code == "3:0"
    assert rows["5"].succeeded
    assert rows["11"].state == "TIMEOUT" and rows["11"].elapsed_s == 69.0
    assert rows["1_2"] == JobState(
        job_id="1_2",
        array_job_id="1",
        array_task_id=2,
        state="COMPLETED",
        partition="lowpower",
        node="lp01",
        start=datetime.fromisoformat("2026-11-21T23:05:59+01:00").timestamp(),
        end=datetime.fromisoformat("2026-11-21T23:06:00+01:00").timestamp(),
        elapsed_s=1.0,
        exit_code="0:0",
    )
    running = rows["2_0"]
    assert running.state == "RUNNING" and running.end is None and not running.finished
    remainder = rows["2_[1-9]"]
    assert (remainder.array_job_id, remainder.array_task_id) == ("2", None)
    assert remainder.node is None and remainder.start is None and remainder.state == "PENDING"


def test_parse_sacct_failure_states_and_multi_day_elapsed() -> None:
    rows = {row.job_id: row for row in slurm.parse_sacct(SACCT_FAILURES)}

    assert {row.state for row in rows.values()} == {
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
    }
    assert all(row.finished and not row.succeeded for row in rows.values())
    assert all(row.state in slurm.FAILED_STATES for row in rows.values())
    assert rows["7001"].elapsed_s == 2 * 86400 + 2 * 3600 + 4 * 60 + 5
    assert rows["7001"].node == "gpu[03-04]"
    assert rows["7003_4"].array_task_id == 4
    assert rows["7004"].start is None and rows["7005"].node is None


def test_parse_sacct_skips_steps_blank_and_odd_lines(caplog: pytest.LogCaptureFixture) -> None:
    text = (
        "\n"
        "5|COMPLETED|gpu|gpu01|2026-11-21T23:05:59|2026-11-21T23:06:01|00:00:02|0:0\n"
        "5.batch|COMPLETED||gpu01|2026-11-21T23:05:59|2026-11-21T23:06:01|00:00:02|0:0\n"
        "sacct: warning: something\n"
        "weird|RUNNING|gpu|gpu01|Unknown|Unknown|00:00:00|0:0\n"
    )
    with caplog.at_level(logging.WARNING, logger="hpcqueue.dispatch.slurm"):
        rows = slurm.parse_sacct(text)
    assert [row.job_id for row in rows] == ["5"]
    assert "weird" in caplog.text


def test_states_are_normalised() -> None:
    assert slurm.normalise_state("CANCELLED by 1234") == "CANCELLED"
    assert slurm.normalise_state("cancelled+") == "CANCELLED"
    assert slurm.normalise_state("") == "UNKNOWN"
    assert slurm.FAILED_STATES | {"COMPLETED"} == slurm.TERMINAL_STATES
    assert "PENDING" not in slurm.TERMINAL_STATES and "RUNNING" not in slurm.TERMINAL_STATES


def test_expand_remainders_gives_one_pending_state_per_task() -> None:
    states = slurm.expand_remainders(slurm.parse_sacct(SACCT_MIXED))

    assert [f"2_{i}" in states for i in range(10)] == [True] * 10
    assert states["2_0"].state == "RUNNING"
    assert {states[f"2_{i}"].state for i in range(1, 10)} == {"PENDING"}
    assert states["2_7"].array_task_id == 7 and states["2_7"].array_job_id == "2"
    assert sorted(k for k in states if k.startswith("12_")) == [f"12_{i}" for i in range(6)]
    assert "2_[1-9]" not in states and "12_[1-5%2]" not in states


def test_an_explicit_task_line_beats_a_stale_remainder() -> None:
    states = slurm.expand_remainders(slurm.parse_sacct(SACCT_STALE_REMAINDER))

    assert {k: v.state for k, v in states.items()} == {
        "2_3": "COMPLETED",
        "2_4": "RUNNING",
        "2_5": "CANCELLED",
        "2_6": "CANCELLED",
    }
    assert states["2_5"].node == "lp01"


def test_a_requeued_job_keeps_its_latest_record() -> None:
    states = slurm.expand_remainders(slurm.parse_sacct(SACCT_REQUEUED))
    assert list(states) == ["10"]
    assert states["10"].state == "PENDING" and not states["10"].finished


# ------------------------------------------------------------------------------------------- sacct


def test_sacct_makes_one_call_for_many_jobs_and_arrays() -> None:
    fake = FakeSlurm().reply("sacct", SACCT_MIXED)

    states = slurm.sacct(["1", "2_3", "2_7", "3", "4", "11", "12"], runner=fake)

    assert fake.calls == [
        [
            "sacct",
            "-X",
            "-P",
            "-n",
            "--format=JobID,State,Partition,NodeList,Start,End,Elapsed,ExitCode",
            "--jobs=1,2,3,4,11,12",
        ]
    ]
    assert fake.kwargs[0]["env"]["SLURM_TIME_FORMAT"] == "standard"
    assert fake.kwargs[0]["timeout"] > 0
    # whole arrays asked by base id come back task by task; single tasks only as asked
    assert sorted(states) == sorted(
        ["1_0", "1_1", "1_2", "2_3", "2_7", "3", "4", "11"] + [f"12_{i}" for i in range(6)]
    )
    assert states["2_7"].state == "PENDING" and states["12_5"].state == "PENDING"
    assert states["1_1"].succeeded and states["11"].state == "TIMEOUT"


def test_sacct_leaves_out_jobs_it_does_not_know_yet() -> None:
    fake = FakeSlurm().reply(
        "sacct", "5|COMPLETED|gpu|gpu01|2026-11-21T23:05:59|2026-11-21T23:06:01|00:00:02|0:0\n"
    )
    assert list(slurm.sacct(["5", "99"], runner=fake)) == ["5"]


def test_sacct_with_no_ids_runs_nothing() -> None:
    fake = FakeSlurm()
    assert slurm.sacct([], runner=fake) == {}
    assert fake.calls == []


def test_sacct_failure_names_the_command_and_its_stderr() -> None:
    fake = FakeSlurm().reply("sacct", returncode=1, stderr=SACCT_DB_DOWN_STDERR)

    with pytest.raises(SlurmError) as caught:
        slurm.sacct(["5"], runner=fake)

    message = str(caught.value)
    assert "sacct -X -P -n" in message and "--jobs=5" in message
    assert "Problem talking to the database: Connection refused" in message
    assert "slurmdbd" in message
    assert isinstance(caught.value, HpcqueueError)


def test_a_missing_command_says_how_to_get_it() -> None:
    with pytest.raises(SlurmError, match=r"`sacct` was not found on PATH.*login node"):
        slurm.sacct(["5"], runner=FakeSlurm())


def test_a_hung_command_becomes_a_slurm_error() -> None:
    def hung(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(args, kwargs["timeout"])

    with pytest.raises(SlurmError, match=r"did not answer within 60 s"):
        slurm.sacct(["5"], runner=hung)


# ----------------------------------------------------------------------------------------- scontrol, scancel


def test_scontrol_config_and_max_array_size() -> None:
    fake = FakeSlurm().reply("scontrol show config", SCONTROL_CONFIG)

    config = slurm.scontrol_config(runner=fake)
    assert config["SLURM_VERSION"] == "22.05.8"
    assert config["SchedulerParameters"] == "batch_sched_delay=0,sched_min_interval=100000"
    assert config["TaskProlog"] == "(null)"
    # the main section wins over a later section that repeats a name
    assert slurm.max_array_size(runner=fake) == 40001
    assert fake.calls[0] == ["scontrol", "show", "config"]


def test_max_array_size_defaults_to_slurms_default() -> None:
    fake = FakeSlurm().reply("scontrol show config", "ClusterName = x\n")
    assert slurm.max_array_size(runner=fake) == 1001


def test_partition_info_and_time_limit() -> None:
    fake = (
        FakeSlurm()
        .reply("scontrol show partition", SCONTROL_PARTITION_GPU)
        .reply("scontrol show partition", SCONTROL_PARTITION_LOWPOWER)
    )

    info = slurm.partition_info("gpu", runner=fake)
    assert info["Nodes"] == "gpu[01-04]" and info["TRES"] == "cpu=2,mem=9642M,node=1,billing=2,gres/gpu=2"
    assert fake.calls == [["scontrol", "show", "partition", "gpu", "-o"]]
    assert slurm.partition_time_limit_min("lowpower", runner=fake) is None


def test_partition_time_limit_in_minutes() -> None:
    fake = FakeSlurm().reply("scontrol show partition", SCONTROL_PARTITION_GPU)
    assert slurm.partition_time_limit_min("gpu", runner=fake) == 36 * 60


def test_unknown_partition_lists_the_ones_that_exist() -> None:
    fake = (
        FakeSlurm()
        .reply("scontrol show partition", "Partition nope not found\n", returncode=1)
        .reply("scontrol show partition", SCONTROL_PARTITION_GPU + SCONTROL_PARTITION_LOWPOWER)
    )
    with pytest.raises(SlurmError, match=r"no partition 'nope'\. Partitions on this cluster: gpu, lowpower"):
        slurm.partition_info("nope", runner=fake)


def test_scancel_cancels_all_in_one_call() -> None:
    fake = FakeSlurm().reply("scancel")
    slurm.scancel(["12", "13_4", "14"], runner=fake)
    slurm.scancel([], runner=fake)
    assert fake.calls == [["scancel", "12", "13_4", "14"]]


def test_parse_show_jobs_gives_one_record_per_array_element() -> None:
    jobs = slurm.parse_show_jobs(SCONTROL_SHOW_JOB_547 + SCONTROL_SHOW_JOB_540)
    assert sorted(jobs) == ["540", "547_0", "547_1", "547_2"]
    assert [jobs[f"547_{i}"]["ArrayTaskId"] for i in range(3)] == ["0", "1", "2"]
    assert {jobs[f"547_{i}"]["JobState"] for i in range(3)} == {"PENDING"}
    assert jobs["547_0"]["EligibleTime"] == jobs["547_1"]["EligibleTime"] == "2026-11-30T18:07:25"
    assert jobs["547_2"]["EligibleTime"] == "2026-11-30T18:17:25"  # moved on its own
    assert jobs["547_2"]["JobId"] == "548" and jobs["547_2"]["Deadline"] == "2026-11-30T18:57:25"
    assert jobs["547_2"]["TimeMin"] == "00:02:00" and jobs["547_2"]["Reason"] == "BeginTime"
    assert jobs["540"]["JobState"] == "RUNNING" and "ArrayTaskId" not in jobs["540"]
    remainder = "JobId=12 ArrayJobId=12 ArrayTaskId=1-5:2%2 JobState=PENDING\n"
    assert sorted(slurm.parse_show_jobs(remainder)) == ["12_1", "12_3", "12_5"]
    assert slurm.parse_show_jobs("\nslurm_load_jobs error: something\n") == {}


def test_show_jobs_asks_once_per_array_and_leaves_out_forgotten_jobs() -> None:
    fake = FakeSlurm()  # answers in the order asked: by id length, then id
    fake.reply("scontrol show job", returncode=1, stderr=SCONTROL_INVALID_JOB)
    fake.reply("scontrol show job", SCONTROL_SHOW_JOB_540)
    fake.reply("scontrol show job", SCONTROL_SHOW_JOB_547)
    jobs = slurm.show_jobs(["547_2", "540", "547_0", "99"], runner=fake)
    assert fake.calls == [
        ["scontrol", "show", "job", "-o", "99"],
        ["scontrol", "show", "job", "-o", "540"],
        ["scontrol", "show", "job", "-o", "547"],  # one call for both elements of the array
    ]
    assert sorted(jobs) == ["540", "547_0", "547_2"]  # 547_1 was not asked for; 99 is forgotten
    assert fake.kwargs[0]["env"]["SLURM_TIME_FORMAT"] == "standard"
    assert slurm.show_jobs([], runner=fake) == {} and len(fake.calls) == 3


def test_show_jobs_of_a_whole_array_returns_every_element() -> None:
    fake = FakeSlurm().reply("scontrol show job", SCONTROL_SHOW_JOB_547)
    assert sorted(slurm.show_jobs(["547"], runner=fake)) == ["547_0", "547_1", "547_2"]


def test_show_jobs_reports_a_controller_that_does_not_answer() -> None:
    fake = FakeSlurm().reply(
        "scontrol show job", returncode=1, stderr="slurm_load_jobs error: Unable to contact slurm controller"
    )
    with pytest.raises(SlurmError, match=r"(?s)Unable to contact.*scontrol ping"):
        slurm.show_jobs(["547"], runner=fake)


def test_scontrol_update_begin_moves_every_job_in_one_call(paris_time: None) -> None:
    fake = FakeSlurm().reply("scontrol update JobId=547_1,547_2,560")
    begin = datetime.fromisoformat("2026-11-22T01:00:00.2+00:00").timestamp()
    slurm.scontrol_update_begin(["547_1", " 547_2", "560"], begin, runner=fake)
    slurm.scontrol_update_begin([], begin, runner=fake)
    # rounded up to the second (never start before the planned time), in Paris time
    assert fake.calls == [["scontrol", "update", "JobId=547_1,547_2,560", "StartTime=2026-11-22T02:00:01"]]


def test_scontrol_update_begin_says_which_job_could_not_move() -> None:
    # recorded: element 0 of array 536 was pending and moved; job 540 had started
    fake = FakeSlurm().reply(
        "scontrol update JobId=536_0,540",
        returncode=1,
        stderr="Job is no longer pending execution for job 540\n",
    )
    with pytest.raises(
        SlurmError, match=r"(?s)no longer pending execution for job 540.*other ids were moved"
    ):
        slurm.scontrol_update_begin(["536_0", "540"], time.time() + 600, runner=fake)


@pytest.mark.parametrize(
    ("command", "stderr", "message", "call"),
    [
        (
            "scontrol show config",
            "slurm_load_ctl_conf error: Unable to contact slurm controller (connect failure)",
            r"(?s)Unable to contact slurm controller.*scontrol ping",
            lambda runner: slurm.scontrol_config(runner=runner),
        ),
        (
            "scancel",
            "scancel: error: Kill job error on job id 12: Access/permission denied",
            r"(?s)permission denied.*squeue --me",
            lambda runner: slurm.scancel(["12"], runner=runner),
        ),
    ],
    ids=["scontrol-says-to-check-slurmctld", "scancel-failure-is-reported"],
)
def test_slurm_command_failures_say_what_to_check(
    command: str, stderr: str, message: str, call: Callable[[FakeSlurm], object]
) -> None:
    fake = FakeSlurm().reply(command, returncode=1, stderr=stderr)
    with pytest.raises(SlurmError, match=message):
        call(fake)


def test_slurm_available_says_what_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    ok, why = slurm.slurm_available()
    assert not ok and "sbatch and sacct not found on PATH" in why

    for name in ("sbatch", "sacct"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    assert slurm.slurm_available() == (True, "")


# ------------------------------------------------------------------------------------------- poller


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


RUNNING_5 = "5|RUNNING|gpu|gpu01|2026-11-21T23:05:59|Unknown|00:00:02|0:0\n"
DONE_5 = "5|COMPLETED|gpu|gpu01|2026-11-21T23:05:59|2026-11-21T23:06:01|00:00:02|0:0\n"


def test_poller_calls_at_most_once_per_interval_and_backs_off() -> None:
    fake = FakeSlurm().reply("sacct", RUNNING_5)
    clock = FakeClock()
    poller = SacctPoller(min_interval_s=5, max_interval_s=12, runner=fake, clock=clock)

    call_times = []
    for _ in range(120):  # ask every 0.5 s for 60 s
        before = len(fake.calls)
        assert poller.states(["5"])["5"].state == "RUNNING"
        if len(fake.calls) > before:
            call_times.append(clock.now - 1000.0)
        clock.now += 0.5

    gaps = [b - a for a, b in itertools.pairwise(call_times)]
    # first call at once; then 5 s, 7.5 s, 11.25 s, then capped at 12 s
    assert call_times[0] == 0.0
    assert gaps[:3] == [5.0, 7.5, 11.5]  # 11.25 rounded up to the next 0.5 s tick
    assert all(gap == 12.0 for gap in gaps[3:])
    assert len(fake.calls) == poller.num_calls == len(call_times)


def test_poller_resets_its_interval_when_a_state_changes() -> None:
    fake = FakeSlurm().reply("sacct", RUNNING_5).reply("sacct", RUNNING_5).reply("sacct", DONE_5)
    clock = FakeClock()
    poller = SacctPoller(min_interval_s=5, max_interval_s=60, runner=fake, clock=clock)

    poller.states(["5"])
    clock.now += 5
    poller.states(["5"])
    assert poller.interval_s == 7.5  # the first call saw a new job; the second saw no change
    clock.now += 7.5
    assert poller.states(["5"])["5"].succeeded
    assert poller.interval_s == 5


def test_poller_does_not_ask_again_about_finished_jobs() -> None:
    fake = FakeSlurm().reply("sacct", DONE_5)
    clock = FakeClock()
    poller = SacctPoller(runner=fake, clock=clock)

    for _ in range(10):
        assert poller.states(["5"])["5"].succeeded
        clock.now += 100
    assert len(fake.calls) == 1


def test_poller_force_calls_now() -> None:
    fake = FakeSlurm().reply("sacct", RUNNING_5).reply("sacct", DONE_5)
    poller = SacctPoller(runner=fake, clock=FakeClock())

    assert poller.states(["5"])["5"].state == "RUNNING"
    assert poller.states(["5"])["5"].state == "RUNNING"
    assert poller.states(["5"], force=True)["5"].state == "COMPLETED"
    assert len(fake.calls) == 2


def test_poller_asks_about_new_jobs_after_the_minimum_interval_only() -> None:
    fake = FakeSlurm().reply("sacct", RUNNING_5)
    clock = FakeClock()
    poller = SacctPoller(min_interval_s=5, max_interval_s=60, runner=fake, clock=clock)
    for _ in range(4):  # back off to 16.875 s
        poller.states(["5"], force=True)
    clock.now += 5
    poller.states(["5"])
    assert len(fake.calls) == 4
    poller.states(["5", "6"])
    assert len(fake.calls) == 5 and fake.calls[-1][-1] == "--jobs=5,6"


def test_poller_array_ids_return_every_task_and_only_elements_asked_by_id_settle() -> None:
    """slurmctld hands an array's elements to slurmdbd one by one and late: sacct may answer for an array
    with only some of its elements, all finished, while others are still to come. An array asked as a whole is
    therefore asked about again; its elements asked by id settle once finished."""
    pending = "1_0|RUNNING|lowpower|lp01|2026-11-21T23:05:58|Unknown|00:00:01|0:0\n" + (
        "1_[1-2]|PENDING|lowpower|None assigned|Unknown|Unknown|00:00:00|0:0\n"
    )
    done = "".join(line + "\n" for line in SACCT_MIXED.splitlines() if line.startswith("1_"))
    fake = FakeSlurm().reply("sacct", pending).reply("sacct", done)
    clock = FakeClock()
    poller = SacctPoller(runner=fake, clock=clock)

    assert {k: v.state for k, v in poller.states(["1"]).items()} == {
        "1_0": "RUNNING",
        "1_1": "PENDING",
        "1_2": "PENDING",
    }
    clock.now += 5
    assert all(s.succeeded for s in poller.states(["1"]).values())
    clock.now += 500
    fake.reply("sacct", done)
    assert all(s.succeeded for s in poller.states(["1"]).values())
    assert len(fake.calls) == 3  # the whole array is asked again
    clock.now += 500
    assert all(s.succeeded for s in poller.states(["1_0", "1_1", "1_2"]).values())
    assert len(fake.calls) == 3  # its elements are settled


def test_poller_asks_again_about_an_array_listed_with_only_some_elements() -> None:
    """Seen on a loaded machine: an array of three instant elements is listed for a while as its last element
    alone (the array's own record), finished. The poller asks again until the others appear."""
    last_only = "2507_2|COMPLETED|lowpower|lp01|2026-11-21T23:30:06|2026-11-21T23:30:06|00:00:00|0:0\n"
    every = "".join(
        f"2507_{i}|COMPLETED|lowpower|lp01|2026-11-21T23:30:06|2026-11-21T23:30:06|00:00:00|0:0\n"
        for i in range(3)
    )
    fake = FakeSlurm().reply("sacct", last_only).reply("sacct", last_only).reply("sacct", every)
    clock = FakeClock()
    poller = SacctPoller(min_interval_s=1, max_interval_s=2, runner=fake, clock=clock)
    seen = []
    for _ in range(4):
        seen.append(sorted(poller.states(["2507"])))
        clock.now += 2
    assert seen == [["2507_2"], ["2507_2"], ["2507_0", "2507_1", "2507_2"], ["2507_0", "2507_1", "2507_2"]]
    assert len(fake.calls) == 4


def test_poller_turns_sacct_failures_into_warnings(caplog: pytest.LogCaptureFixture) -> None:
    fake = (
        FakeSlurm()
        .reply("sacct", RUNNING_5)
        .reply("sacct", returncode=1, stderr=SACCT_DB_DOWN_STDERR)
        .reply("sacct", DONE_5)
    )
    clock = FakeClock()
    poller = SacctPoller(min_interval_s=5, runner=fake, clock=clock)

    poller.states(["5"])
    clock.now += 60
    with caplog.at_level(logging.WARNING, logger="hpcqueue.dispatch.slurm"):
        states = poller.states(["5"])
    assert states["5"].state == "RUNNING"  # the last known state
    assert "Problem talking to the database" in caplog.text
    clock.now += 60
    assert poller.states(["5"])["5"].succeeded


# ------------------------------------------------------------------------------------------- real Slurm


@pytest.mark.slurm
def test_real_array_is_seen_through_sacct(real_slurm: None, tmp_path: Path) -> None:
    log = str(tmp_path / "slurm-%A_%a.out")
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--array=0-2", "-p", "lowpower", "--output", log, "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    array_id = submitted.stdout.strip().split(";")[0]
    poller = SacctPoller(min_interval_s=0.5, max_interval_s=2)
    # slurmctld hands job records to slurmdbd asynchronously: on a loaded machine an array element can take
    # a minute to appear in sacct (status.py allows 10 minutes before calling a task lost).
    deadline = time.monotonic() + 240
    states: dict[str, JobState] = {}
    while time.monotonic() < deadline:
        states = poller.states([array_id])
        if len(states) == 3 and all(s.finished for s in states.values()):
            break
        time.sleep(0.5)
    assert sorted(states) == [f"{array_id}_{i}" for i in range(3)], states
    assert all(s.succeeded and s.partition == "lowpower" for s in states.values()), states
    assert all(s.end is not None and s.start is not None and s.end >= s.start for s in states.values())
    # one sacct call answers for a single task as well
    assert slurm.sacct([f"{array_id}_1"])[f"{array_id}_1"].succeeded


@pytest.mark.slurm
def test_real_cluster_limits(real_slurm: None) -> None:
    assert slurm.slurm_available() == (True, "")
    assert slurm.max_array_size() > 0
    limit = slurm.partition_time_limit_min("gpu")
    assert limit is None or limit > 0
    with pytest.raises(SlurmError, match="lowpower"):
        slurm.partition_info("no-such-partition")


def test_poller_does_not_trust_an_incomplete_record_of_a_just_finished_array() -> None:
    """Seen on Slurm 22.05: right after a fast array ends, sacct may list it once as a plain job with no
    partition; the next call lists its tasks. The poller must ask again and drop the incomplete record."""
    incomplete = "89|COMPLETED||lp01|2026-11-21T23:30:06|2026-11-21T23:30:06|00:00:00|0:0\n"
    complete = "".join(
        f"89_{i}|COMPLETED|lowpower|lp01|2026-11-21T23:30:06|2026-11-21T23:30:07|00:00:01|0:0\n"
        for i in range(3)
    )
    fake = FakeSlurm().reply("sacct", incomplete).reply("sacct", complete)
    clock = FakeClock()
    poller = SacctPoller(min_interval_s=1, runner=fake, clock=clock)
    assert list(poller.states(["89"])) == ["89"]
    clock.now += 1
    assert sorted(poller.states(["89"])) == ["89_0", "89_1", "89_2"]
    clock.now += 100
    fake.reply("sacct", complete)
    assert all(s.partition == "lowpower" for s in poller.states(["89"]).values())
    assert "89" not in poller.states(["89"])  # the incomplete record is gone for good
