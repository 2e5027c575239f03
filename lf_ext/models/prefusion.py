"""Prefusion: N causal decoder layers over the visual + text sequence before the LLM (after LLaVA-Mini).

Each layer is a copy of one of the LLM's own first N decoder layers, behind a tanh gate that starts
at 0, so a fresh model is exactly the model it was made from and training opens the gates as the
layers learn to fuse the image into the text. The layers are causal, so the background prefix up to
``[BG_END]`` still depends on nothing after it and stays cacheable. During generation they keep their
own KV in :class:`BgObjCache`, the cache type a bgobj model with prefusion layers generates with.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig
from transformers.cache_utils import DynamicCache
from transformers.masking_utils import create_causal_mask


class BgObjCache(DynamicCache):
    """The LLM's KV cache plus :attr:`prefusion`, the prefusion layers' own (same length at all times)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prefusion = DynamicCache()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.prefusion.reorder_cache(beam_idx)

    def crop(self, max_length: int) -> None:
        super().crop(max_length)
        self.prefusion.crop(max_length)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.prefusion.batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.prefusion.batch_select_indices(indices)


def prefusion_cache_of(cache) -> DynamicCache | None:
    """The prefusion layers' cache inside the cache the LLM was given (None: no cache)."""
    if cache is None:
        return None
    if not isinstance(cache, BgObjCache):
        raise ValueError(f"a bgobj model with prefusion layers needs a BgObjCache (lf_ext.models.prefusion), got "
                         f"{type(cache).__name__}; model.generate creates one when no past_key_values are given")  # fmt: skip
    return cache.prefusion


class PrefusionStack(nn.Module):
    """Gated causal decoder layers with the LLM's layer architecture."""

    def __init__(self, num_layers: int, text_config: dict, layer_class: type):
        super().__init__()
        config = AutoConfig.for_model(**text_config)
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

    def forward(self, hidden, rope_positions, text_positions, attention_mask, cache, rotary, text_config) -> torch.Tensor:
        """``rope_positions`` feed the LLM's rotary embedding; ``text_positions`` (1-D, or None) the mask."""
        if isinstance(attention_mask, dict):
            mask = attention_mask["full_attention"]
        else:
            mask = create_causal_mask(config=text_config, inputs_embeds=hidden, attention_mask=attention_mask,
                                      past_key_values=cache, position_ids=text_positions)  # fmt: skip
        position_embeddings = rotary(hidden, rope_positions)
        for gate, layer in zip(self.gates, self.layers):
            out = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings,
                        position_ids=text_positions, past_key_values=cache, use_cache=cache is not None)  # fmt: skip
            out = out[0] if isinstance(out, tuple) else out
            hidden = hidden + torch.tanh(gate).to(hidden.dtype) * (out - hidden)
        return hidden
