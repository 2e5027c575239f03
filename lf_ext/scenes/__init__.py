"""Synthetic VQA scenes whose images share pixel-identical background plates.

``generate_scenes(out_dir, ...)`` writes images, object masks, plates and
LLaMA-Factory sharegpt json files; see :mod:`lf_ext.scenes.dataset`.
"""

from .dataset import generate_scenes

__all__ = ["generate_scenes"]
