"""Accuracy of setting variants at the same budget of steps: one stock base, then the same extra steps per variant.

The ``bench accuracy`` adaptation's base (the tiny model trained with the stock template on the data),
then for every variant (a dict of ``bgobj_*`` keys; ``{}`` is stock) the same extra steps from that base
with the keys on, and exact match on the test split with them on. Rows carry the 95 % Wilson interval
and, paired on the same questions, the difference to stock
(:func:`lf_ext.eval.stats.paired_difference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping


def variant_outcomes(dataset_dir: Path, train: str, test: str, work: Path, variants: Mapping[str, dict[str, Any]],
                     base_steps: int, extra_steps: int, data: dict[str, Any]) -> tuple[dict[str, list[bool]], float]:  # fmt: skip
    """Per variant name, right or not per test question (record order); and the majority-answer baseline.
    ``data``: LLaMA-Factory data arguments beside ``dataset``/``dataset_dir`` (pixels, cutoff_len)."""
    from lf_ext.adaptation import train_stage
    from lf_ext.eval.runner import exact_match, load_records, majority_baseline
    from lf_ext.tiny.checkpoint import build_checkpoint

    train_records, test_records = load_records(dataset_dir, train), load_records(dataset_dir, test)
    common = dict(dataset=train, dataset_dir=dataset_dir, template="qwen2_vl", **data)
    pixels = int(data.get("image_max_pixels", 50176))
    extra = {k: v for k, v in data.items() if k.startswith("video_")}
    base, _ = train_stage(work, "base", "stock_sft.yaml", base_steps, model_name_or_path=build_checkpoint("qwen2_vl", work / "tiny", seed=0),
                          **common)  # fmt: skip
    outcomes = {}
    for name, keys in variants.items():
        model, _ = train_stage(work, name, "stock_sft.yaml", extra_steps, model_name_or_path=base, **common, **keys)
        result = exact_match(model, "qwen2_vl", dataset_dir, test_records, pixels, extra_args=dict(extra, **keys))
        outcomes[name] = result["correct"]
        print(f"  accuracy {name}: {result['accuracy']:.1%}", flush=True)
    return outcomes, majority_baseline(train_records, test_records)


def signed(comparison: dict | None) -> str:
    """``+1.0% [-2.0%, +4.0%] p=0.50`` of a ``paired_difference`` result ('' for None)."""
    if comparison is None:
        return ""
    low, high = comparison["difference_ci"]
    return f"{comparison['difference']:+.1%} [{low:+.1%}, {high:+.1%}] p={comparison['p_value']:.2f}"
