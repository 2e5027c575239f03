"""Prefusion: N causal decoder layers over the visual + text sequence before the LLM (after LLaVA-Mini).

Each layer is a copy of one of the LLM's own first N decoder layers, behind a tanh gate that starts
at 0, so a fresh model is exactly the model it was made from and training opens the gates as the
layers learn to fuse the image into the text. The layers are causal, so the background prefix up to
``[BG_END]`` still depends on nothing after it and stays cacheable. They keep their own KV cache
during generation (attached to the LLM's cache object).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn
from transformers import AutoConfig
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask

# text config model_type -> decoder layer class
DECODER_LAYERS = {
    "qwen2_vl_text": "transformers.models.qwen2_vl.modeling_qwen2_vl:Qwen2VLDecoderLayer",
    "qwen2_5_vl_text": "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:Qwen2_5_VLDecoderLayer",
}


def _decoder_layer_class(model_type: str) -> type:
    if model_type not in DECODER_LAYERS:
        raise ValueError(f"bgobj prefusion supports {', '.join(DECODER_LAYERS)}, not {model_type}")
    module, name = DECODER_LAYERS[model_type].split(":")
    return getattr(importlib.import_module(module), name)


class PrefusionStack(nn.Module):
    """Gated causal decoder layers with the LLM's layer architecture."""

    def __init__(self, num_layers: int, text_config: dict):
        super().__init__()
        config = AutoConfig.for_model(**text_config)
        layer_class = _decoder_layer_class(config.model_type)
        self.layers = nn.ModuleList(layer_class(config, layer_idx) for layer_idx in range(num_layers))
        self.gates = nn.Parameter(torch.zeros(num_layers))

    def share_attention_config(self, text_config) -> None:
        """Use the LLM's live config, so the layers run its attention implementation with its causal mask."""
        for layer in self.layers:
            layer.self_attn.config = text_config

    def copy_from(self, llm_layers: nn.ModuleList) -> None:
        """Start every prefusion layer from the LLM layer with the same index, gates closed."""
        with torch.no_grad():
            for mine, theirs in zip(self.layers, llm_layers):
                mine.load_state_dict(theirs.state_dict())
            self.gates.zero_()

    def forward(self, hidden, position_ids, attention_mask, cache, rotary, text_config) -> torch.Tensor:
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(hidden.shape[1], device=hidden.device) + past
            position_ids = position_ids.view(1, 1, -1).expand(3, hidden.shape[0], -1)
        elif position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, *position_ids.shape)
        text_positions = None
        if position_ids.shape[0] == 4:
            text_positions, position_ids = position_ids[0], position_ids[1:]
        if isinstance(attention_mask, dict):
            mask = attention_mask["full_attention"]
        else:
            mask = create_causal_mask(config=text_config, inputs_embeds=hidden, attention_mask=attention_mask,
                                      past_key_values=cache, position_ids=text_positions)  # fmt: skip
        position_embeddings = rotary(hidden, position_ids)
        for gate, layer in zip(self.gates, self.layers):
            out = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                        position_ids=text_positions, past_key_values=cache, use_cache=cache is not None)  # fmt: skip
            out = out[0] if isinstance(out, tuple) else out
            hidden = hidden + torch.tanh(gate).to(hidden.dtype) * (out - hidden)
        return hidden


def prefusion_cache(llm_cache) -> DynamicCache | None:
    """The prefusion layers' own cache, kept on the LLM's cache object (new when that one is empty)."""
    if llm_cache is None:
        return None
    mine = getattr(llm_cache, "_bgobj_prefusion", None)
    if mine is None or llm_cache.get_seq_length() == 0:
        mine = DynamicCache()
        llm_cache._bgobj_prefusion = mine
    return mine
