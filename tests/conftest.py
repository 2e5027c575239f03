"""Shared fixtures: tiny checkpoints and scenes built offline once per session, CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DISABLE_VERSION_CHECK", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Build each tiny architecture once: ``tiny_dir(arch) -> Path``."""
    from lf_ext.tiny.checkpoint import build_checkpoint

    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_checkpoint(arch, root / arch, seed=0)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory) -> Path:
    from lf_ext.scenes import generate_scenes

    out = tmp_path_factory.mktemp("scenes")
    generate_scenes(out, num_backgrounds=4, images_per_background=4, image_size=(224, 224), seed=0, progress=False)
    return out


def cli_env(disable: bool = False, **extra: str) -> dict[str, str]:
    """A child environment with this venv's bin first on PATH (torchrun, llamafactory-cli)."""
    env = {k: v for k, v in os.environ.items() if k not in ("LF_EXT_DISABLE", "FORCE_TORCHRUN", "NPROC_PER_NODE")}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if disable:
        env["LF_EXT_DISABLE"] = "1"
    env.update(extra)
    return env


def run_cli(args: list[str], cwd: Path, disable: bool = False, timeout: int = 600, **extra_env: str):
    """Run a command and return the CompletedProcess (stdout and stderr merged into .stdout)."""
    return subprocess.run(args, cwd=cwd, env=cli_env(disable, **extra_env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)  # fmt: skip


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll ``url`` until it answers 200; fail if the server exits first or the time runs out."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"{proc.args} did not answer at {url} (exit code {proc.poll()}, timeout {timeout} s)")


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump({k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()}))
    return path


def train_yaml(model: Path, scenes: Path, output_dir: Path, template: str, **extra) -> dict:
    """A minimal full-SFT recipe on the scenes that trains a tiny model in seconds on CPU."""
    values = dict(
        model_name_or_path=model, template=template, stage="sft", do_train=True, finetuning_type="full",
        freeze_vision_tower=False, freeze_multi_modal_projector=False, dataset="scenes_train", dataset_dir=scenes,
        cutoff_len=1024, image_max_pixels=12544, max_samples=16, preprocessing_num_workers=1,
        dataloader_num_workers=0, overwrite_cache=True, output_dir=output_dir, overwrite_output_dir=True,
        save_strategy="no", logging_steps=1, report_to="none", per_device_train_batch_size=2, max_steps=3,
        learning_rate=1.0e-3, seed=0,
    )  # fmt: skip
    return values | extra
