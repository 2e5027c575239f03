"""``lf-ext webui``: this environment's bin first on PATH, CPU-safe board defaults only under it, and the
stock ``llamafactory-cli webui`` unchanged."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def _compute_type_default(monkeypatch, tmp_path, board: bool) -> str:
    from llamafactory.webui.interface import create_ui

    monkeypatch.chdir(tmp_path)  # LlamaBoard writes llamaboard_cache/ in the working directory
    if board:
        monkeypatch.setenv("LF_EXT_WEBUI", "1")
    else:
        monkeypatch.delenv("LF_EXT_WEBUI", raising=False)
    demo = create_ui()
    (dropdown,) = [b for b in demo.blocks.values() if type(b).__name__ == "Dropdown"
                   and [c[0] if isinstance(c, (tuple, list)) else c for c in b.choices] == ["bf16", "fp16", "fp32", "pure_bf16"]]  # fmt: skip
    return dropdown.value


def test_board_defaults_to_fp32_on_cpu_under_lf_ext_webui(monkeypatch, tmp_path):
    import torch

    from lf_ext.patches.board import default_compute_type

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine keeps bf16/fp16")
    assert default_compute_type() == "fp32"
    assert _compute_type_default(monkeypatch, tmp_path, board=True) == "fp32"


def test_stock_board_keeps_its_default(monkeypatch, tmp_path):
    assert _compute_type_default(monkeypatch, tmp_path, board=False) == "bf16"


def test_board_environment_puts_this_interpreters_bin_first():
    from lf_ext.webui import board_environment

    bin_dir = str(Path(sys.executable).parent)
    env = board_environment({"PATH": "/usr/bin:/bin"})
    assert env["PATH"].split(os.pathsep) == [bin_dir, "/usr/bin", "/bin"]
    assert env["LF_EXT_WEBUI"] == "1" and env["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert board_environment(dict(env))["PATH"] == env["PATH"]  # idempotent
    assert (Path(bin_dir) / "llamafactory-cli").exists()  # what the board's Train tab starts by name


def test_lf_ext_webui_command_line():
    from lf_ext.cli import build_parser

    args = build_parser().parse_args(["webui"])
    assert (args.host, args.port, args.share, args.open) == ("127.0.0.1", None, False, False)
    assert build_parser().parse_args(["webui", "--port", "7999", "--host", "0.0.0.0"]).port == 7999
