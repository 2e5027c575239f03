"""AndroidControl episodes -> ``androidcontrol_<split>`` (``..._low`` with step instructions): one record per step.

Source (google-research/android_control README; the ``gresearch/android_control`` bucket): GZIP-compressed
TFRecord files (``android_control-NNNNN-of-NNNNN``), one ``tf.train.Example`` per episode with ``episode_id``
(int64), ``goal`` (bytes), ``screenshots`` (PNG bytes, one per observation), ``screenshot_widths``,
``screenshot_heights`` (int64), ``accessibility_trees`` (serialized ``AndroidAccessibilityForest``, one per
observation), ``actions`` (JSON strings, one per step: ``len(screenshots) - 1`` of them) and ``step_instructions``
(one per action); ``splits.json`` maps split names (``train``, ``validation``, ``test``) to episode ids. Read
without TensorFlow (:mod:`lf_ext.eval.convert.tfrecord`).

Record for step *i*: the screenshot *i* (written once to ``OUT/images/androidcontrol/<episode>_<i><ext>``), the goal,
with ``--level low`` the step instruction, the previous actions of the episode, the action space; the answer is the
action as compact JSON, ``action_type`` first then the other keys sorted, integral floats as ints, e.g.
``{"action_type":"click","x":540,"y":1210}``.

Target element (``boxes`` and ``meta.target_box``): for actions with a point (``click``, ``long_press``, and ``type``
when it has one) the element under the point in screenshot *i*'s accessibility tree; otherwise null. Parsed from the
forest (android_env ``a11y`` protos): ``windows(1)`` -> ``layer(4)``, ``tree(11)`` -> ``nodes(1)`` -> ``bounds_in_screen(2)``
(``ProtoRect``: left 1, top 2, right 3, bottom 4), ``is_clickable(14)``, ``is_editable(15)``,
``is_long_clickable(19)``; other fields are skipped. Among non-empty nodes containing the point, those of the top-most
window (highest layer) win; of those, the smallest interactive one (clickable, long-clickable or editable), else the
smallest one. The box is ``[left, top, right, bottom]`` (right/bottom exclusive, as Android's ``Rect``) clipped to
the screenshot. ``meta``: ``id`` (``<episode>_<step>``), ``episode_id``, ``step``, ``num_steps``, ``split``,
``level``, ``goal``, ``step_instruction``, ``action`` (the answer string), ``action_type``, ``target_box``,
``screen_size`` ``[width, height]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lf_ext.eval.convert import register_converter
from lf_ext.eval.convert.common import IMAGE_TOKEN, Converter, SourceItem, chat, image_suffix, resolve, write_once
from lf_ext.eval.convert.jsonstream import read_member
from lf_ext.eval.convert.tfrecord import iter_fields, iter_tfrecords, parse_example, signed

LEVELS = ("high", "low")
POINT_ACTIONS = ("click", "long_press", "type")
FEATURES = ("episode_id", "goal", "screenshots", "screenshot_widths", "screenshot_heights", "accessibility_trees",
            "actions", "step_instructions")  # fmt: skip
ACTION_SPACE = (
    '{"action_type":"click","x":X,"y":Y}, {"action_type":"long_press","x":X,"y":Y}, '
    '{"action_type":"scroll","direction":"up|down|left|right"}, {"action_type":"open_app","app_name":NAME}, '
    '{"action_type":"input_text","text":TEXT}, {"action_type":"navigate_home"}, {"action_type":"navigate_back"}, '
    '{"action_type":"wait"}'
)


def compact_action(action: dict) -> str:
    """An action as compact JSON: ``action_type`` first, the other keys sorted, integral floats as ints."""
    def tidy(value):
        return int(value) if isinstance(value, float) and value.is_integer() else value

    ordered = {"action_type": action["action_type"], **{k: tidy(action[k]) for k in sorted(action) if k != "action_type"}}
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False)


@dataclass
class A11yNode:
    """The parts of an ``AndroidAccessibilityNodeInfo`` used to find a target element."""

    bounds: tuple[int, int, int, int]
    layer: int
    interactive: bool

    @property
    def area(self) -> int:
        return max(0, self.bounds[2] - self.bounds[0]) * max(0, self.bounds[3] - self.bounds[1])

    def contains(self, x: float, y: float) -> bool:
        left, top, right, bottom = self.bounds
        return left <= x < right and top <= y < bottom


def _rect(blob) -> tuple[int, int, int, int]:
    sides = [0, 0, 0, 0]
    for number, wire, value in iter_fields(blob):
        if 1 <= number <= 4 and wire == 0:
            sides[number - 1] = signed(value)
    return tuple(sides)


def a11y_nodes(forest: bytes) -> list[A11yNode]:
    """The nodes of a serialized ``AndroidAccessibilityForest`` with their bounds and window layer."""
    nodes = []
    for number, wire, window in iter_fields(forest):
        if number != 1 or wire != 2:
            continue
        layer, trees = 0, []
        for field, field_wire, value in iter_fields(window):
            if field == 4 and field_wire == 0:
                layer = signed(value)
            elif field == 11 and field_wire == 2:
                trees.append(value)
        for tree in trees:
            for field, field_wire, node in iter_fields(tree):
                if field != 1 or field_wire != 2:
                    continue
                bounds, interactive = (0, 0, 0, 0), False
                for key, key_wire, value in iter_fields(node):
                    if key == 2 and key_wire == 2:
                        bounds = _rect(value)
                    elif key in (14, 15, 19) and key_wire == 0 and value:
                        interactive = True
                nodes.append(A11yNode(bounds, layer, interactive))
    return nodes


def element_box(nodes: list[A11yNode], x: float, y: float) -> tuple[int, int, int, int] | None:
    """Bounds of the element under ``(x, y)``: top-most window, smallest interactive node, else smallest node."""
    under = [node for node in nodes if node.area > 0 and node.contains(x, y)]
    if not under:
        return None
    top = max(node.layer for node in under)
    under = [node for node in under if node.layer == top]
    interactive = [node for node in under if node.interactive]
    return min(interactive or under, key=lambda node: node.area).bounds


@register_converter("androidcontrol")
class AndroidControlConverter(Converter):
    """AndroidControl TFRecord episodes (+ ``splits.json``)."""

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {"split": "test", "splits_file": "splits.json", "level": "high", "files": "android_control*",
                "verify_crc": False, "name": None}  # fmt: skip

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--split", help="split of splits.json to convert, or 'all' (default: test)")
        parser.add_argument("--splits-file", dest="splits_file", help="split file, relative to --src (default: splits.json)")
        parser.add_argument("--level", choices=LEVELS, help="high: goal only; low: goal and step instruction (default: high)")
        parser.add_argument("--files", help="glob of the TFRecord files under --src (default: android_control*)")
        parser.add_argument("--verify-crc", dest="verify_crc", action="store_true", default=None,
                            help="verify each record's data checksum (slow: pure-Python CRC-32C)")  # fmt: skip
        parser.add_argument("--name", help="output name (default: androidcontrol_<split>, _low appended for --level low)")

    def __init__(self, src, **options):
        super().__init__(src, **options)
        if self.options["level"] not in LEVELS:
            raise ValueError(f"androidcontrol: --level must be one of {', '.join(LEVELS)}")
        self.files = sorted(p for p in self.src.glob(self.options["files"]) if p.is_file() and p.suffix != ".json")
        if not self.files:
            raise ValueError(f"androidcontrol: no TFRecord files matching {self.options['files']} in {self.src}")
        split, level = self.options["split"], self.options["level"]
        self.name = self.options["name"] or f"androidcontrol_{split}" + ("_low" if level == "low" else "")
        self._split_ids: set[int] | None = None

    def outputs(self) -> dict[str, tuple[str, ...]]:
        return {self.name: ("images",)}

    def _episodes_of_split(self) -> set[int] | None:
        split = self.options["split"]
        if split == "all":
            return None
        if self._split_ids is None:
            path = resolve(self.src, self.options["splits_file"])
            if not path.is_file():
                raise ValueError(f"androidcontrol: --split {split} needs the split file {path} (or --split all)")
            ids = read_member(path, split)
            if not isinstance(ids, list):
                raise ValueError(f"androidcontrol: {path.name} has no list '{split}'")
            self._split_ids = {int(i) for i in ids}
        return self._split_ids

    def items(self) -> Iterator[SourceItem]:
        self._episodes_of_split()  # fail early on a bad split
        for file in self.files:
            for index, payload in enumerate(iter_tfrecords(file, verify_data=self.options["verify_crc"])):
                try:
                    features = parse_example(payload)
                except ValueError as err:
                    raise self.error(file.name, f"not a tf.train.Example ({err})", record=f"#{index}") from None
                episode = features.get("episode_id") or []
                yield SourceItem(file.name, str(episode[0]) if len(episode) == 1 else f"#{index}", features)

    def _feature(self, item: SourceItem, name: str) -> list:
        values = item.data.get(name)
        if values is None:
            raise self.error(item, f"missing feature '{name}'")
        return values

    def records(self, item: SourceItem, out: Path) -> list[tuple[str, dict]]:
        features = {name: self._feature(item, name) for name in FEATURES}
        if len(features["episode_id"]) != 1 or not isinstance(features["episode_id"][0], int):
            raise self.error(item, "'episode_id' is not one int64")
        episode = features["episode_id"][0]
        split_ids = self._episodes_of_split()
        if split_ids is not None and episode not in split_ids:
            self.count("episodes_in_other_splits")
            return []
        if len(features["goal"]) != 1:
            raise self.error(item, "'goal' is not one string")
        goal = features["goal"][0].decode("utf-8")
        actions, instructions = features["actions"], features["step_instructions"]
        screenshots, trees = features["screenshots"], features["accessibility_trees"]
        widths, heights = features["screenshot_widths"], features["screenshot_heights"]
        steps = len(actions)
        if len(screenshots) != steps + 1 or len(trees) != steps + 1 or len(instructions) != steps:
            raise self.error(item, f"{steps} actions for {len(screenshots)} screenshots, {len(trees)} accessibility "
                                   f"trees and {len(instructions)} step instructions (expected {steps + 1}, "
                                   f"{steps + 1} and {steps})")  # fmt: skip
        if len(widths) != len(screenshots) or len(heights) != len(screenshots):
            raise self.error(item, f"{len(screenshots)} screenshots but {len(widths)} widths and {len(heights)} heights")

        records, history = [], []
        for step in range(steps):
            where = f"{item.key} step {step}"
            try:
                action = json.loads(actions[step])
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise self.error(item.file, f"action is not JSON ({err})", record=where) from None
            if not isinstance(action, dict) or not isinstance(action.get("action_type"), str):
                raise self.error(item.file, "action has no 'action_type'", record=where)
            answer = compact_action(action)
            width, height = widths[step], heights[step]
            box = None
            if action["action_type"] in POINT_ACTIONS and "x" in action and "y" in action:
                try:
                    nodes = a11y_nodes(trees[step])
                except ValueError as err:
                    raise self.error(item.file, f"accessibility tree: {err}", record=where) from None
                try:
                    x, y = float(action["x"]), float(action["y"])
                except (TypeError, ValueError):
                    raise self.error(item.file, f"action point is not numeric: {answer}", record=where) from None
                found = element_box(nodes, x, y)
                if found is not None:
                    left, top, right, bottom = max(0, found[0]), max(0, found[1]), min(width, found[2]), min(height, found[3])
                    box = [left, top, right, bottom] if right > left and bottom > top else None
                self.count("point_actions")
                self.count("point_actions_without_element", box is None)
            suffix = image_suffix(screenshots[step])
            if suffix is None:
                raise self.error(item.file, "screenshot is not an image", record=where)
            image = write_once(out / "images" / "androidcontrol" / f"{episode}_{step}{suffix}", screenshots[step])
            instruction = instructions[step].decode("utf-8")
            records.append((self.name, {
                "messages": chat(self._prompt(goal, instruction, history, width, height), answer),
                "images": [str(image)],
                "boxes": [[box] if box else None],
                "meta": {
                    "id": f"{episode}_{step}",
                    "episode_id": episode,
                    "step": step,
                    "num_steps": steps,
                    "split": self.options["split"],
                    "level": self.options["level"],
                    "goal": goal,
                    "step_instruction": instruction,
                    "action": answer,
                    "action_type": action["action_type"],
                    "target_box": box,
                    "screen_size": [width, height],
                },
            }))  # fmt: skip
            history.append(answer)
        return records

    def _prompt(self, goal: str, instruction: str, history: list[str], width: int, height: int) -> str:
        lines = [f"{IMAGE_TOKEN}You are operating an Android phone; the screenshot shows its screen ({width}x{height} pixels).",
                 f"Goal: {goal}"]  # fmt: skip
        if self.options["level"] == "low":
            lines.append(f"Step instruction: {instruction}")
        if history:
            lines.append("Previous actions:")
            lines.extend(f"{number}. {action}" for number, action in enumerate(history, 1))
        else:
            lines.append("Previous actions: none")
        lines.append(f"Reply with the next action as one JSON object, one of: {ACTION_SPACE}.")
        return "\n".join(lines)
