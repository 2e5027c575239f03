"""``qwen2_vl_bgobj`` plugin: Qwen2-VL/Qwen2.5-VL images in the separated background/object layout."""

from __future__ import annotations

from dataclasses import dataclass

from llamafactory.data.mm_plugin import Qwen2VLPlugin

from lf_ext.plugins.base import BgObjPluginMixin


@dataclass
class Qwen2VLBgObjPlugin(BgObjPluginMixin, Qwen2VLPlugin):
    """Each image: ``<|vision_start|>[BG_START] bg [BG_END][OBJ_START] obj [OBJ_END]<|vision_end|>``."""

    family_type = "qwen2_vl"

    def wrap_item(self, layout_text: str) -> str:
        return f"{self.vision_bos_token}{layout_text}{self.vision_eos_token}"

    def get_mm_inputs(self, images, videos, audios, imglens, vidlens, audlens, batch_ids, processor):
        """Stock inputs plus the layout and ``mm_token_type_ids`` (so ``generate`` computes M-RoPE)."""
        mm_inputs = super().get_mm_inputs(images, videos, audios, imglens, vidlens, audlens, batch_ids, processor)
        image_id = processor.tokenizer.convert_tokens_to_ids(self.image_token)
        video_id = processor.tokenizer.convert_tokens_to_ids(self.video_token)
        mm_inputs["mm_token_type_ids"] = [[1 if t == image_id else 2 if t == video_id else 0 for t in ids] for ids in batch_ids]
        return mm_inputs
