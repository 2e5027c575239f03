"""Evaluation: reading LLaMA-Factory datasets, converting public benchmarks into them, answering them
through ``ChatModel``, task metrics, and cache forcing."""
