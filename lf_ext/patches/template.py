"""Register the bgobj templates and plugins in LLaMA-Factory's registries, and bind each command's
settings to the plugin of the template it gets.

Each family's bgobj template is a copy of its stock template whose template class also adds the four
separator tokens and whose plugin is the family's bgobj plugin. ``get_template_and_fix_tokenizer``
(the one place every LLaMA-Factory command gets its template, with its data arguments) returns a
shallow copy of a bgobj template whose plugin is bound to the settings of those arguments, so two
commands in one process (the web UI, tests, a stream beside a chat) never share settings.
"""

from __future__ import annotations

import copy
import inspect
from types import ModuleType

from lf_ext.config import settings_of
from lf_ext.families import all_families
from lf_ext.families.base import import_path
from lf_ext.layout import add_separator_tokens
from lf_ext.patching import wrap


def _bgobj_template_class(base: type) -> type:
    """A subclass of the stock template class that also adds the four separator tokens."""

    class BgObjTemplate(base):
        def fix_special_tokens(self, tokenizer) -> None:
            super().fix_special_tokens(tokenizer)
            add_separator_tokens(tokenizer)

    BgObjTemplate.__qualname__ = BgObjTemplate.__name__ = f"BgObj{base.__name__}"
    return BgObjTemplate


def _plain_plugin(template, name: str | None, settings):
    """A family's plugin in plain mode for its stock template (a token budget or video options without
    separation), or None."""
    from lf_ext.config import video_options_on
    from lf_ext.selection import PatchSelection

    if not PatchSelection.from_settings(settings.keys).enabled and not video_options_on(settings.keys):
        return None
    family = next((f for f in all_families() if f.stock_template == name), None)
    if family is None:
        return None
    stock = template.mm_plugin
    plugin = import_path(family.plugin)(image_token=stock.image_token, video_token=stock.video_token,
                                        audio_token=stock.audio_token, expand_mm_tokens=stock.expand_mm_tokens, plain=True)  # fmt: skip
    return plugin.bind(settings)


def _binding_settings(original):
    def get_template_and_fix_tokenizer(tokenizer, data_args):
        template = original(tokenizer, data_args)
        settings = settings_of(data_args)
        bind = getattr(template.mm_plugin, "bind", None)
        plugin = bind(settings) if bind is not None else _plain_plugin(template, data_args.template, settings)
        if plugin is None:
            return template
        bound = copy.copy(template)
        bound.mm_plugin = plugin
        return bound

    return get_template_and_fix_tokenizer


def patch_templates(template_module: ModuleType) -> None:
    """Register each family's bgobj template (once) and wrap ``get_template_and_fix_tokenizer``."""
    from llamafactory.data import mm_plugin

    accepted = inspect.signature(template_module.register_template).parameters
    for family in all_families():
        if family.template in template_module.TEMPLATES:
            continue
        if family.template not in mm_plugin.PLUGINS:
            mm_plugin.register_mm_plugin(family.template, import_path(family.plugin))
        stock = template_module.TEMPLATES[family.stock_template]
        plugin = stock.mm_plugin
        skip = ("name", "mm_plugin", "template_class")
        kwargs = {k: getattr(stock, k) for k in accepted if k not in skip and hasattr(stock, k)}
        template_module.register_template(
            name=family.template,
            **kwargs,
            mm_plugin=mm_plugin.get_mm_plugin(family.template, image_token=plugin.image_token, video_token=plugin.video_token),
            template_class=_bgobj_template_class(type(stock)),
        )
    wrap(template_module, "get_template_and_fix_tokenizer", _binding_settings)
