"""Hostile values on their way into an sbatch script: refused with an error naming the file and the field, or
written so that the shell and sbatch read them back intact.

submitit writes each parameter as an ``#SBATCH --key=<value>`` line with the value quoted for the shell, and
the job folder into those lines and into the command. Quoting keeps ``$(...)``, backticks, quotes and ``;`` as
data; a newline would end the ``#SBATCH`` comment and run the rest of the value as a command, so it must
never reach the script. The scripts here are rendered by submitit itself and run by bash (with a stand-in
``srun``), and a canary file shows whether anything ran.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from hpcqueue.config import Settings, resolve
from hpcqueue.dispatch.executor import JobSpec, check_script_values, executor_parameters
from hpcqueue.errors import ConfigError


def _canary(tmp_path: Path) -> Path:
    return tmp_path / f"pwned-{uuid.uuid4().hex[:8]}"


def _hostile(canary: Path) -> dict[str, str]:
    """Printable values a shell would act on if they were not quoted."""
    return {
        "partition": f"gpu$(touch {canary})",
        "account": f"acct`touch {canary}`",
        "qos": f"normal; touch {canary}",
        "constraint": 'it\'s "quoted" & $HOME/* ${IFS}',
        "gres": f"gpu:1|touch {canary}",
    }


def _config(tmp_path: Path, target: str, fields: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """A config file with one Slurm target; values are written as TOML basic strings (JSON's escapes)."""
    lines = [f"[targets.{json.dumps(target)}]", 'executor = "slurm"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in fields.items()]
    if extra:
        pairs = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in extra.items())
        lines.append("extra_sbatch = {" + pairs + "}")
    path = tmp_path / "cluster config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _render(parameters: dict[str, Any], folder: Path) -> str:
    """The sbatch script submitit writes for these executor parameters (what ``sbatch`` is handed)."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**parameters)
    inner = executor._executor
    return str(inner._make_submission_file_text(inner._submitit_command_str, "uid"))


def _sbatch_options(script: str) -> dict[str, str]:
    """``{option: value}`` of the script's ``#SBATCH`` lines, each read back as one shell word."""
    options: dict[str, str] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH"):
            words = shlex.split(line.removeprefix("#SBATCH"))
            assert len(words) == 1, f"an #SBATCH line split into {words}"
            key, _, value = words[0].removeprefix("--").partition("=")
            options[key] = value
    return options


def _run_script(script: str, tmp_path: Path) -> Path:
    """Run the script with bash, a stand-in ``srun`` recording its arguments; returns that record."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "srun-args"
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {shlex.quote(str(record))}\n', encoding="utf-8")
    srun.chmod(0o755)
    path = tmp_path / "job.sh"
    path.write_text(script, encoding="utf-8")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["bash", str(path)], env=env, check=True, timeout=30, cwd=tmp_path)
    return record


def test_hostile_target_values_reach_the_script_as_data_and_run_nothing(tmp_path: Path) -> None:
    canary = _canary(tmp_path)
    fields = _hostile(canary)
    extra = {"mail-user": f"me@$(touch {canary}).org", "reservation": "a'b\"c`d`"}
    settings = resolve(_config(tmp_path, "my gpu", fields, extra), environ={})
    target = settings.target("my gpu")
    folder = tmp_path / "batch root 'q' $(touch x)" / "logs" / "my gpu" / "%j"
    parameters = executor_parameters(target)
    parameters["slurm_comment"] = f"hpcqueue:`touch {canary}`"
    check_script_values(JobSpec(folder=folder, cluster="slurm", parameters=parameters, what="a test job"))

    script = _render(parameters, folder)
    options = _sbatch_options(script)
    for key, value in fields.items():
        assert options[key] == value
    assert options["mail-user"] == extra["mail-user"] and options["reservation"] == extra["reservation"]
    assert options["job-name"] == "hpcqueue-my gpu"
    assert options["comment"] == f"hpcqueue:`touch {canary}`"
    assert options["output"].startswith(str(folder))

    srun_args = _run_script(script, tmp_path).read_text(encoding="utf-8").splitlines()
    assert str(folder) in srun_args  # the folder reaches the command as one argument
    assert not canary.exists()


@pytest.mark.parametrize("field", ["partition", "account", "qos", "constraint", "gres"])
@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x00", "\x1b"])
def test_a_control_character_in_an_sbatch_field_is_refused_naming_the_file_and_field(
    tmp_path: Path, field: str, char: str
) -> None:
    fields = {"partition": "gpu", field: f"gpu{char}touch /tmp/never"}
    path = _config(tmp_path, "gpu", fields)
    with pytest.raises(ConfigError) as caught:
        resolve(path, environ={})
    message = str(caught.value)
    assert str(path) in message
    assert f"targets.gpu.{field}" in message
    assert "control character" in message and repr(char) in message


def test_extra_sbatch_keys_and_values_are_checked(tmp_path: Path) -> None:
    bad_value = _config(tmp_path, "gpu", {"partition": "gpu"}, {"comment": "x\n$(touch /tmp/never)"})
    with pytest.raises(ConfigError, match=r"targets\.gpu\.extra_sbatch: extra_sbatch\.comment holds control"):
        resolve(bad_value, environ={})
    for key in ("wrap x", "--begin", "a=b", "x\ny", "../x"):
        path = _config(tmp_path, "gpu", {"partition": "gpu"}, {key: "1"})
        with pytest.raises(ConfigError, match="is not an sbatch option name") as caught:
            resolve(path, environ={})
        assert str(path) in str(caught.value)
    backslash = _config(tmp_path, "gpu", {"partition": "gpu", "account": "a\\b"})
    with pytest.raises(ConfigError, match=r"targets\.gpu\.account: account holds a backslash"):
        resolve(backslash, environ={})


def test_a_newline_past_the_config_would_run_and_is_refused_before_the_script(tmp_path: Path) -> None:
    """What the checks guard against, shown on submitit's own script: a newline in a value ends the #SBATCH
    comment and bash runs the rest. The executor's last check refuses it, whatever the value's origin."""
    canary = _canary(tmp_path)
    parameters = executor_parameters(Settings().target("local"))
    parameters["slurm_comment"] = f"x\ntouch {canary} #"
    _run_script(_render(parameters, tmp_path / "logs"), tmp_path)
    assert canary.exists()  # the unchecked value did run: this is the attack
    canary.unlink()

    job = JobSpec(folder=tmp_path / "logs", cluster="slurm", parameters=parameters, what="the test array")
    with pytest.raises(ConfigError, match=r"cannot submit the test array: slurm_comment holds control"):
        check_script_values(job)
    for bad in (
        JobSpec(folder=tmp_path / "a\nb", cluster="slurm", parameters={}, what="x"),
        JobSpec(tmp_path, "slurm", parameters={"slurm_additional_parameters": {"a b": 1}}, what="x"),
        JobSpec(folder=tmp_path / "a\\b", cluster="slurm", parameters={}, what="x"),
    ):
        with pytest.raises(ConfigError, match="cannot submit x"):
            check_script_values(bad)
    assert not canary.exists()


@pytest.mark.parametrize(
    "name",
    ["../../etc", "a/b", ".hidden", "-rf", "x\ny", "$(touch c)", "a`b`", "a;b", "tab\tx", "x" * 65, "", "x "],
)
def test_target_and_site_names_outside_the_safe_pattern_are_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[targets.{json.dumps(name)}]\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        resolve(path, environ={})
    message = str(caught.value)
    assert str(path) in message and ".name: a target's name" in message and "letters, digits" in message

    path.write_text(f"[sites.{json.dumps(name)}]\ncarbon = 100\n[targets.t]\nsite = {json.dumps(name)}\n")
    with pytest.raises(ConfigError, match="a site's name") as caught:
        resolve(path, environ={})
    assert str(path) in str(caught.value)


def test_names_with_spaces_dots_and_dashes_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[sites."North Hall-2"]\ncarbon = 100\n[targets."a100 node.v2_x+y"]\nsite = "North Hall-2"\n'
    )
    settings = resolve(path, environ={})
    assert list(settings.targets) == ["a100 node.v2_x+y"]
    assert settings.targets["a100 node.v2_x+y"].site == "North Hall-2"


def test_a_profile_name_cannot_climb_out_of_the_profile_directories(tmp_path: Path) -> None:
    from hpcqueue.errors import PlanningError
    from hpcqueue.profiles.store import find_profile

    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "meta.json").write_text("{}")
    root = tmp_path / "profiles"
    root.mkdir()
    with pytest.raises(PlanningError, match="is not a profile name"):
        find_profile("../secret", [root])
    path = tmp_path / "c.toml"
    path.write_text('[targets.t]\nprofile = "../secret"\n')
    with pytest.raises(ConfigError, match=r"targets\.t\.profile: profile name '\.\./secret' is not allowed"):
        resolve(path, environ={})


def test_the_package_never_hands_a_command_line_to_a_shell() -> None:
    """Commands are argument lists: no ``shell=True``, ``os.system`` or ``os.popen`` anywhere in hpcqueue."""
    import ast

    import hpcqueue

    offenders = []
    for path in Path(hpcqueue.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            shell_false = isinstance(node, ast.keyword) and getattr(node.value, "value", None) is False
            if isinstance(node, ast.keyword) and node.arg == "shell" and not shell_false:
                offenders.append(f"{path.name}:{node.lineno}: shell=")
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and node.attr in ("system", "popen")
            ):
                offenders.append(f"{path.name}:{node.lineno}: os.{node.attr}")
    assert offenders == []
