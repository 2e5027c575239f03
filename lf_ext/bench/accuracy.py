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

import json
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lf_ext.bench.report import machine_info, write_json
from lf_ext.log import get_logger

logger = get_logger()
MASK_FIELDS = ("masks", "boxes", "polygons")


def _split_file(dataset_dir: Path, name: str) -> str:
    info_path = dataset_dir / "dataset_info.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{info_path} not found: --dataset-dir must be a LLaMA-Factory dataset folder")
    info = json.loads(info_path.read_text())
    if name not in info:
        raise ValueError(f"dataset '{name}' is not in {info_path} (has: {', '.join(info)})")
    if info[name].get("formatting") != "sharegpt":
        raise ValueError(f"dataset '{name}' must be in sharegpt format (messages + images)")
    return info[name]["file_name"]


def check_records(records: list[dict], name: str) -> None:
    """Every record: one user question with at least one image and a short answer."""
    if not records:
        raise ValueError(f"dataset '{name}' is empty")
    for number, record in enumerate(records):
        messages = record.get("messages") or []
        if len(messages) < 2 or not record.get("images"):
            raise ValueError(f"dataset '{name}' record {number}: need a user question, an answer and images")
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


def _sibling_of(records: list[dict], index: int) -> int | None:
    """Another test record whose image shares ``records[index]``'s sibling group (first one), or None."""
    group = records[index].get("meta", {}).get("sibling_group")
    image = records[index]["images"][0]
    for other, record in enumerate(records):
        if group and record.get("meta", {}).get("sibling_group") == group and record["images"][0] != image:
            return other
    return None


class _Prompts:
    """The HF engine's own inputs for a record (prompt ids, pixels, grid, unit labels)."""

    def __init__(self, engine, dataset_dir: Path, records: list[dict]):
        self.engine, self.dataset_dir, self.records = engine, dataset_dir, records

    def __call__(self, index: int) -> dict:
        from llamafactory.chat.hf_engine import HuggingfaceEngine

        from lf_ext.evaluate import _question_and_answer, record_images

        engine, record = self.engine, self.records[index]
        question, _ = _question_and_answer(record)
        gen_kwargs, _ = HuggingfaceEngine._process_args(
            engine.model, engine.tokenizer, engine.processor, engine.template, engine.generating_args,
            [{"role": "user", "content": question}], images=record_images(self.dataset_dir, record), input_kwargs={},
        )  # fmt: skip
        return gen_kwargs


def forced_hits(model_dir: Path, dataset_dir: Path, records: list[dict], chat_args: dict[str, Any],
                image_max_pixels: int) -> dict[str, Any]:  # fmt: skip
    """Answer every test question with a cache holding (1) every other test image's background and
    (2) when the question's image has a sibling S, S's background without the units that are object in
    either image (the entry a stream of S, X, ... would need). Lookups verify pixels as always."""
    from lf_ext.evaluate import answer_records, open_chat
    from lf_ext.inference.generate import last_outcome

    chat = open_chat(model_dir, "qwen2_vl_bgobj", image_max_pixels, dict(chat_args, bgobj_cache=True, bgobj_cache_max_mb=16384))
    model = chat.engine.model
    reuse, prompts = model._lf_ext_background_reuse, _Prompts(chat.engine, dataset_dir, records)
    own: list[set[str]] = [set() for _ in records]
    owners: dict[str, set[int]] = {}
    inputs = {}
    for index in tqdm(range(len(records)), desc="caching backgrounds", unit="img"):
        inputs[index] = gen = prompts(index)
        if not reuse.eligible(gen["inputs"], gen.get("image_grid_thw")):
            continue
        out = reuse.prefill(gen["inputs"], gen["pixel_values"], gen["image_grid_thw"], gen["bgobj_unit_labels"], lookup=False)
        if out.outcome.entry_id:
            own[index].add(out.outcome.entry_id)
            owners.setdefault(out.outcome.entry_id, set()).add(index)
    cached = reuse.cache.stats()
    kinds = {"hit": 0, "miss": 0, "rejection": 0, "not_served": 0}
    counts = {"false_hits": 0, "sibling_entries": 0}
    hit_correct, false_examples = [], []

    def around(index: int, record: dict):
        sibling, mine = _sibling_of(records, index), inputs[index]
        if sibling is not None and reuse.eligible(mine["inputs"], mine.get("image_grid_thw")):
            theirs = inputs[sibling]
            if bool((theirs["image_grid_thw"] == mine["image_grid_thw"]).all()):
                labels = theirs["bgobj_unit_labels"] | mine["bgobj_unit_labels"]
                out = reuse.prefill(theirs["inputs"], theirs["pixel_values"], theirs["image_grid_thw"], labels, lookup=False)
                if out.outcome.entry_id:
                    counts["sibling_entries"] += 1
                    owners.setdefault(out.outcome.entry_id, set()).add(sibling)
        model._lf_ext_last_outcome = None
        return reuse.cache.withheld(own[index])

    def after(index: int, record: dict, correct: bool) -> None:
        outcome = last_outcome(model)
        kinds[outcome.kind if outcome else "not_served"] += 1
        if outcome is not None and outcome.inserted:  # a miss or refined rejection cached this image's background
            owners.setdefault(outcome.entry_id, set()).add(index)
        if outcome is None or outcome.kind != "hit":
            return
        hit_correct.append(correct)
        mine = record.get("meta", {}).get("background_id")
        donors = {records[i].get("meta", {}).get("background_id") for i in owners.get(outcome.entry_id, ())}
        if mine is not None and None not in donors and mine not in donors:
            counts["false_hits"] += 1
            if len(false_examples) < 5:
                false_examples.append({"image": record["images"][0], "served_from": sorted(
                    records[i]["images"][0] for i in owners[outcome.entry_id])})  # fmt: skip

    result = answer_records(chat, dataset_dir, records, after=after, around=around)
    result.update(outcomes=kinds, false_hits=counts["false_hits"], false_hit_rate=counts["false_hits"] / max(1, kinds["hit"]),
                  hit_accuracy=sum(hit_correct) / max(1, len(hit_correct)), false_hit_examples=false_examples,
                  cached_entries=cached["entries"], sibling_entries=counts["sibling_entries"],
                  cache_skipped_low_coverage=cached["skipped_low_coverage"], cache_stats=reuse.cache.stats())  # fmt: skip
    return result


