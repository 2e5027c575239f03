"""The new parameters of a bgobj model, created from a ``bgobj`` spec in the model config.

They live in one module, ``BgObjModules``, at the place the model family chooses (``model.visual.bgobj``
for Qwen2-VL/Qwen2.5-VL): a name none of LLaMA-Factory's freeze substrings match, at a path that
survives transformers' checkpoint key conversion.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from lf_ext.layout import SEPARATORS

SPEC_VERSION = 1


def make_spec(separator_ids: list[int], text_config, prefusion_layers: int = 0, split_projector: bool = False) -> dict:
    """The ``bgobj`` config entry that switches a model to the separated layout."""
    spec = {"version": SPEC_VERSION, "separator_ids": list(separator_ids), "text_hidden_size": text_config.hidden_size,
            "separators_initialized": False, "prefusion_layers": prefusion_layers,
            "split_projector": split_projector, "split_projector_initialized": False}  # fmt: skip
    if prefusion_layers:
        text = text_config.to_dict()
        text.pop("architectures", None)
        spec.update(prefusion_text_config=text, prefusion_initialized=False)
    return spec


class BgObjModules(nn.Module):
    """Separator embeddings for ``[BG_START] [BG_END] [OBJ_START] [OBJ_END]``, optional prefusion layers and
    optional split projectors (separate background/object copies of the family's projector, named
    ``merger_background``/``merger_object``).

    The separators get their own embedding table, so ``embed_tokens`` and ``lm_head`` need no
    training; a forward hook on the input embeddings writes these rows at the separator ids.
    """

    def __init__(self, spec: dict, projector: nn.Module | Callable[[], nn.Module] | None = None,
                 decoder_layer: type | None = None):  # fmt: skip
        """``projector``: the model's projector (copied) or a factory of fresh, same-shaped projectors.

        Under DeepSpeed ZeRO-3 (``deepspeed.zero.Init``) pass a factory: a deep copy of a partitioned
        module shares its partitioning state with the original and cannot be gathered on its own; a
        freshly constructed module is partitioned by ``zero.Init`` like any other. The copies get the
        projector's weights later, in ``initialize_new_modules``.
        """
        super().__init__()
        self.separators = nn.Embedding(len(SEPARATORS), spec["text_hidden_size"])
        if spec.get("split_projector"):
            make = (lambda: copy.deepcopy(projector)) if isinstance(projector, nn.Module) else projector
            self.merger_background, self.merger_object = make(), make()
        if spec.get("prefusion_layers"):
            from lf_ext.models.prefusion import PrefusionStack

            self.prefusion = PrefusionStack(spec["prefusion_layers"], spec["prefusion_text_config"], decoder_layer)

    def forward(self, what: str, *args, **kwargs) -> torch.Tensor:
        """``("separators", index)``, ``("project", hidden, is_object)`` or ``("prefusion", hidden, ...)``:
        one entry point, so PEFT's ``modules_to_save`` wrapper routes every use to the trained copy."""
        if what == "separators":
            return self.separators(*args)
        if what == "project":
            return self.project(*args)
        return self.prefusion(*args, **kwargs)

    def project(self, hidden_states: torch.Tensor, is_object_unit: torch.Tensor) -> torch.Tensor:
        """Split projectors: background units through one projector, object units through the other.
        ``hidden_states`` holds the same number of rows for every unit, unit after unit. Both projectors
        always run (on an empty selection if need be), so both get a gradient every step (DDP)."""
        per_unit = hidden_states.view(is_object_unit.numel(), -1, hidden_states.shape[-1])
        out = None
        for projector, chosen in ((self.merger_background, ~is_object_unit), (self.merger_object, is_object_unit)):
            rows = projector(per_unit[chosen].reshape(-1, hidden_states.shape[-1]))  # one row per unit
            if out is None:
                out = rows.new_zeros(is_object_unit.numel(), rows.shape[-1])
            out = out.index_put((chosen.nonzero(as_tuple=True)[0],), rows)
        return out


def init_separators_from(modules: BgObjModules, start_row: torch.Tensor, end_row: torch.Tensor) -> None:
    """Start the separators near the model's own image delimiters: starts from ``start_row``, ends from ``end_row``.

    A small deterministic offset keeps ``[BG_START]`` and ``[OBJ_START]`` (and the two ends) apart.
    """
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        rows = torch.stack([start_row, end_row, start_row, end_row]).float()
        noise = torch.randn(rows.shape, generator=generator) * rows.std() * 0.1
        modules.separators.weight.copy_((rows + noise).to(modules.separators.weight.dtype))
