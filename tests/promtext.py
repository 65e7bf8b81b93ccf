"""Reading ``/metrics`` as Prometheus does: with ``prometheus_client``'s own parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from workerpool.core.snapshot import Snapshot
from workerpool.core.tallies import Tallies
from workerpool.server import metrics

Key = tuple[str, frozenset[tuple[str, str]]]


def samples(text: str) -> dict[Key, float]:
    """Every sample of *text*: (sample name, its labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def types(text: str) -> dict[str, str]:
    """Family name -> its type (gauge, counter, histogram)."""
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    """The value of sample *name* with exactly *labels*; KeyError naming it if absent."""
    found = samples(text)
    key = (name, frozenset(labels.items()))
    if key not in found:
        raise KeyError(f"no sample {name}{labels} in /metrics")
    return found[key]


def render(snap: Snapshot, found: dict[str, Tallies] | None = None, now: float = 0.0) -> str:
    """What ``/metrics`` shows for *snap* and *found*, with no Redis."""
    reading = (snap, found or {}, now)
    return metrics.exposition(metrics.registry(lambda: reading)).decode()
