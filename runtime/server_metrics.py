"""/metrics in Prometheus' text format through prometheus_client (extra `[serve]`): the engine's
counters and gauges read at each scrape, and histograms of the time to first token and of the
gap between two tokens of a request, which the engine's thread feeds (Engine.metrics'
observers). Each Service has its own registry, so several in one process do not mix."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gemma_runtime.engine import Engine

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.1, 0.25, 0.5, 1, 2.5)


class EngineCollector:
    """The engine's state and counters, as they are when scraped."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self):
        engine, m = self.engine, self.engine.metrics
        uptime = max(time.perf_counter() - m.started, 1e-9)
        gauges = [
            ("gemma_queue_depth", "requests waiting for a slot", len(engine.waiting)),
            ("gemma_active_slots", "requests being generated", engine.active),
            ("gemma_max_slots", "KV-cache slots (--max-batch)", engine.max_batch),
            ("gemma_generated_tokens_per_second", "tokens generated per second since start",
             m.generated_tokens / uptime),
        ]
        counters = [  # exposed with the _total suffix
            ("gemma_requests", "requests accepted", m.requests),
            ("gemma_requests_rejected", "requests refused because the queue was full", m.rejected),
            ("gemma_requests_finished", "requests finished", m.finished),
            ("gemma_prompt_tokens", "prompt tokens fed", m.prompt_tokens),
            ("gemma_cached_prompt_tokens", "prompt tokens reused from a slot's cache instead of fed",
             m.cached_prompt_tokens),
            ("gemma_generated_tokens", "tokens generated", m.generated_tokens),
            ("gemma_engine_steps", "engine calls", m.steps),
        ]
        for name, text, value in gauges:
            yield GaugeMetricFamily(name, text, value=value)
        for name, text, value in counters:
            yield CounterMetricFamily(name, text, value=value)


class ServerMetrics:
    def __init__(self, engine: Engine | None):
        """engine None: an embedding model's server, which has no engine to report."""
        self.registry = CollectorRegistry(auto_describe=True)
        if engine is not None:
            self.registry.register(EngineCollector(engine))
        self.ttft = Histogram("gemma_time_to_first_token_seconds", "time from a request's arrival to its first token",
                              buckets=TTFT_BUCKETS, registry=self.registry)
        self.inter_token = Histogram("gemma_inter_token_latency_seconds", "time between two tokens of a request",
                                     buckets=INTER_TOKEN_BUCKETS, registry=self.registry)
        if engine is not None:
            engine.metrics.observe_ttft = self.ttft.observe
            engine.metrics.observe_inter_token = self.inter_token.observe

    def text(self) -> bytes:
        return generate_latest(self.registry)
