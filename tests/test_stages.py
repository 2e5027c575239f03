"""The tiny staged recipes: what each stage trains, and train -> export -> reload with no lost weights."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from bgobj_helpers import encode, load_for_inference
from conftest import REPO_ROOT, run_cli, write_yaml


def _recipe(name: str, **overrides) -> dict:
    values = yaml.safe_load((REPO_ROOT / "yaml" / "tiny" / name).read_text())
    values.update(overrides)
    return values


def _trainable(values: dict) -> set[str]:
    """Load the model exactly as ``llamafactory-cli train`` would and list trainable parameter names."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer

    model_args, data_args, training_args, finetuning_args, _ = get_train_args(values)
    tokenizer_module = load_tokenizer(model_args)
    get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
    model = load_model(tokenizer_module["tokenizer"], model_args, finetuning_args, is_trainable=True)
    return {name for name, param in model.named_parameters() if param.requires_grad}


@pytest.fixture
def stage_paths(tmp_path, tiny_dir, scenes_dir):
    return dict(model_name_or_path=str(tiny_dir("qwen2_vl")), dataset_dir=str(scenes_dir), output_dir=str(tmp_path / "out"))


def test_stage1_trains_only_the_bgobj_modules(stage_paths):
    names = _trainable(_recipe("stage1_projector.yaml", **stage_paths))
    assert "model.visual.bgobj.separators.weight" in names and "model.visual.bgobj.prefusion.gates" in names
    assert all(n.startswith("model.visual.bgobj.") for n in names)
    assert any(n.startswith("model.visual.bgobj.prefusion.layers.0.self_attn.") for n in names)


def test_stage2_trains_lora_on_the_llm_and_the_bgobj_modules(stage_paths):
    # stage 2 reads a stage-1 checkpoint that has a prefusion layer; the tiny base gets one the same way
    names = _trainable(_recipe("stage2_lora.yaml", bgobj_prefusion_layers=1, **stage_paths))
    lora = {n for n in names if "lora_" in n}
    assert lora and all(".language_model." in n for n in lora)  # never the vision tower
    bgobj = {n for n in names if ".bgobj." in n}
    assert bgobj and all(".visual.bgobj.modules_to_save.default." in n for n in bgobj)  # trained in full, no LoRA
    assert "base_model.model.model.visual.bgobj.modules_to_save.default.prefusion.gates" in bgobj
    assert names == lora | bgobj


def test_stage3_trains_the_llm_and_bgobj_not_the_vit(stage_paths):
    names = _trainable(_recipe("stage3_full.yaml", bgobj_prefusion_layers=1, **stage_paths))
    assert "model.visual.bgobj.separators.weight" in names and "model.visual.bgobj.prefusion.gates" in names
    assert any(n.startswith("model.language_model.layers.") for n in names) and "lm_head.weight" in names
    assert not any(n.startswith(("model.visual.blocks.", "model.visual.patch_embed.")) for n in names)


def _train(tmp_path, name, recipe, **overrides):
    path = write_yaml(tmp_path / f"{name}.yaml", _recipe(recipe, max_steps=3, logging_steps=1, max_samples=16, **overrides))
    proc = run_cli(["llamafactory-cli", "train" if "export" not in recipe else "export", str(path)], cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc


TEMPLATES = {"qwen2_vl": "qwen2_vl_bgobj", "qwen2_5_vl": "qwen2_vl_bgobj", "llava": "llava_bgobj"}


@pytest.mark.integration
@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "llava"])
def test_train_export_reload_round_trip(tmp_path, tiny_dir, scenes_dir, arch):
    """Stage 1 -> stage 2 (LoRA) -> export: every bgobj weight survives, logits match the unmerged model."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    from lf_ext.families import family_of

    template = TEMPLATES[arch]
    common = dict(dataset_dir=str(scenes_dir), image_max_pixels=12544, template=template)
    s1, s2, merged = tmp_path / "stage1", tmp_path / "stage2", tmp_path / "merged"
    _train(tmp_path, "s1", "stage1_projector.yaml", model_name_or_path=str(tiny_dir(arch)), output_dir=str(s1), **common)
    (separator_key,) = [k for k in load_file(s1 / "model.safetensors") if k.endswith("bgobj.separators.weight")]
    trained = load_file(s1 / "model.safetensors")[separator_key]
    family = family_of(AutoConfig.from_pretrained(s1))
    assert family.spec(AutoConfig.from_pretrained(s1))["separators_initialized"] is True
    _train(tmp_path, "s2", "stage2_lora.yaml", model_name_or_path=str(s1), output_dir=str(s2), **common)
    export = write_yaml(tmp_path / "export.yaml", _recipe("export.yaml", model_name_or_path=str(s1), template=template,
                                                          adapter_name_or_path=str(s2), export_dir=str(merged)))  # fmt: skip
    proc = run_cli(["llamafactory-cli", "export", str(export)], cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:]

    reloaded, info = AutoModelForImageTextToText.from_pretrained(merged, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    adapter = load_file(s2 / "adapter_model.safetensors")
    lora_sep = [v for k, v in adapter.items() if "bgobj" in k and "separators" in k]
    assert lora_sep and torch.equal(family.modules(reloaded).separators.weight, lora_sep[0])
    assert not torch.equal(lora_sep[0], trained)  # stage 2 kept training the stage-1 module

    data = tmp_path / "masked"
    from bgobj_helpers import masked_dataset

    masked_dataset(data)
    merged_parts = load_for_inference(merged, data, template=template)
    unmerged_parts = load_for_inference(s1, data, template=template, adapter_name_or_path=str(s2))
    logits = []
    for tok, template_obj, model in (merged_parts, unmerged_parts):
        input_ids, inputs = encode(tok, template_obj, [str(data / "img0.png")])
        with torch.no_grad():
            logits.append(model(input_ids=input_ids, **inputs).logits)
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-4)
