"""Each benchmark's standard metric as pure functions: ``score(task, prediction, record)`` and ``aggregate``.

``record`` is a converted record (:mod:`lf_ext.eval.convert`); the gold data come from its ``meta``.

* ``gqa``, ``ocrvqa``: exact match after the VQA answer normalisation (:func:`normalize_vqa_answer`).
* ``mmmu``: multiple choice by the option parsed from free text (:func:`parse_choice`); open questions by
  normalised string match or numeric tolerance (:func:`open_answer_correct`).
* ``androidcontrol``: action-type accuracy and step accuracy (:func:`score_action`).
* ``seedbench``: choice accuracy (A-D parsed like MMMU's options).
* ``exact``: any sharegpt dataset with short answers (e.g. the shipped scenes): VQA exact match against
  ``meta.answer`` or else the record's last assistant turn, grouped by ``meta.question_type``.
"""

from __future__ import annotations

import ast
import json
import math
import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

LETTERS = string.ascii_uppercase

# -- VQA answer normalisation ---------------------------------------------------------------------------------------
# As the VQA evaluation describes it: lowercase; periods removed except as a decimal point; number words to digits;
# articles removed; missing apostrophes of contractions restored; other punctuation (except ' and :) to a space;
# a comma between digits removed. Contractions whose bare form is also a word (its, ill, hell, well, were, shed,
# lets, id) are left alone.

NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {
    word.replace("'", ""): word
    for word in (
        "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hasn't haven't he'd he's "
        "how'd how'll how's i'd've i'm i've isn't it'd it'll ma'am mightn't might've mustn't must've needn't "
        "o'clock shan't she'd've she's should've shouldn't that's there'd there're there's they'd they'll they're "
        "they've wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've "
        "who'd who'll who's who've why'll why're why's won't would've wouldn't y'all you'd you'll you're you've"
    ).split()
}
_PUNCTUATION = "".join(ch for ch in string.punctuation if ch not in "':.")


def normalize_vqa_answer(text: str) -> str:
    """A VQA answer in the form it is compared in (see the rules above)."""
    text = " ".join(str(text).lower().split())
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", "", text)
    text = text.translate({ord(ch): " " for ch in _PUNCTUATION})
    words = []
    for word in text.split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_exact_match(prediction: str, answer: str) -> bool:
    return normalize_vqa_answer(prediction) == normalize_vqa_answer(answer)


# -- multiple choice ------------------------------------------------------------------------------------------------


def _normalize_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", str(text).lower()).split())


def parse_choice(response: str, options: list[str]) -> str | None:
    """The option letter a free-text response chose, or None. Tried in order, the first tier with a match wins:

    1. the whole response, stripped of spaces, punctuation and brackets, is a letter (``"B"``, ``"(B)"``, ``"B."``);
    2. a letter in brackets: ``(B)``, ``[B]``;
    3. a letter marked as an answer: after ``answer``/``answer is``/``option``/``choice``, or a capital letter
       directly followed by ``.``, ``:`` or ``)``, or ending the response;
    4. an option's text appearing in the response (word-aligned, case and punctuation ignored).

    Only capital letters of existing options count. When a tier finds several letters, the one mentioned last wins
    (answers tend to come last; for option texts, the one ending last, then the longest). No match: None, scored
    as wrong (deterministic, unlike a random guess).
    """
    letters = LETTERS[: len(options)]
    if not letters:
        return None
    text = str(response or "").strip()
    bare = text.strip(" \t\n.,:;!?()[]{}*'\"`")
    if len(bare) == 1 and bare in letters:
        return bare
    pick = f"[{letters}]"
    tiers = [
        [rf"\(({pick})\)", rf"\[({pick})\]"],
        [rf"(?i:answer(?:\s+is)?|option|choice)\s*:?\s*\(?({pick})\b", rf"(?<![A-Za-z0-9])({pick})(?:[.:)]|\s*$)"],
    ]
    for patterns in tiers:
        found = [(match.start(1), match.group(1)) for pattern in patterns for match in re.finditer(pattern, text)]
        if found:
            return max(found)[1]
    normalized = f" {_normalize_text(text)} "
    found = []
    for letter, option in zip(letters, options):
        needle = _normalize_text(option)
        if needle and f" {needle} " in normalized:
            found.append((normalized.rfind(f" {needle} ") + len(needle), len(needle), letter))
    return max(found)[2] if found else None  # latest end; "dark red" beats "red" inside it


