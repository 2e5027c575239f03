"""Answering a dataset's questions through LLaMA-Factory's ``ChatModel``, and exact-match accuracy."""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, ContextManager

from tqdm import tqdm

from lf_ext.eval.datasets import read_records, record_images, record_videos


def normalize(answer: str) -> str:
    return answer.strip().lower().rstrip(".").strip()


def load_records(dataset_dir: str | Path, name: str, limit: int | None = None) -> list[dict]:
    """The normalised records of dataset ``name`` (see :mod:`lf_ext.eval.datasets`), at most ``limit``."""
    records = read_records(dataset_dir, name)
    return records[:limit] if limit else records


def question_and_answer(record: dict) -> tuple[str, str]:
    """The first user turn and the assistant turn after it."""
    messages = record["messages"]
    user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[user]["content"], messages[user + 1]["content"]


def question_type(record: dict) -> str:
    return (record.get("meta") or {}).get("question_type", "all")


def majority_baseline(train: list[dict], test: list[dict]) -> float:
    """Accuracy of always giving the most frequent training answer of each question type."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    for rec in train:
        by_type[question_type(rec)][normalize(question_and_answer(rec)[1])] += 1
    hits = 0
    for rec in test:
        common = by_type.get(question_type(rec))
        hits += bool(common) and common.most_common(1)[0][0] == normalize(question_and_answer(rec)[1])
    return hits / max(len(test), 1)


def open_chat(model_dir: str | Path, template: str, image_max_pixels: int = 50176, extra_args: dict | None = None):
    """LLaMA-Factory's ``ChatModel`` for greedy short answers; ``extra_args`` e.g. ``bgobj_*`` or ``image_min_pixels``."""
    from llamafactory.chat import ChatModel
    from llamafactory.extras.logging import get_logger
    from transformers.utils import logging as hf_logging

    if "LLAMAFACTORY_VERBOSITY" not in os.environ:  # quiet this process's LLaMA-Factory logs, not its children's
        get_logger().setLevel(logging.WARNING)
    hf_logging.set_verbosity_warning()
    return ChatModel(dict(model_name_or_path=str(model_dir), template=template, image_max_pixels=image_max_pixels,
                          max_new_tokens=8, do_sample=False, infer_dtype="float32", **(extra_args or {})))  # fmt: skip


def answer_records(chat, dataset_dir: str | Path, records: list[dict],
                   after: Callable[[int, dict, bool, Any], None] | None = None,
                   around: Callable[[int, dict], ContextManager] | None = None,
                   media: Callable[[int, dict, list, list], tuple[list, list]] | None = None) -> dict:  # fmt: skip
    """Answer each record's question (about its images or videos). The answer runs inside
    ``around(index, record)`` if given; ``media(index, record, images, videos)`` may replace the media
    passed (e.g. to tag them with a request id); then ``after(index, record, correct, reply)`` runs."""
    per_type: dict[str, list[bool]] = defaultdict(list)
    examples, answers, correct = [], [], []
    for index, rec in enumerate(tqdm(records, desc="answering", unit="q")):
        question, answer = question_and_answer(rec)
        images, videos = record_images(rec, dataset_dir), record_videos(rec, dataset_dir)
        if media is not None:
            images, videos = media(index, rec, images, videos)
        with around(index, rec) if around is not None else contextlib.nullcontext():
            reply = chat.chat([{"role": "user", "content": question}], images=images or None, videos=videos or None)[0].response_text
        ok = normalize(reply) == normalize(answer)
        answers.append(reply)
        correct.append(ok)
        per_type[question_type(rec)].append(ok)
        if after is not None:
            after(index, rec, ok, reply)
        if len(examples) < 5:
            examples.append((question.replace("<image>", ""), answer, reply))
    flat = [ok for oks in per_type.values() for ok in oks]
    return {
        "accuracy": sum(flat) / max(len(flat), 1),
        "n": len(flat),
        "per_type": {k: (sum(v) / len(v), len(v)) for k, v in sorted(per_type.items())},
        "examples": examples,
        "answers": answers,  # the replies, in record order
        "correct": correct,  # right or not, in record order
    }


def agreement(answers: list[str], reference: list[str]) -> float:
    """Share of questions answered identically (after normalisation) in two runs over the same records."""
    if len(answers) != len(reference):
        raise ValueError(f"{len(answers)} answers against {len(reference)}")
    return sum(normalize(a) == normalize(b) for a, b in zip(answers, reference)) / max(len(answers), 1)


def exact_match(model_dir: str | Path, template: str, dataset_dir: str | Path, records: list[dict],
                image_max_pixels: int = 50176, extra_args: dict | None = None) -> dict:  # fmt: skip
    """Answer each record's question with greedy decoding; return overall and per-type accuracy."""
    return answer_records(open_chat(model_dir, template, image_max_pixels, extra_args), dataset_dir, records)
