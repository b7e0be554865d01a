"""Serving metrics scraped from a /metrics route and parsed with prometheus_client's own parser."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tunekit.serve.metrics import DURATION_BUCKETS, TTFT_BUCKETS, ServeMetrics


def scrape(metrics: ServeMetrics) -> dict:
    """{(sample name, sorted labels): value} from a real HTTP scrape."""
    app = FastAPI()

    @app.get("/metrics")
    def metrics_route() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    response = TestClient(app).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")  # Prometheus text format
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def labels(model: str, adapter: str, version: str = "", **extra: str) -> tuple:
    return tuple(sorted({"model": model, "adapter": adapter, "version": version, **extra}.items()))


def test_requests_durations_and_tokens_by_model_and_adapter():
    metrics = ServeMetrics()
    metrics.record(model="base", adapter="triage", duration_s=0.3, ttft_s=0.02, prompt_tokens=10, completion_tokens=5)
    metrics.record(model="base", adapter="triage", duration_s=0.7, ttft_s=0.04, prompt_tokens=12, completion_tokens=7)
    metrics.record(model="base", adapter="triage", duration_s=250.0, ttft_s=200.0, prompt_tokens=3, completion_tokens=1)
    metrics.record(model="base", adapter="orders", version="3", duration_s=1.5, prompt_tokens=4, completion_tokens=2)
    metrics.record(model="base", adapter="orders", version="3", status=429)
    metrics.record(model="base", adapter="", status=400)
    s = scrape(metrics)

    triage, orders = labels("base", "triage"), labels("base", "orders", "3")
    assert s[("tunekit_requests_total", labels("base", "triage", status="200"))] == 3
    assert s[("tunekit_requests_total", labels("base", "orders", "3", status="200"))] == 1
    assert s[("tunekit_requests_total", labels("base", "orders", "3", status="429"))] == 1
    assert s[("tunekit_requests_total", labels("base", "", status="400"))] == 1

    assert s[("tunekit_request_duration_seconds_count", triage)] == 3
    assert abs(s[("tunekit_request_duration_seconds_sum", triage)] - 251.0) < 1e-9
    bucket = lambda name, le, lab: s[(f"{name}_bucket", tuple(sorted(dict(lab, le=le).items())))]  # noqa: E731
    assert bucket("tunekit_request_duration_seconds", "0.5", dict(triage)) == 1
    assert bucket("tunekit_request_duration_seconds", "1.0", dict(triage)) == 2
    assert bucket("tunekit_request_duration_seconds", "120.0", dict(triage)) == 2
    assert bucket("tunekit_request_duration_seconds", "300.0", dict(triage)) == 3  # minutes land in a bucket, not +Inf only
    assert bucket("tunekit_time_to_first_token_seconds", "0.025", dict(triage)) == 1
    assert bucket("tunekit_time_to_first_token_seconds", "300.0", dict(triage)) == 3
    assert s[("tunekit_request_duration_seconds_count", orders)] == 1  # the 429 was counted, not timed
    assert ("tunekit_time_to_first_token_seconds_count", orders) not in s  # no ttft given

    assert s[("tunekit_prompt_tokens_total", triage)] == 25
    assert s[("tunekit_completion_tokens_total", triage)] == 13
    assert s[("tunekit_prompt_tokens_total", orders)] == 4
    assert s[("tunekit_completion_tokens_total", orders)] == 2
    assert max(DURATION_BUCKETS) >= 300 and max(TTFT_BUCKETS) >= 300


def test_in_flight_and_queue_depth():
    metrics = ServeMetrics()
    waiting = [3]
    metrics.set_queue_depth_function(lambda: waiting[0])
    with metrics.in_flight("base", "triage"), metrics.in_flight("base", "triage"):
        with metrics.in_flight("base", "orders"):
            s = scrape(metrics)
            assert s[("tunekit_requests_in_flight", labels("base", "triage"))] == 2
            assert s[("tunekit_requests_in_flight", labels("base", "orders"))] == 1
            assert s[("tunekit_queue_depth", ())] == 3
    waiting[0] = 0
    try:
        with metrics.in_flight("base", "triage"):
            raise RuntimeError("generation failed")
    except RuntimeError:
        pass
    s = scrape(metrics)
    assert s[("tunekit_requests_in_flight", labels("base", "triage"))] == 0
    assert s[("tunekit_requests_in_flight", labels("base", "orders"))] == 0
    assert s[("tunekit_queue_depth", ())] == 0
    fixed = ServeMetrics(process=False)
    fixed.set_queue_depth(5)
    assert scrape(fixed)[("tunekit_queue_depth", ())] == 5


def test_two_servers_in_one_process_count_separately():
    first, second = ServeMetrics(), ServeMetrics()
    first.record(model="a", duration_s=1.0)
    first.record(model="a", duration_s=1.0)
    second.record(model="a", duration_s=1.0)
    assert scrape(first)[("tunekit_requests_total", labels("a", "", status="200"))] == 2
    assert scrape(second)[("tunekit_requests_total", labels("a", "", status="200"))] == 1
    assert ("process_resident_memory_bytes", ()) in scrape(first)
    assert not any(name.startswith("process_") for name, _ in scrape(ServeMetrics(process=False)))
