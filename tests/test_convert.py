"""Benchmark converters end to end on small fixtures written in each dataset's published on-disk format."""

from __future__ import annotations

import argparse
import gzip
import json
import struct
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from lf_ext.eval.convert import CONVERTERS, convert
from lf_ext.eval.convert.androidcontrol import A11yNode, a11y_nodes, element_box
from lf_ext.eval.convert.common import MissingMedia
from lf_ext.eval.convert.jsonstream import JsonStream, iter_array_member, iter_members, read_member
from lf_ext.eval.convert.tfrecord import crc32c, iter_tfrecords, masked_crc32c, parse_example

SHORT = "Answer the question using a single word or phrase."
CHOICE = "Answer with the option's letter from the given choices directly."
TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}


def run(task, src, out, **options):
    return convert(task, src, out, progress=False, **options)


def lines(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def image(path: Path, size=(32, 24), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def png_bytes(size=(40, 80), color=(0, 90, 200)) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


# -- GQA ------------------------------------------------------------------------------------------------------------


def gqa_question(image_id, question, answer, structural="query", annotations=None, **extra):
    return {"semantic": [], "entailed": [], "equivalent": [], "question": question, "imageId": image_id,
            "isBalanced": True, "groups": {"global": None, "local": "x"}, "answer": answer,
            "semanticStr": "select: x", "annotations": annotations or {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"structural": structural, "semantic": "rel", "detailed": "relS"},
            "fullAnswer": f"The answer is {answer}.", **extra}  # fmt: skip


def make_gqa(src: Path, extra_questions: int = 0) -> Path:
    questions = {
        "201": gqa_question("n1", "Is the cat on the table?", "yes", "verify",
                            {"question": {"2": "o1", "5": "o2"}, "answer": {}, "fullAnswer": {"2": "o1", "6": "o2"}}),
        "202": gqa_question("n2", "What animal is it?", "dog", "query",
                            {"answer": {"0": "o3"}, "question": {"3:5": "o3"}, "fullAnswer": {}}),
        "203": gqa_question("n1", "What color is the sky?", "blue", "query",
                            {"question": {"4": "o9"}, "answer": {}, "fullAnswer": {}}),
    }  # fmt: skip
    for i in range(extra_questions):
        questions[str(300 + i)] = gqa_question("n1", f"Question {i}?", f"a{i}")
    src.mkdir(parents=True)
    (src / "testdev_balanced_questions.json").write_text(json.dumps(questions, indent=1))
    image(src / "images" / "n1.jpg", (64, 48))
    image(src / "images" / "n2.png", (20, 20))  # found by stem whatever the extension
    graphs = {"n1": {"width": 64, "height": 48, "location": "room", "weather": "none", "objects": {
        "o1": {"name": "cat", "x": 10, "y": 5, "w": 20, "h": 10, "attributes": ["black"], "relations": []},
        "o2": {"name": "table", "x": 50, "y": 40, "w": 30, "h": 30, "attributes": [], "relations": []},
    }}}  # fmt: skip
    (src / "val_sceneGraphs.json").write_text(json.dumps(graphs))
    return src


def test_gqa_end_to_end_with_boxes(tmp_path):
    src, out = make_gqa(tmp_path / "gqa"), tmp_path / "out"
    summary = run("gqa", src, out, scene_graphs="val_sceneGraphs.json")
    path = out / "gqa_testdev_balanced.jsonl"
    assert summary["outputs"] == {"gqa_testdev_balanced": str(path)}
    assert summary["written"] == 3 and summary["skipped"] == 0 and summary["finished"]
    assert summary["unknown_objects"] == 1 and summary["images_without_scene_graph"] == 1
    first, second, third = lines(path)
    assert first["messages"] == [
        {"role": "user", "content": f"<image>Is the cat on the table?\n{SHORT}"},
        {"role": "assistant", "content": "yes"},
    ]
    assert first["images"] == [str((src / "images" / "n1.jpg").resolve())]
    assert first["boxes"] == [[[10, 5, 30, 15], [50, 40, 64, 48]]]  # x1/y1 exclusive, clipped to the image
    assert first["meta"] == {"id": "201", "image_id": "n1", "question_type": "verify", "semantic_type": "rel",
                             "detailed_type": "relS", "answer": "yes", "full_answer": "The answer is yes.",
                             "object_ids": ["o1", "o2"]}  # fmt: skip
    assert second["images"] == [str((src / "images" / "n2.png").resolve())]
    assert second["boxes"] == [None]  # n2 has no scene graph
    assert second["meta"]["object_ids"] == ["o3"]
    assert third["boxes"] == [[]] and third["meta"]["object_ids"] == ["o9"]  # o9 is not in n1's graph
    info = json.loads((out / "dataset_info.json").read_text())
    assert info == {"gqa_testdev_balanced": {"file_name": "gqa_testdev_balanced.jsonl", "formatting": "sharegpt",
                                             "columns": {"messages": "messages", "images": "images"}, "tags": TAGS}}  # fmt: skip


def test_gqa_without_scene_graphs_has_no_boxes_and_keeps_other_datasets(tmp_path):
    src, out = make_gqa(tmp_path / "gqa"), tmp_path / "out"
    out.mkdir()
    (out / "dataset_info.json").write_text(json.dumps({"mine": {"file_name": "mine.json"}}))
    run("gqa", src, out)
    assert all("boxes" not in r for r in lines(out / "gqa_testdev_balanced.jsonl"))
    assert set(json.loads((out / "dataset_info.json").read_text())) == {"mine", "gqa_testdev_balanced"}


def test_gqa_format_errors_name_the_file_and_record(tmp_path):
    src = make_gqa(tmp_path / "gqa")
    questions = json.loads((src / "testdev_balanced_questions.json").read_text())
    del questions["202"]["answer"]
    questions = {"20968379": questions.pop("202"), **questions}
    (src / "testdev_balanced_questions.json").write_text(json.dumps(questions))
    with pytest.raises(ValueError) as err:
        run("gqa", src, tmp_path / "out")
    assert str(err.value) == "gqa: testdev_balanced_questions.json record '20968379': missing 'answer'"

    (src / "testdev_balanced_questions.json").write_text('{"1": {"imageId": "n1", "question": "q?", "answer": "a"}, "2": {"imageId": ')
    with pytest.raises(ValueError, match="testdev_balanced_questions.json: invalid JSON"):
        run("gqa", src, tmp_path / "out2")


def test_gqa_missing_image_is_an_error_or_skipped(tmp_path):
    src = make_gqa(tmp_path / "gqa")
    (src / "images" / "n2.png").unlink()
    with pytest.raises(MissingMedia, match=r"gqa: testdev_balanced_questions.json record '202': image .*n2.jpg not found"):
        run("gqa", src, tmp_path / "out")
    summary = run("gqa", src, tmp_path / "out", skip_missing=True)  # resumes the failed run
    assert summary["written"] == 2 and summary["skipped"] == 1
    assert [r["meta"]["id"] for r in lines(tmp_path / "out" / "gqa_testdev_balanced.jsonl")] == ["201", "203"]


def test_resume_after_limit_and_rerun_is_a_no_op(tmp_path):
    src, out = make_gqa(tmp_path / "gqa", extra_questions=5), tmp_path / "out"
    ids = ["201", "202", "203"] + [str(300 + i) for i in range(5)]
    first = run("gqa", src, out, limit=3, checkpoint_every=1)
    assert first["written"] == 3 and not first["finished"] and not first["resumed"]
    second = run("gqa", src, out)
    assert second["written"] == 8 and second["written_this_run"] == 5 and second["finished"] and second["resumed"]
    assert [r["meta"]["id"] for r in lines(out / "gqa_testdev_balanced.jsonl")] == ids
    again = run("gqa", src, out)
    assert again["written"] == 8 and again["written_this_run"] == 0 and again["finished"]
    assert len(lines(out / "gqa_testdev_balanced.jsonl")) == 8
    path = out / "gqa_testdev_balanced.jsonl"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(ValueError, match="changed since the conversion finished"):
        run("gqa", src, out)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        run("gqa", src, out, limit=0)


def test_resume_after_a_crash_drops_lines_past_the_checkpoint(tmp_path, monkeypatch):
    src, out = make_gqa(tmp_path / "gqa", extra_questions=5), tmp_path / "out"
    gqa_cls = CONVERTERS["gqa"]
    original, calls = gqa_cls.records, []

    def crash_on_sixth(self, item, out_dir):
        calls.append(item.key)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return original(self, item, out_dir)

    monkeypatch.setattr(gqa_cls, "records", crash_on_sixth)
    with pytest.raises(KeyboardInterrupt):
        run("gqa", src, out, checkpoint_every=2)
    path = out / "gqa_testdev_balanced.jsonl"
    assert len(lines(path)) == 5  # 4 checkpointed, 1 written after the last checkpoint
    with open(path, "ab") as f:
        f.write(b'{"messages": [{"role": "us')  # a torn write
    monkeypatch.setattr(gqa_cls, "records", original)
    summary = run("gqa", src, out)
    assert summary["written"] == 8 and summary["written_this_run"] == 4
    assert [r["meta"]["id"] for r in lines(path)] == ["201", "202", "203"] + [str(300 + i) for i in range(5)]


def test_resume_refuses_other_options_and_foreign_files(tmp_path):
    src, out = make_gqa(tmp_path / "gqa"), tmp_path / "out"
    run("gqa", src, out)
    with pytest.raises(ValueError, match="other options"):
        run("gqa", src, out, scene_graphs="val_sceneGraphs.json")
    summary = run("gqa", src, out, scene_graphs="val_sceneGraphs.json", overwrite=True)
    assert summary["written"] == 3 and "boxes" in lines(out / "gqa_testdev_balanced.jsonl")[0]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "gqa_testdev_balanced.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="was not written by this converter"):
        run("gqa", src, foreign)


# -- OCR-VQA --------------------------------------------------------------------------------------------------------


def ocrvqa_book(questions, answers, split, title="Book", genre="Travel"):
    return {"imageURL": "http://ecx.images-amazon.com/images/I/x.jpg", "questions": questions, "answers": answers,
            "title": title, "authorName": "Ann Author", "genre": genre, "split": split}  # fmt: skip


def make_ocrvqa(src: Path) -> Path:
    data = {
        "0001": ocrvqa_book(["Who wrote this book?", "Is this a travel book?"], ["Ann Author", "Yes"], 3, "Trips"),
        "0002": ocrvqa_book(["What is the title of this book?"], ["Train Book"], 1),
        "0003": ocrvqa_book(["What is the genre of this book?"], ["Cookbooks"], 3, "Soup", "Cookbooks"),
    }
    src.mkdir(parents=True)
    (src / "dataset.json").write_text(json.dumps(data))
    image(src / "images" / "0001.jpg")
    image(src / "images" / "0002.jpg")
    image(src / "images" / "0003.gif")
    return src


def test_ocrvqa_test_split_one_record_per_question(tmp_path):
    src, out = make_ocrvqa(tmp_path / "ocr"), tmp_path / "out"
    summary = run("ocrvqa", src, out)
    assert summary["records"] == {"ocrvqa_test": 3}
    records = lines(out / "ocrvqa_test.jsonl")
    assert [r["meta"]["id"] for r in records] == ["0001_0", "0001_1", "0003_0"]
    assert records[0]["messages"] == [{"role": "user", "content": f"<image>Who wrote this book?\n{SHORT}"},
                                      {"role": "assistant", "content": "Ann Author"}]  # fmt: skip
    assert records[0]["images"] == [str((src / "images" / "0001.jpg").resolve())]
    assert records[0]["meta"] == {"id": "0001_0", "image_id": "0001", "question_index": 0, "question_type": "author",
                                  "answer": "Ann Author", "title": "Trips", "author": "Ann Author", "genre": "Travel"}  # fmt: skip
    assert records[1]["meta"]["question_type"] == "yes/no" and records[1]["messages"][1]["content"] == "Yes"
    assert records[2]["images"] == [str((src / "images" / "0003.gif").resolve())]
    assert records[2]["meta"]["question_type"] == "genre"
    train = run("ocrvqa", src, out, split="train")
    assert train["records"] == {"ocrvqa_train": 1}
    assert set(json.loads((out / "dataset_info.json").read_text())) == {"ocrvqa_test", "ocrvqa_train"}


def test_ocrvqa_errors_and_skip_missing(tmp_path):
    src = make_ocrvqa(tmp_path / "ocr")
    (src / "images" / "0003.gif").unlink()
    with pytest.raises(ValueError, match=r"ocrvqa: dataset.json record '0003_0': image .*0003\.\* not found"):
        run("ocrvqa", src, tmp_path / "a")
    assert run("ocrvqa", src, tmp_path / "b", skip_missing=True)["skipped"] == 1
    data = json.loads((src / "dataset.json").read_text())
    data["0001"]["answers"] = ["only one"]
    (src / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"^ocrvqa: dataset.json record '0001': 2 questions but 1 answers$"):
        run("ocrvqa", src, tmp_path / "c")


# -- MMMU -----------------------------------------------------------------------------------------------------------

MMMU_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MMMU_SCHEMA = pa.schema([("id", pa.string()), ("question", pa.string()), ("options", pa.string()),
                         ("explanation", pa.string()),
                         *[(f"image_{n}", MMMU_IMAGE) for n in range(1, 8)],
                         ("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
                         ("question_type", pa.string()), ("subfield", pa.string())])  # fmt: skip


def encoded(fmt: str, color) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), color).save(buffer, format=fmt)
    return buffer.getvalue()


def mmmu_row(row_id, question, options, answer, kind, images, subfield="Painting"):
    row = {"id": row_id, "question": question, "options": options, "explanation": "", "img_type": "['Diagrams']",
           "answer": answer, "topic_difficulty": "Easy", "question_type": kind, "subfield": subfield}  # fmt: skip
    for n in range(1, 8):
        row[f"image_{n}"] = {"bytes": images[n], "path": f"img{n}.x"} if n in images else None
    return row


def write_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=MMMU_SCHEMA), path, row_group_size=1)