def run_bench_accuracy(dataset_dir: str | Path, train: str, test: str, json_out: str | Path,
                       workdir: str | Path = "work/bench/accuracy", base_steps: int = 1500, extra_steps: int = 500,
                       image_max_pixels: int = 50176, image_min_pixels: int | None = None,
                       bgobj_keys: dict[str, Any] | None = None, limit: int | None = None) -> dict:  # fmt: skip
    """Train base/stock/bgobj on ``train``, answer ``test`` three ways, print the table and write JSON."""
    from lf_ext.adaptation import REPO_ROOT, adapt
    from lf_ext.evaluate import exact_match, load_records, majority_baseline
    from lf_ext.tiny.checkpoint import build_checkpoint

    started = time.time()
    dataset_dir = Path(dataset_dir).resolve()
    train_records = load_records(dataset_dir, _split_file(dataset_dir, train))
    test_records = load_records(dataset_dir, _split_file(dataset_dir, test), limit=limit)
    check_records(train_records, train)
    check_records(test_records, test)
    keys = default_mask_keys(test_records, bgobj_keys or {})
    pixels = {"image_max_pixels": image_max_pixels} | ({"image_min_pixels": image_min_pixels} if image_min_pixels else {})
    work = (REPO_ROOT / workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint("qwen2_vl", work / "tiny_qwen2_vl", seed=0)
    adapted = adapt(work, checkpoint, {"dataset": train, "dataset_dir": dataset_dir, **pixels}, keys, base_steps, extra_steps)
    chat_args = dict(keys, dataset_dir=str(dataset_dir), dataset=test, **{k: v for k, v in pixels.items() if k != "image_max_pixels"})
    if keys["bgobj_mask_provider"] == "dataset":
        chat_args.setdefault("bgobj_mask_fallback", "error")
    other = {k: v for k, v in pixels.items() if k != "image_max_pixels"}
    results = {
        "stock": exact_match(adapted.stock, "qwen2_vl", dataset_dir, test_records, image_max_pixels, extra_args=other),
        "bgobj_miss": exact_match(adapted.bgobj, "qwen2_vl_bgobj", dataset_dir, test_records, image_max_pixels,
                                  extra_args=dict(chat_args, bgobj_cache=False)),  # fmt: skip
        "bgobj_forced_hits": forced_hits(adapted.bgobj, dataset_dir, test_records, chat_args, image_max_pixels),
    }
    forced = results["bgobj_forced_hits"]
    summary = {
        "stock": results["stock"]["accuracy"], "bgobj_miss": results["bgobj_miss"]["accuracy"],
        "bgobj_forced_hits": forced["accuracy"], "majority_baseline": majority_baseline(train_records, test_records),
        "hits": forced["outcomes"]["hit"], "rejections": forced["outcomes"]["rejection"],
        "misses": forced["outcomes"]["miss"], "false_hits": forced["false_hits"], "false_hit_rate": forced["false_hit_rate"],
        "hit_subset_accuracy": forced["hit_accuracy"], "n": len(test_records), "seconds": time.time() - started,
    }  # fmt: skip
    _print(summary, results)
    payload = {"benchmark": "accuracy", "machine": machine_info(), "dataset_dir": str(dataset_dir), "train": train,
               "test": test, "base_steps": base_steps, "extra_steps": extra_steps, "bgobj_keys": keys, **pixels,
               "losses": adapted.losses, "summary": summary,
               "results": {k: {kk: vv for kk, vv in v.items() if kk != "examples"} for k, v in results.items()}}  # fmt: skip
    write_json(json_out, payload)
    return payload


def _print(summary: dict, results: dict) -> None:
    print(f"\nexact match on {summary['n']} test questions (majority-answer baseline {summary['majority_baseline']:.1%})")
    print(f"{'model':<22}{'accuracy':>10}")
    for name in ("stock", "bgobj_miss", "bgobj_forced_hits"):
        print(f"{name:<22}{summary[name]:>10.1%}")
    print(f"forced hits: {summary['hits']} hits, {summary['rejections']} rejections, {summary['misses']} misses; "
          f"false hits {summary['false_hits']} ({summary['false_hit_rate']:.2%} of hits); "
          f"accuracy on the hit questions {summary['hit_subset_accuracy']:.1%}; {summary['seconds']:.0f} s")  # fmt: skip
    types = sorted(results["stock"]["per_type"])
    if types != ["all"]:
        print(f"\n{'question type':<16}{'n':>5}{'stock':>9}{'miss':>9}{'forced':>9}")
        for qtype in types:
            row = [results[k]["per_type"][qtype][0] for k in ("stock", "bgobj_miss", "bgobj_forced_hits")]
            print(f"{qtype:<16}{results['stock']['per_type'][qtype][1]:>5}" + "".join(f"{v:>9.1%}" for v in row))


__all__ = ["check_records", "default_mask_keys", "forced_hits", "run_bench_accuracy"]
