"""Reading treadle's Prometheus metrics in tests, as Prometheus would parse them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from orchestrator import metrics
from orchestrator.client import Client

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: Client) -> Samples:
    body, content_type = metrics.exposition(
        client.orchestrator.store, client.orchestrator.checker.topology
    )
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def served_names(client: Client) -> set[str]:
    """Every series name a query may use, whether or not it has samples yet."""
    body, _ = metrics.exposition(client.orchestrator.store, client.orchestrator.checker.topology)
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(body.decode())
        for suffix in suffixes.get(family.type, [""])
    }