def make_mmmu(src: Path) -> dict[str, bytes]:
    png, jpg, png2 = encoded("PNG", (1, 2, 3)), encoded("JPEG", (200, 100, 0)), encoded("PNG", (9, 9, 9))
    write_parquet(src / "Art" / "validation-00000-of-00001.parquet", [
        mmmu_row("validation_Art_1", "Which style is <image 1>?", "['Baroque', 'Cubism <image 2>', 'Pop art']", "B",
                 "multiple-choice", {1: png, 2: jpg, 3: png2}),
        mmmu_row("validation_Art_2", "How many panels do <image 1> and again <image 1> show?", "[]",
                 "['3', '3.0']", "open", {1: jpg}),
    ])  # fmt: skip
    write_parquet(src / "Math" / "validation-00000-of-00001.parquet", [
        mmmu_row("validation_Math_1", "Compute x in <image 1>.", "[]", "12", "open", {1: png}, "Algebra"),
    ])
    write_parquet(src / "Math" / "dev-00000-of-00001.parquet", [
        mmmu_row("dev_Math_1", "Dev <image 1>", "['1', '2']", "A", "multiple-choice", {1: png}),
    ])
    return {"png": png, "jpg": jpg, "png2": png2}


def test_mmmu_end_to_end(tmp_path):
    src, out = tmp_path / "mmmu", tmp_path / "out"
    blobs = make_mmmu(src)
    summary = run("mmmu", src, out)
    assert summary["records"] == {"mmmu_validation": 3}
    art1, art2, math1 = lines(out / "mmmu_validation.jsonl")
    mmmu_images = out / "images" / "mmmu"
    img = {n: str(mmmu_images / f"validation_Art_1_{n}") for n in (1, 2, 3)}
    assert art1["images"] == [img[3] + ".png", img[1] + ".png", img[2] + ".jpg"]  # unreferenced image_3 first
    assert art1["messages"] == [
        {"role": "user", "content": f"<image>Which style is <image>?\nA. Baroque\nB. Cubism <image>\nC. Pop art\n{CHOICE}"},
        {"role": "assistant", "content": "B"},
    ]
    assert Path(img[2] + ".jpg").read_bytes() == blobs["jpg"] and Path(img[3] + ".png").read_bytes() == blobs["png2"]
    assert art1["meta"] == {"id": "validation_Art_1", "subject": "Art", "subfield": "Painting",
                            "question_type": "multiple-choice", "options": ["Baroque", "Cubism <image 2>", "Pop art"],
                            "answer": "B", "answers": ["B"], "topic_difficulty": "Easy", "img_type": "['Diagrams']"}  # fmt: skip
    assert art2["messages"][0]["content"] == f"How many panels do <image> and again <image> show?\n{SHORT}"
    assert art2["images"] == [str(mmmu_images / "validation_Art_2_1.jpg")] * 2
    assert art2["messages"][1]["content"] == "3" and art2["meta"]["answers"] == ["3", "3.0"]
    assert math1["meta"]["subject"] == "Math" and math1["meta"]["options"] == []
    dev = run("mmmu", src, tmp_path / "dev", split="dev")
    assert dev["records"] == {"mmmu_dev": 1}
    only_math = run("mmmu", src, tmp_path / "math", subjects="Math")
    assert [r["meta"]["id"] for r in lines(tmp_path / "math" / "mmmu_validation.jsonl")] == ["validation_Math_1"]
    assert only_math["written"] == 1


