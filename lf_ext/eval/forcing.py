"""Forced cache hits: answer every test question with a cache that holds the backgrounds a stream would.

For each question the cache holds (1) every *other* test image's background (leave-one-out) and
(2) when the dataset has sibling groups (``meta.sibling_group``), a sibling's background without the
units that are object in either image (a hit serves the entry's whole background set, so a usable
entry must not contain the new image's object). Lookups verify pixels as always, so each question is
answered from a cached background when one passes, else in full. Hits, rejections and misses are
counted; a hit is *false* when the served entry's image has another ``meta.background_id`` (only
measurable when the dataset records one: otherwise the count is reported as not measurable).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from lf_ext.eval.datasets import record_images, record_videos
from lf_ext.eval.prompts import encode_request
from lf_ext.eval.runner import answer_records, open_chat, question_and_answer
from lf_ext.inference.runtime import runtime_of
from lf_ext.inference.stream import tagged
from lf_ext.plugins.image_labels import REQUEST_KEY
from lf_ext.layout import LAYOUT_KEY, ImageLayout


def _sibling_of(records: list[dict], index: int) -> int | None:
    """Another test record whose image shares ``records[index]``'s sibling group (first one), or None."""
    group = (records[index].get("meta") or {}).get("sibling_group")
    image = _media(records[index])
    for other, record in enumerate(records):
        if group and (record.get("meta") or {}).get("sibling_group") == group and _media(record) != image:
            return other
    return None


def _media(record: dict) -> str:
    """A record's first image or video, as examples name it."""
    return str((record.get("images") or record.get("videos") or ["?"])[0])


def _background_id(record: dict) -> str | None:
    return (record.get("meta") or {}).get("background_id")


def forced_hits(model_dir: Path, template: str, dataset_dir: Path, records: list[dict], chat_args: dict[str, Any],
                image_max_pixels: int) -> dict[str, Any]:  # fmt: skip
    """Answer every record with the forced cache described in the module docstring; accuracy, outcome
    counts, false hits and examples."""
    chat = open_chat(model_dir, template, image_max_pixels, dict(chat_args, bgobj_cache=True, bgobj_cache_max_mb=16384))
    engine = chat.engine
    runtime = runtime_of(engine.model)
    reuse = runtime.reuse
    own: list[set[str]] = [set() for _ in records]
    owners: dict[str, set[int]] = {}
    inputs: dict[int, tuple[dict, ImageLayout]] = {}
    for index, record in enumerate(tqdm(records, desc="caching backgrounds", unit="img")):
        request = encode_request(engine.template, engine.tokenizer, engine.processor, question_and_answer(record)[0],
                                 record_images(record, dataset_dir), record_videos(record, dataset_dir))  # fmt: skip
        layout = ImageLayout.coerce(request.get(LAYOUT_KEY))
        inputs[index] = (request, layout)
        if not reuse.eligible(request["inputs"], layout):
            continue
        out = reuse.prefill(request["inputs"], request["pixel_values"], layout, lookup=False)
        if out.outcome.entry_id:
            own[index].add(out.outcome.entry_id)
            owners.setdefault(out.outcome.entry_id, set()).add(index)
    cached = reuse.cache.stats()
    kinds = {"hit": 0, "miss": 0, "rejection": 0, "not_served": 0}
    counts = {"false_hits": 0, "sibling_entries": 0}
    hit_correct, false_examples, requests = [], [], {}
    measurable = all(_background_id(record) is not None for record in records)

    def around(index: int, record: dict):
        sibling = _sibling_of(records, index)
        mine, layout = inputs[index]
        if sibling is not None and reuse.eligible(mine["inputs"], layout) and not layout.is_video(0):  # clips: no sibling union
            theirs, their_layout = inputs[sibling]
            if their_layout is not None and their_layout.grids == layout.grids:
                union = ImageLayout.from_labels(layout.grids, their_layout.object_labels(0) | layout.object_labels(0))
                out = reuse.prefill(theirs["inputs"], theirs["pixel_values"], union, lookup=False)
                if out.outcome.entry_id:
                    counts["sibling_entries"] += 1
                    owners.setdefault(out.outcome.entry_id, set()).add(sibling)
        return reuse.cache.withheld(own[index])

    def media(index: int, record: dict, images: list, videos: list) -> tuple[list, list]:
        requests[index] = request = runtime.new_request()
        return [tagged(path, request) for path in images], [{"path": video, REQUEST_KEY: request} for video in videos]

    def after(index: int, record: dict, correct: bool, reply: str) -> None:
        outcome = runtime.take_outcome(requests[index])
        kinds[outcome.kind if outcome else "not_served"] += 1
        if outcome is not None and outcome.inserted:  # a miss or refined rejection cached this image's background
            owners.setdefault(outcome.entry_id, set()).add(index)
        if outcome is None or outcome.kind != "hit":
            return
        hit_correct.append(correct)
        donors = {_background_id(records[i]) for i in owners.get(outcome.entry_id, ())}
        if measurable and _background_id(record) not in donors:
            counts["false_hits"] += 1
            if len(false_examples) < 5:
                false_examples.append({"media": _media(record), "served_from": sorted(_media(records[i]) for i in owners[outcome.entry_id])})

    result = answer_records(chat, dataset_dir, records, after=after, around=around, media=media)
    false_hits = counts["false_hits"] if measurable else None
    result.update(outcomes=kinds, false_hits=false_hits, false_hits_measurable=measurable,
                  false_hit_rate=None if false_hits is None else false_hits / max(1, kinds["hit"]),
                  hit_accuracy=sum(hit_correct) / max(1, len(hit_correct)), false_hit_examples=false_examples,
                  cached_entries=cached["entries"], sibling_entries=counts["sibling_entries"],
                  cache_skipped_low_coverage=cached["skipped_low_coverage"], cache_stats=reuse.cache.stats())  # fmt: skip
    return result
