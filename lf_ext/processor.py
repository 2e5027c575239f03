"""The research notes' processor path for a token budget, outside LLaMA-Factory:

    processor = SelectingProcessor.from_pretrained(path)
    inputs = processor(images=image, text=prompt, return_tensors="pt",
                       images_kwargs={"patch_selection_method": "budget", "alpha": 0.3})
    model = enable_patch_selection(AutoModelForImageTextToText.from_pretrained(path))
    model.generate(**inputs, max_new_tokens=32)

:class:`SelectingProcessor` wraps a Hugging Face processor of a supported family (no installed file is
edited): it takes ``patch_selection_method`` (``v1``/``v2``/``budget``), ``alpha`` and ``thresholds``
out of ``images_kwargs``, runs the processor, selects units by entropy (:mod:`lf_ext.selection`),
shortens each image's run of visual tokens in ``input_ids`` to its kept units and adds the plain
:class:`~lf_ext.layout.ImageLayout` (``bgobj_layout``). :func:`enable_patch_selection` makes a model
read it: only the kept units are encoded, each at its stock position.
"""

from __future__ import annotations

from typing import Any

import torch

from lf_ext.families import BgObjFamily, family_of
from lf_ext.layout import LAYOUT_KEY, ImageLayout
from lf_ext.selection import DEFAULT_THRESHOLDS, PatchSelection

SELECTION_KEYS = ("patch_selection_method", "alpha", "thresholds")


class SelectingProcessor:
    """A processor that honours ``images_kwargs={"patch_selection_method": ..., "alpha": ...}``."""

    def __init__(self, processor, family: BgObjFamily):
        self.processor, self.family = processor, family

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "SelectingProcessor":
        from transformers import AutoConfig, AutoProcessor

        family = family_of(AutoConfig.from_pretrained(path))
        if family is None:
            raise ValueError(f"{path}: no lf_ext model family serves this model type")
        return cls(AutoProcessor.from_pretrained(path, **kwargs), family)

    def __getattr__(self, name: str) -> Any:  # tokenizer, image_processor, decode, ...
        return getattr(self.processor, name)

    def __call__(self, images=None, text=None, images_kwargs: dict | None = None, **kwargs):
        images_kwargs = dict(images_kwargs or {})
        options = {key: images_kwargs.pop(key) for key in SELECTION_KEYS if key in images_kwargs}
        if images_kwargs:
            kwargs["images_kwargs"] = images_kwargs
        outputs = self.processor(images=images, text=text, **kwargs)
        selection = PatchSelection(options.get("patch_selection_method", "none"), float(options.get("alpha", 0.3)),
                                   tuple(options.get("thresholds", DEFAULT_THRESHOLDS)))  # fmt: skip
        if not selection.enabled or images is None:
            return outputs
        grids = self.family.unit_grids(outputs, self.processor)
        layout = ImageLayout.from_labels(grids, torch.zeros(sum(t * r * c for t, r, c in grids), dtype=torch.bool), separated=False)
        pixels = self.family.pixel_units(self.processor.image_processor)
        for item in range(len(layout)):
            layout = selection.apply(layout, item, pixels.units(outputs["pixel_values"], layout, item))
        outputs[LAYOUT_KEY] = layout.pack()
        if "input_ids" in outputs:
            self._shorten(outputs, layout)
        return outputs

    def _shorten(self, outputs, layout: ImageLayout) -> None:
        """Each image's run of visual tokens cut to its kept units (rows re-padded like the tokenizer pads)."""
        image = self.processor.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        rows, item = [], 0
        for ids, mask in zip(outputs["input_ids"].tolist(), outputs["attention_mask"].tolist()):
            tokens = [t for t, m in zip(ids, mask) if m]
            out, i = [], 0
            while i < len(tokens):
                if tokens[i] != image:
                    out.append(tokens[i])
                    i += 1
                    continue
                j = i
                while j < len(tokens) and tokens[j] == image:
                    j += 1
                out += [image] * layout.n_tokens(item)
                item, i = item + 1, j
            rows.append(out)
        width, pad = max(map(len, rows)), self.processor.tokenizer.pad_token_id or 0
        left = self.processor.tokenizer.padding_side == "left"
        outputs["input_ids"] = torch.tensor([([pad] * (width - len(r)) + r) if left else (r + [pad] * (width - len(r))) for r in rows])
        outputs["attention_mask"] = torch.tensor([([0] * (width - len(r)) + [1] * len(r)) if left else ([1] * len(r) + [0] * (width - len(r)))
                                                  for r in rows])  # fmt: skip
        if "mm_token_type_ids" in outputs:
            outputs["mm_token_type_ids"] = (outputs["input_ids"] == image).long()


def enable_patch_selection(model):
    """Make a model loaded by Hugging Face (not through LLaMA-Factory) read ``bgobj_layout``; returns it."""
    from lf_ext.models.attach import attach_bgobj

    family = family_of(model)
    if family is None:
        raise ValueError(f"no lf_ext model family serves {type(model).__name__}")
    attach_bgobj(model, family)
    return model
