"""Task metrics against hand-computed values on crafted predictions."""

from __future__ import annotations

import json

import pytest

from lf_ext.eval.metrics import (aggregate, extract_numbers, normalize_vqa_answer, open_answer_correct, parse_action,
                                 parse_choice, parse_number, score, score_action)  # fmt: skip


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"),
    ("  The two   dogs ", "2 dogs"),
    ("A red car", "red car"),
    ("dont know", "don't know"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("t-shirt", "t shirt"),
    ("It's 2:30!", "it's 2:30"),
    ("none", "0"),
    ("U.S.A.", "usa"),
    ("Ten (10)", "10 10"),
    ("an Apple's\tcolor", "apple's color"),
    ("we were in the shed", "we were in shed"),  # "were"/"shed" are words, not contractions
])  # fmt: skip
def test_vqa_normalization(text, expected):
    assert normalize_vqa_answer(text) == expected


def test_gqa_exact_match_and_aggregate():
    records = [
        ({"answer": "yes", "question_type": "verify", "semantic_type": "rel"}, "Yes."),
        ({"answer": "table", "question_type": "verify", "semantic_type": "obj"}, "the table"),
        ({"answer": "3", "question_type": "verify", "semantic_type": "attr"}, "two"),
        ({"answer": "blue", "question_type": "query", "semantic_type": "attr"}, "red"),
    ]
    scores = [score("gqa", prediction, {"meta": meta}) for meta, prediction in records]
    assert [s["correct"] for s in scores] == [1.0, 1.0, 0.0, 0.0]
    assert scores[2]["prediction"] == "2" and scores[2]["answer"] == "3"
    summary = aggregate("gqa", scores)
    assert summary["n"] == 4 and summary["correct"] == 0.5
    assert summary["by_question_type"] == {"query": {"n": 1, "correct": 0.0}, "verify": {"n": 3, "correct": 2 / 3}}
    assert summary["by_semantic_type"]["attr"] == {"n": 2, "correct": 0.0}


def test_ocrvqa_exact_match():
    meta = {"answer": "Don't Make Me Think", "question_type": "title"}
    assert score("ocrvqa", "dont make me think", {"meta": meta})["correct"] == 1.0
    assert score("ocrvqa", "Don't Make Me Think, Revisited", {"meta": meta})["correct"] == 0.0
    assert score("ocrvqa", None, {"meta": meta})["correct"] == 0.0
    summary = aggregate("ocrvqa", [score("ocrvqa", p, {"meta": meta}) for p in ("Don't make me think.", "no")])
    assert summary == {"n": 2, "correct": 0.5, "by_question_type": {"title": {"n": 2, "correct": 0.5}}}


@pytest.mark.parametrize("response, options, expected", [
    ("B", ["a", "b", "c", "d"], "B"),
    ("(C)", ["a", "b", "c", "d"], "C"),
    ("The answer is (B).", ["a", "b", "c"], "B"),
    ("Answer: D", ["a", "b", "c", "d"], "D"),
    ("I think it's C. Because the curve rises.", ["a", "b", "c", "d"], "C"),
    ("(A) is wrong; the answer is (B)", ["a", "b", "c"], "B"),
    ("A cat.", ["dog", "cat"], "B"),  # "A" as an article is not an answer
    ("It is dark red", ["red", "dark red", "blue"], "B"),
    ("E", ["a", "b", "c", "d"], None),  # not an option
    ("I am not sure", ["a", "b"], None),
    ("", ["a", "b"], None),
    ("b", ["x", "y"], None),  # lowercase letters are words, not choices
])  # fmt: skip
def test_parse_choice(response, options, expected):
    assert parse_choice(response, options) == expected


def test_numbers():
    assert extract_numbers("x = 1,200.5 and 3/4 and 45% and -2e3; abc5") == [1200.5, 0.75, 0.45, -2000.0]
    assert parse_number("1,200") == 1200.0 and parse_number("3 / 4") == 0.75 and parse_number("12.") == 12.0
    assert parse_number("12 apples") is None and parse_number("abc") is None


@pytest.mark.parametrize("prediction, answers, expected", [
    ("The answer is 12.", ["12"], True),
    ("x = 11.996", ["12"], True),  # within 1%
    ("about 13", ["12"], False),
    ("3/4", ["0.75"], True),
    ("1,200 people", ["1200"], True),
    ("2 + 3 = 5", ["2"], False),  # numbers after the last indicator only
    ("I see 2 and 5", ["5"], True),
    ("0.06", ["0.05"], False),
    ("It is Paris.", ["Paris"], True),
    ("Parisian food", ["Paris"], False),
    ("three", ["3", "3.0"], False),
    ("The answer: a cube", ["Cube"], True),
])  # fmt: skip
def test_open_answers(prediction, answers, expected):
    assert open_answer_correct(prediction, answers) is expected


