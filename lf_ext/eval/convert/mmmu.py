"""MMMU parquet files -> ``mmmu_<split>`` (``dev``, ``validation`` or ``test``).

Source (the ``MMMU/MMMU`` dataset repository): ``<Subject>/<split>-NNNNN-of-NNNNN.parquet`` (any depth under
``--src``), columns ``id, question, options, explanation, image_1 .. image_7, img_type, answer, topic_difficulty,
question_type, subfield``: ``options`` is the string form of a Python list, ``image_N`` a ``{bytes, path}`` struct
or null, ``question_type`` ``multiple-choice`` or ``open``, ``answer`` a letter (multiple choice), a string or the
string form of a list of accepted strings (open). Rows are streamed with ``ParquetFile.iter_batches``.

Record: the question, then (multiple choice) the options as ``A. ...`` lines and the answer-with-a-letter
instruction, or (open) the short-answer instruction. Every ``<image N>`` tag in the question and options becomes an
``<image>`` placeholder, in order of appearance (a tag used twice lists its image twice); images of the row that no
tag mentions are placed before the text, in column order. Image bytes are written once to
``OUT/images/mmmu/<id>_<N><ext>`` (extension from the bytes). ``meta``: ``id``, ``subject``, ``subfield``,
``question_type``, ``options``, ``answer`` (as in the file), ``answers`` (accepted answers as a list),
``topic_difficulty``, ``img_type``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lf_ext.eval.convert import register_converter
from lf_ext.eval.convert.common import (
    CHOICE_ANSWER,
    IMAGE_TOKEN,
    SHORT_ANSWER,
    Converter,
    SourceItem,
    chat,
    image_suffix,
    option_lines,
    write_once,
)

SPLITS = ("dev", "validation", "test")
MAX_IMAGES = 7
QUESTION_TYPES = ("multiple-choice", "open")
REQUIRED_COLUMNS = ("id", "question", "options", "answer", "question_type", "image_1")
_TAG = re.compile(r"<image (\d+)>")
_ID = re.compile(r"^(?:dev|validation|test)_(.+)_\d+$")


def parse_list(text: str) -> list[str] | None:
    """The list in a string such as ``"['a', 'b']"``, or None when the string is not a list literal."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else None


@register_converter("mmmu")
class MMMUConverter(Converter):
    """MMMU parquet shards of one split."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"split": "validation", "subjects": None, "name": None}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--split", choices=SPLITS, help="split to convert (default: validation)")
        parser.add_argument("--subjects", help="comma-separated subjects to keep, e.g. Art,Math (default: all)")
        parser.add_argument("--name", help="output name (default: mmmu_<split>)")

    def __init__(self, src, **options):
        super().__init__(src, **options)
        split = self.options["split"]
        if split not in SPLITS:
            raise ValueError(f"mmmu: --split must be one of {', '.join(SPLITS)}")
        self.files = sorted(self.src.rglob(f"{split}-*.parquet"))
        if not self.files:
            raise ValueError(f"mmmu: no {split}-*.parquet files under {self.src}")
        subjects = self.options["subjects"]
        self.subjects = {s.strip() for s in subjects.split(",") if s.strip()} if subjects else None
        self.name = self.options["name"] or f"mmmu_{split}"

    def outputs(self) -> dict[str, tuple[str, ...]]:
        return {self.name: ("images",)}

    def total(self) -> int | None:
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.files)

    def _subject(self, row_id: str, file: Path) -> str:
        match = _ID.match(row_id)
        return match.group(1) if match else file.parent.name

    def items(self) -> Iterator[SourceItem]:
        import pyarrow.parquet as pq

        for file in self.files:
            display = str(file.relative_to(self.src))
            parquet = pq.ParquetFile(file)
            missing = [c for c in REQUIRED_COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise self.error(display, f"missing columns {', '.join(missing)}")
            number = 0
            for batch in parquet.iter_batches(batch_size=16):
                for row in batch.to_pylist():
                    row_id = row.get("id") or f"row {number}"
                    number += 1
                    if self.subjects is None or self._subject(str(row_id), file) in self.subjects:
                        yield SourceItem(display, str(row_id), (row, file))

    def records(self, item: SourceItem, out: Path) -> list[tuple[str, dict]]:
        row, file = item.data
        question = self.require(item, row, "question")
        kind = self.require(item, row, "question_type")
        if kind not in QUESTION_TYPES:
            raise self.error(item, f"'question_type' is {kind!r}, expected one of {', '.join(QUESTION_TYPES)}")
        options = parse_list(self.require(item, row, "options"))
        if options is None:
            raise self.error(item, "'options' is not the string form of a list")
        if kind == "multiple-choice" and not options:
            raise self.error(item, "a multiple-choice question without options")
        answer = str(self.require(item, row, "answer", (str, int)))
        answers = parse_list(answer) if answer.lstrip().startswith("[") else None
        answers = answers or [answer]

        if kind == "multiple-choice":
            prompt = f"{question}\n{option_lines(options)}\n{CHOICE_ANSWER}"
        else:
            prompt = f"{question}\n{SHORT_ANSWER}"
        files: dict[int, str] = {}

        def image_path(number: int) -> str:
            if number not in files:
                value = row.get(f"image_{number}") if 1 <= number <= MAX_IMAGES else None
                data = value.get("bytes") if isinstance(value, dict) else None
                if not data:
                    raise self.error(item, f"the text refers to <image {number}> but image_{number} is empty")
                suffix = image_suffix(data, value.get("path") or "")
                if suffix is None:
                    raise self.error(item, f"image_{number} is not in a known image format")
                target = out / "images" / "mmmu" / f"{_safe(item.key)}_{number}{suffix}"
                files[number] = str(write_once(target, data))
            return files[number]

        images: list[str] = []

        def placeholder(match: re.Match) -> str:
            images.append(image_path(int(match.group(1))))
            return IMAGE_TOKEN

        prompt = _TAG.sub(placeholder, prompt)
        unreferenced = [n for n in range(1, MAX_IMAGES + 1)
                        if n not in files and isinstance(row.get(f"image_{n}"), dict) and row[f"image_{n}"].get("bytes")]  # fmt: skip
        lead = [image_path(n) for n in unreferenced]
        record = {
            "messages": chat(IMAGE_TOKEN * len(lead) + prompt, answers[0] if kind == "open" else answer),
            "images": lead + images,
            "meta": {
                "id": item.key,
                "subject": self._subject(item.key, file),
                "subfield": str(row.get("subfield") or ""),
                "question_type": kind,
                "options": options,
                "answer": answer,
                "answers": answers,
                "topic_difficulty": str(row.get("topic_difficulty") or ""),
                "img_type": str(row.get("img_type") or ""),
            },
        }
        return [(self.name, record)]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
