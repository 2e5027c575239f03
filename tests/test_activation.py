"""Activation: the .pth hook in every interpreter, the env switch, register(), and startup cost."""

import subprocess
import sys

import pytest

from conftest import REPO_ROOT, cli_env, run_cli

PROBE = "import llamafactory.hparams.parser as p; print(getattr(p._parse_args, '_lf_ext_wrapped', False))"


def _python(code: str, disable: bool = False) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=cli_env(disable), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_fresh_interpreter_is_patched_on_import():
    assert _python(PROBE) == "True"


def test_env_switch_turns_it_off():
    assert _python(PROBE, disable=True) == "False"


def test_startup_imports_nothing_heavy():
    code = "import sys; print(sorted(m for m in ('torch','transformers','llamafactory','lf_ext.config') if m in sys.modules), 'lf_ext._import_hook' in sys.modules)"
    assert _python(code) == "[] True"


def test_register_is_idempotent():
    import llamafactory.hparams.parser as parser_module

    import lf_ext

    assert lf_ext.register() is True
    first = parser_module._parse_args
    assert lf_ext.register() is True
    assert parser_module._parse_args is first
    assert not getattr(first.__wrapped__, "_lf_ext_wrapped", False)  # wrapped exactly once


def test_register_respects_env_switch(monkeypatch):
    import lf_ext

    monkeypatch.setenv("LF_EXT_DISABLE", "1")
    assert lf_ext.register() is False


def test_llamafactory_parser_accepts_and_records_bgobj_keys():
    from llamafactory.hparams import get_infer_args

    from lf_ext.config import BgObjConfigError, settings_of

    parsed = get_infer_args({"model_name_or_path": "unused", "template": "qwen2_vl", "bgobj_mask_provider": "entropy",
                             "dataset": "mine"})  # fmt: skip
    for args in parsed:  # every parsed argument object carries the command's settings
        assert settings_of(args).keys.bgobj_mask_provider == "entropy" and settings_of(args).lf("dataset") == "mine"
    with pytest.raises(BgObjConfigError, match="Valid keys: bgobj_mask_provider"):
        get_infer_args({"model_name_or_path": "unused", "template": "qwen2_vl", "bgobj_mask_provdier": "none"})


@pytest.mark.integration
def test_cli_train_with_misspelt_key_fails_fast(tmp_path):
    (tmp_path / "bad.yaml").write_text("model_name_or_path: nowhere\nbgobj_mask_provdier: none\n")
    out = run_cli(["llamafactory-cli", "train", "bad.yaml"], cwd=tmp_path, timeout=300)
    assert out.returncode != 0
    assert "Unknown lf_ext key 'bgobj_mask_provdier'" in out.stdout
    assert "Valid keys: bgobj_mask_provider" in out.stdout


def test_lf_ext_tiny_rejects_unknown_arch():
    out = run_cli([sys.executable, "-m", "lf_ext.cli", "tiny", "--arch", "qwen3", "--out", "x"], cwd=REPO_ROOT)
    assert out.returncode == 2
    assert "qwen2_vl" in out.stdout and "qwen2_5_vl" in out.stdout and "llava" in out.stdout


def test_lf_ext_config_lists_keys():
    out = run_cli([sys.executable, "-m", "lf_ext.cli", "config"], cwd=REPO_ROOT)
    assert out.returncode == 0
    assert "bgobj_mask_provider: 'none'" in out.stdout


@pytest.mark.integration
def test_wheel_ships_the_recipes_and_finds_them(tmp_path):
    """A non-editable install: the wheel carries yaml/ as lf_ext/recipes and lf_ext.pth, and the code
    finds the recipes inside the installed package, wherever it runs from."""
    import zipfile

    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "wheel"),
                            str(REPO_ROOT)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("lf_ext-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lf_ext.pth" in names and "lf_ext/recipes/tiny/stage1_projector.yaml" in names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    probe = "from lf_ext.recipes import recipe; print(recipe('tiny/stage2_lora.yaml'))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         env=cli_env(PYTHONPATH=str(tmp_path / "site")))  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(tmp_path / "site" / "lf_ext" / "recipes" / "tiny" / "stage2_lora.yaml")
