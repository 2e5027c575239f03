"""``llava_bgobj`` plugin: LLaVA-1.5 images in the separated background/object layout.

Each ``<image>`` becomes ``[BG_START] <image>... [BG_END][OBJ_START] <image>... [OBJ_END]``, one ``<image>``
token per 14-px patch of the processed 336-px image (576 in all, as stock), split by group.
"""

from __future__ import annotations

from dataclasses import dataclass

from llamafactory.data.mm_plugin import LlavaPlugin

from lf_ext.plugins.base import BgObjPluginMixin


@dataclass
class LlavaBgObjPlugin(BgObjPluginMixin, LlavaPlugin):
    family_type = "llava"