# -- open answers (MMMU) --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"
                     r"(?:\s*/\s*\d+(?:\.\d+)?)?%?")
_INDICATORS = re.compile(r"(?i)(?:final answer|answer is|answer:|answer =|=)")


def parse_number(text: str) -> float | None:
    """A string that is one number (``1,200``, ``-3.5``, ``2e3``, ``3/4``, ``45%``) as a float, else None."""
    text = str(text).strip().rstrip(".")
    if not _NUMBER.fullmatch(text):
        return None
    text = text.replace(",", "").replace(" ", "")
    percent = text.endswith("%")
    text = text.rstrip("%")
    try:
        if "/" in text:
            top, bottom = text.split("/")
            value = float(top) / float(bottom)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        return None
    return value / 100 if percent else value


def extract_numbers(text: str) -> list[float]:
    """Every number in a text, in order (see :func:`parse_number` for the forms)."""
    values = (parse_number(match.group(0)) for match in _NUMBER.finditer(str(text)))
    return [value for value in values if value is not None]


def numbers_match(prediction: float, answer: float) -> bool:
    """Within 1% of the answer, or equal once both are rounded to two decimals."""
    return math.isclose(prediction, answer, rel_tol=0.01, abs_tol=1e-9) or round(prediction, 2) == round(answer, 2)


def open_answer_correct(prediction: str, answers: Iterable[str]) -> bool:
    """An open answer is right when, for any accepted answer: (numeric answer) a number of the prediction matches it
    (:func:`numbers_match`), the numbers taken after the last answer indicator (``answer is``, ``answer:``, ``=``)
    when there is one, else from the whole prediction; (text answer) its normalised text equals the normalised final
    part of the prediction or occurs in the normalised prediction as whole words."""
    prediction = str(prediction or "")
    indicators = list(_INDICATORS.finditer(prediction))
    final = prediction[indicators[-1].end():] if indicators else prediction
    numbers = extract_numbers(final)
    whole = f" {_normalize_text(prediction)} "
    for answer in answers:
        value = parse_number(answer)
        if value is not None:
            if any(numbers_match(n, value) for n in numbers):
                return True
            continue
        needle = _normalize_text(answer)
        if needle and (needle == _normalize_text(final) or f" {needle} " in whole):
            return True
    return False


# -- AndroidControl -------------------------------------------------------------------------------------------------

ACTION_ALIASES = {"type": "input_text", "long_click": "long_press", "tap": "click", "home": "navigate_home",
                  "press_home": "navigate_home", "back": "navigate_back", "press_back": "navigate_back",
                  "swipe": "scroll", "launch_app": "open_app"}  # fmt: skip
TAP_DISTANCE = 0.14  # without a target box: the point must lie within this distance of the gold one (screen units)


def canonical_action_type(action_type: Any) -> str:
    name = str(action_type or "").strip().lower().replace("-", "_").replace(" ", "_")
    return ACTION_ALIASES.get(name, name)


def parse_action(text: str) -> dict | None:
    """The first JSON object with an ``action_type`` in a text (surrounding text and code fences are ignored);
    Python-literal dicts (single quotes) are accepted too."""
    text = str(text or "")
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            end = text.find("}", start)
            try:
                value = ast.literal_eval(text[start:end + 1]) if end > start else None
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(value, dict) and "action_type" in value:
            return value
    return None


def _text_equal(a: Any, b: Any) -> bool:
    return " ".join(str(a or "").casefold().strip(" \"'").split()) == " ".join(str(b or "").casefold().strip(" \"'").split())


def _point(action: Mapping) -> tuple[float, float] | None:
    try:
        return float(action["x"]), float(action["y"])
    except (KeyError, TypeError, ValueError):
        return None


