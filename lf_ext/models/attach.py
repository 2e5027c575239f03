"""Switch one loaded model instance to layouts (instance-level, no class edits): the separated layout of a
bgobj model, or the plain layout of a token budget on a stock model.

- ``forward`` accepts ``bgobj_layout`` (declared, so ``generate`` passes it through): with pixels it
  builds the input embeddings itself (the family's separated encoding scattered at the visual
  tokens) and the layout's position ids, then runs the stock forward on those embeddings;
- the input embeddings take the separator rows from the ``bgobj`` modules (a forward hook);
- the family makes the model's own position computation layout-aware (Qwen: ``get_rope_index``);
- with prefusion layers, they run on the embeddings just before the LLM (a pre-hook), and
  ``generate`` gets a :class:`~lf_ext.models.prefusion.BgObjCache` that keeps their KV.

:func:`initialize_new_modules` gives fresh modules their starting values (first load only).
"""

from __future__ import annotations

import inspect
import time
from contextlib import nullcontext

import torch
from torch import nn

from lf_ext.families import BgObjFamily
from lf_ext.families.base import sequential_positions
from lf_ext.inference.metrics import observe_component
from lf_ext.layout import LAYOUT_KEY, ImageLayout, SeparatorIds
from lf_ext.models.modules import init_separators_from
from lf_ext.models.prefusion import BgObjCache, prefusion_cache_of
from lf_ext.patching import wrap
from lf_ext.pooling import pool_layout_tokens


def scatter_features(embeds: torch.Tensor, ids: torch.Tensor, features: torch.Tensor, image_token: int) -> torch.Tensor:
    """``embeds`` with ``features`` (in order) at the visual tokens of ``ids``; the counts must agree."""
    is_image = ids == image_token
    count = int(is_image.sum())
    if count != features.shape[0]:
        raise ValueError(f"{count} visual tokens in the sequence, {features.shape[0]} visual features for them")
    return embeds.masked_scatter(is_image[..., None].expand_as(embeds), features.to(embeds.device, embeds.dtype))


def embed_layout(model: nn.Module, family: BgObjFamily, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                 layout: ImageLayout) -> torch.Tensor:  # fmt: skip
    """Input embeddings of separated sequences: token embeddings (separator rows included) with the
    family's separated visual features at the visual tokens (pooled items pooled, :mod:`lf_ext.pooling`)."""
    embeds = model.get_input_embeddings()(input_ids)
    features = pool_layout_tokens(family.encode(model, pixel_values, layout), layout)
    return scatter_features(embeds, input_ids, features, family.image_token_id(model.config))


def _layout_forward(model: nn.Module, family: BgObjFamily):
    def make(stock_forward):
        def forward(*args, bgobj_layout=None, **kwargs):
            layout = ImageLayout.coerce(bgobj_layout)
            if layout is None or kwargs.get("pixel_values") is None:
                return stock_forward(*args, **kwargs)
            if len(args) > 1 or (args and "input_ids" in kwargs):
                raise TypeError("with bgobj_layout, pass the model inputs as keywords (input_ids=..., pixel_values=...)")
            input_ids = args[0] if args else kwargs.pop("input_ids", None)
            if input_ids is None or kwargs.pop("inputs_embeds", None) is not None:
                raise ValueError("a separated layout needs input_ids (not inputs_embeds)")
            if kwargs.get("pixel_values_videos") is not None:
                raise ValueError(f"{family.template}: a batch mixing videos with separated images is not supported")
            started = time.perf_counter()
            embeds = embed_layout(model, family, input_ids, kwargs.pop("pixel_values"), layout)
            observe_component("vision", time.perf_counter() - started)
            if family.replaces_given_positions:
                _check_default_positions(family, input_ids, kwargs.get("position_ids"), kwargs.get("attention_mask"))
                if kwargs.get("attention_mask") is None:  # without one, transformers reads non-consecutive ids as packing
                    kwargs["attention_mask"] = torch.ones_like(input_ids)
                kwargs["position_ids"] = None
            if kwargs.get("position_ids") is None:
                kwargs["position_ids"] = family.positions(model, input_ids, layout, kwargs.get("attention_mask"))
            return stock_forward(input_ids=None, inputs_embeds=embeds, **kwargs)

        forward.__signature__ = _with_layout(inspect.signature(stock_forward))
        return forward

    return make


def _check_default_positions(family: BgObjFamily, input_ids, position_ids, attention_mask) -> None:
    """The layout's positions replace only ``generate``'s own sequential ids (or none): packed samples (position
    ids restarting, 4-D masks) or a static cache's 4-D mask would be silently wrong, so they are refused."""
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(f"{family.template}: a 4-D attention mask (packing, a static cache) is not supported with the "
                         f"separated layout; use a 2-D mask (no packing, a dynamic cache)")  # fmt: skip
    if position_ids is not None and not torch.equal(position_ids.expand_as(input_ids).to(input_ids.device),
                                                    sequential_positions(input_ids, attention_mask)):  # fmt: skip
        raise ValueError(f"{family.template}: position ids other than the sequential ones (packing) are not supported "
                         f"with the separated layout; the layout gives the positions")  # fmt: skip


