"""Prometheus metrics of one server, labelled by model, adapter and version, for a /metrics route.

Each `ServeMetrics` has its own `CollectorRegistry` (not prometheus_client's global one), so several
servers in one process (tests, a proxy and its upstream) count separately.

| metric                                   | type      | labels                          |
|------------------------------------------|-----------|---------------------------------|
| tunekit_requests_total                   | counter   | model, adapter, version, status |
| tunekit_request_duration_seconds         | histogram | model, adapter, version         |
| tunekit_time_to_first_token_seconds      | histogram | model, adapter, version         |
| tunekit_prompt_tokens_total              | counter   | model, adapter, version         |
| tunekit_completion_tokens_total          | counter   | model, adapter, version         |
| tunekit_requests_in_flight               | gauge     | model, adapter, version         |
| tunekit_queue_depth                      | gauge     | (none)                          |

`status` is the HTTP status answered ("200", "429", ...). `adapter` is "" for the bare base and
`version` "" until a registry version is known. The histograms' buckets reach 10 minutes: a long
generation on a CPU takes minutes, and a request that ran that long must not vanish into +Inf.

```python
metrics = ServeMetrics()
metrics.set_queue_depth_function(lambda: scheduler.waiting)           # read at each scrape
with metrics.in_flight(model, adapter):
    ...
metrics.record(model=model, adapter=adapter, status=200, duration_s=..., ttft_s=...,
               prompt_tokens=..., completion_tokens=...)
metrics.record(model=model, status=429)                            # refused: counted, not timed

@app.get("/metrics")
def scrape() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
```
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

LABELS = ("model", "adapter", "version")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class ServeMetrics:
    """The metrics of one server on a private registry."""

    def __init__(self, registry: CollectorRegistry | None = None, *, process: bool = True):
        self.registry = registry if registry is not None else CollectorRegistry()
        if process:  # resident memory and CPU of this process (Linux /proc)
            ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter("tunekit_requests", "Requests answered, by HTTP status.", (*LABELS, "status"), registry=r)
        self.duration = Histogram(
            "tunekit_request_duration_seconds", "Time from request to last byte.", LABELS, buckets=DURATION_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            "tunekit_time_to_first_token_seconds", "Time from request to first generated token.", LABELS, buckets=TTFT_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("tunekit_prompt_tokens", "Prompt tokens of answered requests.", LABELS, registry=r)
        self.completion_tokens = Counter("tunekit_completion_tokens", "Generated tokens.", LABELS, registry=r)
        self.requests_in_flight = Gauge("tunekit_requests_in_flight", "Requests being answered now.", LABELS, registry=r)
        self.queue_depth = Gauge("tunekit_queue_depth", "Requests waiting for the engine.", registry=r)

    def record(
        self,
        *,
        model: str,
        adapter: str = "",
        version: str = "",
        status: int | str = 200,
        duration_s: float | None = None,
        ttft_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        """Count one finished request; times and tokens only where given (a refused request has none)."""
        labels = (model, adapter, version)
        self.requests.labels(*labels, str(status)).inc()
        if duration_s is not None:
            self.duration.labels(*labels).observe(duration_s)
        if ttft_s is not None:
            self.ttft.labels(*labels).observe(ttft_s)
        if prompt_tokens:
            self.prompt_tokens.labels(*labels).inc(prompt_tokens)
        if completion_tokens:
            self.completion_tokens.labels(*labels).inc(completion_tokens)

    @contextmanager
    def in_flight(self, model: str, adapter: str = "", version: str = "") -> Iterator[None]:
        """Count a request in tunekit_requests_in_flight while the block runs."""
        gauge = self.requests_in_flight.labels(model, adapter, version)
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def set_queue_depth_function(self, depth: Callable[[], float]) -> None:
        """Read the queue depth from `depth()` at every scrape instead of setting it."""
        self.queue_depth.set_function(depth)

    def render(self) -> tuple[bytes, str]:
        """The body and content type of a /metrics answer (Prometheus text format)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
