"""``qwen2_vl_bgobj`` plugin: Qwen2-VL/Qwen2.5-VL images in the separated background/object layout."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field

import torch
from llamafactory.data.mm_plugin import Qwen2VLPlugin
from llamafactory.extras.constants import IMAGE_PLACEHOLDER

from lf_ext.layout import separated_placeholder
from lf_ext.masks.base import MaskError
from lf_ext.masks.geometry import qwen2_vl_grid
from lf_ext.plugins.image_labels import UnitLabeler, open_original
from lf_ext.plugins.siblings import SiblingSampler, composite

BGOBJ_KEYS = ("bgobj_unit_labels",)


def processor_grid(original, processor):
    """The token grid of an original image under this processor and LLaMA-Factory's pixel limits."""
    ip = processor.image_processor
    return qwen2_vl_grid(
        original.width, original.height,
        image_max_pixels=getattr(processor, "image_max_pixels", 768 * 768),
        image_min_pixels=getattr(processor, "image_min_pixels", 32 * 32),
        min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"],
        patch_size=ip.patch_size, merge_size=ip.merge_size,
    )  # fmt: skip


@dataclass
class Qwen2VLBgObjPlugin(Qwen2VLPlugin):
    """Adds one background/object label per token unit and expands images into the separated layout."""

    _labeler: UnitLabeler = field(default_factory=UnitLabeler, repr=False, compare=False)
    _siblings: SiblingSampler = field(default_factory=SiblingSampler, repr=False, compare=False)

    def _get_mm_inputs(self, images, videos, audios, processor):
        opened = [open_original(image, index) for index, image in enumerate(images)]
        mm_inputs = super()._get_mm_inputs([image for image, _ in opened], videos, audios, processor)
        if opened:
            labels = []
            for index, ((image, source), thw) in enumerate(zip(opened, mm_inputs["image_grid_thw"].tolist())):
                grid = processor_grid(image, processor)
                merge = processor.image_processor.merge_size
                if grid.shape != (thw[1] // merge, thw[2] // merge):
                    raise MaskError(f"image {index} ({source}): token grid {grid.shape} disagrees with the processor's {thw}")
                labels.append(torch.from_numpy(self._labeler.labels(image, source, grid).reshape(-1)))
            if self._siblings.enabled():
                labels = self._serve_siblings(opened, mm_inputs, labels, processor)
            mm_inputs["bgobj_unit_labels"] = torch.cat(labels).long()
        return mm_inputs

    def _serve_siblings(self, opened, mm_inputs, labels, processor):
        """``bgobj_sibling_prob``: give chosen images a sibling's background as a cache hit would (see
        :mod:`lf_ext.plugins.siblings`); the choice depends only on the image, so both calls per sample agree."""
        ip = processor.image_processor

        def encode(image):
            single = super(Qwen2VLBgObjPlugin, self)._get_mm_inputs([image], [], [], processor)
            return single["pixel_values"], tuple(single["image_grid_thw"][0].tolist())

        def label(image, source):
            return self._labeler.labels(image, source, processor_grid(image, processor))

        pixel_values, start, served = mm_inputs["pixel_values"], 0, list(labels)
        for index, ((_, source), thw) in enumerate(zip(opened, mm_inputs["image_grid_thw"].tolist())):
            end = start + thw[0] * thw[1] * thw[2]
            own = labels[index].numpy().astype(bool).reshape(thw[1] // ip.merge_size, thw[2] // ip.merge_size)
            sibling = self._siblings.choose(source, pixel_values[start:end], tuple(thw), ip, encode, label, own)
            if sibling is not None:
                pixel_values[start:end], served[index] = composite(pixel_values[start:end], sibling, ip.merge_size)
            start = end
        return served

    def process_messages(self, messages, images, videos, audios, processor):
        """Replace each image placeholder by the separated layout; videos keep the stock layout."""
        self._validate_input(processor, images, videos, audios)
        self._validate_messages(messages, images, videos, audios)
        messages = deepcopy(messages)
        expansions = iter(self._image_expansions(images, processor))
        for message in messages:
            while IMAGE_PLACEHOLDER in message["content"]:
                message["content"] = message["content"].replace(IMAGE_PLACEHOLDER, next(expansions), 1)
        return super().process_messages(messages, [], videos, audios, processor)

    def _image_expansions(self, images, processor) -> list[str]:
        if not images:
            return []
        if not self.expand_mm_tokens:
            return [f"{self.vision_bos_token}{self.image_token}{self.vision_eos_token}"] * len(images)
        mm_inputs = self._get_mm_inputs(images, [], [], processor)
        merge_length = processor.image_processor.merge_size**2
        expansions, start = [], 0
        for thw in mm_inputs["image_grid_thw"]:
            units = int(thw.prod()) // merge_length
            n_object = int(mm_inputs["bgobj_unit_labels"][start : start + units].sum())
            layout = separated_placeholder(units - n_object, n_object, self.image_token)
            expansions.append(f"{self.vision_bos_token}{layout}{self.vision_eos_token}")
            start += units
        return expansions

    def get_mm_inputs(self, images, videos, audios, imglens, vidlens, audlens, batch_ids, processor):
        """Stock inputs plus the unit labels and ``mm_token_type_ids`` (so ``generate`` computes M-RoPE)."""
        mm_inputs = super().get_mm_inputs(images, videos, audios, imglens, vidlens, audlens, batch_ids, processor)
        image_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)
        video_id = processor.tokenizer.convert_tokens_to_ids(self.video_token)
        mm_inputs["mm_token_type_ids"] = [[1 if t == image_id else 2 if t == video_id else 0 for t in ids] for ids in batch_ids]
        return mm_inputs
