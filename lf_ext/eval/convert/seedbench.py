"""SEED-Bench (v1) -> ``seedbench_video`` (default) and/or ``seedbench_image``: four-way multiple choice.

Source (AILab-CVC/SEED-Bench ``DATASET.md`` and ``eval.py``; the ``AILab-CVC/SEED-Bench`` dataset repository):

* ``SEED-Bench.json``: ``{"questions": [{"question_id", "question", "choice_a" .. "choice_d", "answer" (A-D),
  "data_id", "data_type" ("image" | "video"), "question_type_id", "segment" (dimensions 11: seconds, 12: frames at
  15 fps)}], "question_type": {name: id}}``; the questions are streamed.
* images (dimensions 1-9): ``SEED-Bench-image/<data_id>`` (``--image-dir``).
* videos (dimensions 10-12), ``--video-source frames`` (default): the 8 frames per question released as
  ``v1_video.zip``, ``task<id>/<dataset>_8_frame/<question_id>/<1..8>.png`` under ``--frames-dir`` (default: the
  first of ``v1_video``, ``SEED-Bench-video-image/v1_video``, ``SEED-Bench-video-image`` under ``--src`` holding
  ``task10``-``task12``); a record's video is the list of frame paths in frame order (LLaMA-Factory accepts a
  video as a list of frames). ``--video-source raw``: the original video files, ``<dir>/<data_id>`` for the first
  of ``--video-dir`` (comma-separated) that has it; the segment is only recorded in ``meta`` (LLaMA-Factory reads
  whole files).

Record: ``<image>``/``<video>``, the question, the options as ``A. ...`` lines and the answer-with-a-letter
instruction; the answer letter. ``meta``: ``id``, ``question_type`` (name), ``question_type_id``, ``data_id``,
``data_type``, ``options``, ``answer``, ``segment`` (``[]`` when none), ``segment_unit`` (``seconds``,
``frames`` or ``""``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lf_ext.eval.convert import register_converter
from lf_ext.eval.convert.common import (
    CHOICE_ANSWER,
    IMAGE_SUFFIXES,
    IMAGE_TOKEN,
    LETTERS,
    VIDEO_TOKEN,
    Converter,
    MediaDir,
    SourceItem,
    chat,
    option_lines,
    resolve,
)
from lf_ext.eval.convert.jsonstream import iter_array_member, read_member

WHICH = ("video", "image", "all")
VIDEO_SOURCES = ("frames", "raw")
CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")
SEGMENT_UNITS = {11: "seconds", 12: "frames"}
FRAME_ROOTS = ("v1_video", "SEED-Bench-video-image/v1_video", "SEED-Bench-video-image")


def _frame_order(path: Path) -> tuple:
    return (0, int(path.stem), path.name) if path.stem.isdigit() else (1, 0, path.name)


@register_converter("seedbench")
class SEEDBenchConverter(Converter):
    """SEED-Bench.json + image folder + video frames (or videos)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"annotations": "SEED-Bench.json", "which": "video", "image_dir": "SEED-Bench-image",
                "video_source": "frames", "frames_dir": None, "video_dir": None}  # fmt: skip

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--annotations", help="questions JSON, relative to --src (default: SEED-Bench.json)")
        parser.add_argument("--which", choices=WHICH, help="video questions, image questions or all (default: video)")
        parser.add_argument("--image-dir", dest="image_dir", help="image folder, relative to --src (default: SEED-Bench-image)")
        parser.add_argument("--video-source", dest="video_source", choices=VIDEO_SOURCES,
                            help="frames: the released 8 frames per question (default); raw: the original videos")  # fmt: skip
        parser.add_argument("--frames-dir", dest="frames_dir", help="folder holding task10..task12 frame folders")
        parser.add_argument("--video-dir", dest="video_dir", help="comma-separated folders of the raw videos (--video-source raw)")

    def __init__(self, src, **options):
        super().__init__(src, **options)
        which, source = self.options["which"], self.options["video_source"]
        if which not in WHICH or source not in VIDEO_SOURCES:
            raise ValueError(f"seedbench: --which is one of {', '.join(WHICH)}, --video-source one of {', '.join(VIDEO_SOURCES)}")
        self.annotations = resolve(self.src, self.options["annotations"])
        if not self.annotations.is_file():
            raise ValueError(f"seedbench: annotations file {self.annotations} not found")
        self.images = MediaDir(resolve(self.src, self.options["image_dir"]))
        self.video_dirs = [resolve(self.src, d.strip()) for d in (self.options["video_dir"] or "").split(",") if d.strip()]
        if which != "image" and source == "raw" and not self.video_dirs:
            raise ValueError("seedbench: --video-source raw needs --video-dir")
        self._frames_root: Path | None = None
        self._task_dirs: dict[int, list[Path]] = {}
        self._type_names: dict[int, str] | None = None

    def outputs(self) -> dict[str, tuple[str, ...]]:
        which = self.options["which"]
        names = {}
        if which in ("image", "all"):
            names["seedbench_image"] = ("images",)
        if which in ("video", "all"):
            names["seedbench_video"] = ("videos",)
        return names

    def items(self) -> Iterator[SourceItem]:
        for number, question in enumerate(iter_array_member(self.annotations, "questions")):
            key = question.get("question_id", f"#{number}") if isinstance(question, dict) else f"#{number}"
            yield SourceItem(self.annotations.name, str(key), question)

    def _type_name(self, type_id: int) -> str:
        if self._type_names is None:
            types = read_member(self.annotations, "question_type", {}) or {}
            self._type_names = {int(v): str(k) for k, v in types.items()} if isinstance(types, dict) else {}
        return self._type_names.get(type_id, str(type_id))

    def _frames(self, item: SourceItem, type_id: int) -> list[str]:
        if self._frames_root is None:
            given = self.options["frames_dir"]
            candidates = [resolve(self.src, given)] if given else [self.src / c for c in FRAME_ROOTS] + [self.src]
            self._frames_root = next((c for c in candidates if any((c / f"task{t}").is_dir() for t in (10, 11, 12))),
                                     candidates[0])  # fmt: skip
        if type_id not in self._task_dirs:
            task = self._frames_root / f"task{type_id}"
            self._task_dirs[type_id] = sorted(p for p in task.iterdir() if p.is_dir()) if task.is_dir() else []
        for folder in self._task_dirs[type_id]:
            frames = folder / item.key
            if frames.is_dir():
                found = sorted((p for p in frames.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_frame_order)
                if found:
                    return [str(p) for p in found]
        raise self.missing(item, f"frames folder task{type_id}/*/{item.key} under {self._frames_root}")

    def _video(self, item: SourceItem, data_id: str) -> str:
        for folder in self.video_dirs:
            if (folder / data_id).is_file():
                return str(folder / data_id)
        raise self.missing(item, f"video {data_id} in {', '.join(map(str, self.video_dirs))}")

    def records(self, item: SourceItem, out: Path) -> list[tuple[str, dict]]:
        question = item.data
        data_type = self.require(item, question, "data_type")
        if data_type not in ("image", "video"):
            raise self.error(item, f"'data_type' is {data_type!r}, expected 'image' or 'video'")
        which = self.options["which"]
        if which != "all" and data_type != which:
            return []
        text = self.require(item, question, "question")
        options = [self.require(item, question, key) for key in CHOICES]
        answer = self.require(item, question, "answer").strip()
        if answer not in LETTERS[:4]:
            raise self.error(item, f"'answer' is {answer!r}, expected A, B, C or D")
        data_id = self.require(item, question, "data_id")
        type_id = self.require(item, question, "question_type_id", (int, str))
        if not re.fullmatch(r"\d+", str(type_id)):
            raise self.error(item, f"'question_type_id' is {type_id!r}, expected an integer")
        type_id = int(type_id)
        segment = question.get("segment") or []
        if not isinstance(segment, list) or not all(isinstance(v, (int, float)) for v in segment):
            raise self.error(item, f"'segment' is {segment!r}, expected a list of numbers")

        if data_type == "image":
            image = self.images.find(data_id)
            if image is None:
                raise self.missing(item, f"image {self.images.root / data_id}")
            name, token, media = "seedbench_image", IMAGE_TOKEN, {"images": [str(image)]}
        else:
            video = self._frames(item, type_id) if self.options["video_source"] == "frames" else self._video(item, data_id)
            name, token, media = "seedbench_video", VIDEO_TOKEN, {"videos": [video]}
        record = {
            "messages": chat(f"{token}{text}\n{option_lines(options)}\n{CHOICE_ANSWER}", answer),
            **media,
            "meta": {
                "id": item.key,
                "question_type": self._type_name(type_id),
                "question_type_id": type_id,
                "data_id": data_id,
                "data_type": data_type,
                "options": options,
                "answer": answer,
                "segment": [float(v) for v in segment],
                "segment_unit": SEGMENT_UNITS.get(type_id, "") if segment else "",
            },
        }
        return [(name, record)]
