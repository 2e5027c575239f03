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
