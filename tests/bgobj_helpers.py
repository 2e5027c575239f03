"""Helpers for bgobj model tests: a tiny masked dataset and models loaded through LLaMA-Factory's loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

QUESTION = "<image>What color is the object?"


def masked_dataset(root: Path, size=(224, 168), box=(112, 56, 196, 140), seed=0, count=2) -> Path:
    """Images sharing one textured background, each with a different object inside ``box``; masks = ``box``."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    plate = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    Image.fromarray(mask).save(root / "mask.png")
    records = []
    for index in range(count):
        pixels = plate.copy()
        pixels[y0:y1, x0:x1] = rng.integers(0, 256, size=(y1 - y0, x1 - x0, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{index}.png")
        records.append({"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": "red"}],
                        "images": [f"img{index}.png"], "masks": ["mask.png"]})  # fmt: skip
    (root / "data.json").write_text(json.dumps(records))
    (root / "dataset_info.json").write_text(json.dumps({"masked": {"file_name": "data.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}))  # fmt: skip
    return root


def load_for_inference(model_dir, dataset_dir, template="qwen2_vl_bgobj", **extra):
    """Tokenizer, template and model exactly as ``llamafactory-cli chat`` loads them."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    defaults = dict(model_name_or_path=str(model_dir), template=template, infer_dtype="float32", image_max_pixels=50176,
                    dataset_dir=str(dataset_dir), dataset="masked")  # fmt: skip
    if template.endswith("_bgobj"):
        defaults["bgobj_mask_provider"] = "dataset"
    args = dict(defaults, **extra)
    model_args, data_args, finetuning_args, _ = get_infer_args(args)
    tokenizer_module = load_tokenizer(model_args)
    template_obj = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=False)
    return tokenizer_module, template_obj, model


def encode(tokenizer_module, template, images: list[str], question: str = QUESTION):
    """Prompt ids and model inputs (with training-style 3-D positions) for one user turn."""
    tokenizer, processor = tokenizer_module["tokenizer"], tokenizer_module["processor"]
    messages = template.mm_plugin.process_messages([{"role": "user", "content": question},
                                                    {"role": "assistant", "content": ""}], images, [], [], processor)  # fmt: skip
    prompt_ids, _ = template.encode_oneturn(tokenizer, messages)
    inputs = template.mm_plugin.get_mm_inputs(images, [], [], [len(images)], [0], [0], [prompt_ids], processor)
    inputs.pop("mm_token_type_ids", None)
    input_ids = torch.tensor([prompt_ids])
    return input_ids, inputs


def unit_labels(inputs) -> torch.Tensor:
    """The object label (1) / background label (0) of every unit of the inputs' layout, flat, long."""
    from lf_ext.layout import LAYOUT_KEY, ImageLayout

    return ImageLayout.coerce(inputs[LAYOUT_KEY]).groups.long()
