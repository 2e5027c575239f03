"""Register the bgobj templates and plugins in LLaMA-Factory's registries."""

from __future__ import annotations

import inspect
from types import ModuleType

from lf_ext.layout import add_separator_tokens

# bgobj template -> (stock template it extends, plugin name, plugin class path)
BGOBJ_TEMPLATES = {
    "qwen2_vl_bgobj": ("qwen2_vl", "lf_ext.plugins.qwen2_vl_bgobj:Qwen2VLBgObjPlugin"),
}


def _bgobj_template_class(base: type) -> type:
    """A subclass of the stock template class that also adds the four separator tokens."""

    class BgObjTemplate(base):
        def fix_special_tokens(self, tokenizer) -> None:
            super().fix_special_tokens(tokenizer)
            add_separator_tokens(tokenizer)

    BgObjTemplate.__qualname__ = BgObjTemplate.__name__ = f"BgObj{base.__name__}"
    return BgObjTemplate


def _import(path: str):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def patch_templates(template_module: ModuleType) -> None:
    """Register each bgobj template as a copy of its stock template with the bgobj plugin."""
    from llamafactory.data import mm_plugin

    accepted = inspect.signature(template_module.register_template).parameters
    for name, (stock_name, plugin_path) in BGOBJ_TEMPLATES.items():
        if name in template_module.TEMPLATES:
            continue
        if name not in mm_plugin.PLUGINS:
            mm_plugin.register_mm_plugin(name, _import(plugin_path))
        stock = template_module.TEMPLATES[stock_name]
        plugin = stock.mm_plugin
        kwargs = {k: getattr(stock, k) for k in accepted if k not in ("name", "mm_plugin", "template_class") and hasattr(stock, k)}
        template_module.register_template(
            name=name,
            **kwargs,
            mm_plugin=mm_plugin.get_mm_plugin(name, image_token=plugin.image_token, video_token=plugin.video_token),
            template_class=_bgobj_template_class(type(stock)),
        )
