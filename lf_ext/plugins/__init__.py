"""LLaMA-Factory multimodal plugins of the bgobj templates."""