def test_mmmu_score_and_aggregate():
    mc = {"question_type": "multiple-choice", "options": ["1", "2", "3"], "answer": "C", "answers": ["C"], "subject": "Math"}
    open_ = {"question_type": "open", "options": [], "answer": "['3', '3.0']", "answers": ["3", "3.0"], "subject": "Art"}
    scores = [score("mmmu", "The answer is (C)", {"meta": mc}), score("mmmu", "B", {"meta": mc}),
              score("mmmu", "nothing", {"meta": mc}), score("mmmu", "so it is 3.0", {"meta": open_})]  # fmt: skip
    assert [s["correct"] for s in scores] == [1.0, 0.0, 0.0, 1.0]
    assert scores[0]["prediction"] == "C" and scores[2]["prediction"] is None
    summary = aggregate("mmmu", scores)
    assert summary["correct"] == 0.5
    assert summary["by_subject"] == {"Art": {"n": 1, "correct": 1.0}, "Math": {"n": 3, "correct": 1 / 3}}
    assert summary["by_question_type"] == {"multiple-choice": {"n": 3, "correct": 1 / 3}, "open": {"n": 1, "correct": 1.0}}


def test_parse_action():
    assert parse_action('Thought: tap OK.\n```json\n{"action_type": "click", "x": 3, "y": 4}\n```') == \
        {"action_type": "click", "x": 3, "y": 4}  # fmt: skip
    assert parse_action("{'action_type': 'scroll', 'direction': 'up'}") == {"action_type": "scroll", "direction": "up"}
    assert parse_action('{"foo": {"action_type": "wait"}}') == {"action_type": "wait"}
    assert parse_action("click the button") is None


def android(action: dict, box=None, size=(1000, 2000)) -> dict:
    return {"meta": {"action": json.dumps(action), "action_type": action["action_type"], "target_box": box,
                     "screen_size": list(size)}}  # fmt: skip


def test_androidcontrol_step_accuracy():
    click = android({"action_type": "click", "x": 12, "y": 30}, box=[5, 20, 30, 40])
    cases = [
        (click, '{"action_type":"click","x":29,"y":39}', (1, 1)),
        (click, 'Action: {"action_type": "click", "x": 30, "y": 25}', (1, 0)),  # x1 is exclusive
        (click, "{'action_type': 'click', 'x': 6, 'y': 21}", (1, 1)),
        (click, '{"action_type":"click"}', (1, 0)),
        (click, '{"action_type":"long_press","x":12,"y":30}', (0, 0)),
        (click, "I would click the OK button", (0, 0)),
        (android({"action_type": "click", "x": 500, "y": 1000}), '{"action_type":"click","x":600,"y":1200}', (1, 0)),
        (android({"action_type": "click", "x": 500, "y": 1000}), '{"action_type":"click","x":590,"y":1180}', (1, 1)),
        (android({"action_type": "input_text", "text": "Hello World"}), '{"action_type":"type","text":" hello  world "}', (1, 1)),
        (android({"action_type": "input_text", "text": "Hello"}), '{"action_type":"input_text","text":"Hell"}', (1, 0)),
        (android({"action_type": "open_app", "app_name": "Zoom"}), '{"action_type":"open_app","app_name":"zoom"}', (1, 1)),
        (android({"action_type": "open_app", "app_name": "Zoom"}), '{"action_type":"open_app","app_name":"Zoom Meetings"}', (1, 0)),
        (android({"action_type": "scroll", "direction": "down"}), '{"action_type":"scroll","direction":"up"}', (1, 0)),
        (android({"action_type": "navigate_back"}), '{"action_type":"navigate_back"}', (1, 1)),
    ]  # fmt: skip
    scores = [score("androidcontrol", prediction, record) for record, prediction, _ in cases]
    assert [(s["action_type_correct"], s["step_correct"]) for s in scores] == [expected for _, _, expected in cases]
    assert scores[5]["parsed"] is False and scores[8]["action_type"] == "input_text"
    summary = aggregate("androidcontrol", scores)
    assert summary["n"] == 14 and summary["action_type_correct"] == 12 / 14 and summary["step_correct"] == 6 / 14
    assert summary["by_action_type"]["click"] == {"n": 8, "action_type_correct": 6 / 8, "step_correct": 3 / 8}
    assert summary["by_action_type"]["scroll"] == {"n": 1, "action_type_correct": 1.0, "step_correct": 0.0}


def test_score_action_directly():
    gold = {"action_type": "long_press", "x": 10, "y": 10}
    assert score_action('{"action_type":"long_click","x":11,"y":12}', gold, [0, 0, 20, 20], [100, 100]) == \
        {"action_type_correct": 1.0, "step_correct": 1.0, "parsed": True, "action_type": "long_press"}  # fmt: skip


def test_seedbench_choice_accuracy():
    meta = {"options": ["one", "two", "three", "four"], "answer": "C", "question_type": "Action Recognition"}
    other = {**meta, "answer": "A", "question_type": "Action Prediction"}
    scores = [score("seedbench", "C", {"meta": meta}), score("seedbench", "(C) three", {"meta": meta}),
              score("seedbench", "three", {"meta": meta}), score("seedbench", "D.", {"meta": meta}),
              score("seedbench", "The answer is A", {"meta": other})]  # fmt: skip
    assert [s["correct"] for s in scores] == [1.0, 1.0, 1.0, 0.0, 1.0]
    summary = aggregate("seedbench", scores)
    assert summary["correct"] == 0.8
    assert summary["by_question_type"] == {"Action Prediction": {"n": 1, "correct": 1.0},
                                           "Action Recognition": {"n": 4, "correct": 0.75}}  # fmt: skip


def test_unknown_task_and_empty_aggregate():
    with pytest.raises(ValueError, match="unknown task 'vqa'"):
        score("vqa", "x", {"meta": {}})
    assert aggregate("seedbench", []) == {"n": 0, "correct": 0.0, "by_question_type": {}}
