"""Tiny random checkpoints built offline, loadable by stock ``from_pretrained`` and LLaMA-Factory.

Light on purpose (the CLI reads these names); the builders live in ``lf_ext.tiny.checkpoint``.
"""

ARCH_NAMES = ("qwen2_vl", "qwen2_5_vl", "llava")
SHAPES = ("tiny", "small", "2b", "7b")
