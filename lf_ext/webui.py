"""``lf-ext webui``: LlamaBoard, ready to train and chat on this machine without workarounds.

Stock ``llamafactory-cli webui`` needs two workarounds on a CPU machine with a virtual environment:
its Train tab starts ``llamafactory-cli train`` by name (found only if the environment's ``bin`` is on
``PATH``) and defaults *Compute type* to ``bf16``. ``lf-ext webui`` puts this interpreter's ``bin``
first on ``PATH``, sets :data:`lf_ext.patches.board.BOARD_ENV` so that the board's defaults fit the
machine (fp32 on CPU), turns gradio's analytics off and serves on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import MutableMapping

from lf_ext.patches.board import BOARD_ENV, default_compute_type


def board_environment(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Set what the board and the trainings it starts need in ``env`` (``os.environ`` when launching)."""
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    env[BOARD_ENV] = "1"
    env.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    return env


def run_webui(host: str = "127.0.0.1", port: int | None = None, share: bool = False, open_browser: bool = False) -> None:
    """Launch LlamaBoard in this process (blocks until it is stopped)."""
    board_environment(os.environ)
    from llamafactory.extras.misc import fix_proxy
    from llamafactory.webui.interface import create_ui

    if not (Path("data") / "dataset_info.json").is_file():
        print(f"note: no data/dataset_info.json in {Path.cwd()}; LlamaBoard's Data dir defaults to 'data' "
              "(run from the repository root for the shipped scenes, or type another folder)", file=sys.stderr)  # fmt: skip
    print(f"LlamaBoard: compute type {default_compute_type()} by default; trainings run "
          f"{Path(sys.executable).parent / 'llamafactory-cli'}", file=sys.stderr)  # fmt: skip
    fix_proxy(ipv6_enabled=False)  # as llamafactory-cli webui does: no proxy for the local server
    create_ui().queue().launch(server_name=host, server_port=port, share=share, inbrowser=open_browser)
