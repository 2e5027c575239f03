"""The background cache through LLaMA-Factory's inference: the Python stream API and ``llamafactory-cli api``."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.request

import numpy as np
import pytest
from PIL import Image

from bgobj_helpers import QUESTION, masked_dataset
from conftest import cli_env, wait_for_http, write_yaml

QUESTION_TEXT = QUESTION.replace("<image>", "")


def _args(tiny_dir, data, **extra):
    return dict(model_name_or_path=str(tiny_dir("qwen2_vl")), template="qwen2_vl_bgobj", infer_dtype="float32",
                image_max_pixels=50176, max_new_tokens=5, do_sample=False, dataset_dir=str(data), dataset="masked",
                bgobj_mask_provider="dataset", **extra)  # fmt: skip


def test_frame_stream_reuses_backgrounds_and_answers_like_without_cache(tiny_dir, tmp_path):
    from llamafactory.chat import ChatModel

    from lf_ext.inference.runtime import runtime_of
    from lf_ext.inference.stream import FrameStream

    data = masked_dataset(tmp_path / "data", count=3)
    frames = [str(data / f"img{i}.png") for i in range(3)]
    stream = FrameStream(_args(tiny_dir, data))
    answers = [stream.ask(frame, QUESTION_TEXT) for frame in frames]
    assert [a.outcome.kind for a in answers] == ["miss", "hit", "hit"]
    assert answers[1].outcome.object_units == answers[0].outcome.object_units > 0
    stats = stream.stats()
    assert (stats["lookups"], stats["hits"], stats["misses"], stats["entries"]) == (3, 2, 1, 1)

    streamed = "".join(stream.chat_model.stream_chat([{"role": "user", "content": QUESTION_TEXT}], images=[frames[2]]))
    assert streamed == answers[2].text and stream.stats()["hits"] == 3  # webchat's streaming path, served from the cache

    plain = ChatModel(_args(tiny_dir, data, bgobj_cache=False))
    assert runtime_of(plain.engine.model).cache is None
    for frame, answer in zip(frames, answers):
        expected = plain.chat([{"role": "user", "content": QUESTION_TEXT}], images=[frame])[0].response_text
        assert answer.text == expected


def test_frame_stream_needs_a_bgobj_model(tiny_dir, tmp_path):
    from lf_ext.inference.stream import FrameStream

    data = masked_dataset(tmp_path / "data", count=1)
    with pytest.raises(ValueError, match="needs a bgobj model"):
        FrameStream(_args(tiny_dir, data, bgobj_cache=False))


@pytest.mark.integration
def test_api_logs_a_hit_for_the_second_image(tiny_dir, tmp_path):
    from test_commands import _free_port

    """A fixed camera over HTTP: in-memory (base64) images, the reference provider with a background plate."""
    data = masked_dataset(tmp_path / "data", count=2)
    plate = np.asarray(Image.open(data / "img0.png")).copy()
    plate[56:140, 112:196] = 0  # the object box of masked_dataset, emptied
    Image.fromarray(plate).save(data / "plate.png")
    args = {k: v for k, v in _args(tiny_dir, data).items() if k not in ("dataset", "dataset_dir")}
    args.update(bgobj_mask_provider="reference", bgobj_reference_image=str(data / "plate.png"))
    recipe = write_yaml(tmp_path / "api.yaml", args)
    port = _free_port()
    log_path = tmp_path / "api.log"  # a file, not a pipe: the server logs every request (with its base64 image)
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(["llamafactory-cli", "api", str(recipe)], cwd=tmp_path, stdout=log_file,
                                stderr=subprocess.STDOUT, env=cli_env(API_HOST="127.0.0.1", API_PORT=str(port)))  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v1/models", proc)
        for index in range(2):
            image = base64.b64encode((data / f"img{index}.png").read_bytes()).decode()
            body = {"model": "x", "max_tokens": 4, "messages": [{"role": "user", "content": [
                {"type": "text", "text": QUESTION_TEXT},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}]}]}  # fmt: skip
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=120) as response:
                assert response.status == 200 and json.loads(response.read())["choices"]
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    log = log_path.read_text()
    assert "background cache miss" in log and "background cache hit" in log, log[-3000:]
    assert "totals: 2 lookups, 1 hits, 1 misses, 0 rejections" in log
    assert "background cache miss: 39 background + 9 object units" in log  # the plate finds the 3x3-unit box