def test_mmmu_errors(tmp_path):
    src = tmp_path / "mmmu"
    png = encoded("PNG", (1, 2, 3))
    write_parquet(src / "Art" / "validation-00000-of-00001.parquet",
                  [mmmu_row("validation_Art_9", "See <image 1> and <image 4>", "['a', 'b']", "A", "multiple-choice", {1: png})])  # fmt: skip
    with pytest.raises(ValueError, match=r"^mmmu: Art/validation-00000-of-00001.parquet record 'validation_Art_9': "
                                         r"the text refers to <image 4> but image_4 is empty$"):  # fmt: skip
        run("mmmu", src, tmp_path / "out")
    write_parquet(src / "Art" / "validation-00000-of-00001.parquet",
                  [mmmu_row("validation_Art_9", "See <image 1>", "not a list", "A", "multiple-choice", {1: png})])
    with pytest.raises(ValueError, match="'options' is not the string form of a list"):
        run("mmmu", src, tmp_path / "out2")
    with pytest.raises(ValueError, match="no test-\\*.parquet files"):
        run("mmmu", src, tmp_path / "out3", split="test")


# -- AndroidControl -------------------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | 0x80 if n else low)
        if not n:
            return bytes(out)


def pb_len(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def pb_int(field: int, value: int) -> bytes:
    return varint(field << 3) + varint(value)


def bytes_feature(values: list[bytes]) -> bytes:
    return pb_len(1, b"".join(pb_len(1, v) for v in values))


def int_feature(values: list[int], packed: bool = True) -> bytes:
    inner = pb_len(1, b"".join(varint(v) for v in values)) if packed else b"".join(pb_int(1, v) for v in values)
    return pb_len(3, inner)


def float_feature(values: list[float]) -> bytes:
    return pb_len(2, pb_len(1, struct.pack(f"<{len(values)}f", *values)))


def example(features: dict[str, bytes]) -> bytes:
    entries = b"".join(pb_len(1, pb_len(1, key.encode()) + pb_len(2, value)) for key, value in features.items())
    return pb_len(1, entries)


def tfrecord(payloads: list[bytes]) -> bytes:
    out = b""
    for payload in payloads:
        length = struct.pack("<Q", len(payload))
        out += length + struct.pack("<I", masked_crc32c(length)) + payload + struct.pack("<I", masked_crc32c(payload))
    return out


def rect(left, top, right, bottom) -> bytes:
    return pb_int(1, left) + pb_int(2, top) + pb_int(3, right) + pb_int(4, bottom)


def node(uid, bounds, clickable=False, text="") -> bytes:
    return (pb_int(1, uid) + pb_len(2, rect(*bounds)) + pb_len(3, b"android.widget.View") + pb_len(7, text.encode())
            + (pb_int(14, 1) if clickable else b"") + pb_int(16, 1) + pb_int(23, 1)
            + pb_len(24, pb_int(1, 16) + pb_len(2, b"click")) + pb_len(25, varint(uid + 1) + varint(uid + 2)))  # fmt: skip


def window(layer, nodes, window_type=1) -> bytes:
    tree = b"".join(pb_len(1, n) for n in nodes)
    return pb_len(1, rect(0, 0, 40, 80)) + pb_int(3, 7) + pb_int(4, layer) + pb_len(5, b"app") + pb_int(6, window_type) + pb_len(11, tree)


def forest(*windows) -> bytes:
    return b"".join(pb_len(1, w) for w in windows)


APP = window(1, [node(0, (0, 0, 40, 80)), node(1, (5, 20, 30, 40), clickable=True), node(2, (8, 25, 20, 35), text="OK")])
KEYBOARD = window(2, [node(0, (0, 60, 40, 80), clickable=True)], window_type=2)
EPISODE_ACTIONS = ['{"action_type":"click","x":12,"y":30}', '{"y": 70.0, "action_type": "long_press", "x": 20.0}',
                   '{"action_type":"input_text","text":"hello"}']  # fmt: skip


def episode(episode_id: int, screenshots: list[bytes], actions: list[str], packed=True) -> bytes:
    n = len(screenshots)
    return example({
        "episode_id": int_feature([episode_id]),
        "goal": bytes_feature([f"Say hello in episode {episode_id}".encode()]),
        "screenshots": bytes_feature(screenshots),
        "screenshot_widths": int_feature([40] * n, packed),
        "screenshot_heights": int_feature([80] * n, packed),
        "accessibility_trees": bytes_feature([forest(APP), forest(APP, KEYBOARD), forest(APP), forest(APP)][:n]),
        "actions": bytes_feature([a.encode() for a in actions]),
        "step_instructions": bytes_feature([f"do step {i}".encode() for i in range(len(actions))]),
    })  # fmt: skip


def make_androidcontrol(src: Path) -> list[bytes]:
    src.mkdir(parents=True)
    shots = [png_bytes(color=(i * 40, 0, 0)) for i in range(4)]
    (src / "android_control-00000-of-00002").write_bytes(gzip.compress(tfrecord([episode(101, shots, EPISODE_ACTIONS)])))
    other = episode(102, shots[:2], ['{"action_type":"navigate_back"}'], packed=False)
    (src / "android_control-00001-of-00002").write_bytes(gzip.compress(tfrecord([other])))
    (src / "splits.json").write_text(json.dumps({"train": [102], "validation": [], "test": [101]}))
    return shots


def test_tfrecord_and_example_decoding(tmp_path):
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    payload = example({"n": int_feature([3, -2]), "m": int_feature([5, 6], packed=False), "f": float_feature([0.5, -1.0]),
                       "b": bytes_feature([b"x", b""])})  # fmt: skip
    assert parse_example(payload) == {"n": [3, -2], "m": [5, 6], "f": [0.5, -1.0], "b": [b"x", b""]}
    plain = tmp_path / "plain.tfrecord"
    plain.write_bytes(tfrecord([b"one", b"two"]))
    assert list(iter_tfrecords(plain, verify_data=True)) == [b"one", b"two"]
    damaged = bytearray(tfrecord([b"one", b"two"]))
    damaged[-6] ^= 0xFF  # a byte of the second payload
    (tmp_path / "bad_data").write_bytes(bytes(damaged))
    assert list(iter_tfrecords(tmp_path / "bad_data")) == [b"one", b"t" + bytes([ord("w") ^ 0xFF]) + b"o"]
    with pytest.raises(ValueError, match="bad_data record 1: data checksum mismatch"):
        list(iter_tfrecords(tmp_path / "bad_data", verify_data=True))
    damaged = bytearray(tfrecord([b"one"]))
    damaged[9] ^= 1
    (tmp_path / "bad_length").write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="bad_length record 0: length checksum mismatch"):
        list(iter_tfrecords(tmp_path / "bad_length"))
    (tmp_path / "short.gz").write_bytes(gzip.compress(tfrecord([b"one", b"two"])[:-3]))
    with pytest.raises(ValueError, match=r"short.gz record 1: truncated record"):
        list(iter_tfrecords(tmp_path / "short.gz"))


