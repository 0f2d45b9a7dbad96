"""The cluster admin's report (``hpcqueue report``): one self-contained HTML page of what the ledger
recorded for a filter — totals, energy and carbon over time, efficiency, the plans' savings, where and when
the work ran, prediction accuracy, users and accounts, failures, and the provenance of every figure.

:func:`render` is pure: it turns a :class:`hpcqueue.ledger.views.ReportData` into HTML. Every value goes
through :func:`html.escape`; CSS is inline and plots are inline SVG (:mod:`hpcqueue.report.figures`), so the
page needs no network. Key figures carry a stable ``id`` and the raw number in ``data-value`` (joules, grams,
litres, dollars, counts), which is what a test or a script reads. An unknown figure shows as "–", never 0;
an estimated one is marked "estimated".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from html import escape
from typing import Any

import pandas as pd

from hpcqueue.ledger.views import ReportData
from hpcqueue.report import figures

DASH = "–"
J_PER_KWH = 3.6e6

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;background:#fff;
 font-size:14px;line-height:1.45}
header{background:#17324d;color:#fff;padding:14px 24px}
header h1{margin:0 0 4px;font-size:20px}
header dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0 0;font-size:13px}
header dt{color:#b9cde0}header dd{margin:0}
nav{padding:6px 24px;background:#eef2f6;font-size:13px;position:sticky;top:0;z-index:1}
nav a{margin-right:12px}
main{padding:8px 24px 40px;max-width:1280px}
section{margin-top:22px}
h2{font-size:17px;border-bottom:1px solid #d0d7de;padding-bottom:3px}
h3{font-size:14px;margin:14px 0 4px}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #d0d7de;padding:3px 7px;vertical-align:top}
th{background:#f3f5f7;text-align:left;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.wrap{overflow-x:auto;max-width:100%}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 10px}
.card h3{margin:0 0 2px;font-size:13px;color:#57606a;font-weight:600}
.card .big{font-size:20px;font-weight:600}
.card .split{font-size:12px;color:#57606a}
.est{color:#9a6700;font-weight:600}
.note{color:#57606a;font-size:12.5px;max-width:980px}
.src{font-size:12px}
figure{margin:6px 0}figure svg{max-width:100%;height:auto}
.bad{color:#b42318}
"""

# -- formatting ----------------------------------------------------------------------------------------------


def _known(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return False
    try:
        return not math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def _raw(value: Any) -> str:
    """The raw number for ``data-value`` ("" when unknown)."""
    if not _known(value):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    number = float(value)
    return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)


def count(value: Any) -> str:
    return f"{int(value):,}" if _known(value) else DASH


def fixed(value: Any, digits: int = 2) -> str:
    return f"{float(value):,.{digits}f}" if _known(value) else DASH


def _scaled(value: Any, steps: Sequence[tuple[float, str]]) -> str:
    """``value`` in the largest unit of ``steps`` ((size, name), ascending) it reaches, to 3 digits."""
    if not _known(value):
        return DASH
    number = float(value)
    size, name = steps[0]
    for step in steps:
        if abs(number) >= step[0]:
            size, name = step
    scaled = number / size
    digits = 0 if abs(scaled) >= 100 else 1 if abs(scaled) >= 10 else 2
    return f"{scaled:,.{digits}f} {name}"


def energy(value_j: Any) -> str:
    return _scaled(value_j, ((1.0, "J"), (1e3, "kJ"), (1e6, "MJ"), (J_PER_KWH * 1e3, "MWh")))


def carbon(value_g: Any) -> str:
    return _scaled(value_g, ((1e-3, "mg"), (1.0, "g"), (1e3, "kg"), (1e6, "t")))


def water(value_l: Any) -> str:
    return _scaled(value_l, ((1e-3, "mL"), (1.0, "L"), (1e3, "m³")))


def money(value_usd: Any) -> str:
    if not _known(value_usd):
        return DASH
    number = float(value_usd)
    return f"${number:,.2f}" if abs(number) >= 1 else f"${number:,.4f}"


def percent(value: Any, digits: int = 0) -> str:
    """A share (0.5) as a percentage (50 %)."""
    return f"{float(value) * 100:.{digits}f} %" if _known(value) else DASH


def hours(value: Any) -> str:
    return f"{float(value):,.1f} h" if _known(value) else DASH


