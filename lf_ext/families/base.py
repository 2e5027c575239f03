"""The model-family interface: the architecture-specific half of lf_ext.

A family is a stateless object; the shared code (``lf_ext.models``, ``lf_ext.plugins``,
``lf_ext.inference``, ``lf_ext.cache``) never touches a model's internals except through it.

Three groups of methods:

- **structure**: where the ``bgobj`` spec lives in the config, which module owns the new
  ``bgobj`` modules (at a place that survives transformers' checkpoint key conversion), the LLM,
  the projector the split projectors copy, the rows the separators start from, the decoder layer
  class prefusion copies;
- **pixels** (:class:`PixelUnits`): the token grid of an image under the processor, where each
  unit's pixels sit in ``pixel_values`` (read back as uint8 for the cache's verification, replaced
  for sibling training);
- **forward**: :meth:`BgObjFamily.encode` (the vision tower on chosen groups of a layout, groups
  never attending to each other, every patch at its original position, output in token order) and
  :meth:`BgObjFamily.positions` (position ids of a separated sequence).
"""

from __future__ import annotations

import importlib
from dataclasses import astuple, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from lf_ext.layout import TOKEN_GROUPS, Group, ImageLayout, SeparatorIds

BGOBJ_ATTR = "bgobj"


def import_path(path: str) -> Any:
    """``"package.module:attribute"`` -> the attribute."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def inner_model(model: nn.Module) -> nn.Module:
    """The ``*Model`` under a ``*ForConditionalGeneration`` (PEFT wrappers removed)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


class PixelUnits:
    """Where the pixels of each token unit sit in one processor's ``pixel_values``.

    ``units`` gives one item's units as ``(slices, rows, cols, u, u, 3)`` uint8, what the model sees
    after the processor's resize (the normalisation undone); ``replace`` puts another item's units
    (same grid) in place of some units, without any resampling.
    """

    unit: int  # side of a unit in pixels

    def item_pixels(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int) -> torch.Tensor:
        raise NotImplementedError

    def units(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int) -> np.ndarray:
        raise NotImplementedError

    def replace(self, pixel_values: torch.Tensor, layout: ImageLayout, item: int, donor: torch.Tensor,
                where: torch.Tensor) -> torch.Tensor:  # fmt: skip
        """``pixel_values`` with the item's units where ``where`` (bool, the item's grid) is True taken
        from ``donor`` (the same item's pixels from another image of the same grid)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What changes the units (normalisation, sizes), for cache keys."""
        raise NotImplementedError


@dataclass(frozen=True)
class NormalisedPixelUnits(PixelUnits):
    """Pixel units of a processor that rescales and normalises per channel (both families' processors)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale: float = 1 / 255
    patch: int = 14

    def fingerprint(self) -> str:
        return repr((type(self).__name__, *astuple(self)))

    def denormaliser(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, offset)`` viewed as ``shape`` (3 on the channel axis): ``values * scale + offset`` undoes the
        processor's normalisation back to 0-255."""
        return torch.tensor(self.std).view(shape) / self.rescale, torch.tensor(self.mean).view(shape) / self.rescale


def sequential_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``generate``'s own 1-D positions of a batch: the count of attended tokens before each (0 at padding)."""
    if attention_mask is None:
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand(input_ids.shape[0], -1).clone()
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(attention_mask == 0, 0)


