"""``lf-ext eval TASK``: a converted benchmark answered by stock, bgobj and bgobj+cache, side by side.

Every sample goes through LLaMA-Factory's ``ChatModel`` (HF engine) exactly as ``llamafactory-cli chat``
would answer it, once per configuration:

- ``stock``: the family's stock template (``qwen2_vl``, ``llava``...) on ``--stock-model`` (default: the model);
- ``bgobj``: the bgobj template, background cache off (every image encoded in full, separated);
- ``bgobj+cache``: the bgobj template with the background cache (the ``bgobj_cache_*`` keys).

``--order stream`` (default) groups samples that share a screen or camera (an AndroidControl episode,
a GQA/OCR-VQA image, a scene background, a video) so the cache sees the reuse a deployment would;
``--order dataset`` keeps the file order. Each task's standard metric (:mod:`lf_ext.eval.metrics`)
comes with its 95 % Wilson interval, and each bgobj configuration with a paired comparison against
stock (exact McNemar test, bootstrap interval of the difference). Per sample, the components of
:mod:`lf_ext.eval.timing` are recorded; medians and totals are reported. Output: a printed table,
JSON, and optionally a PNG of accuracy against mean TTFT.
"""

from __future__ import annotations

import gc
import re
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lf_ext.eval.datasets import read_records, record_images, record_videos
from lf_ext.eval.metrics import GROUPS, METRICS, aggregate, score
from lf_ext.eval.stats import accuracy_row, paired_difference

CONFIGS = ("stock", "bgobj", "bgobj+cache")
ORDERS = ("stream", "dataset")
GROUP_KEYS = ("episode_id", "background_id", "sibling_group", "image_id", "data_id")  # first one a record has
MASK_FIELDS = ("masks", "boxes", "polygons")
COMPONENTS = ("load", "mask", "lookup", "vision", "prefill", "decode")  # see lf_ext.eval.timing


def stream_key(record: dict) -> str:
    """What a record shares its screen/camera with: a ``meta`` group key, else its first image or video."""
    meta = record.get("meta") or {}
    for key in GROUP_KEYS:
        if meta.get(key) not in (None, ""):
            return f"{key}={meta[key]}"
    media = (record.get("images") or []) + (record.get("videos") or [])
    return f"media={media[0]}" if media else "none"


def stream_order(records: Sequence[dict]) -> list[int]:
    """Record indices grouped by :func:`stream_key`, groups in order of first appearance, stable inside."""
    first: dict[str, int] = {}
    for index, record in enumerate(records):
        first.setdefault(stream_key(record), index)
    return sorted(range(len(records)), key=lambda i: (first[stream_key(records[i])], i))


def prompt_of(record: dict) -> list[dict]:
    """The record's conversation up to (without) its final assistant turn."""
    messages = [dict(m) for m in record["messages"]]
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("the record's conversation must end with a user turn (and its answer)")
    return messages


def frames_as_images_of(record: dict, count: int) -> dict:
    """A record whose videos are frame lists, with ``count`` frames of each (evenly spaced) as images instead:
    how an image-only model (LLaVA-1.5) answers a video question. A video file is an error naming it."""
    videos = record.get("videos") or []
    if not videos:
        return record
    if count < 1:
        raise ValueError(f"frames_as_images must be >= 1, got {count}")
    frames: list[str] = []
    for video in videos:
        if not isinstance(video, list) or not video:
            raise ValueError(f"frames_as_images needs videos given as frame lists (SEED-Bench's released frames), "
                             f"got the file {video!r}")  # fmt: skip
        step = len(video) / min(count, len(video))
        frames += [video[int(i * step)] for i in range(min(count, len(video)))]
    per_video = iter([min(count, len(v)) for v in videos])
    messages = [dict(m, content=re.sub("<video>", lambda _: "<image>" * next(per_video), m["content"]))
                for m in record["messages"]]  # fmt: skip
    return {**record, "messages": messages, "images": list(record.get("images") or []) + frames, "videos": []}


def _named(index: int, record: dict, change) -> dict:
    try:
        return change(record)
    except ValueError as err:
        raise ValueError(f"dataset record {index} (id {(record.get('meta') or {}).get('id', '?')}): {err}") from None


def default_mask_keys(records: Sequence[dict], keys: dict[str, Any]) -> dict[str, Any]:
    """The user's ``bgobj_*`` keys; by default the dataset's own masks/boxes when it ships them (entropy for
    the records without), else the entropy provider."""
    if keys.get("bgobj_mask_provider"):
        return dict(keys)
    if any(any(r.get(f) for f in MASK_FIELDS) for r in records):
        return {"bgobj_mask_provider": "dataset", "bgobj_mask_fallback": "entropy", **keys}
    return {"bgobj_mask_provider": "entropy", **keys}


