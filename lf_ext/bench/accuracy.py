"""``lf-ext bench accuracy``: does the separated layout, and reuse of a cached background, cost accuracy?

Mirrors how a user adapts a pretrained VLM (:mod:`lf_ext.adaptation`): a tiny Qwen2-VL trained from
scratch with the stock template, then the same extra budget as stock or as the bgobj stages. Then
exact match on the test split for

- **stock**: the stock model;
- **bgobj (miss)**: the bgobj model, every image encoded in full (cache off);
- **bgobj (forced hits)**: the bgobj model with a cache holding every *other* test image's
  background (leave-one-out) and, where the dataset has sibling groups (``meta.sibling_group``),
  a sibling's background without the units that are object in either image (a hit serves the
  entry's whole background set, so a usable entry must not contain the new image's object). Each
  question is answered from a cached background when one passes the pixel verification (a
  sibling's, or the nearest that verifies), else in full. Hits, rejections and misses are counted;
  a hit is *false* when the served entry's image has a different ``meta.background_id`` (when the
  dataset records one, as the scenes do).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lf_ext.bench.report import machine_info, write_json
from lf_ext.eval.datasets import dataset_entry
from lf_ext.families import family_for_type
from lf_ext.log import get_logger

logger = get_logger()
MASK_FIELDS = ("masks", "boxes", "polygons", "video_masks")


def _split(dataset_dir: Path, name: str) -> None:
    """Raise unless ``name`` is a sharegpt dataset of ``dataset_dir``."""
    if dataset_entry(dataset_dir, name).get("formatting") != "sharegpt":
        raise ValueError(f"dataset '{name}' must be in sharegpt format (messages + images or videos)")


def check_records(records: list[dict], name: str) -> None:
    """Every record: one user question with at least one image and a short answer."""
    if not records:
        raise ValueError(f"dataset '{name}' is empty")
    for number, record in enumerate(records):
        messages = record.get("messages") or []
        if len(messages) < 2 or not (record.get("images") or record.get("videos")):
            raise ValueError(f"dataset '{name}' record {number}: need a user question, an answer and images or videos")
        if len(str(messages[1].get("content", "")).split()) > 8:
            raise ValueError(f"dataset '{name}' record {number}: answers must be short (exact match), got "
                             f"{messages[1]['content'][:80]!r}")  # fmt: skip


def default_mask_keys(records: list[dict], bgobj_keys: dict[str, Any]) -> dict[str, Any]:
    """The user's ``bgobj_*`` keys, or the dataset's own masks when it ships them."""
    if bgobj_keys.get("bgobj_mask_provider"):
        return dict(bgobj_keys)
    if any(field in records[0] for field in MASK_FIELDS):
        return dict(bgobj_keys, bgobj_mask_provider="dataset")
    raise ValueError("this dataset ships no masks/boxes/polygons: choose a provider, e.g. --bgobj_mask_provider "
                     "entropy (or reference with --bgobj_reference_image, yolo with --bgobj_yolo_weights)")  # fmt: skip


def run_bench_accuracy(dataset_dir: str | Path, train: str, test: str, json_out: str | Path,
                       workdir: str | Path = "work/bench/accuracy", base_steps: int = 1500, extra_steps: int = 500,
                       image_max_pixels: int = 50176, image_min_pixels: int | None = None,
                       bgobj_keys: dict[str, Any] | None = None, limit: int | None = None, arch: str = "qwen2_vl") -> dict:  # fmt: skip
    """Train base/stock/bgobj on ``train``, answer ``test`` three ways, print the table and write JSON."""
    from lf_ext.adaptation import adapt
    from lf_ext.eval.forcing import forced_hits
    from lf_ext.eval.runner import agreement, exact_match, load_records, majority_baseline, question_type
    from lf_ext.tiny.checkpoint import build_checkpoint

    started = time.time()
    family = family_for_type(arch)
    dataset_dir = Path(dataset_dir).resolve()
    _split(dataset_dir, train)
    _split(dataset_dir, test)
    train_records = load_records(dataset_dir, train)
    test_records = load_records(dataset_dir, test, limit=limit)
    check_records(train_records, train)
    check_records(test_records, test)
    keys = default_mask_keys(test_records, bgobj_keys or {})
    pixels = {"image_max_pixels": image_max_pixels} | ({"image_min_pixels": image_min_pixels} if image_min_pixels else {})
    lengths = {}
    if any(r.get("videos") for r in train_records + test_records):  # video QA: frames get the same pixel budget
        pixels["video_max_pixels"] = image_max_pixels
        # the video processor's own min_pixels (128 x 28 x 28) upscales small frames: a 16-frame clip of
        # 224-px frames is ~1,150 tokens, over the tiny recipes' cutoff_len (LLaMA-Factory would cut the clip)
        lengths["cutoff_len"] = 4096
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(arch, work / f"tiny_{arch}", seed=0)
    adapted = adapt(work, checkpoint, {"dataset": train, "dataset_dir": dataset_dir, **pixels, **lengths}, keys, base_steps, extra_steps,
                    stock_template=family.stock_template, bgobj_template=family.template)  # fmt: skip
    chat_args = dict(keys, dataset_dir=str(dataset_dir), dataset=test, **{k: v for k, v in pixels.items() if k != "image_max_pixels"})
    if keys["bgobj_mask_provider"] == "dataset":
        chat_args.setdefault("bgobj_mask_fallback", "error")
    other = {k: v for k, v in pixels.items() if k != "image_max_pixels"}
    results = {
        "stock": exact_match(adapted.stock, family.stock_template, dataset_dir, test_records, image_max_pixels, extra_args=other),
        "bgobj_miss": exact_match(adapted.bgobj, family.template, dataset_dir, test_records, image_max_pixels,
                                  extra_args=dict(chat_args, bgobj_cache=False)),  # fmt: skip
        "bgobj_forced_hits": forced_hits(adapted.bgobj, family.template, dataset_dir, test_records, chat_args, image_max_pixels),
        "bgobj_forced_hits_exact": forced_hits(adapted.bgobj, family.template, dataset_dir, test_records,
                                               dict(chat_args, bgobj_cache_policy="exact"), image_max_pixels),
    }
    forced = results["bgobj_forced_hits"]
    policies = {policy: {"accuracy": r["accuracy"], "hits": r["outcomes"]["hit"], "rejections": r["outcomes"]["rejection"],
                         "misses": r["outcomes"]["miss"], "false_hits": r["false_hits"],
                         "agreement_with_cache_off": agreement(r["answers"], results["bgobj_miss"]["answers"])}
                for policy, r in (("reuse", forced), ("exact", results["bgobj_forced_hits_exact"]))}  # fmt: skip
    summary = {
        "stock": results["stock"]["accuracy"], "bgobj_miss": results["bgobj_miss"]["accuracy"],
        "bgobj_forced_hits": forced["accuracy"], "majority_baseline": majority_baseline(train_records, test_records),
        "hits": forced["outcomes"]["hit"], "rejections": forced["outcomes"]["rejection"],
        "misses": forced["outcomes"]["miss"], "false_hits": forced["false_hits"], "false_hit_rate": forced["false_hit_rate"],
        "hit_subset_accuracy": forced["hit_accuracy"], "n": len(test_records), "policies": policies,
        **intervals_and_tests(results, [question_type(r) for r in test_records]), "seconds": time.time() - started,
    }  # fmt: skip
    _print(summary, results)
    payload = {"benchmark": "accuracy", "machine": machine_info(), "arch": arch, "dataset_dir": str(dataset_dir), "train": train,
               "test": test, "base_steps": base_steps, "extra_steps": extra_steps, "bgobj_keys": keys, **pixels,
               "losses": adapted.losses, "summary": summary,
               "results": {k: {kk: vv for kk, vv in v.items() if kk != "examples"} for k, v in results.items()}}  # fmt: skip
    write_json(json_out, payload)
    return payload


COMPARED = ("stock", "bgobj_miss", "bgobj_forced_hits")


def intervals_and_tests(results: dict, types: list[str]) -> dict:
    """95 % Wilson intervals of each model's accuracy (overall and per question type) and, against stock,
    the paired bootstrap interval of the difference and the exact McNemar test; ``types`` in record order."""
    from lf_ext.eval.stats import accuracy_row, paired_difference

    stock = results["stock"]["correct"]
    out: dict = {"intervals": {}, "per_type": {}, "against_stock": {}}
    for name in COMPARED:
        correct = results[name]["correct"]
        out["intervals"][name] = accuracy_row(correct)
        out["per_type"][name] = {t: accuracy_row([c for c, q in zip(correct, types) if q == t]) for t in sorted(set(types))}
        if name != "stock":
            out["against_stock"][name] = paired_difference(correct, stock)
    return out


def _false_hits(summary: dict) -> str:
    if summary["false_hits"] is None:
        return "not measurable (the dataset records no meta.background_id)"
    return f"{summary['false_hits']} ({summary['false_hit_rate']:.2%} of hits)"


def _print(summary: dict, results: dict) -> None:
    print(f"\nexact match on {summary['n']} test questions (majority-answer baseline {summary['majority_baseline']:.1%})")
    print(f"{'model':<22}{'accuracy':>10}{'95% CI':>18}{'- stock':>9}{'95% CI (paired bootstrap)':>28}{'McNemar p':>11}")
    for name in COMPARED:
        row, cmp = summary["intervals"][name], summary["against_stock"].get(name)
        line = f"{name:<22}{row['accuracy']:>10.1%}{_ci(row['ci_low'], row['ci_high']):>18}"
        if cmp is not None:
            line += f"{cmp['difference']:>+9.1%}{_ci(*cmp['difference_ci'], sign=True):>28}{cmp['p_value']:>11.3f}"
        print(line)
    print(f"forced hits: {summary['hits']} hits, {summary['rejections']} rejections, {summary['misses']} misses; "
          f"false hits {_false_hits(summary)}; "
          f"accuracy on the hit questions {summary['hit_subset_accuracy']:.1%}; {summary['seconds']:.0f} s")  # fmt: skip
    print(f"\n{'cache policy':<14}{'accuracy':>10}{'hits':>7}{'rejections':>12}{'misses':>8}{'agreement with cache off':>27}")
    for policy, row in summary["policies"].items():
        print(f"{policy:<14}{row['accuracy']:>10.1%}{row['hits']:>7}{row['rejections']:>12}{row['misses']:>8}"
              f"{row['agreement_with_cache_off']:>27.1%}")  # fmt: skip
    types = sorted(summary["per_type"]["stock"])
    if types != ["all"]:
        print(f"\n{'question type':<16}{'n':>5}" + "".join(f"{k + ' [95% CI]':>26}" for k in ("stock", "miss", "forced")))
        for qtype in types:
            rows = [summary["per_type"][k][qtype] for k in COMPARED]
            print(f"{qtype:<16}{rows[0]['n']:>5}"
                  + "".join(f"{format(r['accuracy'], '.1%') + ' ' + _ci(r['ci_low'], r['ci_high']):>26}" for r in rows))  # fmt: skip


def _ci(low: float, high: float, sign: bool = False) -> str:
    spec = "+.1%" if sign else ".1%"
    return f"[{format(low, spec)}, {format(high, spec)}]"


__all__ = ["check_records", "default_mask_keys", "run_bench_accuracy"]
