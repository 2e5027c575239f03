"""Hooks around LLaMA-Factory's model loading: config flag, instance patches, adapter targets.

``llamafactory.model.loader`` imports ``patch_config``, ``patch_model`` and ``init_adapter`` by name,
so they are wrapped where that module looks them up.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from types import ModuleType

from lf_ext.layout import SEPARATORS
from lf_ext.log import get_logger

logger = get_logger()
QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl")


def _has_separators(tokenizer) -> bool:
    vocab = tokenizer.get_vocab()
    return all(token in vocab for token in SEPARATORS)


def enable_bgobj_config(config, tokenizer) -> None:
    """Put the ``bgobj`` spec into a Qwen config when the tokenizer carries the separators."""
    from lf_ext.config import active_settings
    from lf_ext.layout import separator_ids
    from lf_ext.models.modules import make_spec

    if getattr(config, "model_type", None) not in QWEN_TYPES or not _has_separators(tokenizer):
        return
    settings = active_settings()
    ids, layers, split = separator_ids(tokenizer), settings.bgobj_prefusion_layers, settings.bgobj_split_projector
    spec = getattr(config.vision_config, "bgobj", None)
    if spec is None:
        config.vision_config.bgobj = make_spec(ids, config.text_config, layers, split)
        logger.info("bgobj: separated background/object layout on (separator ids %s, %d prefusion layers, "
                    "split projector %s)", ids, layers, split)  # fmt: skip
        return
    if list(spec["separator_ids"]) != ids:
        raise ValueError(f"checkpoint's bgobj separator ids {spec['separator_ids']} differ from the tokenizer's {ids}")
    if layers and layers != spec.get("prefusion_layers", 0):
        raise ValueError(f"bgobj_prefusion_layers={layers}, but this bgobj checkpoint has "
                         f"{spec.get('prefusion_layers', 0)}; drop the key to keep the checkpoint's")  # fmt: skip


def prepare_bgobj_model(model) -> None:
    """Attach the instance patches and, on first use, initialise the separators from the model's delimiters."""
    from lf_ext.models.modules import BGOBJ_ATTR, init_separators_from
    from lf_ext.models.qwen_bgobj import attach_bgobj, bgobj_spec

    spec = bgobj_spec(model)
    if spec is None:
        return
    attach_bgobj(model)
    if not spec.get("separators_initialized"):
        modules = getattr(model.model.visual, BGOBJ_ATTR)
        weights = model.get_input_embeddings().weight
        with _gathered([weights, modules.separators.weight]):  # ZeRO-3 partitions parameters
            start, end = weights[model.config.vision_start_token_id], weights[model.config.vision_end_token_id]
            init_separators_from(modules, start.detach().cpu(), end.detach().cpu())
        spec["separators_initialized"] = True
    if spec.get("prefusion_layers") and not spec.get("prefusion_initialized"):
        prefusion = getattr(model.model.visual, BGOBJ_ATTR).prefusion
        with _gathered(list(prefusion.parameters()) + list(model.model.language_model.layers.parameters())):
            prefusion.copy_from(model.model.language_model.layers)
        spec["prefusion_initialized"] = True
    if spec.get("split_projector") and not spec.get("split_projector_initialized"):
        modules, merger = getattr(model.model.visual, BGOBJ_ATTR), model.model.visual.merger
        with _gathered(list(modules.parameters()) + list(merger.parameters())):
            modules.merger_background.load_state_dict(merger.state_dict())
            modules.merger_object.load_state_dict(merger.state_dict())
        spec["split_projector_initialized"] = True


def _gathered(params):
    """Gather ZeRO-3 partitioned parameters for an in-place edit (a no-op otherwise)."""
    from contextlib import nullcontext

    from transformers.integrations import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


def _wrap(module: ModuleType, name: str, after=None, before=None) -> None:
    original = getattr(module, name)
    if getattr(original, "_lf_ext_wrapped", False):
        return

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        if before:
            before(*args, **kwargs)
        result = original(*args, **kwargs)
        if after:
            after(result, *args, **kwargs)
        return result

    wrapper._lf_ext_wrapped = True
    setattr(module, name, wrapper)


