"""Separated encoding for LLaVA-1.5's CLIP vision tower.

CLIP has absolute position embeddings, a CLS token and dense attention over all 577 tokens of an
image, so groups are separated by giving each (item, group) its **own sequence**: the group's CLS
token (the class embedding with position 0, exactly as stock) followed by the group's patches in
row-major order, each with its own absolute position embedding (position 1 + unit index, as stock).
Nothing else enters the sequence, so a group's outputs depend on its own pixels only, and one CLS
per group keeps each sequence shaped like a stock one: the CLS is what every stock patch attends to
beside the other patches, and it is dropped from the features under the ``default`` select strategy
(LLaVA-1.5's). With one group the sequence *is* the stock sequence, computed by the same layers on
the same batch: bitwise equal to stock. Sequences of equal length are batched (no padding, no mask).

``vision_feature_layer`` (an index into the encoder's hidden states, negative from the end, or a list
of them, concatenated like stock) selects the features; layers after the deepest one needed are not
run (stock runs them and discards their outputs). ``full`` would keep each group's CLS as a token of
its own, which has no place in the unit layout: it is refused with a clear error.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import torch
from torch import nn

from lf_ext.layout import TOKEN_GROUPS, Group, ImageLayout

Projector = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (features per unit, is_object per unit) -> tokens


def feature_layers(vision_feature_layer: int | Sequence[int], num_layers: int) -> list[int]:
    """Indices into the L+1 hidden states (0: embeddings after pre_layrnorm, i: after layer i)."""
    layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
    resolved = [layer if layer >= 0 else num_layers + 1 + layer for layer in layers]
    if any(not 0 <= layer <= num_layers for layer in resolved):
        raise ValueError(f"vision_feature_layer {vision_feature_layer} is outside the tower's {num_layers} layers")
    return resolved


def check_tower(tower: nn.Module, strategy: str) -> None:
    """Raise unless ``tower`` is a CLIP-style tower this encoding reproduces exactly."""
    if strategy != "default":
        raise ValueError(f"llava_bgobj needs vision_feature_select_strategy 'default' (LLaVA-1.5's), got {strategy!r}: "
                         "'full' keeps a CLS token, which has no place among a separated image's units")  # fmt: skip
    for name in ("embeddings", "pre_layrnorm", "encoder"):
        if not hasattr(tower, name):
            raise ValueError(f"llava_bgobj supports CLIP vision towers (embeddings, pre_layrnorm, encoder); "
                             f"{type(tower).__name__} has no {name}")  # fmt: skip


def _sequences(layout: ImageLayout, groups: Sequence[Group]) -> list[tuple[int, int, torch.Tensor]]:
    """(item, group, unit indices) of every non-empty group, in token order."""
    out = []
    for item in range(len(layout)):
        slices, _, _ = layout.grids[item]
        if slices != 1:
            raise ValueError(f"llava_bgobj encodes images (one slice), item {item} has {slices}")
        for group in groups:
            units = layout.token_units(item, (group,))
            if units.numel():
                out.append((item, int(group), units))
    return out


def encode_units(tower: nn.Module, pixel_values: torch.Tensor, layout: ImageLayout, vision_feature_layer,
                 projector: Projector, groups: Sequence[Group] = TOKEN_GROUPS) -> torch.Tensor:  # fmt: skip
    """Visual tokens of the units of ``groups`` in token order: ``[tokens, text hidden]``."""
    if pixel_values.shape[0] != len(layout):
        raise ValueError(f"pixel_values holds {pixel_values.shape[0]} images, the layout {len(layout)}")
    patches = tower.embeddings.num_patches
    if any(rows * cols != patches for _, rows, cols in layout.grids):
        raise ValueError(f"the layout's grids {layout.grids} do not match the tower's {patches} patches")
    layers = feature_layers(vision_feature_layer, len(tower.encoder.layers))
    sequences = _sequences(layout, groups)
    if not sequences:
        return projector(pixel_values.new_zeros(0, tower.config.hidden_size * len(layers)), torch.zeros(0, dtype=torch.bool))
    embeds = tower.pre_layrnorm(tower.embeddings(pixel_values.to(tower.dtype)))  # (items, 1 + patches, hidden)
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, (_, _, units) in enumerate(sequences):
        by_length[units.numel()].append(index)
    features: list[torch.Tensor | None] = [None] * len(sequences)
    for members in by_length.values():
        batch = torch.stack([embeds[sequences[i][0], torch.cat([units.new_zeros(1), 1 + sequences[i][2]]).to(embeds.device)]
                             for i in members])  # fmt: skip
        selected = _run_layers(tower, batch, layers)
        for row, i in enumerate(members):
            features[i] = selected[row, 1:]  # drop the group's CLS ('default' strategy)
    is_object = torch.cat([torch.full((units.numel(),), group == int(Group.OBJECT)) for _, group, units in sequences])
    return projector(torch.cat(features), is_object.to(embeds.device))


def _run_layers(tower: nn.Module, hidden: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """The encoder on ``hidden`` up to the deepest layer needed; the selected states concatenated.

    Each layer's ``forward`` is called directly, bypassing ``__call__``: several length buckets run the
    same layer in one training step, and LLaMA-Factory's reentrant gradient checkpointing of a module
    called more than once per step makes DDP mark its parameters ready twice (the same computation)."""
    states = {0: hidden} if 0 in layers else {}
    for index, layer in enumerate(tower.encoder.layers[: max(layers)], 1):
        hidden = layer.forward(hidden, None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        if index in layers:
            states[index] = hidden
    return torch.cat([states[layer] for layer in layers], dim=-1)
