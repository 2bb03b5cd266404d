"""The event-loop histograms (metrics.LoopHistogram): exposed exactly as prometheus_client's Histogram."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from extproc.metrics import MESSAGE_BUCKETS, LoopHistogram, Metrics


def _exposed(registry: CollectorRegistry) -> list[str]:
    """The text exposition without the ``_created`` values (each histogram's own creation time)."""
    return [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("x_created")]


@pytest.mark.parametrize("labels", [(), ("phase",), ("server", "outcome")])
def test_a_loop_histogram_is_exposed_as_prometheus_client_exposes_a_histogram(labels: tuple[str, ...]) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("x", "how long", labels, MESSAGE_BUCKETS)
    ours.register(loop)
    reference = Histogram("x", "how long", labels, buckets=MESSAGE_BUCKETS, registry=theirs)
    # on a bound (``le`` is inclusive), between bounds, below the first, beyond the last (+Inf), zero
    values = [0.0001, 0.0003, 0.00005, 5.0, 0.0, 0.001, 0.001]
    for i, seconds in enumerate(values):
        names = tuple(f"{name}-{i % 2}" for name in labels)
        loop.labels(*names).observe(seconds)
        (reference.labels(*names) if labels else reference).observe(seconds)

    assert _exposed(ours) == _exposed(theirs)
    assert sum(line.startswith("x_created") for line in generate_latest(ours).decode().splitlines()) == (
        1 if not labels else 2
    )


def test_a_loop_histogram_refuses_the_wrong_labels() -> None:
    with pytest.raises(ValueError, match="labels"):
        LoopHistogram("x", "how long", ("phase",), MESSAGE_BUCKETS).labels("a", "b")


def test_the_hot_histograms_keep_their_names_and_labels() -> None:
    m = Metrics()
    m.message("request_body", 0.0002)
    m.decision_seconds.observe(0.00001)
    m.exchange_ended("demo", "complete", 0.02)

    text = generate_latest(m.registry).decode()

    assert 'mcp_extproc_message_seconds_count{phase="request_body"} 1.0' in text
    assert "mcp_extproc_policy_decision_seconds_count 1.0" in text
    assert 'mcp_extproc_exchange_duration_seconds_count{outcome="complete",server="demo"} 1.0' in text
    assert 'mcp_extproc_exchanges_total{outcome="complete",server="demo"} 1.0' in text
