"""Tiny and timing-shaped LLaVA-1.5 configs and processors for ``lf-ext tiny`` (random weights, offline).

``7b``: LLaVA-1.5-7B dimensions (CLIP ViT-L/14 at 336 px + a Llama-2-7B-shaped LLM), for timing only.
"""

from __future__ import annotations

from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaImageProcessor, LlavaProcessor,
                          PretrainedConfig, ProcessorMixin)

from lf_ext.tiny import chat_templates
from lf_ext.tiny.tokenizer import embedding_rows


def llava_config(tokenizer, shape: str) -> PretrainedConfig:
    ids = tokenizer.convert_tokens_to_ids
    special = dict(bos_token_id=ids("<s>"), eos_token_id=ids("</s>"), pad_token_id=ids("<pad>"))
    if shape == "7b":  # CLIP ViT-L/14-336 + Llama-2-7B
        vision = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=336, patch_size=14, projection_dim=768)  # fmt: skip
        text = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, **special)  # fmt: skip
    else:
        vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=336, patch_size=14, projection_dim=32)  # fmt: skip
        text = LlamaConfig(vocab_size=embedding_rows(tokenizer), hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                           **special)  # fmt: skip
    return LlavaConfig(vision_config=vision, text_config=text, image_token_id=ids("<image>"),
                       vision_feature_select_strategy="default", vision_feature_layer=-2, image_seq_length=576)  # fmt: skip


CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def llava_processor(tokenizer, pad: bool = False) -> ProcessorMixin:
    """llava-hf's processor: shortest edge 336 + centre crop, or (``pad``) pad to a square first, as the
    original LLaVA-1.5 ``image_aspect_ratio: pad`` (``LlavaImageProcessor(do_pad=True)``)."""
    size, crop = {"shortest_edge": 336}, {"height": 336, "width": 336}
    if pad:
        image = LlavaImageProcessor(size=size, crop_size=crop, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_pad=True)
    else:
        image = CLIPImageProcessor(size=size, crop_size=crop, image_mean=CLIP_MEAN, image_std=CLIP_STD)
    return LlavaProcessor(image_processor=image, tokenizer=tokenizer, patch_size=14,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=chat_templates.LLAVA)  # fmt: skip


