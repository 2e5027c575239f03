"""Create ``visual.bgobj`` in the Qwen vision towers when the config carries a ``bgobj`` spec.

Wrapping ``__init__`` (rather than attaching modules after loading) lets transformers load, initialise
and save the new weights like any other, ZeRO-3 included. Without the spec nothing changes.
"""

from __future__ import annotations

import functools
from types import ModuleType

TOWERS = {
    "transformers.models.qwen2_vl.modeling_qwen2_vl": "Qwen2VisionTransformerPretrainedModel",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": "Qwen2_5_VisionTransformerPretrainedModel",
}


def patch_vision_tower(module: ModuleType) -> None:
    tower = getattr(module, TOWERS[module.__name__])
    original = tower.__init__
    if getattr(original, "_lf_ext_wrapped", False):
        return

    @functools.wraps(original)
    def __init__(self, config, *args, **kwargs):
        original(self, config, *args, **kwargs)
        spec = getattr(config, "bgobj", None)
        if spec:
            from lf_ext.models.modules import BGOBJ_ATTR, BgObjModules

            setattr(self, BGOBJ_ATTR, BgObjModules(spec, merger=self.merger))

    __init__._lf_ext_wrapped = True
    tower.__init__ = __init__
