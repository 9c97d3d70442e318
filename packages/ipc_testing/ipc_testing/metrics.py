"""Reading a Prometheus text page in tests: samples by family, one sample's value."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def parse(text: str) -> dict[str, list[Sample]]:
    """The page's samples by family name (a counter's family drops ``_total``)."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    """The value of the one sample ``name`` with exactly ``labels``.

    Raises:
        AssertionError: no such sample, or more than one.
    """
    found = [s.value for s in samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, samples)
    return found[0]
