"""OCR-VQA -> ``ocrvqa_<split>``: one record per (book cover, question).

Source (https://ocr-vqa.github.io/, its ``dataset.json`` and download script):

* ``dataset.json``: ``{imageId: {"imageURL", "questions": [...], "answers": [...], "title", "authorName", "genre",
  "split"}}`` with ``split`` 1 = train, 2 = val, 3 = test; streamed.
* ``images/<imageId>.<ext>``: the download script keeps the URL's extension, so the image is found by its stem
  whatever the extension.

Record: the question and LLaVA's short-answer instruction, the answer, the image by absolute path.
``meta``: ``id`` (``<imageId>_<question index>``), ``image_id``, ``question_index``, ``question_type`` (from the
question's wording, OCR-VQA having a few templates: ``author``, ``title``, ``genre``, ``year``, ``edition``,
``yes/no`` or ``other``), ``answer``, ``title``, ``author``, ``genre``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lf_ext.eval.convert import register_converter
from lf_ext.eval.convert.common import IMAGE_TOKEN, SHORT_ANSWER, Converter, MediaDir, SourceItem, chat, resolve
from lf_ext.eval.convert.jsonstream import iter_members

SPLITS = {"train": 1, "val": 2, "test": 3}
_YES_NO_STARTS = ("is ", "are ", "does ", "do ", "can ", "was ")


def question_type(question: str) -> str:
    """The OCR-VQA template family of a question, from its wording."""
    text = question.lower().strip()
    if text.startswith(_YES_NO_STARTS):
        return "yes/no"
    for words, kind in ((("wrote", "author"), "author"), (("title",), "title"), (("genre", "type of book"), "genre"),
                        (("year",), "year"), (("edition",), "edition")):  # fmt: skip
        if any(word in text for word in words):
            return kind
    return "other"


@register_converter("ocrvqa")
class OCRVQAConverter(Converter):
    """OCR-VQA ``dataset.json`` + images folder."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"split": "test", "annotations": "dataset.json", "images": "images", "name": None}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--split", choices=sorted(SPLITS), help="split to convert (default: test)")
        parser.add_argument("--annotations", help="annotations JSON, relative to --src (default: dataset.json)")
        parser.add_argument("--images", help="images folder, relative to --src (default: images)")
        parser.add_argument("--name", help="output name (default: ocrvqa_<split>)")

    def __init__(self, src, **options):
        super().__init__(src, **options)
        if self.options["split"] not in SPLITS:
            raise ValueError(f"ocrvqa: --split must be one of {', '.join(SPLITS)}")
        self.annotations = resolve(self.src, self.options["annotations"])
        if not self.annotations.is_file():
            raise ValueError(f"ocrvqa: annotations file {self.annotations} not found")
        self.images = MediaDir(resolve(self.src, self.options["images"]))
        self.name = self.options["name"] or f"ocrvqa_{self.options['split']}"

    def outputs(self) -> dict[str, tuple[str, ...]]:
        return {self.name: ("images",)}

    def items(self) -> Iterator[SourceItem]:
        wanted = SPLITS[self.options["split"]]
        file = self.annotations.name
        for image_id, entry in iter_members(self.annotations):
            book = SourceItem(file, image_id, entry)
            split = self.require(book, entry, "split", (int, str))
            if str(split) not in ("1", "2", "3"):
                raise self.error(book, f"'split' is {split!r}, expected 1, 2 or 3")
            if int(split) != wanted:
                continue
            questions = self.require(book, entry, "questions", list)
            answers = self.require(book, entry, "answers", list)
            if len(questions) != len(answers):
                raise self.error(book, f"{len(questions)} questions but {len(answers)} answers")
            for index in range(len(questions)):
                yield SourceItem(file, f"{image_id}_{index}", (image_id, entry, index))

    def records(self, item: SourceItem, out: Path) -> list[tuple[str, dict]]:
        image_id, entry, index = item.data
        question, answer = entry["questions"][index], entry["answers"][index]
        if not isinstance(question, str):
            raise self.error(item, f"question is {type(question).__name__}, expected str")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise self.error(item, f"answer is {type(answer).__name__}, expected str")
        image = self.images.find(image_id)
        if image is None:
            raise self.missing(item, f"image {self.images.root / image_id}.*")
        record = {
            "messages": chat(f"{IMAGE_TOKEN}{question}\n{SHORT_ANSWER}", answer),
            "images": [str(image)],
            "meta": {
                "id": item.key,
                "image_id": image_id,
                "question_index": index,
                "question_type": question_type(question),
                "answer": answer,
                "title": str(entry.get("title") or ""),
                "author": str(entry.get("authorName") or ""),
                "genre": str(entry.get("genre") or ""),
            },
        }
        return [(self.name, record)]
