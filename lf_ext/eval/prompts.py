"""A chat request's model inputs exactly as LLaMA-Factory's HF engine builds them, from public pieces.

The template's plugin expands the images, the template encodes the turn, the plugin computes the
processor inputs: the same calls ``HuggingfaceEngine`` makes, without its private helpers.
"""

from __future__ import annotations

from typing import Any

import torch
from llamafactory.extras.constants import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER


def encode_request(template, tokenizer, processor, question: str, images: list[Any], videos: list[Any] = ()) -> dict[str, Any]:
    """``{"inputs": (1, n) prompt ids, **mm_inputs}`` for one user question about ``images`` (or ``videos``)."""
    videos = list(videos)
    if images and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER * len(images) + question
    if videos and VIDEO_PLACEHOLDER not in question:
        question = VIDEO_PLACEHOLDER * len(videos) + question
    messages = template.mm_plugin.process_messages([{"role": "user", "content": question}], images, videos, [], processor)
    prompt_ids, _ = template.encode_oneturn(tokenizer, messages + [{"role": "assistant", "content": ""}])
    prompt_ids, _ = template.mm_plugin.process_token_ids(prompt_ids, None, images, videos, [], tokenizer, processor)
    mm_inputs = template.mm_plugin.get_mm_inputs(images, videos, [], [len(images)], [len(videos)], [0], [prompt_ids], processor)
    mm_inputs.pop("mm_token_type_ids", None)
    return {"inputs": torch.tensor([prompt_ids]), **mm_inputs}
