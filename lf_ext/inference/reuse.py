"""Prefill of a separated-layout prompt with background reuse (DESIGN.md §3.3, §7).

One request = one sequence with one image in the ``qwen2_vl_bgobj`` layout::

    text  <|vision_start|> [BG_START] bg... [BG_END] [OBJ_START] obj... [OBJ_END] <|vision_end|>  text

Everything up to ``[BG_END]`` (the *prefix*) depends only on the text before the image, the grid and
the background units' pixels (separated encoding, causal LLM and prefusion, positions that ignore
the object). So the cache value is the background tokens plus the prefix KV of the LLM (and of the
prefusion layers), and its key is the prefix text, the grid and the verified background pixels.

- **hit**: the entry's background set B is the background group; every unit outside B is encoded
  from the new image as the object group (vision tower on those units only); the LLM runs on the
  tokens after ``[BG_END]`` on top of a copy of the cached KV.
- **miss / rejection**: the request's own labels; both groups are encoded, the prefix is
  prefilled and inserted, then the rest.
- **refined rejection** (``refine=True``): a rejection whose nearest entry still matches on part of
  its background uses the common part as the background group, B' = (units of B that verify) minus
  the request's object units, if B' covers ``min_coverage`` of the grid; the request is then
  answered with B' (as a hit would serve it) and B' is inserted. Regions that change from frame to
  frame without being object (a clock, a cursor, leaves, earlier object positions) thus drop out of
  the cached background after one rejection instead of rejecting every later frame.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from lf_ext.cache import BackgroundCache
from lf_ext.inference.pixel_units import PixelNorm, image_units
from lf_ext.models.modules import BGOBJ_ATTR
from lf_ext.models.separated_vision import encode_object_units, separated_vision_forward

BG_TOKENS = "bg_tokens"


@dataclass
class Outcome:
    """What happened to one request; times in milliseconds."""

    kind: str  # "hit", "miss" or "rejection"
    background_units: int
    object_units: int
    entry_id: str | None = None
    inserted: bool = False
    max_unit_distance: float | None = None
    ms: dict[str, float] = field(default_factory=dict)
    refined: bool = False  # a rejection answered and inserted with the background shared with the nearest entry


@dataclass
class Prefilled:
    """A prefilled request: the KV cache covers ``input_ids[:, :upto]``."""

    input_ids: torch.Tensor  # (1, n), the layout actually used (hits use the entry's split)
    unit_labels: torch.Tensor  # (units,) long, 1 = object
    past_key_values: DynamicCache
    rope_deltas: torch.Tensor
    logits: torch.Tensor  # (1, vocab) float, next-token logits after the last prefilled token
    outcome: Outcome


@dataclass(frozen=True)
class _Layout:
    """Indices of one separated image in a prompt."""

    bg_start: int
    n_background: int
    n_object: int

    @property
    def prefix_end(self) -> int:  # one past [BG_END]
        return self.bg_start + self.n_background + 2


def _timer():
    start = time.perf_counter()
    return lambda: (time.perf_counter() - start) * 1000


def base_model(model):
    """The ``Qwen2VLForConditionalGeneration``-like model under PEFT wrappers, if any."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class BackgroundReuse:
    """Prefills separated-layout prompts of one model, reusing verified backgrounds from ``cache``."""

    def __init__(self, model, cache: BackgroundCache, norm: PixelNorm, model_key: str = "", refine: bool = True):
        self.model, self.cache, self.norm, self.refine = base_model(model), cache, norm, refine
        spec = self.model.config.vision_config.bgobj
        self.bg_start, self.bg_end, self.obj_start, self.obj_end = spec["separator_ids"]
        self.image_token = self.model.config.image_token_id
        self.split_projector = bool(spec.get("split_projector"))
        self._model_key = model_key

    @property
    def model_key(self) -> str:
        """Identity of the weights (computed on first use: LoRA merges happen after installation)."""
        if not self._model_key:
            self._model_key = model_fingerprint(self.model)
        return self._model_key

    # ------------------------------------------------------------------ public
    def eligible(self, input_ids: torch.Tensor, image_grid_thw: torch.Tensor | None) -> bool:
        """One sequence with exactly one separated image (the only case the cache serves)."""
        return (input_ids.dim() == 2 and input_ids.shape[0] == 1 and image_grid_thw is not None
                and image_grid_thw.shape[0] == 1 and int((input_ids == self.bg_start).sum()) == 1)  # fmt: skip

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                unit_labels: torch.Tensor, upto: int | None = None, use_cache: bool = True,
                lookup: bool = True) -> Prefilled:  # fmt: skip
        """Prefill ``input_ids[:, :upto]`` (all by default); ``use_cache=False`` never looks up or inserts,
        ``lookup=False`` inserts without looking up (to fill a cache with chosen entries)."""
        total = _timer()
        layout = self._layout(input_ids)
        upto = input_ids.shape[1] if upto is None else upto
        if upto <= layout.bg_start + layout.n_background + layout.n_object + 3:  # [OBJ_END]'s index
            raise ValueError("the prefill must reach past [OBJ_END] (the split may change on a hit)")
        labels = unit_labels.detach().reshape(-1).cpu().long()
        rows, cols = (int(v) // self.norm.merge for v in image_grid_thw[0, 1:])
        if labels.numel() != rows * cols or layout.n_background + layout.n_object != rows * cols:
            raise ValueError(f"{labels.numel()} unit labels and {layout.n_background + layout.n_object} visual tokens "
                             f"for a {rows}x{cols} grid")  # fmt: skip
        ms: dict[str, float] = {}
        hit, kind, units, key, refined = None, "miss", None, None, False
        if use_cache:
            clock = _timer()
            units = image_units(pixel_values, image_grid_thw, self.norm)[0]
            key = self._context_key(input_ids[0, : layout.bg_start + 1], rows, cols)
            if lookup:
                hit, kind = self.cache.lookup_outcome(key, units)
            if kind == "rejection" and self.refine:
                common = self._common_background(key, units, labels.view(rows, cols))
                if common is not None:
                    refined_labels = torch.from_numpy(~common.reshape(-1)).long()
                    refined = bool((refined_labels != labels).any())
                    labels = refined_labels
            ms["lookup"] = clock()
        if hit is not None:
            labels = torch.from_numpy(hit.object_labels.reshape(-1)).long()
        n_object = int(labels.sum())
        layout = _Layout(layout.bg_start, labels.numel() - n_object, n_object)
        ids = self._relayout(input_ids, layout)
        positions, deltas = self.model.model.get_rope_index(ids, image_grid_thw=image_grid_thw,
                                                            attention_mask=torch.ones_like(ids), bgobj_unit_labels=labels)  # fmt: skip
        if hit is not None:
            prefilled = self._prefill_hit(ids, positions, pixel_values, image_grid_thw, labels, layout, hit.payload, upto, ms)
            outcome = Outcome("hit", layout.n_background, layout.n_object, hit.entry_id, False, hit.max_unit_distance, ms)
        else:
            prefilled, payload = self._prefill_full(ids, positions, pixel_values, image_grid_thw, labels, layout, upto, ms)
            entry = None
            if use_cache:
                clock = _timer()
                entry = self.cache.insert(key, units, labels.view(rows, cols).bool().numpy(), payload)
                ms["insert"] = clock()
            outcome = Outcome(kind, layout.n_background, layout.n_object, entry, entry is not None, None, ms, refined)
        cache, logits = prefilled
        ms["total"] = total()
        return Prefilled(ids, labels, cache, deltas, logits, outcome)

    # ------------------------------------------------------------------ steps
    def _prefill_hit(self, ids, positions, pixel_values, grid, labels, layout, payload, upto, ms):
        clock = _timer()
        objects = encode_object_units(self.model.model.visual, pixel_values.to(self._vision_dtype()), grid,
                                      labels, self._merge())  # fmt: skip
        ms["vision"] = clock()
        clock = _timer()
        cache = self._restore(payload)
        start = layout.prefix_end
        embeds = self._embed(ids[:, start:upto], objects)
        hidden = self._llm(embeds, positions[:, :, start:upto], cache)
        logits = self.model.lm_head(hidden[:, -1]).float()
        ms["prefill"] = clock()
        return (cache, logits)

    def _prefill_full(self, ids, positions, pixel_values, grid, labels, layout, upto, ms):
        clock = _timer()
        visual = self.model.model.visual
        features = separated_vision_forward(visual, pixel_values.to(self._vision_dtype()), grid, labels, self._merge())
        ms["vision"] = clock()
        clock = _timer()
        cache = DynamicCache(config=self.model.config)
        end = layout.prefix_end
        embeds = self._embed(ids[:, :upto], features)
        self._llm(embeds[:, :end], positions[:, :, :end], cache)
        payload = self._payload(cache, features[: layout.n_background])
        hidden = self._llm(embeds[:, end:], positions[:, :, end:upto], cache)
        logits = self.model.lm_head(hidden[:, -1]).float()
        ms["prefill"] = clock()
        return (cache, logits), payload

    # ------------------------------------------------------------------ pieces
    def _common_background(self, key: str, units: np.ndarray, labels: torch.Tensor) -> np.ndarray | None:
        """B' (rows, cols) bool after a rejection (see the module doc), or None if too small."""
        shared = self.cache.shared_background(key, units)
        if shared is None:
            return None
        common = shared & ~labels.bool().numpy()
        return common if common.mean() >= self.cache.min_coverage else None

    def _layout(self, input_ids: torch.Tensor) -> _Layout:
        if input_ids.shape[0] != 1:
            raise ValueError("background reuse serves one sequence at a time")
        ids = input_ids[0]
        starts = (ids == self.bg_start).nonzero().flatten().tolist()
        ends = (ids == self.bg_end).nonzero().flatten().tolist()
        objs = (ids == self.obj_start).nonzero().flatten().tolist()
        obj_ends = (ids == self.obj_end).nonzero().flatten().tolist()
        if not (len(starts) == len(ends) == len(objs) == len(obj_ends) == 1):
            raise ValueError("background reuse needs exactly one image in the separated layout")
        s, e, o, oe = starts[0], ends[0], objs[0], obj_ends[0]
        if not (s < e and o == e + 1 and o < oe) or not bool((ids[s + 1 : e] == self.image_token).all()):
            raise ValueError("malformed separated layout: expected [BG_START] bg [BG_END][OBJ_START] obj [OBJ_END]")
        return _Layout(s, e - s - 1, oe - o - 1)

    def _relayout(self, input_ids: torch.Tensor, layout: _Layout) -> torch.Tensor:
        """The same prompt with ``layout``'s background/object token counts."""
        old = self._layout(input_ids)
        if (old.n_background, old.n_object) == (layout.n_background, layout.n_object):
            return input_ids
        ids, s = input_ids[0], old.bg_start
        image = torch.full((1,), self.image_token, dtype=ids.dtype, device=ids.device)
        sep = lambda t: torch.tensor([t], dtype=ids.dtype, device=ids.device)  # noqa: E731
        tail = ids[s + old.n_background + old.n_object + 4 :]
        parts = [ids[: s + 1], image.repeat(layout.n_background), sep(self.bg_end), sep(self.obj_start),
                 image.repeat(layout.n_object), sep(self.obj_end), tail]  # fmt: skip
        return torch.cat(parts).unsqueeze(0)

    def _context_key(self, prefix_ids: torch.Tensor, rows: int, cols: int) -> str:
        digest = hashlib.sha256(self.model_key.encode())
        digest.update(np.asarray(prefix_ids.cpu(), np.int64).tobytes())
        digest.update(f"{rows}x{cols}".encode())
        return digest.hexdigest()[:32]

    def _vision_dtype(self) -> torch.dtype:
        return self.model.model.visual.patch_embed.proj.weight.dtype

    def _merge(self):
        if not self.split_projector:
            return None
        modules = getattr(self.model.model.visual, BGOBJ_ATTR)
        return lambda hidden, is_object: modules("merge", hidden, is_object)

    def _embed(self, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Token embeddings (separator rows included) with ``features`` at the image tokens, in order."""
        embeds = self.model.get_input_embeddings()(ids)
        is_image = (ids == self.image_token)[..., None].expand_as(embeds)
        count = int((ids == self.image_token).sum())
        return embeds.masked_scatter(is_image, features[:count].to(embeds.dtype))

    def _llm(self, embeds, positions, cache) -> torch.Tensor:
        out = self.model.model.language_model(inputs_embeds=embeds, position_ids=positions, past_key_values=cache, use_cache=True)
        return out.last_hidden_state

    def _payload(self, cache: DynamicCache, background_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        payload = {BG_TOKENS: background_tokens}
        for prefix, source in (("kv", cache), ("prefusion", getattr(cache, "_bgobj_prefusion", None))):
            for i, layer in enumerate(source.layers if source is not None else []):
                payload[f"{prefix}.{i}.k"], payload[f"{prefix}.{i}.v"] = layer.keys, layer.values
        return payload

    def _restore(self, payload: dict[str, torch.Tensor]) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        _fill(cache, payload, "kv")
        if "prefusion.0.k" in payload:
            cache._bgobj_prefusion = DynamicCache()
            _fill(cache._bgobj_prefusion, payload, "prefusion")
        return cache


def _fill(cache: DynamicCache, payload: dict[str, torch.Tensor], prefix: str) -> None:
    i = 0
    while f"{prefix}.{i}.k" in payload:
        cache.update(payload[f"{prefix}.{i}.k"], payload[f"{prefix}.{i}.v"], i)
        i += 1


def model_fingerprint(model) -> str:
    """Identity of the weights that shape the cached values (name, dtype, a few weight rows)."""
    digest = hashlib.sha256(str(getattr(model.config, "_name_or_path", "")).encode())
    digest.update(str(model.dtype).encode())
    with torch.no_grad():
        for tensor in (model.get_input_embeddings().weight[:8], getattr(model.model.visual, BGOBJ_ATTR).separators.weight,
                       model.model.visual.patch_embed.proj.weight.flatten()[:4096]):  # fmt: skip
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
