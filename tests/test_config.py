"""Settings precedence and config validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcqueue.config import Settings, Target, resolve
from hpcqueue.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_embedded_default_is_one_local_target(tmp_path: Path) -> None:
    settings = resolve(None, environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert list(settings.targets) == ["local"]
    assert settings.targets["local"].executor == "local"
    assert settings.model == "hpcqueue-demo"


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config = _write(tmp_path, "max_new_tokens = 100\ntask_size = 10\nbatch_size = 4\n")
    env = {"HPCQUEUE_TASK_SIZE": "20", "HPCQUEUE_BATCH_SIZE": "8"}
    settings = resolve(config, flags={"batch_size": 2, "model": None}, environ=env)
    assert settings.max_new_tokens == 100  # file beats default
    assert settings.task_size == 20  # env beats file
    assert settings.batch_size == 2  # flag beats env
    assert settings.model == "hpcqueue-demo"  # a flag left out (None) does not override
    assert settings.config_path == config.resolve()


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = _write(tmp_path, 'model = "some/model"\n')
    assert resolve(None, environ={"HPCQUEUE_CONFIG": str(config)}).model == "some/model"


def test_targets_get_their_table_name_and_relative_paths_resolve(tmp_path: Path) -> None:
    config = _write(
        tmp_path,
        'batch_root = "runs"\n'
        '[targets.gpu]\nexecutor = "slurm"\npartition = "gpu"\nhardware = "a100-40g"\ngres = "gpu:1"\n'
        '[targets.lowpower]\nexecutor = "slurm"\npartition = "lowpower"\n',
    )
    settings = resolve(config, environ={})
    assert settings.targets["gpu"] == Target(
        name="gpu", executor="slurm", partition="gpu", hardware="a100-40g", gres="gpu:1"
    )
    assert settings.batch_root == (tmp_path / "runs").resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[targets.gpu]\nexecutor = 'slurm'\n",
            "targets.gpu: a target with executor 'slurm' needs a 'partition'",
        ),
        ("[targets.gpu]\nexecutor = 'pbs'\n", "targets.gpu.executor"),
        ("task_size = 0\n", "task_size"),
        ("max_new_tokens = 10\nmax_new_tokens_limit = 5\n", "exceeds max_new_tokens_limit"),
        ("colour = 'blue'\n", "colour: unknown key; valid keys:"),
        ("task_size = [\n", "not valid TOML"),
    ],
)
def test_invalid_configs_name_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    config = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        resolve(config, environ={})
    assert str(config) in str(info.value)
    assert expected in str(info.value)


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="environment HPCQUEUE_TASK_SIZE: task_size"):
        resolve(None, environ={"HPCQUEUE_TASK_SIZE": "many", "XDG_CONFIG_HOME": str(tmp_path)})


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        resolve("/nonexistent/cluster.toml", environ={})


def test_unknown_target_lookup_lists_targets() -> None:
    with pytest.raises(ConfigError, match="targets in this config: local"):
        Settings().target("gpu")


def test_lambda_and_deadline_from_file_environment_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('lambda = 0.25\ndeadline = "1h30m"\n')
    settings = resolve(config, environ={})
    assert settings.lambda_ == 0.25 and settings.deadline_s == 5400.0
    settings = resolve(config, environ={"HPCQUEUE_LAMBDA": "0.5", "HPCQUEUE_DEADLINE": "2d"})
    assert settings.lambda_ == 0.5 and settings.deadline_s == 2 * 86400.0
    settings = resolve(config, flags={"lambda": 0.0, "deadline": "45m"}, environ={})
    assert settings.lambda_ == 0.0 and settings.deadline_s == 2700.0
    assert resolve(None, flags={"deadline": 600}, environ={}).deadline_s == 600.0
    assert resolve(None, environ={}).lambda_ == 1.0 and resolve(None, environ={}).deadline_s is None


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"lambda": 1.5}, "option --lambda: lambda: Input should be less than or equal to 1"),
        ({"deadline": "soon"}, "option --deadline: deadline: not a duration: 'soon'"),
        ({"deadline": "8x"}, "not a duration: '8x'"),
        ({"deadline": "-5"}, "deadline: Input should be greater than 0"),
    ],
)
def test_bad_lambda_or_deadline_names_the_option(flags: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(None, flags=flags, environ={})
    assert expected in str(info.value)


def test_unknown_key_lists_lambda_and_deadline_by_their_config_names(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("lamda = 0.5\n")
    with pytest.raises(ConfigError) as info:
        resolve(config, environ={})
    message = str(info.value)
    assert "lamda: unknown key" in message
    keys = message.split("valid keys: ")[1].split(", ")
    assert "deadline" in keys and "lambda" in keys and "lambda_" not in keys


ENGINES_CONFIG = """
[targets.cpu]
executor = "local"

[targets.gpu]
executor = "slurm"
partition = "gpu"
gpus_per_node = 2
engine = "vllm"
python = "/opt/venvs/vllm/bin/python"
gpu_memory_utilization = 0.85
max_model_len = 4096
"""


def test_engines_per_target_with_the_top_level_default(tmp_path: Path) -> None:
    config = _write(tmp_path, ENGINES_CONFIG)
    settings = resolve(config, environ={})
    assert (settings.engine_of("cpu"), settings.engine_of("gpu")) == ("transformers", "vllm")
    gpu = settings.targets["gpu"]
    assert (gpu.python, gpu.gpu_memory_utilization, gpu.max_model_len) == (
        "/opt/venvs/vllm/bin/python",
        0.85,
        4096,
    )
    # a top-level engine in the file is the default of targets that name none; theirs stays
    settings = resolve(_write(tmp_path, 'engine = "vllm"\n' + ENGINES_CONFIG), environ={})
    assert (settings.engine_of("cpu"), settings.engine_of("gpu")) == ("vllm", "vllm")


@pytest.mark.parametrize("source", ["flag", "env"])
def test_engine_asked_for_on_the_command_line_or_environment_applies_to_every_target(
    tmp_path: Path, source: str
) -> None:
    config = _write(tmp_path, ENGINES_CONFIG)
    if source == "flag":
        settings = resolve(config, flags={"engine": "transformers"}, environ={"HPCQUEUE_ENGINE": "vllm"})
        expected = "transformers"  # the flag beats the environment
    else:
        settings = resolve(config, environ={"HPCQUEUE_ENGINE": "vllm"})
        expected = "vllm"
    assert {settings.engine_of(name) for name in settings.targets} == {expected}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[targets.a]\nengine = "tgi"\n', "targets.a.engine: Input should be 'transformers' or 'vllm'"),
        ('[targets.a]\npython = "venv/bin/python"\n', "python must be an absolute path"),
        ('[targets.a]\npython = "/venv/bin/python\\nrm -rf ~"\n', "control character"),
        ("[targets.a]\ngpu_memory_utilization = 1.5\n", "targets.a.gpu_memory_utilization"),
        ("[targets.a]\nmax_model_len = 0\n", "targets.a.max_model_len"),
    ],
)
def test_bad_engine_settings_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(_write(tmp_path, text), environ={})
    assert expected in str(info.value)


def test_a_bad_engine_flag_lists_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="option --engine: engine: Input should be 'transformers' or 'vllm'"
    ):
        resolve(None, flags={"engine": "tgi"}, environ={"XDG_CONFIG_HOME": str(tmp_path)})
