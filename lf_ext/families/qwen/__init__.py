"""The Qwen2-VL family, and Qwen2.5-VL as its window-attention delta.

- the ``bgobj`` spec lives in ``config.vision_config`` and the modules at ``model.visual.bgobj``
  (``model.bgobj`` would be renamed to ``model.language_model.bgobj`` by transformers' checkpoint key
  conversion on reload and dropped);
- a token unit is a 2x2 block of 14-px patches (28 px) after ``smart_resize``;
- the projector is the tower's ``merger``; separators start from ``<|vision_start|>``/``<|vision_end|>``;
- positions are M-RoPE, computed by an instance override of ``get_rope_index`` that both the
  training collator and ``generate`` call.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from lf_ext.families.base import BgObjFamily, inner_model
from lf_ext.families.qwen import positions as rope
from lf_ext.families.qwen.pixels import QwenPixelUnits
from lf_ext.families.qwen.vision import encode_units
from lf_ext.layout import TOKEN_GROUPS, ImageLayout, SeparatorIds
from lf_ext.masks.geometry import LF_MAX_PIXELS, LF_MIN_PIXELS, qwen2_vl_grid


class Qwen2VLFamily(BgObjFamily):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    template = "qwen2_vl_bgobj"
    stock_template = "qwen2_vl"
    plugin = "lf_ext.plugins.qwen2_vl_bgobj:Qwen2VLBgObjPlugin"
    init_targets = {"transformers.models.qwen2_vl.modeling_qwen2_vl": "Qwen2VisionTransformerPretrainedModel"}
    decoder_layers = {
        "qwen2_vl_text": "transformers.models.qwen2_vl.modeling_qwen2_vl:Qwen2VLDecoderLayer",
        "qwen2_5_vl_text": "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:Qwen2_5_VLDecoderLayer",
    }

    # structure ---------------------------------------------------------------------------------
    def spec_holder(self, config):
        return config.vision_config

    def delimiter_ids(self, config) -> tuple[int, int]:
        return int(config.vision_start_token_id), int(config.vision_end_token_id)

    def modules_owner(self, model: nn.Module) -> nn.Module:
        return inner_model(model).visual

    def projector_of(self, owner: nn.Module) -> nn.Module:
        return owner.merger

    def new_projector(self, owner: nn.Module) -> nn.Module:
        """``PatchMerger`` / ``Qwen2_5_VLPatchMerger(dim, context_dim, spatial_merge_size)`` of the merger's shape
        (read from plain attributes, which ZeRO-3 partitioning leaves alone)."""
        merger, merge = owner.merger, owner.config.spatial_merge_size
        return type(merger)(dim=merger.mlp[-1].out_features, context_dim=merger.hidden_size // merge**2,
                            spatial_merge_size=merge)  # fmt: skip

    # pixels ------------------------------------------------------------------------------------
    def token_grid(self, width: int, height: int, processor):
        ip = processor.image_processor
        return qwen2_vl_grid(
            width, height,
            image_max_pixels=getattr(processor, "image_max_pixels", LF_MAX_PIXELS),
            image_min_pixels=getattr(processor, "image_min_pixels", LF_MIN_PIXELS),
            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"],
            patch_size=ip.patch_size, merge_size=ip.merge_size,
        )  # fmt: skip

    def unit_grids(self, mm_inputs: dict, processor) -> list[tuple[int, int, int]]:
        merge = processor.image_processor.merge_size
        return [(t, h // merge, w // merge) for t, h, w in mm_inputs["image_grid_thw"].tolist()]

    def pixel_units(self, image_processor) -> QwenPixelUnits:
        return QwenPixelUnits.from_image_processor(image_processor)

    def video_token_grid(self, width: int, height: int, processor):
        """A frame LLaMA-Factory already resized (``video_max_pixels``): only the video processor's ``smart_resize``."""
        vp = processor.video_processor
        return qwen2_vl_grid(width, height, image_max_pixels=width * height, image_min_pixels=0,
                             min_pixels=vp.size["shortest_edge"], max_pixels=vp.size["longest_edge"],
                             patch_size=vp.patch_size, merge_size=vp.merge_size)  # fmt: skip

    def video_pixel_units(self, processor) -> QwenPixelUnits:
        return QwenPixelUnits.from_image_processor(processor.video_processor)

    def clip_image_inputs(self, mm_inputs: dict, processor) -> tuple[dict, list[tuple[int, int, int]]]:
        merge = processor.video_processor.merge_size
        grid_thw = mm_inputs["video_grid_thw"]
        inputs = {k: v for k, v in mm_inputs.items() if k not in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")}
        inputs.update(pixel_values=mm_inputs["pixel_values_videos"], image_grid_thw=grid_thw)
        return inputs, [(t, h // merge, w // merge) for t, h, w in grid_thw.tolist()]

    # forward -----------------------------------------------------------------------------------
    def vision_tower(self, model: nn.Module) -> nn.Module:
        return inner_model(model).visual

    def encode(self, model: nn.Module, pixel_values: torch.Tensor, layout: ImageLayout, groups=TOKEN_GROUPS) -> torch.Tensor:
        visual = inner_model(model).visual
        projector = None
        if (self.spec(model) or {}).get("split_projector"):
            modules = self.modules(model)
            projector = lambda hidden, is_object: modules("project", hidden, is_object)  # noqa: E731  (via PEFT wrappers)
        return encode_units(visual, pixel_values, layout, groups, projector)

    def positions(self, model: nn.Module, input_ids: torch.Tensor, layout: ImageLayout,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        return rope.layout_positions(input_ids, layout, self.separator_tokens(model), attention_mask,
                                     self.tokens_per_second(model.config))[0]  # fmt: skip

    def tokens_per_second(self, config) -> int | None:
        """The temporal position scale of videos (None: a step of 1 per slice, as Qwen2-VL)."""
        return None

    def stock_features(self, model: nn.Module, mm_inputs: dict) -> torch.Tensor:
        """The stock tower over every unit (an image's, or a video's when the inputs hold one)."""
        visual = inner_model(model).visual
        video = "pixel_values_videos" in mm_inputs
        pixels, grid = (mm_inputs["pixel_values_videos"], mm_inputs["video_grid_thw"]) if video else (mm_inputs["pixel_values"], mm_inputs["image_grid_thw"])
        return visual(pixels.type(visual.dtype), grid_thw=grid).pooler_output

    def stock_positions(self, model: nn.Module, input_ids: torch.Tensor, mm_inputs: dict) -> torch.Tensor:
        config = model.config
        mm_types = (input_ids == self.image_token_id(config)).int() + 2 * (input_ids == int(config.video_token_id)).int()
        extra = {k: mm_inputs[k] for k in ("video_grid_thw", "second_per_grid_ts") if k in mm_inputs}
        return inner_model(model).get_rope_index(input_ids, image_grid_thw=mm_inputs.get("image_grid_thw"), mm_token_type_ids=mm_types,
                                                 attention_mask=torch.ones_like(input_ids), **extra)[0]  # fmt: skip

    def install_positions(self, model: nn.Module, tokens: SeparatorIds) -> None:
        inner = inner_model(model)
        stock = inner.get_rope_index
        if not isinstance(stock, functools.partial):
            inner.get_rope_index = functools.partial(rope.separated_rope_index, stock, tokens, self.tokens_per_second(model.config))

    def prefusion_positions(self, position_ids, hidden: torch.Tensor, past_length: int):
        return rope.prefusion_positions(position_ids, hidden, past_length)


class Qwen25VLFamily(Qwen2VLFamily):
    """Qwen2.5-VL: the same family; its tower's window attention is cut by the groups as well
    (:func:`~lf_ext.families.qwen.vision.encode_units` detects the windowed tower)."""

    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    init_targets = {"transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": "Qwen2_5_VisionTransformerPretrainedModel"}

    def tokens_per_second(self, config) -> int | None:
        return int(config.vision_config.tokens_per_second)


QWEN2_VL = Qwen2VLFamily()
QWEN2_5_VL = Qwen25VLFamily()