def score_action(prediction: str, gold: Mapping, target_box: list | None, screen_size: list | None) -> dict:
    """Action-type match and step match of a predicted action against the gold one.

    Step match: same type (aliases such as ``type`` -> ``input_text`` folded) and, for ``click``/``long_press``, the
    predicted point inside the target element's box (``[x0, y0, x1, y1]``, x1/y1 exclusive) or, without a box, within
    ``TAP_DISTANCE`` of the gold point in screen-normalised coordinates; for ``input_text`` the text and for
    ``open_app`` the app name equal (case and spacing ignored); for ``scroll`` the same direction.
    """
    predicted = parse_action(prediction)
    gold_type = canonical_action_type(gold.get("action_type"))
    predicted_type = canonical_action_type(predicted.get("action_type")) if predicted else None
    type_ok = predicted_type == gold_type
    step_ok = type_ok
    if type_ok and gold_type in ("click", "long_press"):
        point = _point(predicted)
        if point is None:
            step_ok = False
        elif target_box:
            x0, y0, x1, y1 = target_box
            step_ok = x0 <= point[0] < x1 and y0 <= point[1] < y1
        else:
            gold_point, (width, height) = _point(gold), screen_size or (1, 1)
            step_ok = gold_point is not None and math.hypot((point[0] - gold_point[0]) / width,
                                                            (point[1] - gold_point[1]) / height) <= TAP_DISTANCE  # fmt: skip
    elif type_ok and gold_type == "input_text":
        step_ok = _text_equal(predicted.get("text"), gold.get("text"))
    elif type_ok and gold_type == "open_app":
        step_ok = _text_equal(predicted.get("app_name"), gold.get("app_name"))
    elif type_ok and gold_type == "scroll":
        step_ok = _text_equal(predicted.get("direction"), gold.get("direction"))
    return {"action_type_correct": float(type_ok), "step_correct": float(step_ok), "parsed": predicted is not None,
            "action_type": gold_type}  # fmt: skip


# -- entry points ---------------------------------------------------------------------------------------------------

GROUPS = {
    "exact": ("question_type",),
    "gqa": ("question_type", "semantic_type"),
    "ocrvqa": ("question_type",),
    "mmmu": ("subject", "question_type"),
    "androidcontrol": ("action_type",),
    "seedbench": ("question_type",),
}
METRICS = {"androidcontrol": ("action_type_correct", "step_correct")}


def _last_answer(record: Mapping) -> str:
    answers = [m["content"] for m in record.get("messages") or [] if m.get("role") == "assistant"]
    if not answers:
        raise ValueError("the record has no assistant turn to compare with")
    return answers[-1]


def score(task: str, prediction: str, record: Mapping) -> dict:
    """Score one prediction against a converted record; the dict holds the metric values (0/1) and the fields
    :func:`aggregate` groups by."""
    meta = record.get("meta") or {}
    prediction = "" if prediction is None else str(prediction)
    if task in ("gqa", "ocrvqa", "exact"):
        answer = meta["answer"] if task != "exact" or "answer" in meta else _last_answer(record)
        result = {"correct": float(vqa_exact_match(prediction, answer)),
                  "prediction": normalize_vqa_answer(prediction), "answer": normalize_vqa_answer(answer)}  # fmt: skip
    elif task == "mmmu":
        if meta["question_type"] == "multiple-choice":
            choice = parse_choice(prediction, meta["options"])
            result = {"correct": float(choice is not None and choice == meta["answer"]), "prediction": choice}
        else:
            result = {"correct": float(open_answer_correct(prediction, meta["answers"])), "prediction": prediction}
    elif task == "seedbench":
        choice = parse_choice(prediction, meta["options"])
        result = {"correct": float(choice == meta["answer"]), "prediction": choice}
    elif task == "androidcontrol":
        return score_action(prediction, json.loads(meta["action"]), meta.get("target_box"), meta.get("screen_size"))
    else:
        raise ValueError(f"unknown task '{task}'; known: {', '.join(GROUPS)}")
    result.update({key: meta.get(key, "") for key in GROUPS[task]})
    return result


def _means(scores: list[Mapping], metrics: tuple[str, ...]) -> dict:
    n = len(scores)
    return {"n": n, **{metric: (sum(s[metric] for s in scores) / n if n else 0.0) for metric in metrics}}


def aggregate(task: str, per_sample_scores: Iterable[Mapping]) -> dict:
    """Overall means and means per group (e.g. ``by_question_type``) of the per-sample scores of :func:`score`.

    Metrics: ``correct`` (accuracy), or for AndroidControl ``action_type_correct`` and ``step_correct``.
    """
    if task not in GROUPS:
        raise ValueError(f"unknown task '{task}'; known: {', '.join(GROUPS)}")
    scores = list(per_sample_scores)
    metrics = METRICS.get(task, ("correct",))
    result: dict[str, Any] = _means(scores, metrics)
    for key in GROUPS[task]:
        groups: dict[str, list] = defaultdict(list)
        for item in scores:
            groups[str(item.get(key, ""))].append(item)
        result[f"by_{key}"] = {name: _means(group, metrics) for name, group in sorted(groups.items())}
    return result
