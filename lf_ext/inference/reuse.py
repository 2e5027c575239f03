"""Prefill of a separated-layout prompt with background reuse (DESIGN.md §3.3, §7).

One request = one sequence with one single-slice item in the separated layout::

    text  [BG_START] bg... [BG_END] [OBJ_START] obj... [OBJ_END]  text

Everything up to ``[BG_END]`` (the *prefix*) depends only on the text before the item, the grid and
the background units' pixels (separated encoding, causal LLM and prefusion, positions that ignore
the object). So the cache value is the background tokens plus the prefix KV of the LLM (and of the
prefusion layers), and its key is the model, the prefix text, the grid and the verified background
pixels.

- **hit**: the entry's background set B is the background group; every unit outside B is encoded
  from the new image as the object group (vision tower on those units only); the LLM runs on the
  tokens after ``[BG_END]`` on top of a copy of the cached KV.
- **miss / rejection**: the request's own split; both groups are encoded, the prefix is
  prefilled and inserted, then the rest.
- **refined rejection** (``refine=True``, ``reuse`` policy only): after a rejection the request uses
  B' = its own background minus the units that fail verification in the near entries' B (regions
  that changed without being object: a clock, a cursor, leaves), if the policy admits B'; the request
  is answered with B', computed from its own pixels, and B' is inserted. Later frames whose changes
  stay inside their object group and those regions then hit, with an object group close to their own.
- the policy (``bgobj_cache_policy``) decides which entries may serve: ``exact`` only those with the
  request's own split (answers equal cache-off), ``reuse`` any, closest split first.

With a token budget (``selection``) a split's units are selected inside each group from the pixels the
split is computed from: the request's own (miss, refined rejection, a hit's object group); a hit's
background units keep the cached entry's selection (stored with it).

Everything model-specific goes through the :class:`~lf_ext.families.base.BgObjFamily`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from lf_ext.cache import BackgroundCache
from lf_ext.families import BgObjFamily
from lf_ext.families.base import PixelUnits
from lf_ext.inference.model_key import model_key
from lf_ext.layout import Group, ImageLayout, Span, check_spans, find_spans, respan, clip_groups
from lf_ext.models.attach import scatter_features
from lf_ext.models.prefusion import BgObjCache
from lf_ext.selection import PatchSelection

BG_TOKENS = "bg_tokens"
UNIT_GROUPS = "unit_groups"  # the entry's groups: which of its background units keep a token


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
    source: str | None = None  # where a hit's entry was found: "memory", "disk" or "redis"


@dataclass
class Prefilled:
    """A prefilled request: the KV cache covers ``input_ids[:, :upto]``."""

    input_ids: torch.Tensor  # (1, n), the layout actually used (hits use the entry's split)
    layout: ImageLayout  # the split actually used
    past_key_values: DynamicCache
    position_ids: torch.Tensor  # the family's position ids of all of ``input_ids``
    logits: torch.Tensor  # (1, vocab) float, next-token logits after the last prefilled token
    outcome: Outcome

    @property
    def unit_labels(self) -> torch.Tensor:
        """(units,) long, 1 = object: the split used."""
        return self.layout.object_labels(0).reshape(-1).long()


def _timer():
    start = time.perf_counter()
    return lambda: (time.perf_counter() - start) * 1000


class BackgroundReuse:
    """Prefills separated-layout prompts of one model, reusing verified backgrounds from ``cache``."""

    def __init__(self, model, family: BgObjFamily, cache: BackgroundCache, pixels: PixelUnits, refine: bool = True,
                 key: str = "", selection: PatchSelection | None = None):  # fmt: skip
        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.family, self.cache, self.pixels, self.refine = family, cache, pixels, refine
        self.selection = selection or PatchSelection()
        self.tokens = family.separator_tokens(self.model)
        self._model_key = key

    @property
    def model_key(self) -> str:
        """Identity of the weights and pixel settings (every weight hashed, computed on first use)."""
        if not self._model_key:
            self._model_key = model_key(self.model, self.pixels.fingerprint())
        return self._model_key

    # ------------------------------------------------------------------ public
    def eligible(self, input_ids: torch.Tensor, layout: ImageLayout | None) -> bool:
        """One sequence with exactly one separated item, an image or a clip (the only case the cache serves)."""
        return (layout is not None and input_ids.dim() == 2 and input_ids.shape[0] == 1 and len(layout) == 1
                and int((input_ids == self.tokens.bg_start).sum()) == 1)  # fmt: skip

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, layout: ImageLayout,
                upto: int | None = None, use_cache: bool = True, lookup: bool = True) -> Prefilled:  # fmt: skip
        """Prefill ``input_ids[:, :upto]`` (all by default) with ``layout``'s split (the prompt's visual token
        counts are adjusted to it); ``use_cache=False`` never looks up or inserts, ``lookup=False`` inserts
        without looking up (to fill a cache with chosen entries)."""
        total = _timer()
        span = self._span(input_ids)
        upto = input_ids.shape[1] if upto is None else upto
        if upto <= span.obj_end:
            raise ValueError("the prefill must reach past [OBJ_END] (the split may change on a hit)")
        labels = layout.object_labels(0)[0].numpy()  # (rows, cols) bool: object members (a clip: of its first slice)
        groups = layout.item_groups(0).reshape(-1)  # the request's own split and token budget
        ms: dict[str, float] = {}
        hit, kind, units, key, refined = None, "miss", None, None, False
        if use_cache:
            clock = _timer()
            units = self.pixels.units(pixel_values, layout, 0)[0]
            key = self._context_key(input_ids[0, : span.bg_start + 1], labels.shape)
            if lookup:
                hit, kind = self.cache.lookup_outcome(key, units, ~labels)
            if kind == "rejection" and self.refine and self.cache.policy.mode == "reuse":
                background = self._refined_background(key, units, labels)
                if background is not None and bool((~background != labels).any()):
                    refined, labels = True, ~background
                    groups = self._over_slices(self._selected(units, labels, layout), layout)
            ms["lookup"] = clock()
        if hit is not None:
            labels, groups = hit.object_labels, self._over_slices(self._hit_groups(hit, units, layout), layout)
        used = layout.with_item(0, groups)
        ids = respan(input_ids, span, used.n_background(0), used.n_object(0), self.tokens)
        upto += ids.shape[1] - input_ids.shape[1]  # the same token, when the split changed the item's length
        new_span = self._span(ids, used)
        positions = self.family.positions(self.model, ids, used)
        if hit is not None:
            cache, logits = self._prefill_hit(ids, positions, pixel_values, used, new_span, hit.payload, upto, ms)
            outcome = Outcome("hit", used.n_background(0), used.n_object(0), hit.entry_id, False, hit.max_unit_distance, ms,
                              source=hit.source)  # fmt: skip
        else:
            (cache, logits), payload = self._prefill_full(ids, positions, pixel_values, used, new_span, upto, ms)
            entry = None
            if use_cache:
                clock = _timer()
                entry = self.cache.insert(key, units, labels, payload)
                ms["insert"] = clock()
            outcome = Outcome(kind, used.n_background(0), used.n_object(0), entry, entry is not None, None, ms, refined)
        ms["total"] = total()
        return Prefilled(ids, used, cache, positions, logits, outcome)

    # ------------------------------------------------------------------ steps
    def _prefill_hit(self, ids, positions, pixel_values, layout, span: Span, payload, upto, ms):
        clock = _timer()
        objects = self.family.encode(self.model, pixel_values, layout, groups=(Group.OBJECT,))
        ms["vision"] = clock()
        clock = _timer()
        cache = self._restore(payload)
        start = span.prefix_end
        embeds = self._embed(ids[:, start:upto], objects)
        hidden = self._llm(embeds, positions[..., start:upto], cache)
        logits = self.model.lm_head(hidden[:, -1]).float()
        ms["prefill"] = clock()
        return cache, logits

    def _prefill_full(self, ids, positions, pixel_values, layout, span: Span, upto, ms):
        clock = _timer()
        features = self.family.encode(self.model, pixel_values, layout)
        ms["vision"] = clock()
        clock = _timer()
        cache = self._new_cache()
        end = span.prefix_end
        embeds = self._embed(ids[:, :upto], features)
        self._llm(embeds[:, :end], positions[..., :end], cache)
        payload = self._payload(cache, features[: layout.n_background(0)])
        payload[UNIT_GROUPS] = layout.item_groups(0)[0].reshape(-1).clone()  # the split (a clip: its first slice)
        hidden = self._llm(embeds[:, end:], positions[..., end:upto], cache)
        logits = self.model.lm_head(hidden[:, -1]).float()
        ms["prefill"] = clock()
        return (cache, logits), payload

    # ------------------------------------------------------------------ pieces
    def _span(self, input_ids: torch.Tensor, layout: ImageLayout | None = None) -> Span:
        """The one separated item of a one-sequence prompt (its counts checked against ``layout`` if given)."""
        if input_ids.shape[0] != 1:
            raise ValueError("background reuse serves one sequence at a time")
        spans = find_spans(input_ids[0].tolist(), self.tokens)
        if len(spans) != 1:
            raise ValueError("background reuse needs exactly one item in the separated layout")
        if layout is not None:
            check_spans(spans, layout)
        return spans[0]

    def _selected(self, units: np.ndarray, object_members: np.ndarray, layout: ImageLayout) -> torch.Tensor:
        """Groups of a split computed from the request's pixels: members, with the token budget applied
        (to images: clips take no token budget)."""
        members = torch.from_numpy(np.asarray(object_members).reshape(-1)).to(torch.int8)
        if not self.selection.enabled or layout.is_video(0):
            return members
        kept = torch.from_numpy(self.selection.select_grid(units, object_members).reshape(-1))
        return torch.where(kept, members, members + int(Group.DROPPED))

    @staticmethod
    def _over_slices(first: torch.Tensor, layout: ImageLayout) -> torch.Tensor:
        """A split of the first slice over all of the request's slices: a clip keeps its own later tokens (where
        its pixels changed, :func:`~lf_ext.layout.clip_groups`); an image's groups unchanged."""
        slices, rows, cols = layout.grids[0]
        if slices == 1:
            return first
        background = first.view(rows, cols) == int(Group.BACKGROUND)
        return clip_groups(background, layout.item_groups(0) == int(Group.OBJECT)).reshape(-1)

    def _hit_groups(self, hit, units: np.ndarray, layout: ImageLayout) -> torch.Tensor:
        """A hit's groups: the entry's background units as cached (kept or dropped), the rest object units of
        the request, with the token budget applied to them from the request's pixels."""
        background = torch.tensor(hit.background.reshape(-1))  # a copy: the entry's array is read-only
        cached = hit.payload.get(UNIT_GROUPS)
        groups = cached.to(torch.int8).clone() if cached is not None else torch.zeros_like(background, dtype=torch.int8)
        object_groups = self._selected(units, hit.object_labels, layout)
        groups[~background] = object_groups[~background]
        return groups

    def _refined_background(self, key: str, units: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
        """B' (rows, cols) bool after a rejection (see the module doc), or None if the policy refuses it."""
        refined = self.cache.refined_background(key, units, ~labels)
        return refined if refined is not None and self.cache.policy.admits(refined) else None

    def _context_key(self, prefix_ids: torch.Tensor, shape: tuple[int, int]) -> str:
        digest = hashlib.sha256(self.model_key.encode())
        digest.update(np.asarray(prefix_ids.cpu(), np.int64).tobytes())
        digest.update(f"{shape[0]}x{shape[1]}".encode())
        return digest.hexdigest()[:32]

    def _embed(self, ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """Token embeddings (separator rows included) with ``features`` at the visual tokens, in order."""
        embeds = self.model.get_input_embeddings()(ids)
        count = int((ids == self.tokens.image).sum())
        return scatter_features(embeds, ids, features[:count], self.tokens.image)

    def _llm(self, embeds, positions, cache) -> torch.Tensor:
        mask = None
        if self.family.replaces_given_positions:  # non-consecutive ids without a mask read as packing (FA2)
            mask = torch.ones(1, cache.get_seq_length() + embeds.shape[1], dtype=torch.long, device=embeds.device)
        out = self.family.language_model(self.model)(inputs_embeds=embeds, position_ids=positions, past_key_values=cache,
                                                     attention_mask=mask, use_cache=True)  # fmt: skip
        return out.last_hidden_state

    def _new_cache(self) -> DynamicCache:
        prefusion = self.family.spec(self.model).get("prefusion_layers")
        return (BgObjCache if prefusion else DynamicCache)(config=self.model.config)

    def _payload(self, cache: DynamicCache, background_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        payload = {BG_TOKENS: background_tokens}
        for prefix, source in (("kv", cache), ("prefusion", getattr(cache, "prefusion", None))):
            for i, layer in enumerate(source.layers if source is not None else []):
                payload[f"{prefix}.{i}.k"], payload[f"{prefix}.{i}.v"] = layer.keys, layer.values
        return payload

    def _restore(self, payload: dict[str, torch.Tensor]) -> DynamicCache:
        cache = self._new_cache()
        _fill(cache, payload, "kv")
        if isinstance(cache, BgObjCache):
            _fill(cache.prefusion, payload, "prefusion")
        return cache


def _fill(cache: DynamicCache, payload: dict[str, torch.Tensor], prefix: str) -> None:
    i = 0
    while f"{prefix}.{i}.k" in payload:
        cache.update(payload[f"{prefix}.{i}.k"], payload[f"{prefix}.{i}.v"], i)
        i += 1