def config_args(name: str, model: str, stock_model: str | None, template: str, keys: dict[str, Any],
                common: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The ``ChatModel`` arguments of configuration ``name``."""
    from lf_ext.families import family_for_template

    family = family_for_template(template)
    if name == "stock":
        return dict(common, model_name_or_path=str(stock_model or model), template=family.stock_template)
    if name == "bgobj":
        return dict(common, model_name_or_path=str(model), template=template, **dict(keys, bgobj_cache=False))
    if name == "bgobj+cache":
        return dict(common, model_name_or_path=str(model), template=template, **dict(keys, bgobj_cache=True))
    raise ValueError(f"unknown configuration '{name}'; known: {', '.join(CONFIGS)}")


def answer_all(task: str, args: dict[str, Any], records: Sequence[dict], order: Sequence[int], dataset_dir: Path,
               desc: str) -> list[dict]:  # fmt: skip
    """One ``ChatModel`` for ``args``; every record answered in ``order``; per-record rows in record order."""
    from llamafactory.chat import ChatModel
    from tqdm import tqdm

    from lf_ext.eval.timing import ComponentTimer
    from lf_ext.inference.runtime import runtime_of
    from lf_ext.inference.stream import tagged

    chat = ChatModel(dict(args))
    timer = ComponentTimer(chat)
    runtime = runtime_of(chat.engine.model)
    serving = runtime is not None and runtime.reuse is not None
    rows: list[dict | None] = [None] * len(records)
    try:
        for index in tqdm(order, desc=desc, unit="sample"):
            record = records[index]
            where = f"dataset record {index} (id {(record.get('meta') or {}).get('id', '?')})"
            try:
                messages = prompt_of(record)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            images = record_images(record, dataset_dir)
            request = runtime.new_request() if serving and images else None
            if request is not None:
                images = [tagged(image, request) for image in images]
            with timer.request() as ms:
                reply = chat.chat(messages, system=record.get("system") or None, images=images or None,
                                  videos=record_videos(record, dataset_dir) or None)[0].response_text  # fmt: skip
            outcome = runtime.take_outcome(request) if request is not None else None
            rows[index] = {"prediction": reply, "outcome": outcome.kind if outcome is not None else "uncached",
                           "ms": ms, **score(task, reply, record)}  # fmt: skip
    finally:
        timer.close()
        del chat
        gc.collect()
    return rows  # type: ignore[return-value]


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def summarize(task: str, rows: Sequence[dict]) -> dict[str, Any]:
    """Metrics with intervals, outcome counts and component times of one configuration's rows."""
    metric = METRICS.get(task, ("correct",))[-1]
    components = COMPONENTS + ("ttft", "total")
    return {
        "metric": metric,
        **accuracy_row([row[metric] >= 0.5 for row in rows]),
        "aggregate": aggregate(task, rows),
        "outcomes": dict(Counter(row["outcome"] for row in rows)),
        "median_ms": {c: _median([row["ms"][c] for row in rows]) for c in components},
        "total_ms": {c: sum(row["ms"][c] for row in rows) for c in components},
        "mean_ttft_ms": statistics.fmean(row["ms"]["ttft"] for row in rows) if rows else 0.0,
    }


def compare(task: str, rows: Sequence[dict], reference: Sequence[dict]) -> dict[str, Any]:
    """A configuration against the reference on the same samples: McNemar and the bootstrap interval of the
    difference of the primary metric."""
    metric = METRICS.get(task, ("correct",))[-1]
    ours, theirs = [r[metric] >= 0.5 for r in rows], [r[metric] >= 0.5 for r in reference]
    agree = sum(a["prediction"] == b["prediction"] for a, b in zip(rows, reference)) / max(len(rows), 1)
    return {**paired_difference(ours, theirs), "same_prediction": agree}


def run_eval(task: str, dataset_dir: str | Path, dataset: str, model: str | Path, template: str, json_out: str | Path,
             plot: str | Path | None = None, configs: Sequence[str] = CONFIGS, stock_model: str | Path | None = None,
             order: str = "stream", limit: int | None = None, bgobj_keys: dict[str, Any] | None = None,
             image_max_pixels: int = 50176, max_new_tokens: int = 32, infer_dtype: str = "auto",
             extra_args: dict[str, Any] | None = None, frames_as_images: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Answer ``dataset`` under each configuration; print the table, write JSON (and the plot).
    ``frames_as_images``: video questions answered from that many of their frames as images (image-only models)."""
    from lf_ext.bench.report import machine_info, write_json
    from lf_ext.families import family_for_template

    if task not in GROUPS:
        raise ValueError(f"unknown task '{task}'; known: {', '.join(GROUPS)}")
    if order not in ORDERS:
        raise ValueError(f"--order must be one of {', '.join(ORDERS)}, got '{order}'")
    for name in configs:
        if name not in CONFIGS:
            raise ValueError(f"unknown configuration '{name}'; known: {', '.join(CONFIGS)}")
    family_for_template(template)  # a clear error for a template that is not a bgobj one
    dataset_dir = Path(dataset_dir).resolve()
    records = read_records(dataset_dir, dataset)
    records = records[:limit] if limit else records
    if frames_as_images is not None:
        records = [_named(index, record, lambda r: frames_as_images_of(r, frames_as_images))
                   for index, record in enumerate(records)]  # fmt: skip
    if not records:
        raise ValueError(f"dataset '{dataset}' is empty")
    keys = default_mask_keys(records, bgobj_keys or {})
    indices = stream_order(records) if order == "stream" else list(range(len(records)))
    common = dict(image_max_pixels=image_max_pixels, max_new_tokens=max_new_tokens, do_sample=False,
                  infer_dtype=infer_dtype, dataset_dir=str(dataset_dir), dataset=dataset, **(extra_args or {}))  # fmt: skip
    started = time.time()
    rows = {name: answer_all(task, config_args(name, str(model), stock_model and str(stock_model), template, keys, common),
                             records, indices, dataset_dir, desc=name)
            for name in configs}  # fmt: skip
    summary = {name: summarize(task, r) for name, r in rows.items()}
    reference = "stock" if "stock" in rows else None
    comparisons = {name: compare(task, r, rows[reference]) for name, r in rows.items() if reference and name != reference}
    payload = {"task": task, "machine": machine_info(), "dataset_dir": str(dataset_dir), "dataset": dataset,
               "model": str(model), "stock_model": str(stock_model or model), "template": template, "order": order,
               "bgobj_keys": keys, "image_max_pixels": image_max_pixels, "frames_as_images": frames_as_images,
               "n": len(records), "seconds": time.time() - started,
               "summary": summary, "against_stock": comparisons,
               "samples": [{"id": (rec.get("meta") or {}).get("id", i),
                            **{name: {k: v for k, v in rows[name][i].items()} for name in rows}}
                           for i, rec in enumerate(records)]}  # fmt: skip
    print_summary(payload)
    write_json(json_out, payload)
    if plot:
        plot_eval(payload, plot)
    return payload


def print_summary(payload: dict) -> None:
    summary = payload["summary"]
    print(f"\n{payload['task']} on '{payload['dataset']}': n={payload['n']}, order {payload['order']}")
    print(f"{'configuration':<14}{'metric':>16}{'95% CI':>16}{'hits':>6}{'rej':>5}{'miss':>6}{'TTFT ms':>10}"
          + "".join(f"{c + ' ms':>12}" for c in COMPONENTS))  # fmt: skip
    for name, row in summary.items():
        outcomes = row["outcomes"]
        print(f"{name:<14}{row['metric'] + ' ' + format(row['accuracy'], '.1%'):>16}"
              f"{'[' + format(row['ci_low'], '.1%') + ', ' + format(row['ci_high'], '.1%') + ']':>16}"
              f"{outcomes.get('hit', 0):>6}{outcomes.get('rejection', 0):>5}{outcomes.get('miss', 0):>6}"
              f"{row['median_ms']['ttft']:>10.1f}" + "".join(f"{row['median_ms'][c]:>12.1f}" for c in COMPONENTS))  # fmt: skip
    print("(component times: medians per sample)")
    for name, cmp in payload["against_stock"].items():
        low, high = cmp["difference_ci"]
        print(f"{name} - stock: {cmp['difference']:+.1%} (95% CI [{low:+.1%}, {high:+.1%}]); right only in {name}: "
              f"{cmp['only_a']}, only in stock: {cmp['only_b']}, McNemar p = {cmp['p_value']:.3f}; "
              f"same prediction {cmp['same_prediction']:.1%}")  # fmt: skip


def plot_eval(payload: dict, path: str | Path) -> None:
    """Accuracy (with its 95 % interval) against mean TTFT, one point per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lf_ext.bench.report import save_figure

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, row in payload["summary"].items():
        ax.errorbar(row["mean_ttft_ms"], row["accuracy"], yerr=[[row["accuracy"] - row["ci_low"]], [row["ci_high"] - row["accuracy"]]],
                    fmt="o", capsize=4, label=name)  # fmt: skip
    ax.set_xlabel("mean TTFT (ms)")
    ax.set_ylabel(payload["summary"][next(iter(payload["summary"]))]["metric"])
    ax.set_title(f"{payload['task']}: {payload['dataset']} (n={payload['n']})")
    ax.legend()
    save_figure(fig, path, dpi=120)
