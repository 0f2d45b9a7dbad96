"""Which cost model a target gets: a profile of the target's engine, else the analytic model, said so."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcqueue.config import Settings, Target, resolve
from hpcqueue.planner import resolve_cost_models
from hpcqueue.profiles import Profile, find_profile, save_profile

SHIPPED = [Path(__file__).resolve().parents[2] / "profiles"]
MODEL = "llama-2-7b"  # an architecture the analytic model knows by name
HF = "llama-2-7b.gpu.a100-40g"
VLLM = "llama-2-7b.gpu.a100-40g-vllm"


def _profile(root: Path, name: str, engine: str) -> None:
    """A profile of MODEL on a100-40g measured with ``engine`` (the shipped Swing points, relabelled)."""
    shipped = find_profile("llama-2-7b-chat.swing-a100.wilkins2024", SHIPPED)
    meta = shipped.meta.model_copy(
        update={"name": name, "model": MODEL, "model_aliases": [], "engine": engine, "source": "measured"}
    )
    save_profile(Profile(meta=meta, points=shipped.points), root)


@pytest.fixture()
def profiles(tmp_path: Path) -> Path:
    root = tmp_path / "profiles"
    _profile(root, HF, "transformers")
    _profile(root, VLLM, "vllm")
    return root


def _chosen(models: dict[str, object]) -> dict[str, tuple[str, str]]:
    return {name: (m.method, m.profile_name) for name, m in models.items()}  # type: ignore[attr-defined]


def test_each_target_gets_the_profile_of_its_own_engine(profiles: Path) -> None:
    targets = [
        Target(name="hf", hardware="a100-40g"),
        Target(name="fast", hardware="a100-40g", engine="vllm"),
    ]
    notes: list[str] = []
    models = resolve_cost_models(targets, MODEL, [profiles], notes)
    assert _chosen(models) == {"hf": ("profile", HF), "fast": ("profile", VLLM)}
    assert not any("profiles match" in note for note in notes)  # one profile per engine: no choice to report

    # the top-level engine (Settings.engine) is the engine of targets that name none
    models = resolve_cost_models(targets, MODEL, [profiles], default_engine="vllm")
    assert _chosen(models) == {"hf": ("profile", VLLM), "fast": ("profile", VLLM)}


def test_without_a_profile_of_its_engine_a_target_is_predicted_by_the_analytic_model(tmp_path: Path) -> None:
    root = tmp_path / "profiles"
    _profile(root, HF, "transformers")
    notes: list[str] = []
    models = resolve_cost_models(
        [Target(name="fast", hardware="a100-40g", engine="vllm")], MODEL, [root], notes
    )
    model = models["fast"]
    assert model is not None and model.method == "analytic"
    [note] = notes
    assert note.startswith(
        "target 'fast': no vllm profile of 'llama-2-7b' on 'a100-40g'; predicted by the analytic model "
        "(analytic:"
    )
    # the transformers profile is not used, and the note says so and what to do
    assert f"{HF} (transformers)" in note and "hpcqueue profile fast --engine vllm" in note


def test_a_profile_named_by_the_target_is_used_even_of_another_engine_with_a_warning(profiles: Path) -> None:
    notes: list[str] = []
    target = Target(name="fast", hardware="a100-40g", engine="vllm", profile=HF)
    models = resolve_cost_models([target], MODEL, [profiles], notes)
    assert _chosen(models) == {"fast": ("profile", HF)}
    [mismatch] = [note for note in notes if "measured with" in note]
    assert mismatch.startswith(
        f"target 'fast' runs vllm, but its profile '{HF}' was measured with transformers"
    )
    assert "hpcqueue profile fast --engine vllm" in mismatch

    notes.clear()
    resolve_cost_models([target.model_copy(update={"profile": VLLM})], MODEL, [profiles], notes)
    assert not any("measured with" in note for note in notes)


def test_the_engine_of_the_config_or_the_command_line_selects_the_profile(
    profiles: Path, tmp_path: Path
) -> None:
    """What submit and plan pass: the targets as resolved, and the top-level engine for those naming none;
    ``--engine vllm`` makes every target, even one configured for transformers, plan with vLLM's profile."""
    config = tmp_path / "cluster.toml"
    config.write_text(
        'engine = "vllm"\n[targets.plain]\nhardware = "a100-40g"\n'
        '[targets.hf]\nhardware = "a100-40g"\nengine = "transformers"\n'
    )

    def chosen(settings: Settings) -> dict[str, tuple[str, str]]:
        targets = list(settings.targets.values())
        return _chosen(resolve_cost_models(targets, MODEL, [profiles], default_engine=settings.engine))

    assert chosen(resolve(config, environ={})) == {"plain": ("profile", VLLM), "hf": ("profile", HF)}
    overridden = resolve(config, flags={"engine": "vllm"}, environ={})
    assert chosen(overridden) == {"plain": ("profile", VLLM), "hf": ("profile", VLLM)}
