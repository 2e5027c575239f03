"""Inference with the background cache: reuse of verified backgrounds in ``generate`` and a stream API."""