def test_accessibility_tree_target_element():
    nodes = a11y_nodes(forest(APP, KEYBOARD))
    assert [n.bounds for n in nodes] == [(0, 0, 40, 80), (5, 20, 30, 40), (8, 25, 20, 35), (0, 60, 40, 80)]
    assert [n.layer for n in nodes] == [1, 1, 1, 2] and [n.interactive for n in nodes] == [False, True, False, True]
    assert element_box(nodes, 12, 30) == (5, 20, 30, 40)  # smallest interactive node, not the smaller label
    assert element_box(nodes, 20, 70) == (0, 60, 40, 80)  # the keyboard window is on top
    assert element_box(nodes, 30, 40) == (0, 0, 40, 80)  # right/bottom are exclusive: only the root is left
    assert element_box(nodes, 50, 10) is None
    assert element_box([A11yNode((0, 0, 10, 10), 0, False), A11yNode((2, 2, 4, 4), 0, False)], 3, 3) == (2, 2, 4, 4)


def test_androidcontrol_end_to_end(tmp_path):
    src, out = tmp_path / "ac", tmp_path / "out"
    shots = make_androidcontrol(src)
    summary = run("androidcontrol", src, out)
    assert summary["records"] == {"androidcontrol_test": 3} and summary["episodes_in_other_splits"] == 1
    assert summary["point_actions"] == 2 and summary["point_actions_without_element"] == 0
    steps = lines(out / "androidcontrol_test.jsonl")
    shot = [out / "images" / "androidcontrol" / f"101_{i}.png" for i in range(3)]
    assert [s["images"] for s in steps] == [[str(p)] for p in shot]
    assert [p.read_bytes() for p in shot] == shots[:3]
    assert [s["messages"][1]["content"] for s in steps] == [
        '{"action_type":"click","x":12,"y":30}', '{"action_type":"long_press","x":20,"y":70}',
        '{"action_type":"input_text","text":"hello"}']  # fmt: skip
    assert [s["boxes"] for s in steps] == [[[[5, 20, 30, 40]]], [[[0, 60, 40, 80]]], [None]]
    prompt = steps[2]["messages"][0]["content"]
    assert prompt.startswith("<image>You are operating an Android phone; the screenshot shows its screen (40x80 pixels).\n"
                             "Goal: Say hello in episode 101\nPrevious actions:\n"
                             '1. {"action_type":"click","x":12,"y":30}\n2. {"action_type":"long_press","x":20,"y":70}\n'
                             "Reply with the next action as one JSON object, one of: ")  # fmt: skip
    assert "Previous actions: none" in steps[0]["messages"][0]["content"] and "do step" not in prompt
    assert steps[1]["meta"] == {"id": "101_1", "episode_id": 101, "step": 1, "num_steps": 3, "split": "test",
                                "level": "high", "goal": "Say hello in episode 101", "step_instruction": "do step 1",
                                "action": '{"action_type":"long_press","x":20,"y":70}', "action_type": "long_press",
                                "target_box": [0, 60, 40, 80], "screen_size": [40, 80]}  # fmt: skip
    assert steps[2]["meta"]["target_box"] is None
    low = run("androidcontrol", src, out, level="low")
    assert low["records"] == {"androidcontrol_test_low": 3}
    assert "Step instruction: do step 2\n" in lines(out / "androidcontrol_test_low.jsonl")[2]["messages"][0]["content"]
    everything = run("androidcontrol", src, tmp_path / "all", split="all")
    assert everything["written"] == 4


