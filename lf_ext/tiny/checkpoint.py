"""Write small random VLM checkpoints (weights, config, tokenizer, processor, chat template).

The result loads through the stock ``from_pretrained`` paths and LLaMA-Factory's ``qwen2_vl`` and
``llava`` templates. ``shape="2b"`` gives Qwen2-VL-2B dimensions, ``shape="7b"`` LLaVA-1.5-7B dimensions
(random weights), for timing only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from transformers import (
    AutoModelForImageTextToText,
    PretrainedConfig,
    ProcessorMixin,
    Qwen2_5_VLProcessor,
    Qwen2VLProcessor,
)

from lf_ext.tiny import ARCH_NAMES, chat_templates
from lf_ext.families.llava.tiny import llava_config, llava_processor
from lf_ext.families.qwen.tiny import qwen2_5_vl_config, qwen2_vl_config, qwen_processor
from lf_ext.tiny.tokenizer import embedding_rows, llama_tokenizer, qwen_tokenizer


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture's tiny checkpoint."""

    tokenizer: Callable
    chat_template: str
    config: Callable[..., PretrainedConfig]
    processor: Callable
    shapes: tuple[str, ...]
    lf_template: str  # the stock LLaMA-Factory template for this architecture


ARCHS: dict[str, ArchSpec] = {
    "qwen2_vl": ArchSpec(qwen_tokenizer, chat_templates.QWEN2_VL, qwen2_vl_config, qwen_processor(Qwen2VLProcessor),
                         ("tiny", "small", "2b"), "qwen2_vl"),
    "qwen2_5_vl": ArchSpec(qwen_tokenizer, chat_templates.QWEN2_VL, qwen2_5_vl_config,
                           qwen_processor(Qwen2_5_VLProcessor), ("tiny",), "qwen2_vl"),
    "llava": ArchSpec(llama_tokenizer, chat_templates.LLAVA, llava_config, llava_processor, ("tiny", "7b"), "llava"),
}  # fmt: skip
assert tuple(ARCHS) == ARCH_NAMES


def build_checkpoint(arch: str, out_dir: str | Path, seed: int = 0, shape: str = "tiny") -> Path:
    """Build and save a random checkpoint of ``arch``; deterministic for a given seed."""
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch '{arch}'. Valid: {', '.join(ARCHS)}.")
    spec = ARCHS[arch]
    if shape not in spec.shapes:
        raise ValueError(f"Shape '{shape}' is not available for {arch}. Valid: {', '.join(spec.shapes)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = spec.tokenizer(spec.chat_template)
    config = spec.config(tokenizer, shape)
    dtype = torch.bfloat16 if shape in ("2b", "7b") else torch.float32
    config.dtype = dtype
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    spec.processor(tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
