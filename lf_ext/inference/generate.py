"""The background cache inside ``model.generate``: what ``llamafactory-cli chat``, ``api`` and ``webchat`` call.

LLaMA-Factory's HF engine builds the prompt with the ``qwen2_vl_bgobj`` plugin and calls
``model.generate(inputs=..., pixel_values=..., image_grid_thw=..., bgobj_unit_labels=...)``. The
wrapper installed here on the model instance prefills all prompt tokens but the last with
:class:`~lf_ext.inference.reuse.BackgroundReuse` (hit, miss or rejection) and lets the stock
``generate`` continue from that KV cache with the last prompt token, so sampling, streaming and
stop tokens stay LLaMA-Factory's. Requests it does not serve (several sequences or images, videos,
beam search) go to the stock ``generate`` unchanged. Each served request logs one line with its
outcome and the running totals; :func:`cache_stats` reads the totals.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from lf_ext.cache import BackgroundCache
from lf_ext.inference.pixel_units import PixelNorm
from lf_ext.inference.reuse import BackgroundReuse, Outcome, base_model
from lf_ext.log import get_logger

CACHE_ATTR = "_lf_ext_background_cache"
REUSE_ATTR = "_lf_ext_background_reuse"
MIB = 1 << 20


def cache_from_settings(settings) -> BackgroundCache:
    """A :class:`BackgroundCache` configured by the ``bgobj_cache_*`` keys."""
    return BackgroundCache(
        int(settings.bgobj_cache_max_mb * MIB), unit_threshold=settings.bgobj_cache_unit_threshold,
        min_coverage=settings.bgobj_cache_min_coverage, disk_dir=settings.bgobj_cache_dir or None,
        disk_max_bytes=int(settings.bgobj_cache_disk_max_mb * MIB) or None,
    )  # fmt: skip


def install_background_cache(model, norm: PixelNorm, cache: BackgroundCache | None = None, max_bytes: int = 2048 * MIB,
                             refine: bool = True) -> BackgroundReuse:  # fmt: skip
    """Make ``model.generate`` reuse verified backgrounds (idempotent: a second call swaps the cache);
    ``refine``: see :class:`BackgroundReuse` (``bgobj_cache_refine``)."""
    cache = cache if cache is not None else BackgroundCache(max_bytes)
    reuse = BackgroundReuse(model, cache, norm, refine=refine)
    setattr(model, CACHE_ATTR, cache)
    setattr(model, REUSE_ATTR, reuse)
    if not getattr(model.generate, "_lf_ext_cached", False):
        model.generate = _cached_generate(model, model.generate)
    return reuse


def cache_stats(model) -> dict | None:
    """Totals of the model's background cache (None if it has none)."""
    cache = getattr(model, CACHE_ATTR, None)
    return cache.stats() if cache is not None else None


def last_outcome(model) -> Outcome | None:
    """What the model's last served request did (hit/miss/rejection, units, times)."""
    return getattr(model, "_lf_ext_last_outcome", None)


def _served(reuse: BackgroundReuse, inputs, kwargs) -> bool:
    config = kwargs.get("generation_config")
    beams = max(getattr(config, "num_beams", 1) or 1, kwargs.get("num_beams", 1) or 1)
    sequences = max(getattr(config, "num_return_sequences", 1) or 1, kwargs.get("num_return_sequences", 1) or 1)
    return (isinstance(inputs, torch.Tensor) and kwargs.get("pixel_values") is not None
            and kwargs.get("bgobj_unit_labels") is not None and kwargs.get("pixel_values_videos") is None
            and kwargs.get("past_key_values") is None and beams == 1 and sequences == 1
            and reuse.eligible(inputs, kwargs.get("image_grid_thw")))  # fmt: skip


def _cached_generate(model, stock_generate):
    @functools.wraps(stock_generate)
    def generate(inputs=None, **kwargs):
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        reuse: BackgroundReuse = getattr(model, REUSE_ATTR)
        if not _served(reuse, inputs, kwargs):
            return stock_generate(inputs=inputs, **kwargs)
        if kwargs.get("attention_mask") is not None and not bool(kwargs["attention_mask"].all()):
            return stock_generate(inputs=inputs, **kwargs)
        prefilled = reuse.prefill(inputs, kwargs.pop("pixel_values"), kwargs.pop("image_grid_thw"),
                                  kwargs.pop("bgobj_unit_labels"), upto=inputs.shape[1] - 1)  # fmt: skip
        for name in ("mm_token_type_ids", "attention_mask"):
            kwargs.pop(name, None)
        model._lf_ext_last_outcome = prefilled.outcome
        _log(prefilled.outcome, reuse.cache.stats())
        base_model(model).model.rope_deltas = prefilled.rope_deltas
        ids = prefilled.input_ids
        return stock_generate(inputs=ids, attention_mask=torch.ones_like(ids), past_key_values=prefilled.past_key_values, **kwargs)

    generate._lf_ext_cached = True
    return generate


def _log(outcome: Outcome, stats: dict) -> None:
    ms = outcome.ms
    get_logger().info(
        "background cache %s%s: %d background + %d object units; lookup %.1f ms, vision %.0f ms, prefill %.0f ms | "
        "totals: %d lookups, %d hits, %d misses, %d rejections, %d entries, %.1f MiB",
        outcome.kind, " (refined: inserted the background it shares with the nearest entry)" if outcome.refined else "",
        outcome.background_units, outcome.object_units, ms.get("lookup", 0.0), ms.get("vision", 0.0),
        ms.get("prefill", 0.0), stats["lookups"], stats["hits"], stats["misses"], stats["rejections"],
        stats["entries"], stats["bytes"] / MIB,
    )  # fmt: skip


def image_norm_of(model_path: str | Path) -> PixelNorm:
    """The pixel normalisation of the checkpoint's image processor (read from its folder, offline)."""
    from transformers import AutoImageProcessor

    return PixelNorm.from_image_processor(AutoImageProcessor.from_pretrained(str(model_path)))
