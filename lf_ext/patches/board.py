"""LlamaBoard's defaults for the machine it runs on, under ``lf-ext webui`` only.

LlamaBoard hard-codes its Train tab's *Compute type* to ``bf16`` (``create_train_tab`` in
``llamafactory.webui.components.train``), which a CPU-only machine cannot train with out of the box.
Under ``lf-ext webui`` (which sets :data:`BOARD_ENV`), the tab's returned dropdown gets the type this
machine supports instead; every other value, and ``llamafactory-cli webui``, stay stock.
"""

from __future__ import annotations

import os
from types import ModuleType

from lf_ext.patching import wrap

BOARD_ENV = "LF_EXT_WEBUI"  # set by `lf-ext webui`; children inherit it harmlessly


def board_defaults_active() -> bool:
    return os.environ.get(BOARD_ENV, "0") == "1"


def default_compute_type() -> str:
    """``bf16`` where the accelerator has it (LlamaBoard's default), ``fp16`` on older CUDA GPUs, ``fp32`` on CPU."""
    import torch
    from llamafactory.extras.misc import is_accelerator_available

    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if is_accelerator_available() else "fp32"


def _with_machine_defaults(original):
    def create_train_tab(engine):
        elems = original(engine)
        if board_defaults_active():
            elems["compute_type"].value = default_compute_type()
        return elems

    return create_train_tab


def patch_train_tab(train_module: ModuleType) -> None:
    """Wrap ``create_train_tab`` before ``llamafactory.webui.components`` imports it by name."""
    wrap(train_module, "create_train_tab", _with_machine_defaults)