def test_androidcontrol_errors(tmp_path):
    src = tmp_path / "ac"
    make_androidcontrol(src)
    shots = [png_bytes()] * 2
    bad = episode(101, shots, ['{"action_type":"click","x":1,"y":2}', "not json"])
    (src / "android_control-00000-of-00002").write_bytes(gzip.compress(tfrecord([bad])))
    with pytest.raises(ValueError, match=r"^androidcontrol: android_control-00000-of-00002 record '101': 2 actions for 2 screenshots"):
        run("androidcontrol", src, tmp_path / "out")
    bad = episode(101, shots + [png_bytes()], ['{"action_type":"click","x":1,"y":2}', "not json"])
    (src / "android_control-00000-of-00002").write_bytes(gzip.compress(tfrecord([bad])))
    with pytest.raises(ValueError, match=r"record '101 step 1': action is not JSON"):
        run("androidcontrol", src, tmp_path / "out2")
    with pytest.raises(ValueError, match="has no list 'nope'"):
        run("androidcontrol", src, tmp_path / "out3", split="nope")


# -- SEED-Bench -----------------------------------------------------------------------------------------------------


def seed_question(qid, type_id, data_type, data_id, answer="B", **extra):
    return {"answer": answer, "choice_a": "one", "choice_b": "two", "choice_c": "three", "choice_d": "four",
            "data_id": data_id, "data_type": data_type, "question": f"Question {qid}?", "question_id": qid,
            "question_type_id": type_id, **extra}  # fmt: skip


