"""Hooks around LLaMA-Factory's model loading: config flag, instance patches, adapter targets, runtime.

``llamafactory.model.loader`` imports ``patch_config``, ``patch_model`` and ``init_adapter`` by name,
so they are wrapped where that module looks them up. Each hook gets the command's settings from the
model arguments it receives (:func:`~lf_ext.config.settings_of`).
"""

from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType

from lf_ext.config import settings_of
from lf_ext.families import family_of
from lf_ext.families.base import BGOBJ_ATTR
from lf_ext.layout import has_separators, separator_ids
from lf_ext.log import get_logger
from lf_ext.patching import call_after, wrap

logger = get_logger()


def enable_bgobj_config(config, tokenizer, settings) -> None:
    """Put the ``bgobj`` spec into a supported model's config when the tokenizer carries the separators."""
    from lf_ext.models.modules import make_spec

    family = family_of(config)
    if family is None or not has_separators(tokenizer):
        return
    keys = settings.keys
    ids, layers, split = separator_ids(tokenizer), keys.bgobj_prefusion_layers, keys.bgobj_split_projector
    holder = family.spec_holder(config)
    spec = getattr(holder, BGOBJ_ATTR, None)
    if spec is None:
        setattr(holder, BGOBJ_ATTR, make_spec(ids, family.text_config(config), layers, split))
        logger.info("bgobj: separated background/object layout on (separator ids %s, %d prefusion layers, "
                    "split projector %s)", ids, layers, split)  # fmt: skip
        return
    if list(spec["separator_ids"]) != ids:
        raise ValueError(f"checkpoint's bgobj separator ids {spec['separator_ids']} differ from the tokenizer's {ids}")
    if layers and layers != spec.get("prefusion_layers", 0):
        raise ValueError(f"bgobj_prefusion_layers={layers}, but this bgobj checkpoint has "
                         f"{spec.get('prefusion_layers', 0)}; drop the key to keep the checkpoint's")  # fmt: skip


def _after_patch_config(result, config, tokenizer, model_args, *args, **kwargs) -> None:
    enable_bgobj_config(config, tokenizer, settings_of(model_args))


def _after_patch_model(result, model, tokenizer, model_args, is_trainable, *args, **kwargs) -> None:
    """A bgobj model gets the separated layout; a stock model under a token budget or with video options the
    plain layout."""
    from lf_ext.models.attach import attach_bgobj, initialize_new_modules
    from lf_ext.config import video_options_on
    from lf_ext.selection import PatchSelection

    family = family_of(model)
    if family is None:
        return
    if family.spec(model) is not None:
        attach_bgobj(model, family)
        initialize_new_modules(model, family)
    elif PatchSelection.from_settings(keys := settings_of(model_args).keys).enabled or video_options_on(keys):
        attach_bgobj(model, family)
        logger.info("bgobj: plain layout on (%s)", "video options" if video_options_on(keys) else "token budget")


def _before_init_adapter(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs) -> None:
    """LoRA: train and save the ``bgobj`` modules in full (PEFT ``modules_to_save``)."""
    family = family_of(model)
    if family is None or family.spec(model) is None or not is_trainable or finetuning_args.finetuning_type != "lora":
        return
    targets = list(finetuning_args.additional_target or [])
    if BGOBJ_ATTR not in targets:
        finetuning_args.additional_target = targets + [BGOBJ_ATTR]


def _after_init_adapter(model, config, model_ref, model_args, finetuning_args, is_trainable, *args, **kwargs) -> None:
    """Freeze tuning keeps the bgobj modules trainable; with split projectors the stock projector (which the
    separated layout never uses) is frozen, so no optimizer state is spent on it and DDP sees no unused
    trainable parameter; an inference load (adapters merged by now) gets the background-cache runtime and
    the exit guard."""
    if is_trainable and finetuning_args.finetuning_type == "freeze":
        for name, param in model.named_parameters():
            if f".{BGOBJ_ATTR}." in name:
                param.requires_grad_(True)
    family = family_of(model)
    spec = family.spec(model) if family is not None else None
    if is_trainable and spec and spec.get("split_projector"):
        frozen = [p for p in family.projector_of(family.modules_owner(model)).parameters() if p.requires_grad]
        for param in frozen:
            param.requires_grad_(False)
        if frozen:
            logger.info("bgobj_split_projector: the stock projector is unused by the separated layout; %d of its "
                        "trainable tensors frozen", len(frozen))  # fmt: skip
    if not is_trainable:
        from lf_ext.inference.exit_guard import guard_generate
        from lf_ext.inference.runtime import install_runtime

        if spec is not None:
            install_runtime(model, family, settings_of(model_args), model_args.model_name_or_path)
        guard_generate(model)  # outermost: chat may exit while generate still runs in its thread


def _without_bgobj(result, *args, **kwargs):
    """LoRA never targets layers inside ``bgobj``: they are trained in full (modules_to_save)."""
    if isinstance(result, list):
        result[:] = [name for name in result if f".{BGOBJ_ATTR}." not in f".{name}."]


@contextmanager
def _bgobj_hidden(model):
    """Take the ``bgobj`` modules out of the module tree for a moment (so LoRA target discovery skips them)."""
    family = family_of(model)
    modules = getattr(family.modules_owner(model), "_modules", {}) if family and family.spec(model) else {}
    hidden = modules.pop(BGOBJ_ATTR, None)
    try:
        yield
    finally:
        if hidden is not None:
            modules[BGOBJ_ATTR] = hidden


def _hiding_bgobj(original):
    def find_all_linear_modules(model, *args, **kwargs):
        with _bgobj_hidden(model):
            return original(model, *args, **kwargs)

    return find_all_linear_modules


def _running_before(before):
    def make(original):
        def wrapper(*args, **kwargs):
            before(*args, **kwargs)
            return original(*args, **kwargs)

        return wrapper

    return make


def patch_adapter(adapter_module: ModuleType) -> None:
    """``lora_target: all`` must not pick Linear names that only bgobj layers have (e.g. the split
    projectors' ``0``/``2``, which would then match LLM layer names by substring)."""
    call_after(adapter_module, "patch_target_modules", _without_bgobj)
    wrap(adapter_module, "find_all_linear_modules", _hiding_bgobj)


def patch_loader(loader_module: ModuleType) -> None:
    call_after(loader_module, "patch_config", _after_patch_config)
    call_after(loader_module, "patch_model", _after_patch_model)
    wrap(loader_module, "init_adapter", _running_before(_before_init_adapter))
    call_after(loader_module, "init_adapter", _after_init_adapter, tag="init_adapter_after")
