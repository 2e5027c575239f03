"""Create the ``bgobj`` modules inside a model family's module when the config carries a ``bgobj`` spec.

Wrapping ``__init__`` of the family's ``init_targets`` (rather than attaching modules after loading)
lets transformers load, initialise and save the new weights like any other, ZeRO-3 included.
Without the spec nothing changes.
"""

from __future__ import annotations

from types import ModuleType

from lf_ext.patching import wrap


def _creating_modules(family, original_init):
    def __init__(self, config, *args, **kwargs):
        original_init(self, config, *args, **kwargs)
        spec = getattr(config, "bgobj", None)  # the config this module receives is the family's spec holder
        if spec:
            from lf_ext.families.base import BGOBJ_ATTR
            from lf_ext.models.modules import BgObjModules

            layer = None
            if spec.get("prefusion_layers"):
                layer = family.decoder_layer_class(spec["prefusion_text_config"]["model_type"])
            # a factory, not the projector itself: fresh copies are partitioned by zero.Init like the rest
            setattr(self, BGOBJ_ATTR, BgObjModules(spec, lambda: family.new_projector(self), layer))

    return __init__


def patch_model_classes(module: ModuleType) -> None:
    """Wrap the ``__init__`` of every family class that lives in this transformers module."""
    from lf_ext.families import all_families

    for family in all_families():
        name = family.init_targets.get(module.__name__)
        if name is not None:
            wrap(getattr(module, name), "__init__", lambda init, family=family: _creating_modules(family, init))
