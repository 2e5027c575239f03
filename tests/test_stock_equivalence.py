"""Invariant 1: installed but not enabled, lf_ext changes nothing (bitwise losses and weights)."""

import json

import pytest
from safetensors.torch import load_file

from conftest import run_cli, train_yaml, write_yaml

pytestmark = pytest.mark.integration  # runs llamafactory-cli / trains in child processes


def _train(tmp_path, name, model, scenes, template, disable):
    out = tmp_path / name
    recipe = write_yaml(tmp_path / f"{name}.yaml", train_yaml(model, scenes, out, template))
    proc = run_cli(["llamafactory-cli", "train", str(recipe)], cwd=tmp_path, disable=disable)
    assert proc.returncode == 0, proc.stdout[-3000:]
    losses = [row["loss"] for row in map(json.loads, (out / "trainer_log.jsonl").read_text().splitlines()) if "loss" in row]
    return losses, load_file(out / "model.safetensors")


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl", "llava"])
def test_enabled_equals_disabled_bitwise(tmp_path, tiny_dir, scenes_dir, arch):
    template = "llava" if arch == "llava" else "qwen2_vl"
    losses_on, weights_on = _train(tmp_path, "on", tiny_dir(arch), scenes_dir, template, disable=False)
    losses_off, weights_off = _train(tmp_path, "off", tiny_dir(arch), scenes_dir, template, disable=True)
    assert len(losses_on) == 3 and losses_on == losses_off
    assert weights_on.keys() == weights_off.keys()
    initial = load_file(tiny_dir(arch) / "model.safetensors")
    changed = 0
    for key, tensor in weights_on.items():
        assert tensor.dtype == weights_off[key].dtype and tensor.equal(weights_off[key]), key
        changed += key in initial and not tensor.equal(initial[key])
    assert changed > 0  # training really updated weights, so the comparison means something
