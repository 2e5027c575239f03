"""The inference runtime of one loaded bgobj model: its background cache, the reuse, and what each request did.

Loading a bgobj model for inference (``chat``, ``api``, ``webchat``, :class:`~lf_ext.inference.stream.FrameStream`)
installs a :class:`BgObjRuntime` (after LLaMA-Factory has merged any adapters). It wraps that
instance's ``generate``: a request with one separated image is prefilled, all prompt tokens but the
last, by :class:`~lf_ext.inference.reuse.BackgroundReuse` (hit, miss or rejection), then the stock
``generate`` continues from that KV cache with explicit position ids, so sampling, streaming and
stop tokens stay LLaMA-Factory's and no model-wide state (``rope_deltas``) is read. Requests it does
not serve (several sequences or images, videos, beam search, padding) go to the stock ``generate``.

Each served request logs one line with its outcome and the running totals. A request whose image
carried a request id (``{"image"|"path"|"bytes": ..., "bgobj_request": id}``, see
:meth:`BgObjRuntime.new_request`) leaves its :class:`~lf_ext.inference.reuse.Outcome` under that id:
outcomes travel with their requests, whatever the concurrency.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from lf_ext.cache import BackgroundCache
from lf_ext.cache.policy import VerificationPolicy
from lf_ext.cache.redis_tier import RedisConfig, redacted
from lf_ext.config import Settings
from lf_ext.families import BgObjFamily
from lf_ext.inference.metrics import observe_outcome, with_first_token_clock
from lf_ext.inference.model_key import model_key
from lf_ext.inference.reuse import BackgroundReuse, Outcome
from lf_ext.layout import LAYOUT_KEY, ImageLayout
from lf_ext.log import get_logger
from lf_ext.patching import wrap
from lf_ext.plugins.image_labels import REQUEST_KEY
from lf_ext.selection import PatchSelection

MIB = 1 << 20
_RUNTIMES: "weakref.WeakKeyDictionary[nn.Module, BgObjRuntime]" = weakref.WeakKeyDictionary()


def cache_from_settings(keys, namespace: str = "") -> BackgroundCache:
    """A :class:`BackgroundCache` configured by the ``bgobj_cache_*`` keys; ``namespace``: the model key."""
    redis = None
    if keys.bgobj_cache_redis_url:
        redis = RedisConfig(keys.bgobj_cache_redis_url, int(keys.bgobj_cache_redis_max_mb * MIB), keys.bgobj_cache_redis_ttl_s,
                            keys.bgobj_cache_redis_timeout_s)  # fmt: skip
        get_logger().info("background cache: shared Redis tier at %s (namespace %s, bound %.0f MiB, ttl %s)",
                          redacted(redis.url), namespace or "''", keys.bgobj_cache_redis_max_mb,
                          f"{redis.ttl_s:g} s" if redis.ttl_s else "none")  # fmt: skip
    return BackgroundCache(
        int(keys.bgobj_cache_max_mb * MIB), policy=VerificationPolicy.from_settings(keys),
        disk_dir=keys.bgobj_cache_dir or None, disk_max_bytes=int(keys.bgobj_cache_disk_max_mb * MIB) or None,
        namespace=namespace, redis=redis,
    )  # fmt: skip


class BgObjRuntime:
    """The background cache of one model instance and the bookkeeping of its requests."""

    MAX_OUTCOMES = 4096  # outcomes nobody took are dropped oldest first

    def __init__(self, model: nn.Module, family: BgObjFamily, reuse: BackgroundReuse | None):
        self.model, self.family, self.reuse = model, family, reuse
        self._outcomes: OrderedDict[int, Outcome | None] = OrderedDict()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def cache(self) -> BackgroundCache | None:
        return self.reuse.cache if self.reuse is not None else None

    def stats(self) -> dict | None:
        """Totals of the background cache (None when the cache is off)."""
        return self.cache.stats() if self.cache is not None else None

    # ------------------------------------------------------------------ requests
    def new_request(self) -> int:
        """A fresh request id to put on an image (``{"image": ..., "bgobj_request": id}``)."""
        with self._lock:
            return next(self._ids)

    def take_outcome(self, request: int) -> Outcome | None:
        """The outcome of a finished request (None: not served by the cache, or unknown); read once."""
        with self._lock:
            return self._outcomes.pop(request, None)

    def _record(self, requests: torch.Tensor | None, outcome: Outcome | None) -> None:
        if requests is None:
            return
        with self._lock:
            for request in requests.reshape(-1).tolist():
                if request >= 0:
                    self._outcomes[int(request)] = outcome
            while len(self._outcomes) > self.MAX_OUTCOMES:
                self._outcomes.popitem(last=False)

    # ------------------------------------------------------------------ generate
    def _served(self, inputs, kwargs, layout: ImageLayout | None) -> bool:
        if self.reuse is None:
            return False
        config = kwargs.get("generation_config")
        beams = max(getattr(config, "num_beams", 1) or 1, kwargs.get("num_beams", 1) or 1)
        sequences = max(getattr(config, "num_return_sequences", 1) or 1, kwargs.get("num_return_sequences", 1) or 1)
        mask = kwargs.get("attention_mask")
        return (isinstance(inputs, torch.Tensor) and kwargs.get("pixel_values") is not None
                and kwargs.get("pixel_values_videos") is None and kwargs.get("past_key_values") is None
                and beams == 1 and sequences == 1 and (mask is None or bool(mask.all()))
                and self.reuse.eligible(inputs, layout))  # fmt: skip

    def wrap_generate(self, stock_generate):
        def generate(inputs=None, **kwargs):
            if inputs is None:
                inputs = kwargs.pop("input_ids", None)
            requests = kwargs.pop(REQUEST_KEY, None)
            kwargs = with_first_token_clock(kwargs)  # TTFT from here
            layout = ImageLayout.coerce(kwargs.get(LAYOUT_KEY))
            if not self._served(inputs, kwargs, layout):
                self._record(requests, None)
                observe_outcome(None)
                return stock_generate(inputs=inputs, **kwargs)
            prefilled = self.reuse.prefill(inputs, kwargs.pop("pixel_values"), layout, upto=inputs.shape[1] - 1)
            for name in ("mm_token_type_ids", "attention_mask", "image_grid_thw", "position_ids", LAYOUT_KEY):
                kwargs.pop(name, None)
            self._record(requests, prefilled.outcome)
            observe_outcome(prefilled.outcome)
            _log(prefilled.outcome, self.cache.stats(), self.cache.redis is not None)
            ids = prefilled.input_ids
            return stock_generate(inputs=ids, attention_mask=torch.ones_like(ids), past_key_values=prefilled.past_key_values,
                                  position_ids=prefilled.position_ids, **kwargs)  # fmt: skip

        return generate


def install_runtime(model: nn.Module, family: BgObjFamily, settings: Settings, model_path: str | Path) -> BgObjRuntime:
    """Give an inference load of a bgobj model its runtime (``bgobj_cache_*`` keys); idempotent."""
    if model in _RUNTIMES:
        return _RUNTIMES[model]
    keys = settings.keys
    reuse = None
    if keys.bgobj_cache and keys.bgobj_cache_max_mb > 0:
        from transformers import AutoImageProcessor

        pixels = family.pixel_units(AutoImageProcessor.from_pretrained(str(model_path)))
        started = time.perf_counter()
        key = model_key(model, pixels.fingerprint())  # every weight, after adapters were merged
        get_logger().info("background cache: model key %s (every weight hashed in %.0f ms), policy %s", key,
                          (time.perf_counter() - started) * 1000, keys.bgobj_cache_policy)  # fmt: skip
        reuse = BackgroundReuse(model, family, cache_from_settings(keys, key), pixels, refine=keys.bgobj_cache_refine, key=key,
                                selection=PatchSelection.from_settings(keys))  # fmt: skip
    return attach_runtime(model, BgObjRuntime(model, family, reuse))


def attach_runtime(model: nn.Module, runtime: BgObjRuntime) -> BgObjRuntime:
    """Wrap ``model.generate`` with ``runtime`` (a second runtime replaces the first)."""
    _RUNTIMES[model] = runtime
    wrap(model, "generate", lambda stock: _current_runtime_generate(model, stock), tag="bgobj_runtime")
    return runtime


def _current_runtime_generate(model: nn.Module, stock_generate):
    def generate(*args, **kwargs):
        return _RUNTIMES[model].wrap_generate(stock_generate)(*args, **kwargs)

    return generate


def live_runtimes() -> list[BgObjRuntime]:
    """The runtimes of every loaded bgobj model of this process."""
    return list(_RUNTIMES.values())


def runtime_of(model: nn.Module) -> BgObjRuntime | None:
    """The runtime of a loaded bgobj model (None for stock models and training loads)."""
    return _RUNTIMES.get(model)


def cache_stats(model: nn.Module) -> dict | None:
    """Totals of the model's background cache (None if it has none)."""
    runtime = runtime_of(model)
    return runtime.stats() if runtime is not None else None


def _log(outcome: Outcome, stats: dict, shared: bool = False) -> None:
    ms = outcome.ms
    redis = (f"; redis: {stats['redis_hits']} hits, {stats['redis_errors']} errors, {stats['redis_skipped']} skipped, "
             f"{stats['redis_bytes'] / MIB:.1f} MiB" if shared else "")  # fmt: skip
    get_logger().info(
        "background cache %s%s%s: %d background + %d object units; lookup %.1f ms, vision %.0f ms, prefill %.0f ms | "
        "totals: %d lookups, %d hits, %d misses, %d rejections, %d entries, %.1f MiB%s",
        outcome.kind, f" ({outcome.source})" if outcome.source not in (None, "memory") else "",
        " (refined: inserted the background it shares with the nearest entry)" if outcome.refined else "",
        outcome.background_units, outcome.object_units, ms.get("lookup", 0.0), ms.get("vision", 0.0),
        ms.get("prefill", 0.0), stats["lookups"], stats["hits"], stats["misses"], stats["rejections"],
        stats["entries"], stats["bytes"] / MIB, redis,
    )  # fmt: skip
