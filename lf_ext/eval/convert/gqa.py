"""GQA balanced questions -> ``gqa_<split>`` (e.g. ``gqa_testdev_balanced``), optionally with object boxes.

Source (the GQA download page, https://cs.stanford.edu/people/dorarad/gqa/download.html):

* ``--questions`` (default ``testdev_balanced_questions.json``): ``{questionId: {"imageId", "question", "answer",
  "fullAnswer", "types": {"structural", "semantic", "detailed"}, "annotations": {"question" | "answer" |
  "fullAnswer": {"<token index or start:end>": objectId}}, "isBalanced", "groups", "semantic", ...}}``, streamed.
* ``--images`` (default ``images``): ``<imageId>.jpg`` (any image extension is accepted).
* ``--scene-graphs`` (optional, e.g. ``val_sceneGraphs.json``): ``{imageId: {"width", "height", "objects":
  {objectId: {"name", "x", "y", "w", "h", ...}}}}``. Its boxes (``[x, y, x + w, y + h]`` clipped to the image, as
  integer pixels) are kept in memory, about 100 bytes per object.

Record: the question and LLaVA's short-answer instruction, the answer, the image by absolute path. With scene
graphs, ``boxes`` holds for the image the boxes of the objects that the question's annotations reference (question,
answer and full answer, in first-mention order): ``[]`` when it references none, ``null`` when the image is not in
the scene graphs. Ids missing from the image's graph (or with an empty box) are dropped and counted
(``unknown_objects``).
``meta``: ``id`` (question id), ``image_id``, ``question_type`` (structural type), ``semantic_type``,
``detailed_type``, ``answer``, ``full_answer`` and ``object_ids``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lf_ext.eval.convert import register_converter
from lf_ext.eval.convert.common import IMAGE_TOKEN, SHORT_ANSWER, Converter, MediaDir, SourceItem, chat, resolve
from lf_ext.eval.convert.jsonstream import iter_members

Box = tuple[int, int, int, int]


@register_converter("gqa")
class GQAConverter(Converter):
    """GQA questions JSON + images folder (+ scene graphs for boxes)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"questions": "testdev_balanced_questions.json", "images": "images", "scene_graphs": None, "name": None}

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--questions", help="questions JSON, relative to --src (default: testdev_balanced_questions.json)")
        parser.add_argument("--images", help="images folder, relative to --src (default: images)")
        parser.add_argument("--scene-graphs", dest="scene_graphs", help="scene graphs JSON for object boxes (optional)")
        parser.add_argument("--name", help="output name (default: gqa_<questions file stem without _questions>)")

    def __init__(self, src, **options):
        super().__init__(src, **options)
        self.questions = resolve(self.src, self.options["questions"])
        if not self.questions.is_file():
            raise ValueError(f"gqa: questions file {self.questions} not found")
        self.images = MediaDir(resolve(self.src, self.options["images"]))
        graphs = self.options["scene_graphs"]
        self.scene_graphs = resolve(self.src, graphs) if graphs else None
        if self.scene_graphs and not self.scene_graphs.is_file():
            raise ValueError(f"gqa: scene graphs file {self.scene_graphs} not found")
        self.name = self.options["name"] or "gqa_" + self.questions.stem.replace("_questions", "")
        self._boxes: dict[str, dict[str, Box]] | None = None

    def outputs(self) -> dict[str, tuple[str, ...]]:
        return {self.name: ("images",)}

    def items(self) -> Iterator[SourceItem]:
        for qid, question in iter_members(self.questions):
            yield SourceItem(self.questions.name, qid, question)

    def _object_boxes(self) -> dict[str, dict[str, Box]]:
        """imageId -> objectId -> box, read once from the scene graphs."""
        if self._boxes is None:
            self._boxes = {}
            name = self.scene_graphs.name
            members = tqdm(iter_members(self.scene_graphs), desc="gqa scene graphs", unit="image", leave=False)
            for image_id, graph in members:
                item = SourceItem(name, image_id, graph)
                width = self.require(item, graph, "width", (int, float))
                height = self.require(item, graph, "height", (int, float))
                boxes = {}
                for object_id, obj in self.require(item, graph, "objects", dict).items():
                    x, y, w, h = (self.require(SourceItem(name, f"{image_id}/{object_id}", obj), obj, k, (int, float))
                                  for k in "xywh")  # fmt: skip
                    x0, y0 = max(0, int(x)), max(0, int(y))
                    x1, y1 = min(int(width), int(x + w)), min(int(height), int(y + h))
                    if x1 > x0 and y1 > y0:
                        boxes[object_id] = (x0, y0, x1, y1)
                self._boxes[str(image_id)] = boxes
        return self._boxes

    def _referenced_objects(self, item: SourceItem, question: dict) -> list[str]:
        annotations = question.get("annotations") or {}
        if not isinstance(annotations, dict):
            raise self.error(item, "'annotations' is not an object")
        seen: dict[str, None] = {}
        for part in ("question", "answer", "fullAnswer"):
            mentions = annotations.get(part) or {}
            if not isinstance(mentions, dict):
                raise self.error(item, f"'annotations.{part}' is not an object")
            for object_id in mentions.values():
                for one in object_id if isinstance(object_id, list) else [object_id]:
                    seen.setdefault(str(one), None)
        return list(seen)

    def records(self, item: SourceItem, out: Path) -> list[tuple[str, dict]]:
        question = item.data
        image_id = str(self.require(item, question, "imageId", (str, int)))
        text = self.require(item, question, "question")
        answer = self.require(item, question, "answer")
        full_answer = question.get("fullAnswer") or ""
        types = question.get("types") or {}
        if not isinstance(types, dict):
            raise self.error(item, "'types' is not an object")
        image = self.images.find(image_id)
        if image is None:
            raise self.missing(item, f"image {self.images.root / image_id}.jpg")
        object_ids = self._referenced_objects(item, question)
        record: dict[str, Any] = {
            "messages": chat(f"{IMAGE_TOKEN}{text}\n{SHORT_ANSWER}", answer),
            "images": [str(image)],
        }
        if self.scene_graphs:
            graph = self._object_boxes().get(image_id)
            if graph is None:
                record["boxes"] = [None]
                self.count("images_without_scene_graph")
            else:
                known = [graph[o] for o in object_ids if o in graph]
                self.count("unknown_objects", len(object_ids) - len(known))
                record["boxes"] = [[list(box) for box in known]]
        record["meta"] = {
            "id": item.key,
            "image_id": image_id,
            "question_type": str(types.get("structural") or ""),
            "semantic_type": str(types.get("semantic") or ""),
            "detailed_type": str(types.get("detailed") or ""),
            "answer": answer,
            "full_answer": str(full_answer),
            "object_ids": object_ids,
        }
        return [(self.name, record)]