def _after_patch_config(result, config, tokenizer, *args, **kwargs) -> None:
    enable_bgobj_config(config, tokenizer)


def _after_patch_model(result, model, tokenizer, model_args, is_trainable, *args, **kwargs) -> None:
    prepare_bgobj_model(model)
    if not is_trainable:
        install_inference_cache(model, model_args)
        from lf_ext.inference.exit_guard import guard_generate

        guard_generate(model)  # outermost: chat may exit while generate still runs in its thread


def install_inference_cache(model, model_args) -> None:
    """chat / api / webchat: make ``generate`` reuse verified backgrounds (``bgobj_cache_*`` keys)."""
    from lf_ext.config import active_settings
    from lf_ext.models.qwen_bgobj import bgobj_spec

    settings = active_settings()
    if bgobj_spec(model) is None or not settings.bgobj_cache or settings.bgobj_cache_max_mb <= 0:
        return
    from lf_ext.inference.generate import cache_from_settings, image_norm_of, install_background_cache

    install_background_cache(model, image_norm_of(model_args.model_name_or_path), cache_from_settings(settings),
                             refine=settings.bgobj_cache_refine)  # fmt: skip


def _before_init_adapter(config, model, model_args, finetuning_args, is_trainable, *args, **kwargs) -> None:
    """LoRA: train and save ``visual.bgobj`` as a full module (PEFT ``modules_to_save``)."""
    from lf_ext.models.qwen_bgobj import bgobj_spec

    if bgobj_spec(model) is None or not is_trainable or finetuning_args.finetuning_type != "lora":
        return
    targets = list(finetuning_args.additional_target or [])
    if "bgobj" not in targets:
        finetuning_args.additional_target = targets + ["bgobj"]


def _after_init_adapter(model, config, model_ref, model_args, finetuning_args, is_trainable, *args, **kwargs) -> None:
    """Freeze tuning freezes everything it was not told about: keep the bgobj modules trainable."""
    if is_trainable and finetuning_args.finetuning_type == "freeze":
        for name, param in model.named_parameters():
            if ".bgobj." in name:
                param.requires_grad_(True)


def _without_bgobj(result, *args, **kwargs):
    """LoRA never targets layers inside ``visual.bgobj``: they are trained in full (modules_to_save)."""
    if isinstance(result, list):
        result[:] = [name for name in result if ".bgobj." not in f".{name}."]


@contextmanager
def _bgobj_hidden(model):
    """Take ``visual.bgobj`` out of the module tree for a moment (so LoRA target discovery skips it)."""
    visual = getattr(getattr(model, "model", None), "visual", None)
    modules = getattr(visual, "_modules", {})
    hidden = modules.pop("bgobj", None)
    try:
        yield
    finally:
        if hidden is not None:
            modules["bgobj"] = hidden


def patch_adapter(adapter_module: ModuleType) -> None:
    """``lora_target: all`` must not pick Linear names that only bgobj layers have (e.g. the split
    projectors' ``0``/``2``, which would then match LLM layer names by substring)."""
    _wrap(adapter_module, "patch_target_modules", after=_without_bgobj)
    original = adapter_module.find_all_linear_modules
    if getattr(original, "_lf_ext_wrapped", False):
        return

    @functools.wraps(original)
    def find_all_linear_modules(model, *args, **kwargs):
        with _bgobj_hidden(model):
            return original(model, *args, **kwargs)

    find_all_linear_modules._lf_ext_wrapped = True
    adapter_module.find_all_linear_modules = find_all_linear_modules


def patch_loader(loader_module: ModuleType) -> None:
    _wrap(loader_module, "patch_config", after=_after_patch_config)
    _wrap(loader_module, "patch_model", after=_after_patch_model)
    _wrap(loader_module, "init_adapter", before=_before_init_adapter, after=_after_init_adapter)
