"""``hpcqueue profiles …`` and ``hpcqueue profile TARGET``: inspect, plot, check, import and measure profiles.

Library modules are imported inside the commands, so ``--help`` and the commands that run no model start fast;
the profiling job itself runs the model, in its own process. The shared options, rendering and error handling
live in :mod:`hpcqueue.cli.common`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from hpcqueue.cli.common import add_row, fail, out, print_json, resolve_settings, with_meter
from hpcqueue.cli.params import ConfigOpt, EngineOpt, JsonOpt, MeterOpt, ModelOpt, ProfileDirOpt, flag
from hpcqueue.errors import HpcqueueError

profiles_app = typer.Typer(
    help="Inspect, plot, check and import the energy/runtime profiles the planner uses.", no_args_is_help=True
)
import_app = typer.Typer(help="Convert published measurements into profiles.", no_args_is_help=True)
profiles_app.add_typer(import_app, name="import")

_STATUS_STYLE = {"ok": "green", "stale": "bold red", "missing": "bold red", "unknown": "yellow"}


def _search_path(settings: Any) -> list[Path]:
    from hpcqueue.profiles import profile_search_path

    return profile_search_path(settings.profile_dirs)


def _chosen_profiles(dirs: list[Path], names: list[str] | None, model: str | None = None) -> list[Any]:
    """The profiles named (each must exist), else every profile on the search path (of ``model``)."""
    from hpcqueue.profiles import find_profile, list_profiles, load_profile
    from hpcqueue.profiles.store import model_matches

    if names:
        return [find_profile(name, dirs) for name in names]
    return [
        load_profile(e.directory)
        for e in list_profiles(dirs)
        if model is None or model_matches(e.meta, model)
    ]


def _names_argument(verb: str, default: str) -> Any:
    """The NAMES argument of the commands that take every profile when none is named."""
    return typer.Argument(help=f"Profiles to {verb}. Default: every profile {default}.")


def _count_points(directory: Path) -> int | None:
    """Rows of ``points.csv`` without parsing it (``list`` reads only metadata)."""
    try:
        with open(directory / "points.csv", "rb") as handle:
            return max(0, sum(1 for line in handle if line.strip()) - 1)
    except OSError:
        return None


@profiles_app.command("list")
def list_profiles(
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(help="Only profiles of this model (id or alias).")] = None,
    hardware: Annotated[str | None, typer.Option(help="Only profiles of this hardware class.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Profiles on the search path (first match of a name wins), with where each one comes from."""
    from hpcqueue.profiles import list_profiles as find_all
    from hpcqueue.profiles.store import model_matches

    try:
        settings = resolve_settings(config)
        dirs = _search_path(settings)
        entries = find_all(dirs)
    except HpcqueueError as exc:
        fail(exc)
    rows = [
        _row(e.name, e.meta, _count_points(e.directory), e.directory, provenance=True)
        for e in entries
        if (model is None or model_matches(e.meta, model))
        and (hardware is None or e.meta.hardware == hardware)
    ]
    if as_json:
        print_json({"search_path": [str(d) for d in dirs], "profiles": rows})
        return
    if not rows:
        out.print(f"no profiles found; searched {', '.join(str(d) for d in dirs)}")
        return
    out.print(_table(rows))


def _row(name: str, meta: Any, points: int | None, path: Path, *, provenance: bool) -> dict[str, Any]:
    """One profile as ``list`` and ``import`` show it (``list`` adds where its numbers come from)."""
    row: dict[str, Any] = {
        "name": name,
        "model": meta.model,
        "hardware": meta.hardware,
        "engine": meta.engine,
        "system": meta.system,
    }
    if provenance:
        row.update(source=meta.source, method=meta.method, created=meta.created)
    return {**row, "points": points, "path": str(path)}


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(*rows[0])
    for row in rows:
        add_row(table, *["-" if value is None else str(value) for value in row.values()])
    return table


