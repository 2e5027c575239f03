"""Prometheus metrics of a serving process (``GET /metrics`` on ``llamafactory-cli api``).

One registry per process (:data:`REGISTRY`), separate from ``prometheus_client``'s global one:

- ``lf_ext_http_requests_total{path,status}``: requests the api answered;
- ``lf_ext_generations_total{outcome}``: generations by what the background cache did
  (``hit``, ``miss``, ``rejection``; ``uncached``: not served by the cache, e.g. text only, a video, cache off);
- ``lf_ext_ttft_seconds``: from ``generate`` being called to the first token existing;
- ``lf_ext_component_seconds{component}``: ``mask`` (the mask provider, per image), ``vision`` (every
  separated encoding), ``lookup`` and ``prefill`` (per generation the cache served);
- ``lf_ext_cache_*``: the counters and sizes of every loaded model's background cache
  (:meth:`~lf_ext.cache.BackgroundCache.stats`: lookups, hits, misses, rejections, evictions,
  disk- and Redis-tier counters; entries, bytes and redis_bytes as gauges), read at scrape time, labelled
  by model key.
"""

from __future__ import annotations

import time

import torch
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from transformers import StoppingCriteria, StoppingCriteriaList

REGISTRY = CollectorRegistry(auto_describe=True)
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))

HTTP_REQUESTS = Counter("lf_ext_http_requests", "Requests answered by the api server.", ["path", "status"], registry=REGISTRY)
GENERATIONS = Counter("lf_ext_generations", "Generations by background-cache outcome.", ["outcome"], registry=REGISTRY)
TTFT = Histogram("lf_ext_ttft_seconds", "Time from generate() to the first token.", buckets=_SECONDS, registry=REGISTRY)
COMPONENT = Histogram("lf_ext_component_seconds", "Time of one component of a request.", ["component"],
                      buckets=_SECONDS, registry=REGISTRY)  # fmt: skip
COMPONENTS = ("mask", "lookup", "vision", "prefill")

GAUGES = {"entries", "bytes", "max_bytes", "disk_entries", "disk_bytes", "hit_rate", "redis_bytes", "redis_up"}


_LISTENERS: list = []  # callables (component, seconds), e.g. lf-ext eval's per-request timer


def observe_component(component: str, seconds: float) -> None:
    COMPONENT.labels(component=component).observe(seconds)
    for listener in list(_LISTENERS):
        listener(component, seconds)


def add_listener(listener) -> None:
    """Also send every component time to ``listener(component, seconds)``."""
    _LISTENERS.append(listener)


def remove_listener(listener) -> None:
    if listener in _LISTENERS:
        _LISTENERS.remove(listener)


def observe_outcome(outcome) -> None:
    """Count one generation (``outcome``: a :class:`~lf_ext.inference.reuse.Outcome`, None = not served by the cache)."""
    GENERATIONS.labels(outcome="uncached" if outcome is None else outcome.kind).inc()
    if outcome is not None:
        for component in ("lookup", "vision", "prefill"):
            if component in outcome.ms:
                observe_component(component, outcome.ms[component] / 1000)


class FirstTokenClock(StoppingCriteria):
    """A stopping criterion that never stops; on its first call (a token exists) it calls
    ``on_first(seconds since it was made)``, by default observing the TTFT histogram."""

    def __init__(self, on_first=None):
        self.started = time.perf_counter()
        self.on_first = on_first or TTFT.observe
        self.done = False

    def __call__(self, input_ids, scores, **kwargs):
        if not self.done:
            self.done = True
            self.on_first(time.perf_counter() - self.started)
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def with_first_token_clock(kwargs: dict, on_first=None) -> dict:
    """``generate`` kwargs with a :class:`FirstTokenClock` added to any stopping criteria."""
    criteria = StoppingCriteriaList(kwargs.get("stopping_criteria") or [])
    criteria.append(FirstTokenClock(on_first))
    return {**kwargs, "stopping_criteria": criteria}


class _CacheCollector:
    """Reads every live runtime's cache totals at scrape time."""

    def collect(self):
        from lf_ext.inference.runtime import live_runtimes

        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for runtime in live_runtimes():
            stats = runtime.stats()
            if stats is None:
                continue
            model = runtime.reuse.model_key[:16]
            for name, value in stats.items():
                if name not in families:
                    kind = GaugeMetricFamily if name in GAUGES else CounterMetricFamily
                    families[name] = kind(f"lf_ext_cache_{name}", f"Background cache: {name.replace('_', ' ')}.", labels=["model"])
                families[name].add_metric([model], float(value))
        yield from families.values()

    def describe(self):
        return []


REGISTRY.register(_CacheCollector())


def exposition() -> tuple[bytes, str]:
    """The registry in the Prometheus text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
