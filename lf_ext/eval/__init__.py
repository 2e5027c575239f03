"""Evaluation harness: benchmark data converters (:mod:`lf_ext.eval.convert`) and task metrics (:mod:`lf_ext.eval.metrics`)."""