def _with_layout(signature: inspect.Signature) -> inspect.Signature:
    params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = inspect.Parameter(LAYOUT_KEY, inspect.Parameter.KEYWORD_ONLY, default=None)
    var_kw = [p for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD]
    return signature.replace(parameters=[*params, extra, *var_kw])


def _separator_hook(model: nn.Module, family: BgObjFamily, tokens: SeparatorIds):
    ids = torch.tensor([tokens.bg_start, tokens.bg_end, tokens.obj_start, tokens.obj_end])

    def hook(module, inputs, output):
        input_ids = inputs[0]
        is_separator = input_ids.unsqueeze(-1) == ids.to(input_ids.device)  # (..., 4)
        if not bool(is_separator.any()):
            return output
        rows = family.modules(model)("separators", is_separator.long().argmax(-1))  # through PEFT wrappers too
        return torch.where(is_separator.any(-1, keepdim=True), rows.to(output.dtype), output)

    return hook


def _prefusion_hook(model: nn.Module, family: BgObjFamily):
    def hook(module, args, kwargs):
        hidden = kwargs.get("inputs_embeds")
        if hidden is None:
            return None
        cache = kwargs.get("past_key_values")
        own = prefusion_cache_of(cache)
        rope, text = family.prefusion_positions(kwargs.get("position_ids"), hidden, cache.get_seq_length() if cache is not None else 0)
        kwargs["inputs_embeds"] = family.modules(model)("prefusion", hidden, rope, text, kwargs.get("attention_mask"),
                                                        own, module.rotary_emb, module.config)  # fmt: skip
        return args, kwargs

    return hook


def _with_prefusion_cache(model: nn.Module):
    def make(stock_generate):
        def generate(*args, **kwargs):
            config = kwargs.get("generation_config")
            use_cache = kwargs.get("use_cache", getattr(config, "use_cache", True))
            if kwargs.get("past_key_values") is None and use_cache is not False:
                kwargs["past_key_values"] = BgObjCache(config=model.config)
            return stock_generate(*args, **kwargs)

        return generate

    return make


def attach_bgobj(model: nn.Module, family: BgObjFamily) -> None:
    """Install layouts on a model instance of ``family`` (idempotent): with a ``bgobj`` spec the separated
    layout and its modules, without one (a token budget on a stock model) plain layouts only."""
    family.validate(model)
    if not wrap(model, "forward", _layout_forward(model, family), tag="bgobj_layout"):
        return
    spec = family.spec(model) or {}
    tokens = family.separator_tokens(model)
    if spec:
        model.get_input_embeddings().register_forward_hook(_separator_hook(model, family, tokens))
    if spec.get("prefusion_layers"):
        language_model = family.language_model(model)
        family.modules(model).prefusion.share_attention_config(language_model.config)
        language_model.register_forward_pre_hook(_prefusion_hook(model, family), with_kwargs=True)
        wrap(model, "generate", _with_prefusion_cache(model), tag="bgobj_prefusion_cache")
    family.install_positions(model, tokens)


def initialize_new_modules(model: nn.Module, family: BgObjFamily) -> None:
    """On the first load with the layout: separators from the family's delimiter rows, prefusion layers
    from the LLM's first layers, split projectors from the projector; recorded in the spec."""
    spec = family.spec(model)
    modules, owner = family.modules(model), family.modules_owner(model)
    if not spec.get("separators_initialized"):
        weights = model.get_input_embeddings().weight
        start_id, end_id = family.delimiter_ids(model.config)
        with _gathered([weights, modules.separators.weight]):  # ZeRO-3 partitions parameters
            init_separators_from(modules, weights[start_id].detach().cpu(), weights[end_id].detach().cpu())
        spec["separators_initialized"] = True
    if spec.get("prefusion_layers") and not spec.get("prefusion_initialized"):
        layers = family.language_model(model).layers
        with _gathered(list(modules.prefusion.parameters()) + list(layers.parameters())):
            modules.prefusion.copy_from(layers)
        spec["prefusion_initialized"] = True
    if spec.get("split_projector") and not spec.get("split_projector_initialized"):
        projector = family.projector_of(owner)
        with _gathered(list(modules.parameters()) + list(projector.parameters())):
            modules.merger_background.load_state_dict(projector.state_dict())
            modules.merger_object.load_state_dict(projector.state_dict())
        spec["split_projector_initialized"] = True


def _gathered(params):
    """Gather ZeRO-3 partitioned parameters for an in-place edit (a no-op otherwise)."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