@profiles_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Profile name (see: hpcqueue profiles list).")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A profile's metadata and measured points (means and 95 % CI half-widths)."""
    from hpcqueue.profiles import find_profile

    try:
        settings = resolve_settings(config)
        profile = find_profile(name, _search_path(settings))
    except HpcqueueError as exc:
        fail(exc)
    meta = profile.meta.to_dict()
    points = json.loads(profile.points.to_json(orient="records"))
    if as_json:
        print_json({"name": profile.name, "path": str(profile.path), "meta": meta, "points": points})
        return
    out.print(f"profile [bold]{profile.name}[/] ({profile.path})")
    info = Table("key", "value", show_header=False)
    for key in (
        "model",
        "model_aliases",
        "hardware",
        "engine",
        "system",
        "source",
        "method",
        "created",
        "meters",
        "fingerprint",
        "software",
        "idle_power_w",
        "idle_subtracted",
        "idle_subtraction",
        "kv_cache",
        "batch_size_semantics",
        "notes",
    ):
        value = meta.get(key)
        text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
        add_row(info, key, "-" if value is None else text)
    out.print(info)
    table = Table(
        "sweep", "input tokens", "output tokens", "batch", "trials", "runtime (s)", "energy (J)", "J/token"
    )
    for point in points:
        tokens = (point["input_tokens"] + point["output_tokens"]) * point["batch_size"]
        add_row(
            table,
            point["sweep"],
            str(point["input_tokens"]),
            str(point["output_tokens"]),
            str(point["batch_size"]),
            str(point["trials"]),
            _mean_ci(point["runtime_s_mean"], point["runtime_s_ci95"]),
            _mean_ci(point["energy_j_mean"], point["energy_j_ci95"]),
            f"{point['energy_j_mean'] / tokens:.3f}",
        )
    out.print(table)


def _mean_ci(mean: float, ci: float | None) -> str:
    digits = 3 if abs(mean) < 10 else 1
    return f"{mean:,.{digits}f}" + ("" if ci is None else f" ± {ci:,.{digits}f}")


