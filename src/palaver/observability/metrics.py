"""Prometheus metrics (CONTRACT §10), with ``prometheus-client``.

With ``--workers N`` every worker writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR``
(``palaver serve`` makes a fresh directory, or empties the one it is given, before the workers
start) and ``/metrics`` adds them up, so a scrape covers every process whichever answers it.

Labels never carry a secret (a key is its ``name``) nor a value a client can make up without
bound: routes are their templates (``/v1/conversations/{id}``), and past ``MAX_MODELS``
distinct model names the rest are counted as ``other``.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from palaver.errors import (
    UpstreamError,
    UpstreamInterrupted,
    UpstreamMalformed,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from palaver.observability.context import RequestContext

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
enabled = True  # server.metrics: false turns every recording off
MAX_MODELS = 200
CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

REQUESTS = Counter(
    "palaver_requests_total",
    "Requests answered, by route, model, provider, status and cache result.",
    ["route", "model", "provider", "status", "cache"],
)
DURATION = Histogram(
    "palaver_request_duration_seconds",
    "Time from a request's arrival to its last byte.",
    ["route"],
    buckets=_LATENCY,
)
FIRST_TOKEN = Histogram(
    "palaver_time_to_first_token_seconds",
    "Streams: time from the request's arrival to its first chunk.",
    ["model"],
    buckets=_LATENCY,
)
OVERHEAD = Histogram(
    "palaver_overhead_seconds",
    "Time a request spent in palaver, outside the provider call.",
    ["route"],
    buckets=_OVERHEAD,
)
TOKENS = Counter(
    "palaver_tokens_total",
    "Tokens of the answers, by kind (input, output).",
    ["model", "provider", "key", "kind"],
)
UPSTREAM_ERRORS = Counter(
    "palaver_upstream_errors_total",
    "Provider failures, by kind.",
    ["provider", "kind"],
)
ACTIVE_STREAMS = Gauge(
    "palaver_active_streams",
    "Streams being relayed now.",
    multiprocess_mode="livesum",
)
RATE_LIMITED = Counter(
    "palaver_rate_limited_total",
    "Requests refused by a key's limit (limit: rpm, tpm, max_parallel), or admitted because "
    "the limits' Redis was unreachable (limit: unavailable).",
    ["key", "limit"],
)

_models: set[str] = set()
_children: dict[tuple[Any, ...], Any] = {}  # labelled children, found without labels()


def _child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, remembered: ``labels`` validates and locks every call."""
    key = (id(metric), *values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


def _model(name: str | None) -> str:
    if not name:
        return ""
    if name in _models:
        return name
    if len(_models) >= MAX_MODELS:
        return "other"
    _models.add(name)
    return name


def upstream_error_kind(error: UpstreamError) -> str:
    if isinstance(error, UpstreamStatus):
        return "rate_limited" if error.status == 429 else f"status_{error.status // 100}xx"
    for kind, name in (
        (UpstreamTimeout, "timeout"),
        (UpstreamUnreachable, "unreachable"),
        (UpstreamInterrupted, "interrupted"),
        (UpstreamMalformed, "malformed"),
    ):
        if isinstance(error, kind):
            return name
    return "other"


def upstream_error(provider: str, error: UpstreamError) -> None:
    UPSTREAM_ERRORS.labels(provider, upstream_error_kind(error)).inc()


def rate_limited(key: str, limit: str) -> None:
    RATE_LIMITED.labels(key, limit).inc()


def stream_started(context: RequestContext) -> None:
    _child(FIRST_TOKEN, _model(context.model)).observe(context.elapsed())
    ACTIVE_STREAMS.inc()


def stream_ended() -> None:
    ACTIVE_STREAMS.dec()


def request_done(context: RequestContext, route: str) -> None:
    elapsed = context.elapsed()
    model = _model(context.model)
    provider = context.provider or ""
    _child(REQUESTS, route, model, provider, str(context.status), context.cache or "").inc()
    _child(DURATION, route).observe(elapsed)
    _child(OVERHEAD, route).observe(max(0.0, elapsed - context.provider_seconds))
    key = context.key or "anonymous"
    if context.input_tokens:
        _child(TOKENS, model, provider, key, "input").inc(context.input_tokens)
    if context.output_tokens:
        _child(TOKENS, model, provider, key, "output").inc(context.output_tokens)


def scrape() -> bytes:
    """The exposition of every process's metrics."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def process_exited(pid: int | None = None) -> None:
    """A worker stops: its live gauges no longer count."""
    if MULTIPROCESS:
        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]


def prepare_directory(path: str) -> None:
    """Empty the multiprocess directory before the workers start (stale files of a previous
    run would add to the counts)."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
