"""Two-process gloo DDP through LLaMA-Factory's torchrun path with qwen2_vl_bgobj; the switch removes lf_ext."""

import pytest
from safetensors.torch import load_file

from conftest import run_cli, train_yaml, write_yaml

pytestmark = pytest.mark.integration  # runs llamafactory-cli / trains in child processes


def _recipe(tmp_path, tiny_dir, scenes_dir):
    values = train_yaml(tiny_dir("qwen2_vl"), scenes_dir, tmp_path / "out", "qwen2_vl_bgobj",
                        ddp_backend="gloo", bgobj_mask_provider="dataset")  # fmt: skip
    return write_yaml(tmp_path / "ddp.yaml", values)


def test_torchrun_workers_accept_bgobj_keys(tmp_path, tiny_dir, scenes_dir):
    recipe = _recipe(tmp_path, tiny_dir, scenes_dir)
    proc = run_cli(["llamafactory-cli", "train", str(recipe)], cwd=tmp_path, FORCE_TORCHRUN="1", NPROC_PER_NODE="2")
    assert proc.returncode == 0, proc.stdout[-3000:]
    for rank in (0, 1):
        assert f"[INFO|lf_ext|rank{rank}] lf_ext settings: bgobj_mask_provider='dataset'" in proc.stdout
        assert f"[INFO|lf_ext|rank{rank}] bgobj: separated background/object layout on" in proc.stdout
    assert "visual.bgobj.separators.weight" in load_file(tmp_path / "out" / "model.safetensors")


def test_switched_off_the_same_yaml_is_rejected_by_llamafactory(tmp_path, tiny_dir, scenes_dir):
    recipe = _recipe(tmp_path, tiny_dir, scenes_dir)
    proc = run_cli(["llamafactory-cli", "train", str(recipe)], cwd=tmp_path, disable=True,
                   FORCE_TORCHRUN="1", NPROC_PER_NODE="2")  # fmt: skip
    assert proc.returncode != 0
    assert "not used by the HfArgumentParser" in proc.stdout
    assert "bgobj_mask_provider" in proc.stdout


def test_llava_bgobj_lora_ddp_with_every_new_module(tmp_path, tiny_dir, scenes_dir):
    """LLaVA-1.5 through two gloo workers, LoRA (DDP without unused-parameter search) with split projectors,
    a prefusion layer and sibling backgrounds: every bgobj module gets a gradient on every step (the stock
    projector, unused by the layout, is frozen; the vision tower is frozen as in LLaVA-1.5's recipes)."""
    values = train_yaml(tiny_dir("llava"), scenes_dir, tmp_path / "out", "llava_bgobj", ddp_backend="gloo",
                        lora_target="all", bgobj_mask_provider="dataset", bgobj_split_projector=True,
                        bgobj_prefusion_layers=1, bgobj_sibling_prob=0.5)  # fmt: skip
    values.update(finetuning_type="lora", save_strategy="steps", save_steps=3, freeze_vision_tower=True)
    proc = run_cli(["llamafactory-cli", "train", str(write_yaml(tmp_path / "ddp.yaml", values))], cwd=tmp_path,
                   FORCE_TORCHRUN="1", NPROC_PER_NODE="2")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    for rank in (0, 1):
        assert f"[INFO|lf_ext|rank{rank}] bgobj: separated background/object layout on" in proc.stdout
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    for part in ("bgobj.separators", "bgobj.merger_object.linear_1", "bgobj.prefusion.gates"):
        assert any(part in key for key in saved), part