@profiles_app.command("plot")
def plot(
    names: Annotated[list[str] | None, _names_argument("draw", "(of --model, when given)")] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Directory to write the PNG files into.")
    ] = Path("."),
    model: Annotated[str | None, typer.Option(help="Without NAMES: only profiles of this model.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Plot runtime, throughput and energy per token against input and output tokens.

    Writes input-sweep.png and output-sweep.png (three panels each, log-2 token axis), one line per
    profile, error bars from the profiles' 95 % CIs, and prints their paths.
    """
    from hpcqueue.profiles.plots import plot_profiles

    try:
        dirs = _search_path(resolve_settings(config))
        profiles = _chosen_profiles(dirs, names, model)
        paths = plot_profiles(profiles, output)
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json({"profiles": [p.name for p in profiles], "files": [str(p) for p in paths]})
        return
    for path in paths:
        out.print(str(path), soft_wrap=True)


@profiles_app.command("evaluate")
def evaluate(
    names: Annotated[list[str] | None, _names_argument("evaluate", "on the search path")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """How good are the cost models? Leave-one-bucket-out cross-validation of each profile, and the analytic
    model's leave-one-hardware-out validation.

    Each measured point is predicted by the model refitted on the other points of its batch size, and
    likewise by two baselines: the linear form a0·n_in + a1·n_out + a2·n_in·n_out and a constant J/token.
    Shows the mean absolute percentage error (MAPE) of energy and runtime per request, and whether the
    energy MAPE meets the 10 % target. Then, for each hardware class with profiles (all of the search path,
    whatever NAMES), the analytic model calibrated on the other classes only predicts the class's points:
    MAPE and 90 % interval coverage against the 25 % and 85-95 % targets, beside the in-class figures. With
    --json, fractions instead of percentages. See docs/cost-models.md and docs/estimate.md.
    """
    from hpcqueue.planner.evaluate import ENERGY_MAPE_TARGET, evaluate_profiles

    try:
        dirs = _search_path(resolve_settings(config))
        results = evaluate_profiles(_chosen_profiles(dirs, names))
        loho = _leave_one_hardware_out(dirs, results)
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json(
            {"energy_mape_target": ENERGY_MAPE_TARGET, "profiles": results, "leave_one_hardware_out": loho}
        )
        return
    if not results:
        out.print(f"no profiles found; searched {', '.join(str(d) for d in dirs)}")
        return
    table = Table(
        "profile",
        "points",
        "energy MAPE\nours",
        "linear",
        "per token",
        "runtime MAPE\nours",
        "linear",
        "per token",
        "energy ≤10 %\n(ours)",
        f"target\n≤{100 * ENERGY_MAPE_TARGET:.0f} %",
    )
    for r in results:
        met = r["meets_energy_target"]
        add_row(
            table,
            r["profile"],
            f"{r['evaluated']}/{r['points']}",
            _percent(r["ours"]["energy_mape"]),
            _percent(r["linear"]["energy_mape"]),
            _percent(r["per_token"]["energy_mape"]),
            _percent(r["ours"]["runtime_mape"]),
            _percent(r["linear"]["runtime_mape"]),
            _percent(r["per_token"]["runtime_mape"]),
            _percent(r["ours"]["energy_within_10"]),
            _met(met),
        )
    out.print(table)
    judged = [r for r in results if r["meets_energy_target"] is not None]
    met = sum(r["meets_energy_target"] for r in judged)
    out.print(
        f"energy MAPE ≤ {100 * ENERGY_MAPE_TARGET:.0f} % on {met} of {len(judged)} profile(s); points: "
        "evaluated/measured (a point is skipped when the other points cannot fit the model)",
        soft_wrap=True,
    )
    _print_leave_one_hardware_out(loho)


def _leave_one_hardware_out(dirs: list[Path], evaluated: list[dict[str, Any]]) -> dict[str, Any]:
    """The analytic model's leave-one-hardware-out figures, each class beside the mean in-profile
    cross-validated energy MAPE of the phase model over the class's profiles (``evaluated`` reused, the
    other profiles of the class evaluated here)."""
    from hpcqueue.estimate.holdout import leave_one_hardware_out
    from hpcqueue.planner.evaluate import evaluate_profile
    from hpcqueue.profiles import find_profile

    report = leave_one_hardware_out(dirs).to_dict()
    by_name = {r["profile"]: r for r in evaluated}
    for row in report["classes"]:
        mapes = []
        for name in row["profiles"]:
            result = by_name.get(name) or evaluate_profile(find_profile(name, dirs))
            if result["ours"]["energy_mape"] is not None:
                mapes.append(result["ours"]["energy_mape"])
        row["profile_cross_validation_energy_mape"] = sum(mapes) / len(mapes) if mapes else None
    return report


def _print_leave_one_hardware_out(loho: dict[str, Any]) -> None:
    if not loho["classes"]:
        out.print("leave one hardware out: no hardware class has a usable measured profile")
        return
    target = loho["energy_mape_target"]
    low, high = loho["coverage_target"]
    table = Table(
        "hardware",
        "points",
        "energy MAPE\nheld out",
        "runtime MAPE\nheld out",
        "90 % interval\ncoverage",
        "energy MAPE\nin class",
        "runtime MAPE\nin class",
        "energy MAPE\nprofile CV",
        f"target\n≤{100 * target:.0f} %",
        f"coverage\n{100 * low:.0f}-{100 * high:.0f} %",
        title="leave one hardware out (analytic model)",
    )
    for row in loho["classes"]:
        add_row(
            table,
            row["hardware"],
            str(row["points"]),
            _percent(row["energy_mape"]),
            _percent(row["runtime_mape"]),
            _percent(row["energy_coverage"]),
            _percent(row["in_class_energy_mape"]),
            _percent(row["in_class_runtime_mape"]),
            _percent(row["profile_cross_validation_energy_mape"]),
            _met(row["meets_energy_target"]),
            _met(row["meets_coverage_target"]),
        )
    out.print(table)
    out.print(
        "held out: calibrated on the other classes only; in class: the analytic model with the class's own "
        "calibration; profile CV: the phase model's leave-one-bucket-out error (mean over the class's "
        "profiles)",
        soft_wrap=True,
    )
    for row in loho["classes"]:
        for reason in row["reasons"]:
            out.print(f"{row['hardware']}: {reason}", soft_wrap=True, markup=False)
    for skipped in loho["skipped"]:
        line = f"not calibrated on {skipped['profile']}: {skipped['reason']}"
        out.print(line, soft_wrap=True, markup=False)


def _met(value: bool | None) -> str | Text:
    if value is None:
        return "-"
    return Text("yes", style="green") if value else Text("no", style="bold red")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:,.1f} %"


@profiles_app.command("check")
def check(
    config: ConfigOpt = None,
    model: ModelOpt = None,
    wait_s: Annotated[
        float,
        typer.Option(
            "--wait-s",
            help="Seconds to wait for each Slurm target's fingerprint job (queueing included).",
            min=1,
        ),
    ] = 600.0,
    as_json: JsonOpt = False,
) -> None:
    """Whether each target's profile still describes the target's hardware: ok, stale, missing or unknown.

    A Slurm target's hardware is read by a short job on its partition. Exits with 1 when a profile is stale
    or missing, and names the command that measures it again.
    """
    from hpcqueue.profiles.staleness import check_targets

    try:
        settings = resolve_settings(config)
        model = model or settings.model
        checks = check_targets(settings, model=model, wait_s=wait_s)
    except HpcqueueError as exc:
        fail(exc)
    failing = [c for c in checks if c.status in ("stale", "missing")]
    if as_json:
        print_json({"model": model, "checks": [c.to_dict() for c in checks]})
    else:
        table = Table("target", "hardware", "profile", "status", "differences")
        for c in checks:
            add_row(
                table,
                c.target,
                c.hardware,
                c.profile or "-",
                f"[{_STATUS_STYLE[c.status]}]{c.status}[/]",
                "\n".join(c.differences) or "-",
            )
            out.print(f"profiles of model [bold]{model}[/]")
        out.print(table)
        for c in checks:
            if c.status != "ok":
                verb = {"missing": "measure one", "stale": "measure it again"}.get(
                    c.status, "measure one here"
                )
                out.print(f"{c.target} ({c.status}): {verb} with: {c.refresh}", markup=False, soft_wrap=True)
    if failing:
        raise typer.Exit(1)


@import_app.command("wilkins2024")
def import_wilkins2024(
    data_dir: Annotated[
        Path, typer.Argument(help="Directory holding all-input-stats.csv and all-output-stats.csv.")
    ],
    output: ProfileDirOpt = None,
    created: Annotated[
        str | None, typer.Option(help="The 'created' date to record (YYYY-MM-DD). Default: today.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Profiles from the published measurements of Wilkins, Keshav and Mortier (2024), one per system
    and model, and one per system with its models pooled."""
    from hpcqueue.profiles import save_profile
    from hpcqueue.profiles.store import user_profiles_dir
    from hpcqueue.profiles.wilkins2024 import derive

    root = output if output is not None else user_profiles_dir()
    try:
        written = [(p, save_profile(p, root)) for p in derive(data_dir, created=created)]
    except HpcqueueError as exc:
        fail(exc)
    rows = [_row(p.name, p.meta, len(p.points), path, provenance=False) for p, path in written]
    if as_json:
        print_json({"output": str(root), "profiles": rows})
        return
    if rows:
        out.print(_table(rows))
    out.print(f"{len(rows)} profile(s) written to {root}")


def profile(
    target: Annotated[str, typer.Argument(help="Target to measure (a [targets.NAME] of the config).")],
    model: ModelOpt = None,
    engine: EngineOpt = None,
    quick: Annotated[
        bool, flag("--quick", "A small grid with few trials: minutes instead of hours.")
    ] = False,
    wait: Annotated[bool, flag("--wait", "Wait for the sweep to finish, then print the profile.")] = False,
    output: ProfileDirOpt = None,
    config: ConfigOpt = None,
    meter: MeterOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure a model's runtime and energy on a target over input and output token counts (a profile).

    Runs as a job on the target (a Slurm job on its partition, or a local process), so the profile
    describes the hardware the planner will send work to. It measures with the target's engine
    (--engine to choose): the planner uses a profile only for targets of the engine it was measured with.
    """
    try:
        settings = resolve_settings(config, model=model, engine=engine)
        chosen = settings.target(target)
        if meter is not None:
            chosen = with_meter(chosen, meter)
        from hpcqueue.profiles.runs import profile_target
        from hpcqueue.profiles.store import user_profiles_dir

        run = profile_target(
            chosen,
            model=settings.model,
            quick=quick,
            out_dir=output if output is not None else user_profiles_dir(),
            cache_dir=settings.cache_dir,
            wait=wait,
            batch_root=settings.batch_root,
            engine=settings.engine_of(chosen),
        )
        info: dict[str, Any] = {
            "target": target,
            "model": settings.model,
            "engine": run.engine,
            "name": run.name,
            "job_id": str(run.job_id),
            "executor": run.executor,
            "out_dir": str(run.out_dir),
        }
        if wait:
            info["path"] = str(run.wait())
    except HpcqueueError as exc:
        fail(exc)
    if as_json:
        print_json(info)
        return
    if wait:
        out.print(f"profile [bold]{info['name']}[/] written to {info['path']}")
        if output is None:
            out.print(f"see it with: hpcqueue profiles show {info['name']}")
        else:
            out.print(
                f"the planner finds it once {output} is in the config's profile_dirs "
                "or in $HPCQUEUE_PROFILE_PATH"
            )
    else:
        out.print(
            f"profiling {settings.model} with {info['engine']} on target {target}: job {info['job_id']} "
            f"({info['executor']}); "
            f"the profile {info['name']} will be written to {info['out_dir']}"
        )


@profiles_app.command("calibrate")
def calibrate(
    target: Annotated[str, typer.Argument(help="Target whose cost model to calibrate (a [targets.NAME]).")],
    model: ModelOpt = None,
    config: ConfigOpt = None,
    min_tasks: Annotated[int, typer.Option(help="Refuse with fewer measured tasks than this.", min=3)] = 4,
    output: ProfileDirOpt = None,
    dry_run: Annotated[bool, flag("--dry-run", "Fit and report, write nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit TARGET's cost model to the ledger's tasks whose energy was measured, and write the result as a new
    profile revision (with which tasks and when) that the planner and `estimate` then use for TARGET.

    Estimated tasks are never used. The base is the target's profile, else the analytic model; the prefill
    and decode predictions are scaled to the measured generation energy and time. Remove the revision's
    directory to revert. See docs/estimate.md.
    """
    from hpcqueue.feedback import calibrate_target

    try:
        settings = resolve_settings(config, model=model)
        outcome = calibrate_target(settings, target, min_tasks=min_tasks, output=output, dry_run=dry_run)
    except HpcqueueError as exc:
        fail(exc)
    report = outcome.to_dict()
    if as_json:
        print_json(report)
        return
    energy, runtime = report["energy_factors"], report["runtime_factors"]
    low, high = report["energy_interval_factors"]
    out.print(
        f"calibrated [bold]{outcome.base}[/] ({outcome.base_method}) for target {target} on "
        f"{report['tasks']} measured task(s) of {len(report['batches'])} batch(es)"
    )
    out.print(
        f"energy × {energy['prefill']:.3g} (prefill), × {energy['decode']:.3g} (decode); runtime × "
        f"{runtime['prefill']:.3g} (prefill), × {runtime['decode']:.3g} (decode)"
    )
    out.print(
        f"energy error over these tasks: {100 * report['energy_error_before']:.1f} % before, "
        f"{100 * report['energy_error_after_held_out']:.1f} % after (each task held out of its own fit); "
        f"90 % interval × {low:.3g}–{high:.3g}"
    )
    if outcome.path is None:
        out.print(f"dry run: revision {outcome.name} not written")
    else:
        out.print(f"revision [bold]{outcome.name}[/] written to {outcome.path}; remove it to revert")