def make_seedbench(src: Path) -> Path:
    questions = [
        seed_question("101669", 5, "image", "1454426_2591111986.jpg"),
        seed_question("v1738", 10, "video", "94328.webm", "C"),
        seed_question("v1962", 11, "video", "P03/P03_24.MP4", "A", segment=[648.0, 658.0]),
        seed_question("v4397", 12, "video", "P06/cam01/P06_cereals.avi", "D", segment=[18, 166]),
    ]
    types = {"Scene Understanding": 1, "Instances Counting": 5, "Action Recognition": 10, "Action Prediction": 11,
             "Procedure Understanding": 12}  # fmt: skip
    src.mkdir(parents=True)
    (src / "SEED-Bench.json").write_text(json.dumps({"questions": questions, "question_type": types}, indent=2))
    image(src / "SEED-Bench-image" / "1454426_2591111986.jpg")
    for task, folder, qid in ((10, "ssv2_8_frame", "v1738"), (11, "kitchen_8_frame", "v1962"), (12, "breakfast_8_frame", "v4397")):
        for frame in (1, 2, 10):
            image(src / "v1_video" / f"task{task}" / folder / qid / f"{frame}.png", (8, 8))
    for data_id in ("94328.webm", "P03/P03_24.MP4", "P06/cam01/P06_cereals.avi"):
        (src / "videos" / data_id).parent.mkdir(parents=True, exist_ok=True)
        (src / "videos" / data_id).write_bytes(b"video")
    return src