class BgObjFamily:
    """What lf_ext needs to know about one architecture. Subclasses set the attributes below and
    implement the methods that raise ``NotImplementedError``."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    template: str = ""  # the bgobj template, e.g. "qwen2_vl_bgobj"
    stock_template: str = ""  # the LLaMA-Factory template it extends
    plugin: str = ""  # "module:Class" of the bgobj mm plugin
    init_targets: dict[str, str] = {}  # transformers module -> class whose __init__ creates the bgobj modules
    decoder_layers: dict[str, str] = {}  # text config model_type -> "module:Class" (prefusion)
    # the layout's positions replace position ids a caller passed (``generate`` passes sequential ones);
    # False where the model computes its own from the layout (Qwen: ``get_rope_index``)
    replaces_given_positions: bool = False

    # ------------------------------------------------------------------ config and structure
    def spec_holder(self, config) -> Any:
        """The config object carrying the ``bgobj`` spec."""
        raise NotImplementedError

    def spec(self, config_or_model) -> dict | None:
        config = getattr(config_or_model, "config", config_or_model)
        return getattr(self.spec_holder(config), BGOBJ_ATTR, None)

    def text_config(self, config):
        return config.get_text_config()

    def image_token_id(self, config) -> int:
        return int(config.image_token_id)

    def delimiter_ids(self, config) -> tuple[int, int]:
        """Token ids whose embedding rows the separators start from: (start-like, end-like)."""
        raise NotImplementedError

    def validate(self, model: nn.Module) -> None:
        """Raise a clear error when a loaded model uses a setting this family cannot reproduce exactly."""

    def separator_tokens(self, model) -> SeparatorIds:
        """The separators' and the visual token's ids; a model without the bgobj spec has no separators
        (-1: plain layouts only)."""
        spec = self.spec(model)
        return SeparatorIds.of(spec["separator_ids"] if spec else [-1] * 4, self.image_token_id(model.config))

    def modules_owner(self, model: nn.Module) -> nn.Module:
        """The module that holds ``bgobj`` (created by the ``init_targets`` patch)."""
        raise NotImplementedError

    def modules(self, model: nn.Module) -> nn.Module:
        return getattr(self.modules_owner(model), BGOBJ_ATTR)

    def projector_of(self, owner: nn.Module) -> nn.Module:
        """The projector inside the ``modules_owner`` (what split projectors copy)."""
        raise NotImplementedError

    def new_projector(self, owner: nn.Module) -> nn.Module:
        """A newly constructed module of the projector's class and shape (weights: initialised later).

        Its own ``__init__`` runs, so DeepSpeed ZeRO-3's ``zero.Init`` partitions it; the default deep copy
        is only right without ZeRO-3, so families override it.
        """
        import copy

        return copy.deepcopy(self.projector_of(owner))

    def language_model(self, model: nn.Module) -> nn.Module:
        return inner_model(model).language_model

    def decoder_layer_class(self, text_model_type: str) -> type:
        if text_model_type not in self.decoder_layers:
            raise ValueError(f"bgobj prefusion supports {', '.join(self.decoder_layers)}, not {text_model_type}")
        return import_path(self.decoder_layers[text_model_type])

    # ------------------------------------------------------------------ pixels
    def token_grid(self, width: int, height: int, processor):
        """The :class:`~lf_ext.masks.geometry.TokenGrid` of an original image under this processor."""
        raise NotImplementedError

    def unit_grids(self, mm_inputs: dict, processor) -> list[tuple[int, int, int]]:
        """(slices, rows, cols) per image of a processor output."""
        raise NotImplementedError

    # ------------------------------------------------------------------ videos (families that take them)
    def video_token_grid(self, width: int, height: int, processor):
        """The :class:`~lf_ext.masks.geometry.TokenGrid` of one sampled, resized video frame."""
        raise self._no_video()

    def video_pixel_units(self, processor) -> PixelUnits:
        raise self._no_video()

    def clip_image_inputs(self, mm_inputs: dict, processor) -> tuple[dict, list[tuple[int, int, int]]]:
        """The stock video inputs as image inputs (the tower treats both alike) and each clip's unit grid."""
        raise self._no_video()

    def _no_video(self):
        from lf_ext.plugins.clip_labels import VideoError

        return VideoError(f"{self.template} has no video input (the {self.name} family takes images only)")

    def pixel_units(self, image_processor) -> PixelUnits:
        raise NotImplementedError

    # ------------------------------------------------------------------ forward
    def vision_tower(self, model: nn.Module) -> nn.Module:
        """The stock vision encoder module (what the stock path calls; its forward hooks time it)."""
        raise NotImplementedError

    def vision_dtype(self, model: nn.Module) -> torch.dtype:
        return self.vision_tower(model).dtype

    def encode(self, model: nn.Module, pixel_values: torch.Tensor, layout: ImageLayout,
               groups: Sequence[Group] = TOKEN_GROUPS) -> torch.Tensor:  # fmt: skip
        """Visual tokens of the units in ``groups``, per item in token order: ``[tokens, hidden]``.

        Groups never attend to each other; every patch keeps its original position; with split
        projectors, background and object units go through their own projector."""
        raise NotImplementedError

    def positions(self, model: nn.Module, input_ids: torch.Tensor, layout: ImageLayout,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Position ids of separated sequences, in the form the language model takes."""
        raise NotImplementedError

    def stock_features(self, model: nn.Module, mm_inputs: dict) -> torch.Tensor:
        """The stock vision path (tower and projector, every unit, one group) of a processor output:
        ``[tokens, hidden]``; what benchmarks compare against."""
        raise NotImplementedError

    def stock_positions(self, model: nn.Module, input_ids: torch.Tensor, mm_inputs: dict) -> torch.Tensor:
        """Position ids of a stock-layout sequence; default: 1-D."""
        return torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)

    def install_positions(self, model: nn.Module, tokens: SeparatorIds) -> None:
        """Make the model's own position computation (training collator, ``generate``) handle layouts."""

    def prefusion_positions(self, position_ids, hidden: torch.Tensor, past_length: int):
        """(positions for the rotary embedding, 1-D text positions for the causal mask) of a prefusion
        call, from what the language model received; default: 1-D positions, and no text positions (the
        causal mask follows the sequence order: transformers would read non-consecutive position ids
        without an attention mask as packed sequences)."""
        if position_ids is None:
            position_ids = (torch.arange(hidden.shape[1], device=hidden.device) + past_length).unsqueeze(0)
        return position_ids, None
