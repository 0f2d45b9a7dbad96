"""hpcqueue.ledger.metrics: the ledger's all-time counters in Prometheus' text format, parsed back with
prometheus_client's own parser, agree with ``Ledger.summary``; label values are escaped; the file is replaced
atomically."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.ledger_queries import fill_ledger
from hpcqueue.errors import ConfigError
from hpcqueue.ledger import Ledger
from hpcqueue.ledger.filters import LedgerFilter
from hpcqueue.ledger.metrics import LABELS, Counter, collect, escape_label_value, render, write_metrics

# Label values the format must escape: a quote, a backslash, a newline; and unicode.
USERS = ("alice", 'o"brien', "dom\\ain\\bob", "two\nlines", "zoë")


@pytest.fixture()
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger(ledger_url) as opened:
        fill_ledger(
            opened, 4000, task_size=100, batch_tasks=2, users=USERS, days=20, running_share=0.2, seed=3
        )
        yield opened


def parsed(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} as prometheus_client reads the text."""
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "counter", family.name
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(samples: list[tuple[dict[str, str], float]], **match: str) -> float:
    return sum(value for labels, value in samples if all(labels[k] == v for k, v in match.items()))


def test_totals_equal_the_summarys(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "hpcqueue.prom"
    write_metrics(ledger, path)
    samples = parsed(path.read_text("utf-8"))
    for by in ("user", "target"):
        summary = ledger.summary(by, where=LedgerFilter(users=None))
        assert total(samples["hpcqueue_energy_joules_total"]) == pytest.approx(
            summary["energy_j"].sum(), rel=1e-12
        )
        assert total(samples["hpcqueue_requests_total"]) == summary["requests"].sum() == 4000
        assert total(samples["hpcqueue_tokens_total"], kind="input") == summary["input_tokens"].sum()
        assert total(samples["hpcqueue_tokens_total"], kind="output") == summary["output_tokens"].sum()
        assert total(samples["hpcqueue_carbon_grams_total"]) == pytest.approx(
            summary["carbon_g"].sum(), rel=1e-12
        )
        water = summary["water_onsite_l"].sum() + summary["water_offsite_l"].sum()
        assert total(samples["hpcqueue_water_liters_total"]) == pytest.approx(water, rel=1e-12)
    # per user too: every user's figures, under the user's exact name
    by_user = ledger.summary("user", where=LedgerFilter(users=None)).set_index("user")
    assert set(by_user.index) == set(USERS)  # the awkward names went through the database and back
    for user in USERS:
        assert total(samples["hpcqueue_requests_total"], user=user) == by_user.loc[user, "requests"]
        assert total(samples["hpcqueue_energy_joules_total"], user=user) == pytest.approx(
            by_user.loc[user, "energy_j"], rel=1e-12
        )
    # energy says its method; rejected requests have no target
    methods = {labels["method"] for labels, _ in samples["hpcqueue_energy_joules_total"]}
    assert methods == {"measured", "estimated"}
    rejected = [labels for labels, _ in samples["hpcqueue_requests_total"] if labels["status"] == "rejected"]
    assert rejected and all(labels["target"] == "(none)" for labels in rejected)
    assert all(set(LABELS) <= set(labels) for labels, _ in samples["hpcqueue_requests_total"])


def test_a_user_scope_counts_that_users_rows_only(ledger: Ledger) -> None:
    text = render(collect(ledger, users=("zoë",)))
    samples = parsed(text)
    assert {labels["user"] for labels, _ in samples["hpcqueue_requests_total"]} == {"zoë"}
    summary = ledger.summary("target", where=LedgerFilter(users=("zoë",)))
    assert total(samples["hpcqueue_requests_total"]) == summary["requests"].sum() > 0


def test_label_values_are_escaped_and_parse_back() -> None:
    assert escape_label_value('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    text = render(collect_fixed())
    assert 'user="o\\"brien"' in text and 'user="dom\\\\ain"' in text and 'user="two\\nlines"' in text
    assert "\n\n" not in text and text.endswith("\n")
    (family,) = text_string_to_metric_families(text)
    assert {s.labels["user"] for s in family.samples} == {'o"brien', "dom\\ain", "two\nlines"}


def collect_fixed() -> list[Counter]:
    counter = Counter("hpcqueue_requests_total", "Input lines.", ("status",))
    for user in ('o"brien', "dom\\ain", "two\nlines"):
        counter.add((user, "physics", "gpu", "m", "succeeded"), 3)
    return [counter]


def test_the_file_is_replaced_atomically(ledger: Ledger, tmp_path: Path) -> None:
    path = tmp_path / "hpcqueue.prom"
    path.write_text("# an older scrape\n")
    old_inode = path.stat().st_ino
    write_metrics(ledger, path)
    # a new file renamed over the old one (a reader holding the old one keeps reading it whole), no temporary
    assert path.stat().st_ino != old_inode
    assert [p.name for p in tmp_path.iterdir() if p.name != "ledger.sqlite"] == ["hpcqueue.prom"]
    assert "hpcqueue_energy_joules_total" in path.read_text("utf-8")


def test_an_unwritable_place_is_an_error_that_names_it(ledger: Ledger, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(ConfigError, match=r"cannot write the metrics to .*not-a-dir"):
        write_metrics(ledger, blocker / "hpcqueue.prom")
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]