def test_seedbench_video_frames(tmp_path):
    src, out = make_seedbench(tmp_path / "seed"), tmp_path / "out"
    summary = run("seedbench", src, out)
    assert summary["records"] == {"seedbench_video": 3}
    ssv2, kitchen, breakfast = lines(out / "seedbench_video.jsonl")
    frames = src / "v1_video" / "task10" / "ssv2_8_frame" / "v1738"
    assert ssv2["videos"] == [[str((frames / f"{n}.png").resolve()) for n in (1, 2, 10)]]  # numeric frame order
    assert ssv2["messages"] == [
        {"role": "user", "content": f"<video>Question v1738?\nA. one\nB. two\nC. three\nD. four\n{CHOICE}"},
        {"role": "assistant", "content": "C"},
    ]
    assert "images" not in ssv2
    assert ssv2["meta"] == {"id": "v1738", "question_type": "Action Recognition", "question_type_id": 10,
                            "data_id": "94328.webm", "data_type": "video", "options": ["one", "two", "three", "four"],
                            "answer": "C", "segment": [], "segment_unit": ""}  # fmt: skip
    assert kitchen["meta"]["segment"] == [648.0, 658.0] and kitchen["meta"]["segment_unit"] == "seconds"
    assert breakfast["meta"]["segment"] == [18.0, 166.0] and breakfast["meta"]["segment_unit"] == "frames"
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["seedbench_video"]["columns"] == {"messages": "messages", "videos": "videos"}


