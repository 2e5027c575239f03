"""Narrow patches of LLaMA-Factory modules, applied on import by ``lf_ext._import_hook``."""
