"""Evaluation: reading LLaMA-Factory datasets, answering them through ``ChatModel``, metrics, and cache forcing."""
