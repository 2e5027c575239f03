"""Let LLaMA-Factory's collator hand the unit labels to ``get_rope_index`` while it computes positions."""

from __future__ import annotations

import functools
from types import ModuleType


def patch_collator(collator_module: ModuleType) -> None:
    cls = collator_module.MultiModalDataCollatorForSeq2Seq
    original = cls._compute_rope_position_ids
    if getattr(original, "_lf_ext_wrapped", False):
        return

    @functools.wraps(original)
    def _compute_rope_position_ids(self, features, mm_inputs):
        from lf_ext.models.positions import UNIT_LABELS

        token = UNIT_LABELS.set(mm_inputs.get("bgobj_unit_labels"))
        try:
            return original(self, features, mm_inputs)
        finally:
            UNIT_LABELS.reset(token)

    _compute_rope_position_ids._lf_ext_wrapped = True
    cls._compute_rope_position_ids = _compute_rope_position_ids
