"""Invariant 6: chat, api, webchat and export accept bgobj_* keys (and reject them when switched off)."""

import socket
import subprocess

import pytest

from conftest import cli_env, run_cli, wait_for_http, write_yaml

pytestmark = pytest.mark.integration  # runs llamafactory-cli / trains in child processes

SETTINGS_LINE = "lf_ext settings: bgobj_mask_provider='none'"


def _infer_yaml(tmp_path, tiny_dir, **extra):
    values = dict(model_name_or_path=tiny_dir("qwen2_vl"), template="qwen2_vl", infer_dtype="float32",
                  max_new_tokens=4, bgobj_mask_provider="none", **extra)  # fmt: skip
    return write_yaml(tmp_path / "infer.yaml", values)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve_then_stop(args, cwd, url, **env) -> str:
    """Start a server on loopback, wait until ``url`` answers 200 (max 180 s), stop it, return its log."""
    proc = subprocess.Popen(args, cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_http(url, proc)
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=60)
    return output


def test_chat(tmp_path, tiny_dir):
    recipe = _infer_yaml(tmp_path, tiny_dir)
    proc = subprocess.run(["llamafactory-cli", "chat", str(recipe)], cwd=tmp_path, env=cli_env(), input="hello\nexit\n",
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert SETTINGS_LINE in proc.stderr
    assert "Assistant:" in proc.stdout


def test_api(tmp_path, tiny_dir):
    recipe = _infer_yaml(tmp_path, tiny_dir)
    port = _free_port()
    log = _serve_then_stop(["llamafactory-cli", "api", str(recipe)], tmp_path, f"http://127.0.0.1:{port}/v1/models",
                           API_HOST="127.0.0.1", API_PORT=str(port))  # fmt: skip
    assert SETTINGS_LINE in log


def test_webchat(tmp_path, tiny_dir):
    recipe = _infer_yaml(tmp_path, tiny_dir)
    port = _free_port()
    log = _serve_then_stop(["llamafactory-cli", "webchat", str(recipe)], tmp_path, f"http://127.0.0.1:{port}/",
                           GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
                           GRADIO_ANALYTICS_ENABLED="False")  # fmt: skip
    assert SETTINGS_LINE in log


@pytest.mark.parametrize("disable", [False, True])
def test_export(tmp_path, tiny_dir, disable):
    recipe = _infer_yaml(tmp_path, tiny_dir, export_dir=tmp_path / "exported")
    proc = run_cli(["llamafactory-cli", "export", str(recipe)], cwd=tmp_path, disable=disable)
    if disable:
        assert proc.returncode != 0 and "not used by the HfArgumentParser" in proc.stdout
    else:
        assert proc.returncode == 0, proc.stdout[-3000:]
        assert SETTINGS_LINE in proc.stdout
        assert (tmp_path / "exported" / "model.safetensors").exists()
