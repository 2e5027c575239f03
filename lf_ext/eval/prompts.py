"""A chat request's model inputs exactly as LLaMA-Factory's HF engine builds them, from public pieces.

The template's plugin expands the images, the template encodes the turn, the plugin computes the
processor inputs: the same calls ``HuggingfaceEngine`` makes, without its private helpers.
"""

from __future__ import annotations

from typing import Any

import torch
from llamafactory.extras.constants import IMAGE_PLACEHOLDER


def encode_request(template, tokenizer, processor, question: str, images: list[Any]) -> dict[str, Any]:
    """``{"inputs": (1, n) prompt ids, **mm_inputs}`` for one user question about ``images``."""
    if images and IMAGE_PLACEHOLDER not in question:
        question = IMAGE_PLACEHOLDER * len(images) + question
    messages = template.mm_plugin.process_messages([{"role": "user", "content": question}], images, [], [], processor)
    prompt_ids, _ = template.encode_oneturn(tokenizer, messages + [{"role": "assistant", "content": ""}])
    prompt_ids, _ = template.mm_plugin.process_token_ids(prompt_ids, None, images, [], [], tokenizer, processor)
    mm_inputs = template.mm_plugin.get_mm_inputs(images, [], [], [len(images)], [0], [0], [prompt_ids], processor)
    mm_inputs.pop("mm_token_type_ids", None)
    return {"inputs": torch.tensor([prompt_ids]), **mm_inputs}
