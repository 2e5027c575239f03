"""The LLaVA-1.5 family (llava-hf ``LlavaForConditionalGeneration``: CLIP ViT-L/14-336, ``multi_modal_projector``,
a Llama LLM).

- the ``bgobj`` spec lives in the top-level config and the modules at ``model.bgobj`` (LlavaModel),
  a name LLaMA-Factory's freeze substrings (``vision_tower``, ``multi_modal_projector``,
  ``language_model``) never match, and a path transformers' key conversion keeps;
- a token unit is one 14-px patch of the 336-px processor input (576 per image), after the
  processor's shortest-edge resize and centre crop, or its pad-to-square (``do_pad``);
- the projector is ``multi_modal_projector``; LLaVA-1.5 has no image delimiters, so the separators
  start from the ``<image>`` token's embedding row (never used by stock: image features replace it);
- positions are 1-D: each visual token at its unit's stock raster position, the separators where
  stock text after the image would start (:mod:`lf_ext.families.llava.positions`); everything up to
  ``[BG_END]`` depends on the background's units only, so the prefix is cacheable.
"""

from __future__ import annotations

import torch
from torch import nn

from lf_ext.families.base import BgObjFamily, inner_model
from lf_ext.families.llava import positions as llava_positions
from lf_ext.families.llava.pixels import LlavaPixelUnits
from lf_ext.families.llava.vision import check_tower, encode_units
from lf_ext.layout import TOKEN_GROUPS, ImageLayout
from lf_ext.masks.geometry import LF_MAX_PIXELS, LF_MIN_PIXELS, llava_grid


class LlavaFamily(BgObjFamily):
    name = "llava"
    model_types = ("llava",)
    template = "llava_bgobj"
    replaces_given_positions = True  # generate passes sequential position ids; the layout's replace them
    stock_template = "llava"
    plugin = "lf_ext.plugins.llava_bgobj:LlavaBgObjPlugin"
    init_targets = {"transformers.models.llava.modeling_llava": "LlavaModel"}
    decoder_layers = {
        "llama": "transformers.models.llama.modeling_llama:LlamaDecoderLayer",
        "mistral": "transformers.models.mistral.modeling_mistral:MistralDecoderLayer",
    }

    # structure ---------------------------------------------------------------------------------
    def spec_holder(self, config):
        return config

    def delimiter_ids(self, config) -> tuple[int, int]:
        return self.image_token_id(config), self.image_token_id(config)

    def modules_owner(self, model: nn.Module) -> nn.Module:
        return inner_model(model)

    def projector_of(self, owner: nn.Module) -> nn.Module:
        return owner.multi_modal_projector

    def new_projector(self, owner: nn.Module) -> nn.Module:
        """A fresh ``LlavaMultiModalProjector(config)`` (partitioned by ZeRO-3's ``zero.Init`` like the rest)."""
        return type(owner.multi_modal_projector)(owner.config)

    def validate(self, model: nn.Module) -> None:
        check_tower(inner_model(model).vision_tower, model.config.vision_feature_select_strategy)

    # pixels ------------------------------------------------------------------------------------
    def token_grid(self, width: int, height: int, processor):
        ip = processor.image_processor
        pad_fill = tuple(int(v * 255) for v in ip.image_mean) if getattr(ip, "do_pad", False) else None
        return llava_grid(
            width, height,
            image_max_pixels=getattr(processor, "image_max_pixels", LF_MAX_PIXELS),
            image_min_pixels=getattr(processor, "image_min_pixels", LF_MIN_PIXELS),
            shortest_edge=ip.size["shortest_edge"], crop_size=ip.crop_size["height"], patch_size=processor.patch_size,
            pad_fill=pad_fill,
        )  # fmt: skip

    def unit_grids(self, mm_inputs: dict, processor) -> list[tuple[int, int, int]]:
        _, _, height, width = mm_inputs["pixel_values"].shape
        patch = processor.patch_size
        return [(1, height // patch, width // patch)] * mm_inputs["pixel_values"].shape[0]

    def pixel_units(self, image_processor) -> LlavaPixelUnits:
        return LlavaPixelUnits.from_image_processor(image_processor)

    # forward -----------------------------------------------------------------------------------
    def vision_tower(self, model: nn.Module) -> nn.Module:
        return inner_model(model).vision_tower

    def encode(self, model: nn.Module, pixel_values: torch.Tensor, layout: ImageLayout, groups=TOKEN_GROUPS) -> torch.Tensor:
        inner = inner_model(model)
        if (self.spec(model) or {}).get("split_projector"):
            modules = self.modules(model)
            projector = lambda features, is_object: modules("project", features, is_object)  # noqa: E731  (via PEFT wrappers)
        else:
            projector = lambda features, is_object: inner.multi_modal_projector(features)  # noqa: E731
        return encode_units(inner.vision_tower, pixel_values, layout, model.config.vision_feature_layer, projector, groups)

    def positions(self, model: nn.Module, input_ids: torch.Tensor, layout: ImageLayout,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        return llava_positions.layout_positions(input_ids, layout, self.separator_tokens(model), attention_mask)

    def stock_features(self, model: nn.Module, mm_inputs: dict) -> torch.Tensor:
        inner = inner_model(model)
        out = inner.get_image_features(mm_inputs["pixel_values"].to(inner.vision_tower.dtype),
                                       vision_feature_layer=model.config.vision_feature_layer,
                                       vision_feature_select_strategy=model.config.vision_feature_select_strategy)  # fmt: skip
        features = getattr(out, "pooler_output", out)
        return torch.cat(list(features)) if isinstance(features, (list, tuple)) else features.reshape(-1, features.shape[-1])


LLAVA = LlavaFamily()