def test_seedbench_all_raw_and_missing(tmp_path):
    src = make_seedbench(tmp_path / "seed")
    summary = run("seedbench", src, tmp_path / "all", which="all", video_source="raw", video_dir="videos")
    assert summary["records"] == {"seedbench_image": 1, "seedbench_video": 3}
    picture = lines(tmp_path / "all" / "seedbench_image.jsonl")[0]
    assert picture["images"] == [str((src / "SEED-Bench-image" / "1454426_2591111986.jpg").resolve())]
    assert picture["messages"][0]["content"].startswith("<image>Question 101669?\nA. one\n")
    assert picture["meta"]["question_type"] == "Instances Counting"
    videos = lines(tmp_path / "all" / "seedbench_video.jsonl")
    assert [v["videos"] for v in videos] == [[str(src / "videos" / d)] for d in
                                             ("94328.webm", "P03/P03_24.MP4", "P06/cam01/P06_cereals.avi")]  # fmt: skip
    info = json.loads((tmp_path / "all" / "dataset_info.json").read_text())
    assert info["seedbench_image"]["columns"] == {"messages": "messages", "images": "images"}
    import shutil

    shutil.rmtree(src / "v1_video" / "task11")
    with pytest.raises(ValueError, match=r"seedbench: SEED-Bench.json record 'v1962': frames folder task11/\*/v1962 .*not found"):
        run("seedbench", src, tmp_path / "a")
    assert run("seedbench", src, tmp_path / "b", skip_missing=True)["skipped"] == 1


# -- streaming JSON, CLI, LLaMA-Factory -----------------------------------------------------------------------------


def test_json_stream_across_small_chunks(tmp_path):
    data = {"a": {"x": [1, 2.5, -3e2], "s": "é \"quoted\" \\ \u2603"}, "long_number": 12345678901234567890,
            "b": [], "c": {}, "d": None, "questions": [{"q": i, "t": "word " * i} for i in range(12)], "z": True}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data, indent=3, ensure_ascii=False), encoding="utf-8")
    for chunk in (1, 3, 7, 64):
        stream = JsonStream(path, chunk_size=chunk)
        assert {key: stream.value() for key in stream.members()} == data
        stream.close()
    assert list(iter_members(path)) == list(data.items())
    assert list(iter_array_member(path, "questions")) == data["questions"]
    assert read_member(path, "z") is True and read_member(path, "missing", "d") == "d"
    path.write_text('{"a": 1, "b": [1, 2 3]}')
    with pytest.raises(ValueError, match=r"data.json: invalid JSON: Expecting ',' delimiter"):
        list(iter_members(path))
    path.write_text('["not an object"]')
    with pytest.raises(ValueError, match=r"expected '\{'"):
        list(iter_members(path))


def test_cli_parser_and_main(tmp_path, capsys):
    from lf_ext.eval.convert.cli import add_parser, main

    parser = argparse.ArgumentParser(prog="lf-ext")
    add_parser(parser.add_subparsers(dest="command", required=True))
    src, out = make_gqa(tmp_path / "gqa"), tmp_path / "out"
    args = parser.parse_args(["data", "convert", "gqa", "--src", str(src), "--out", str(out),
                              "--scene-graphs", "val_sceneGraphs.json", "--no-progress", "--limit", "2"])  # fmt: skip
    assert args.func is main and main(args) == 0
    assert json.loads(capsys.readouterr().out)["written"] == 2
    args = parser.parse_args(["data", "convert", "gqa", "--src", str(src), "--out", str(out), "--scene-graphs",
                              "val_sceneGraphs.json", "--no-progress"])  # fmt: skip
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["written"] == 3
    args = parser.parse_args(["data", "convert", "seedbench", "--src", str(src), "--out", str(out), "--which", "image"])
    with pytest.raises(ValueError, match="annotations file .*SEED-Bench.json not found"):
        main(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "convert", "ocrvqa", "--src", "x", "--out", "y", "--split", "dev"])


def test_outputs_load_in_llamafactory(tmp_path):
    """LLaMA-Factory's dataset_info parser, ``datasets`` JSON loading and the sharegpt converter accept the files."""
    import datasets
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list
    from llamafactory.hparams import DataArguments

    out = tmp_path / "out"
    run("gqa", make_gqa(tmp_path / "gqa"), out, scene_graphs="val_sceneGraphs.json")
    run("seedbench", make_seedbench(tmp_path / "seed"), out)
    make_androidcontrol(tmp_path / "ac")
    run("androidcontrol", tmp_path / "ac", out)
    names = ["gqa_testdev_balanced", "seedbench_video", "androidcontrol_test"]
    data_args = DataArguments(dataset_dir=str(out), media_dir=str(out))
    for attr in get_dataset_list(names, str(out)):
        rows = datasets.load_dataset("json", data_files=str(out / attr.dataset_name), split="train",
                                     cache_dir=str(tmp_path / "hf"))  # fmt: skip
        converted = get_dataset_converter("sharegpt", attr, data_args)(rows[0])
        assert converted["_prompt"][0]["role"] == "user" and converted["_response"][0]["role"] == "assistant"
        media = converted["_videos"] if attr.videos else converted["_images"]
        assert media and all(Path(m if isinstance(m, str) else m[0]).is_file() for m in media)
