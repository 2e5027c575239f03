"""Let LLaMA-Factory's collator hand the batch's layout to ``get_rope_index`` while it computes positions."""

from __future__ import annotations

from types import ModuleType

from lf_ext.layout import COLLATING_LAYOUT, LAYOUT_KEY, ImageLayout
from lf_ext.patching import wrap


def _with_layout(original):
    def _compute_rope_position_ids(self, features, mm_inputs):
        token = COLLATING_LAYOUT.set(ImageLayout.coerce(mm_inputs.get(LAYOUT_KEY)))
        try:
            return original(self, features, mm_inputs)
        finally:
            COLLATING_LAYOUT.reset(token)

    return _compute_rope_position_ids


def patch_collator(collator_module: ModuleType) -> None:
    wrap(collator_module.MultiModalDataCollatorForSeq2Seq, "_compute_rope_position_ids", _with_layout)
