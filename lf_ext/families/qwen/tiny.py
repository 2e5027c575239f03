"""Tiny and timing-shaped Qwen2-VL / Qwen2.5-VL configs and processors for ``lf-ext tiny`` (random weights, offline)."""

from __future__ import annotations

from typing import Callable

from transformers import PretrainedConfig, ProcessorMixin, Qwen2_5_VLConfig, Qwen2VLConfig, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

from lf_ext.tiny import chat_templates
from lf_ext.tiny.tokenizer import embedding_rows


def _qwen_token_ids(tokenizer) -> dict[str, int]:
    ids = tokenizer.convert_tokens_to_ids
    return dict(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )


def _qwen_text(tokenizer, shape: str) -> dict:
    ids = tokenizer.convert_tokens_to_ids
    common = dict(bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    if shape == "small":  # ~100M parameters in all: Qwen2-0.5B-like layers, fewer of them
        return dict(common, vocab_size=embedding_rows(tokenizer), hidden_size=896, intermediate_size=4864,
                    num_hidden_layers=5, num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_scaling={"type": "mrope", "mrope_section": [8, 12, 12], "rope_theta": 1000000.0})  # fmt: skip
    if shape == "2b":  # Qwen2-VL-2B-Instruct text tower
        return dict(common, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0})  # fmt: skip
    return dict(common, vocab_size=embedding_rows(tokenizer), hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0})  # fmt: skip


def qwen2_vl_config(tokenizer, shape: str) -> PretrainedConfig:
    text = _qwen_text(tokenizer, shape)
    if shape == "2b":
        vision = dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)
    elif shape == "small":
        vision = dict(depth=8, embed_dim=512, hidden_size=text["hidden_size"], num_heads=8, mlp_ratio=4)
    else:
        vision = dict(depth=2, embed_dim=32, hidden_size=text["hidden_size"], num_heads=4, mlp_ratio=2)
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=shape == "2b",
                         **_qwen_token_ids(tokenizer))  # fmt: skip


def qwen2_5_vl_config(tokenizer, shape: str) -> PretrainedConfig:
    text = _qwen_text(tokenizer, shape)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=text["hidden_size"],
                  window_size=112, fullatt_block_indexes=[1])  # fmt: skip
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_qwen_token_ids(tokenizer))


def qwen_processor(cls: type[ProcessorMixin]) -> Callable:
    def build(tokenizer) -> ProcessorMixin:
        image = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
        video = Qwen2VLVideoProcessor()
        return cls(image_processor=image, tokenizer=tokenizer, video_processor=video,
                   chat_template=chat_templates.QWEN2_VL)  # fmt: skip

    return build


