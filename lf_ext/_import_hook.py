"""A ``sys.meta_path`` finder that runs lf_ext's patch right after a target module executes.

Kept free of imports (not even ``importlib.abc``, which pulls in ``pathlib``): it runs at every
interpreter start through ``lf_ext.pth``.
"""

import sys

# module name -> "package.module:function" called with the freshly executed module
PATCHES = {
    "llamafactory.hparams.parser": "lf_ext.patches.parser:patch_parser",
    "llamafactory.data.template": "lf_ext.patches.template:patch_templates",
    "llamafactory.data.collator": "lf_ext.patches.collator:patch_collator",
    "llamafactory.model.loader": "lf_ext.patches.loader:patch_loader",
    "llamafactory.model.adapter": "lf_ext.patches.loader:patch_adapter",
    "llamafactory.api.chat": "lf_ext.patches.api:patch_api_chat",
    "llamafactory.api.app": "lf_ext.patches.api:patch_api_app",
    "transformers.models.qwen2_vl.modeling_qwen2_vl": "lf_ext.patches.model_init:patch_model_classes",
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": "lf_ext.patches.model_init:patch_model_classes",
    "transformers.models.llava.modeling_llava": "lf_ext.patches.model_init:patch_model_classes",
    "llamafactory.webui.components.train": "lf_ext.patches.board:patch_train_tab",
    "deepspeed.comm": "lf_ext.patches.deepspeed_gloo:patch_comm",
}
# patched when something imports them, but not imported by lf_ext.register() (gradio is slow to import;
# deepspeed is optional)
LAZY_PREFIXES = ("llamafactory.webui.", "deepspeed.")


def _run_patch(module) -> None:
    import importlib

    path, func = PATCHES[module.__name__].split(":")
    getattr(importlib.import_module(path), func)(module)


class _PatchingLoader:
    """Delegate to the real loader, then apply the patch."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _run_patch(module)

    def __getattr__(self, name):  # get_source, is_package, ... for tracebacks and tools
        return getattr(self._loader, name)


class PatchFinder:
    """Find target modules with the other finders and wrap their loaders."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in PATCHES:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once) and patch targets already imported."""
    if not any(isinstance(f, PatchFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, PatchFinder())
    for name in PATCHES:
        if name in sys.modules:
            _run_patch(sys.modules[name])
