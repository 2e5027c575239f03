"""DeepSpeed (the optional ``[deepspeed]`` extra): the recipes' ZeRO configs load, the bgobj modules are built
and initialised under ZeRO-3's ``zero.Init``, gloo all-gathers complete, and (integration) the tiny bgobj
recipe trains with ZeRO-2 and ZeRO-3 on two CPU processes."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT, cli_env, run_cli

PROBE = Path(__file__).with_name("deepspeed_probe.py")
CONFIGS = sorted((REPO_ROOT / "yaml" / "deepspeed").glob("*.json"))
needs_deepspeed = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                     reason="deepspeed is not installed (pip install -e .[deepspeed])")  # fmt: skip


def _probe(*args: str, timeout: int = 600) -> list[dict]:
    proc = subprocess.run([sys.executable, str(PROBE), *args], env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_every_recipe_names_a_shipped_config():
    named = set()
    for recipe in (REPO_ROOT / "yaml").rglob("*.yaml"):
        path = yaml.safe_load(recipe.read_text()).get("deepspeed")
        if path:
            assert (REPO_ROOT / path).is_file(), f"{recipe}: {path} is missing"
            named.add((REPO_ROOT / path).resolve())
    assert named and named <= {c.resolve() for c in CONFIGS}
    stages = {json.loads(c.read_text())["zero_optimization"]["stage"] for c in CONFIGS}
    assert stages == {2, 3}


@needs_deepspeed
def test_configs_resolve_through_transformers():
    results = {Path(r["path"]).name: r for r in _probe("configs", *map(str, CONFIGS))}
    assert results["ds_z2_config.json"]["stage"] == 2 and not results["ds_z2_config.json"]["zero3"]
    assert results["ds_z3_config.json"]["stage"] == 3 and results["ds_z3_config.json"]["zero3"]
    assert all(r["micro_batch"] == 4 and r["accumulation"] == 4 for r in results.values())  # "auto" filled in


@needs_deepspeed
def test_bgobj_modules_under_zero3_init(tiny_dir):
    """Split projectors are built fresh (a deep copy of a partitioned merger cannot be gathered) and get
    the merger's weights; separators and prefusion start from the model's own rows and layers."""
    (result,) = _probe("zero3-init", str(tiny_dir("qwen2_vl")))
    assert result["partitioned"]
    assert result["ds_shapes"] == result["gathered_shapes"]
    assert result["ds_shapes"]["merger_background.mlp.0.weight"] == [128, 128]
    assert result["split_projectors_equal_merger"] and result["separators_from_delimiters"] and result["prefusion_from_llm"]


@needs_deepspeed
def test_gloo_all_gather_waits_for_its_work(monkeypatch):
    import deepspeed.comm

    import lf_ext.patches.deepspeed_gloo as patch
    from lf_ext.patching import is_wrapped

    assert is_wrapped(deepspeed.comm.all_gather_into_tensor)  # the import hook wrapped it

    class Work:
        waited = 0

        def wait(self):
            Work.waited += 1

    wrapped = patch._completing_on_gloo(lambda *args, **kwargs: Work())
    for backend_is_gloo, expected in ((True, 1), (False, 1)):
        monkeypatch.setattr(patch, "_is_gloo", lambda group, gloo=backend_is_gloo: gloo)
        wrapped(None, None, None, True)
        assert Work.waited == expected  # waited on gloo only
    wrapped(None, None, None, False)  # synchronous calls are left alone
    assert Work.waited == 1


def _losses(output_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


@needs_deepspeed
@pytest.mark.integration
def test_tiny_bgobj_recipe_trains_with_zero2_and_zero3(tmp_path, tiny_dir):
    """Stage 1 of the tiny recipes (prefusion layer + split projectors) on 2 CPU processes (gloo)."""
    from safetensors.torch import load_file

    losses = {}
    for stage in (2, 3):
        out = tmp_path / f"zero{stage}"
        # LLAMAFACTORY_VERBOSITY=INFO: DeepSpeed's own log line says which stage ran (lf_ext.eval sets WARN in-process)
        proc = run_cli(["llamafactory-cli", "train", str(REPO_ROOT / "yaml/tiny/stage1_projector.yaml"),
                        f"model_name_or_path={tiny_dir('qwen2_vl')}", f"dataset_dir={REPO_ROOT / 'data'}",
                        f"output_dir={out}", "max_steps=2", "per_device_train_batch_size=2", "logging_steps=1",
                        "ddp_backend=gloo", f"deepspeed={REPO_ROOT / f'yaml/deepspeed/ds_z{stage}_config.json'}"],
                       cwd=tmp_path, timeout=900, FORCE_TORCHRUN="1", NPROC_PER_NODE="2",
                       LLAMAFACTORY_VERBOSITY="INFO")  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert f"ZeRO stage {stage}" in proc.stdout
        losses[stage] = _losses(out)
        assert len(losses[stage]) == 2 and all(math.isfinite(v) and v > 1.0 for v in losses[stage]), losses
        weights = load_file(out / "model.safetensors")
        bgobj = [k for k in weights if ".bgobj." in k]
        assert any("merger_background" in k for k in bgobj) and any("prefusion" in k for k in bgobj)
    assert losses[2] == pytest.approx(losses[3], abs=1e-4)  # same data, same model: the same losses
