"""Switch one loaded Qwen2-VL/Qwen2.5-VL instance to the separated layout (instance-level, no class edits).

- the vision tower encodes background and object units as separate groups when labels are given;
- the input embeddings take the separator rows from ``visual.bgobj``;
- ``get_rope_index`` gives the separated layout its positions (training collator and ``generate``);
- ``forward`` accepts ``bgobj_unit_labels`` (declared, so ``generate`` passes it through);
- with prefusion layers, they run on the embeddings just before the LLM.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from types import MethodType

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from lf_ext.models.modules import BGOBJ_ATTR
from lf_ext.models.positions import LayoutTokens, separated_rope_index
from lf_ext.models.prefusion import prefusion_cache
from lf_ext.models.separated_vision import separated_vision_forward

# the labels of the forward call in progress, read by the vision tower
_CALL_LABELS: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("bgobj_call_labels", default=None)


def bgobj_spec(model) -> dict | None:
    """The ``bgobj`` spec of a Qwen model's vision config, or None for a stock model."""
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    return getattr(vision, "bgobj", None) if vision is not None else None


def _vision_forward(visual, stock_forward, split_projector: bool):
    def merge(hidden_states, is_object_unit):
        return getattr(visual, BGOBJ_ATTR)("merge", hidden_states, is_object_unit)

    def forward(self, hidden_states, grid_thw, **kwargs):
        labels = _CALL_LABELS.get()
        if labels is None:
            return stock_forward(hidden_states, grid_thw, **kwargs)
        merged = separated_vision_forward(self, hidden_states, grid_thw, labels.to(hidden_states.device),
                                          merge if split_projector else None)  # fmt: skip
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=merged)

    return MethodType(forward, visual)


def _separator_hook(visual, separator_ids: list[int]):
    ids = torch.tensor(separator_ids)

    def hook(module, inputs, output):
        input_ids = inputs[0]
        lookup = ids.to(input_ids.device)
        is_separator = input_ids.unsqueeze(-1) == lookup  # (..., 4)
        if not bool(is_separator.any()):
            return output
        rows = getattr(visual, BGOBJ_ATTR)("separators", is_separator.long().argmax(-1))  # via PEFT wrappers too
        return torch.where(is_separator.any(-1, keepdim=True), rows.to(output.dtype), output)

    return hook


def _prefusion_hook(visual):
    def hook(module, args, kwargs):
        hidden = kwargs.get("inputs_embeds")
        if hidden is None:
            return None
        cache = prefusion_cache(kwargs.get("past_key_values"))
        kwargs["inputs_embeds"] = getattr(visual, BGOBJ_ATTR)(
            "prefusion", hidden, kwargs.get("position_ids"), kwargs.get("attention_mask"), cache,
            module.rotary_emb, module.config,
        )  # fmt: skip
        return args, kwargs

    return hook


def _top_forward(model, stock_forward):
    def forward(self, *args, bgobj_unit_labels: torch.Tensor | None = None, **kwargs):
        token = _CALL_LABELS.set(bgobj_unit_labels)
        try:
            return stock_forward(*args, **kwargs)
        finally:
            _CALL_LABELS.reset(token)

    forward.__signature__ = _with_labels(inspect.signature(stock_forward))
    return MethodType(forward, model)


def _with_labels(signature: inspect.Signature) -> inspect.Signature:
    params = [p for p in signature.parameters.values() if p.kind != p.VAR_KEYWORD]
    extra = inspect.Parameter("bgobj_unit_labels", inspect.Parameter.KEYWORD_ONLY, default=None)
    var_kw = [p for p in signature.parameters.values() if p.kind == p.VAR_KEYWORD]
    return signature.replace(parameters=[*params, extra, *var_kw])


def attach_bgobj(model) -> None:
    """Install the separated layout on a ``Qwen2VLForConditionalGeneration``-like instance (idempotent)."""
    if getattr(model, "_lf_ext_bgobj", False):
        return
    spec = bgobj_spec(model)
    visual = model.model.visual
    visual.forward = _vision_forward(visual, visual.forward, bool(spec.get("split_projector")))
    model.get_input_embeddings().register_forward_hook(_separator_hook(visual, spec["separator_ids"]))
    if spec.get("prefusion_layers"):
        getattr(visual, BGOBJ_ATTR).prefusion.share_attention_config(model.model.language_model.config)
        model.model.language_model.register_forward_pre_hook(_prefusion_hook(visual), with_kwargs=True)
    ids = LayoutTokens(
        bg_start=spec["separator_ids"][0], obj_start=spec["separator_ids"][2], image=model.config.image_token_id,
        video=model.config.video_token_id, merge=model.config.vision_config.spatial_merge_size,
    )  # fmt: skip
    model.model.get_rope_index = functools.partial(separated_rope_index, model.model.get_rope_index, ids)
    model.forward = _top_forward(model, model.forward)
    model._lf_ext_bgobj = True