def method_label(method: Any) -> str:
    """An energy method as HTML: ``estimated`` and ``mixed`` stand out."""
    if not _known(method) or method in ("", "none"):
        return DASH
    text = escape(str(method))
    return f'<span class="est">{text}</span>' if method in ("estimated", "mixed") else text


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return escape(", ".join(map(str, value))) if value else DASH
    return escape(str(value)) if _known(value) and value != "" else DASH


# -- building blocks -----------------------------------------------------------------------------------------

#: A table column: header, the frame column, how a value prints (HTML), numeric (right-aligned, data-value).
Column = tuple[str, str, Callable[[Any], str], bool]


def _n(header: str, column: str, fmt: Callable[[Any], str] = count) -> Column:
    return (header, column, fmt, True)


def _t(header: str, column: str, fmt: Callable[[Any], str] = _text) -> Column:
    return (header, column, fmt, False)


def table(frame: pd.DataFrame, columns: Iterable[Column], *, table_id: str, empty: str) -> str:
    """``frame`` as an HTML table (numbers right-aligned, their raw value in ``data-value``)."""
    columns = list(columns)
    if frame.empty:
        return f'<p class="note" id="{escape(table_id)}-empty">{escape(empty)}</p>'
    head = "".join(f"<th>{escape(header)}</th>" for header, *_ in columns)
    body = []
    for record in frame.to_dict("records"):
        cells = []
        for _, column, fmt, numeric in columns:
            value = record.get(column)
            if numeric:
                cells.append(f'<td class="n" data-value="{escape(_raw(value))}">{fmt(value)}</td>')
            else:
                cells.append(f"<td>{fmt(value)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        f'<div class="wrap"><table id="{escape(table_id)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def figure_html(svg: str | None, *, figure_id: str, empty: str, source: str) -> str:
    if svg is None:
        return f'<p class="note" id="{escape(figure_id)}-empty">{escape(empty)}</p>'
    return f'<figure id="{escape(figure_id)}">{svg}<figcaption class="src">{source}</figcaption></figure>'


def source(*anchors: tuple[str, str]) -> str:
    """ "Source:" and links to the provenance anchors ``(anchor, words)``."""
    links = ", ".join(f'<a href="#{escape(anchor)}">{escape(words)}</a>' for anchor, words in anchors)
    return f'<span class="src">Source: {links}.</span>'


def _figure(figure_id: str, value: Any, text: str) -> str:
    """A key figure: a stable id, its raw number in data-value, its text."""
    return f'<span id="{escape(figure_id)}" data-value="{escape(_raw(value))}">{text}</span>'


# -- sections ------------------------------------------------------------------------------------------------


def _header(data: ReportData, generated_at: datetime) -> str:
    where = data.where
    return f"""<header>
<h1>hpcqueue: energy report</h1>
<dl>
<dt>Filter</dt><dd id="filter" data-filter="{escape(str(where.as_dict()))}">{escape(where.describe())}</dd>
<dt>Ledger</dt><dd id="ledger-url">{escape(data.ledger_url)}</dd>
<dt>Generated</dt><dd id="generated-at">{escape(generated_at.isoformat(timespec="seconds"))}</dd>
</dl>
</header>
<nav><a href="#totals">Totals</a><a href="#over-time">Over time</a><a href="#efficiency">Efficiency</a>
<a href="#savings">Savings</a><a href="#placement">Where &amp; when</a><a href="#accuracy">Accuracy</a>
<a href="#people">Users &amp; accounts</a><a href="#problems">Failures</a>
<a href="#provenance">Provenance</a></nav>"""


_TOTAL_CARDS = (
    # id, title, total key, formatter, provenance anchors
    ("energy-j", "IT energy (metered at the nodes)", "energy_j", energy, (("prov-meters", "meters"),)),
    (
        "facility-energy-j",
        "Facility energy (IT × PUE)",
        "facility_energy_j",
        energy,
        (("prov-factors", "PUE factors"), ("prov-meters", "meters")),
    ),
    ("carbon-g", "Carbon (CO₂e)", "carbon_g", carbon, (("prov-factors", "carbon intensity"),)),
    (
        "water-onsite-l",
        "Water on site (cooling)",
        "water_onsite_l",
        water,
        (("prov-factors", "WUE factors"),),
    ),
    (
        "water-offsite-l",
        "Water off site (generation)",
        "water_offsite_l",
        water,
        (("prov-factors", "water factors"),),
    ),
    ("cost-usd", "Energy cost", "cost_usd", money, (("prov-factors", "prices"),)),
)


def _totals(data: ReportData) -> str:
    totals = data.totals
    split = data.by_method.set_index("energy_method")
    cards = []
    requests = (
        f'<div class="card"><h3>Requests</h3><div class="big">'
        f"{_figure('total-requests', totals['requests'], count(totals['requests']))}</div>"
        f'<div class="split">succeeded '
        f"{_figure('total-succeeded', totals['succeeded'], count(totals['succeeded']))}"
        f" · failed {_figure('total-failed', totals['failed'], count(totals['failed']))}"
        f" · rejected {_figure('total-rejected', totals['rejected'], count(totals['rejected']))}"
        f" · in {count(totals['batches'])} batches</div></div>"
    )
    cards.append(requests)
    cards.append(
        f'<div class="card"><h3>Tokens</h3><div class="big">'
        f"{_figure('total-output-tokens', totals['output_tokens'], count(totals['output_tokens']))} out</div>"
        f'<div class="split">'
        f"{_figure('total-input-tokens', totals['input_tokens'], count(totals['input_tokens']))}"
        f" in · {_method_split(split, 'output_tokens', count, 'output-tokens')}</div></div>"
    )
    for key, title, column, fmt, anchors in _TOTAL_CARDS:
        value = totals[column]
        method = totals["energy_method"] if column == "energy_j" else None
        marker = f" ({method_label(method)})" if method else ""
        cards.append(
            f'<div class="card"><h3>{escape(title)}</h3><div class="big">'
            f"{_figure('total-' + key, value, fmt(value))}{marker}</div>"
            f'<div class="split">{_method_split(split, column, fmt, key)}</div>'
            f"<div>{source(*anchors)}</div></div>"
        )
    per_token = totals["j_per_output_token"]
    cards.append(
        f'<div class="card"><h3>IT energy per output token</h3><div class="big">'
        f"{_figure('total-j-per-output-token', per_token, fixed(per_token, 2) + ' J')}</div>"
        f'<div class="split">model load and failed attempts included</div></div>'
    )
    accounted = (
        f"{count(totals['accounted_tasks'])} tasks are accounted (their footprint is known); "
        f"{count(totals['tasks_with_assumed_inputs'])} of them rest on an assumed factor "
        f'(<a href="#prov-factors">which</a>).'
    )
    return f"""<section id="totals"><h2>Totals</h2>
<div class="cards">{"".join(cards)}</div>
<p class="note">IT energy is what the meters read at the nodes (model load and failed attempts included);
the facility energy adds the site's overhead (PUE), and carbon, water and cost follow from the site's factors
at the hours each task really ran. Each figure is split into what was <b>measured</b> and what was
<span class="est">estimated</span> (a meter's model where no counter could be read). {accounted}
The totals are those of <code>hpcqueue ledger summary</code> for the same filter.</p>
</section>"""


def _method_split(split: pd.DataFrame, column: str, fmt: Callable[[Any], str], key: str) -> str:
    parts = []
    for method in ("measured", "estimated"):
        value = split.at[method, column] if method in split.index else None
        label = "measured" if method == "measured" else '<span class="est">estimated</span>'
        parts.append(f"{label} {_figure(f'{method}-{key}', value, fmt(value))}")
    return " · ".join(parts)


def _over_time(data: ReportData) -> str:
    energy_svg = figures.stacked_by_day(
        data.daily, "energy_j", scale=1e3, unit="kJ", title="IT energy per day, by target"
    )
    carbon_svg = figures.stacked_by_day(
        data.daily, "carbon_g", scale=1.0, unit="g CO₂e", title="Carbon per day"
    )
    estimated = data.daily[data.daily["energy_method"].isin(("estimated", "mixed"))]
    mark = (
        f'<p class="note"><span class="est">Estimated</span> energy is part of {len(estimated)} of the '
        f"{len(data.daily)} day × target bars (see the table).</p>"
        if not estimated.empty
        else ""
    )
    return f"""<section id="over-time"><h2>Energy and carbon per day</h2>
<p class="note">Per UTC day a task ran (its accounted run start, else the worker's start), stacked by target.
Carbon covers the accounted tasks only.</p>
{
        figure_html(
            energy_svg,
            figure_id="fig-energy-per-day",
            empty="No task has an energy figure yet.",
            source=source(("prov-meters", "meters and energy methods")),
        )
    }
{
        figure_html(
            carbon_svg,
            figure_id="fig-carbon-per-day",
            empty="No task is accounted yet: carbon unknown.",
            source=source(("prov-factors", "carbon intensity factors"), ("prov-run-times", "run times")),
        )
    }
{mark}
{
        table(
            data.daily,
            [
                _t("day", "day"),
                _t("target", "target"),
                _n("tasks", "tasks"),
                _n("IT energy", "energy_j", energy),
                _t("method", "energy_method", method_label),
                _n("carbon", "carbon_g", carbon),
            ],
            table_id="daily",
            empty="No energy recorded.",
        )
    }
</section>"""


def _efficiency(data: ReportData) -> str:
    return f"""<section id="efficiency"><h2>Energy per output token, by hardware × model × engine</h2>
<p class="note">IT energy of the tasks (model load and failed attempts included) over the output tokens they
produced, per inference engine (transformers, vLLM). {
        source(("prov-meters", "meters"), ("prov-predictions", "hardware classes"))
    }</p>
{
        table(
            data.j_per_token,
            [
                _t("hardware", "hardware"),
                _t("model", "model"),
                _t("engine", "engine"),
                _n("tasks", "tasks"),
                _n("IT energy", "energy_j", energy),
                _n("output tokens", "output_tokens"),
                _n("J / output token", "j_per_output_token", fixed),
                _t("method", "energy_method", method_label),
                _t("meters", "meters"),
            ],
            table_id="j-per-token",
            empty="No task with energy yet.",
        )
    }
</section>"""


def _savings(data: ReportData) -> str:
    scope = (
        '<p class="note"><b>Whole batches:</b> the filter selects tasks by target or account, but plans and '
        "baselines are predicted for whole batches, so this table covers the selected batches entire.</p>"
        if data.where.selects_tasks
        else ""
    )
    frame = data.savings
    return f"""<section id="savings"><h2>What the plans saved against their baselines</h2>
<p class="note">Each batch's plan records its predicted cost and that of the baselines it was compared with
(<code>run_at_submit</code>: everything at submission; <code>best_window</code>: the cheapest single start;
<code>unaware</code>: the energy-unaware placement; <code>single:&lt;target&gt;</code>: all on one target).
Saved = baseline − plan, summed over the batches that recorded both figures; these are the planner's
<span class="est">predictions</span>, not measurements (the measured outcome is under
<a href="#placement">where and when</a>). {source(("prov-plans", "plan costs"))}</p>
{scope}
{
        table(
            frame,
            [
                _t("baseline", "baseline"),
                _n("batches", "batches"),
                _n("plan carbon", "plan_carbon_g", carbon),
                _n("baseline carbon", "baseline_carbon_g", carbon),
                _n("carbon saved", "saved_carbon_g", carbon),
                _n("saved %", "saved_carbon_g_pct", fixed),
                _n("plan energy", "plan_energy_j", energy),
                _n("baseline energy", "baseline_energy_j", energy),
                _n("energy saved", "saved_energy_j", energy),
                _n("saved %", "saved_energy_j_pct", fixed),
                _n("cost saved", "saved_cost_usd", money),
                _n("baseline met deadline (batches)", "baseline_meets_deadline"),
            ],
            table_id="savings-table",
            empty="No batch recorded a plan with baselines.",
        )
    }
</section>"""


def _placement(data: ReportData) -> str:
    return f"""<section id="placement"><h2>Where and when the work ran</h2>
<p class="note">Per site (where the target draws power) and target: the median wait the plan chose from
submission to the planned start (0: as soon as submitted, what <code>run_at_submit</code> would do), the
median real wait to the run's start, and how late the real start came against the planned one; then the
carbon the plan predicted at the planned hours against the carbon accounted at the hours the tasks really
ran.
{source(("prov-run-times", "run times"), ("prov-factors", "factors"))}</p>
{
        table(
            data.placement,
            [
                _t("site", "site"),
                _t("target", "target"),
                _n("tasks", "tasks"),
                _n("ran", "ran"),
                _n("planned wait", "planned_wait_h", hours),
                _n("real wait", "wait_h", hours),
                _n("late vs plan", "late_h", hours),
                _n("IT energy", "energy_j", energy),
                _n("carbon predicted", "predicted_carbon_g", carbon),
                _n("carbon accounted", "carbon_g", carbon),
            ],
            table_id="placement-table",
            empty="No task selected.",
        )
    }
</section>"""


def _accuracy(data: ReportData) -> str:
    frame = data.accuracy.assign(target=data.accuracy["target"].where(data.accuracy["target"].notna(), "all"))
    svg = figures.predicted_vs_measured(data.predictions)
    return f"""<section id="accuracy"><h2>Prediction accuracy</h2>
<p class="note">Each completed task whose energy was <b>measured</b>: the planner's prediction of its
generation energy against the energy its generation batches measured (model load excluded, as the prediction
excludes it). Error: predicted / measured − 1; MAPE its mean magnitude, bias its median; in 90 %: the
share of measurements inside their 90 % prediction interval (about 90 % when the intervals are honest).
Tasks with
<span class="est">estimated</span> energy are counted apart, never compared.
{source(("prov-predictions", "prediction methods and bases"), ("prov-meters", "meters"))}</p>
{
        figure_html(
            svg,
            figure_id="fig-accuracy",
            empty="No task with a prediction was measured yet.",
            source=source(("prov-predictions", "prediction methods")),
        )
    }
{
        table(
            frame,
            [
                _t("target", "target"),
                _n("compared", "tasks"),
                _n("excluded: estimated", "excluded_estimated"),
                _n("excluded: unfinished", "excluded_unfinished"),
                _n("excluded: failed", "excluded_failed"),
                _n("excluded: partial", "excluded_partial"),
                _n("energy MAPE", "energy_mape", percent),
                _n("energy bias", "energy_bias", percent),
                _n("in 90 %", "energy_coverage", percent),
                _n("with interval", "energy_with_interval"),
                _n("predicted", "energy_predicted_j", energy),
                _n("measured", "energy_measured_j", energy),
                _n("runtime MAPE", "runtime_mape", percent),
                _n("runtime in 90 %", "runtime_coverage", percent),
                _t("methods", "methods"),
            ],
            table_id="accuracy-table",
            empty="No task with a prediction.",
        )
    }
<details><summary>Per task ({len(data.predictions)} compared)</summary>
{
        table(
            data.predictions,
            [
                _t("batch", "batch_id"),
                _n("task", "task_index"),
                _t("target", "target"),
                _t("model", "model"),
                _n("predicted", "predicted_energy_j", energy),
                _n("low", "predicted_energy_low_j", energy),
                _n("high", "predicted_energy_high_j", energy),
                _n("measured", "measured_energy_j", energy),
                _n("error", "error", percent),
                _t("in 90 %", "inside", _yes_no),
                _t("method", "prediction_method"),
                _t("basis", "prediction_basis"),
            ],
            table_id="predictions-table",
            empty="No task compared.",
        )
    }
</details>
</section>"""


def _yes_no(value: Any) -> str:
    if not _known(value):
        return DASH
    return "yes" if bool(value) else '<span class="bad">no</span>'


def _people(data: ReportData) -> str:
    return f"""<section id="people"><h2>Top users and accounts</h2>
<h3>Users</h3>
{
        table(
            data.users.head(20),
            [
                _t("user", "user"),
                _n("batches", "batches"),
                _n("requests", "requests"),
                _n("output tokens", "output_tokens"),
                _n("IT energy", "energy_j", energy),
                _t("method", "energy_method", method_label),
                _n("carbon", "carbon_g", carbon),
                _n("cost", "cost_usd", money),
            ],
            table_id="users-table",
            empty="No user.",
        )
    }
<h3>Slurm accounts</h3>
<p class="note">The account each task's target charges ("(none)": none, or recorded before the ledger
kept it); requests are the tasks' planned requests.</p>
{
        table(
            data.accounts.head(20),
            [
                _t("account", "account"),
                _n("tasks", "tasks"),
                _n("requests", "requests"),
                _n("output tokens", "output_tokens"),
                _n("IT energy", "energy_j", energy),
                _t("method", "energy_method", method_label),
                _n("carbon", "carbon_g", carbon),
                _n("cost", "cost_usd", money),
            ],
            table_id="accounts-table",
            empty="No task.",
        )
    }
</section>"""


def _problems(data: ReportData) -> str:
    return f"""<section id="problems"><h2>Failed, retried and lost tasks</h2>
<p class="note"><b>Lost</b>: the job ended without a result from the worker (recorded from the scheduler);
<b>retried</b>: some of the task's requests ran in an earlier attempt. <code>hpcqueue retry</code> runs failed
and lost tasks again.</p>
<div class="cards" style="grid-template-columns:repeat(auto-fill,minmax(300px,1fr))">
<div>{
        table(
            data.task_states,
            [_t("task state", "state"), _n("tasks", "tasks")],
            table_id="task-states",
            empty="No task.",
        )
    }</div>
<div>{
        table(
            data.request_statuses,
            [_t("request status", "status"), _n("requests", "requests")],
            table_id="request-statuses",
            empty="No request.",
        )
    }</div>
<div>{
        table(
            data.error_codes,
            [_t("status", "status"), _t("error code", "error_code"), _n("requests", "requests")],
            table_id="error-codes",
            empty="No failed or rejected request.",
        )
    }</div>
</div>
{
        table(
            data.problem_tasks,
            [
                _t("batch", "batch_id"),
                _n("task", "task_index"),
                _t("target", "target"),
                _t("user", "user"),
                _t("state", "state"),
                _t("problem", "problem"),
                _t("error", "error"),
            ],
            table_id="problem-tasks",
            empty="No failed, lost or retried task.",
        )
    }
</section>"""


def _provenance(data: ReportData) -> str:
    prov = data.provenance
    return f"""<section id="provenance"><h2>Provenance: where every figure comes from</h2>
<h3 id="prov-meters">Meters and energy methods</h3>
<p class="note">Each task's IT energy as its worker metered it (<code>tasks.meter</code>,
<code>tasks.energy_method</code>): <b>measured</b> from hardware counters (RAPL, NVML), or
<span class="est">estimated</span> from a power model where none could be read; the attribution rule split it
over the task's requests.</p>
{
        table(
            prov["meters"],
            [
                _t("meter", "meter"),
                _t("method", "energy_method", method_label),
                _t("attribution rule", "attribution_rule"),
                _n("tasks", "tasks"),
                _n("IT energy", "energy_j", energy),
            ],
            table_id="prov-meters-table",
            empty="No task has energy yet.",
        )
    }
<h3 id="prov-factors">Footprint factors: kinds and sources</h3>
<p class="note">The factors that turned each accounted task's energy into facility energy, carbon, water and
cost (<code>tasks.factor_kinds</code>, <code>tasks.factor_sources</code>): <code>series</code> (a time
series at the hours it ran), <code>model</code> (e.g. PUE from the outdoor temperature),
<code>derived</code>, or <span class="est">assumed</span> (a constant from the configuration).</p>
{
        table(
            prov["factors"],
            [_t("factor", "factor"), _t("kind", "kind", _kind), _t("source", "source"), _n("tasks", "tasks")],
            table_id="prov-factors-table",
            empty="No task is accounted yet.",
        )
    }
<h3 id="prov-run-times">Run times</h3>
<p class="note">Where each accounted task's run interval came from: <code>sacct</code> (Slurm's start and
end) or <code>worker</code> (the worker's own clock).</p>
{
        table(
            prov["run_times"],
            [_t("source", "run_times_source"), _n("tasks", "tasks")],
            table_id="prov-run-times-table",
            empty="No task is accounted yet.",
        )
    }
<h3 id="prov-predictions">Predictions: method and basis</h3>
<p class="note"><code>profile</code>: a fitted profile of the model on the hardware;
<code>analytic</code>: the analytic model of the transformer's work (no profile); <code>calibrated</code>: a
profile calibrated on the ledger's measured tasks. The basis names the profile or the hardware class.</p>
{
        table(
            prov["predictions"],
            [_t("method", "prediction_method"), _t("basis", "prediction_basis"), _n("tasks", "tasks")],
            table_id="prov-predictions-table",
            empty="No task has a prediction.",
        )
    }
<h3 id="prov-plans">Plan costs</h3>
<p class="note">The plan's and the baselines' figures are the planner's predictions at submission, recorded
in <code>plan_costs</code> (one row per batch and name), with the site factors it forecast for the planned
hours.</p>
</section>"""


def _kind(value: Any) -> str:
    if value == "assumed":
        return '<span class="est">assumed</span>'
    return _text(value)


def render(data: ReportData, generated_at: datetime) -> str:
    """The admin report for ``data`` as one self-contained HTML document."""
    sections = [
        _totals(data),
        _over_time(data),
        _efficiency(data),
        _savings(data),
        _placement(data),
        _accuracy(data),
        _people(data),
        _problems(data),
        _provenance(data),
    ]
    title = f"hpcqueue report: {data.where.describe()}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"{_header(data, generated_at)}<main>{''.join(sections)}</main></body></html>\n"
    )
