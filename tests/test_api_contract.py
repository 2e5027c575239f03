"""``llamafactory-cli api`` with a bgobj model: 4xx for a client's mistakes (never a 500), mask errors routed
to the fallback or answered 422, and concurrent clients answered exactly as without the cache."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from conftest import cli_env, wait_for_http, write_yaml
from test_reliability import BOXES, OBJECT_UNITS, QUESTION, sized_dataset

pytestmark = pytest.mark.integration  # starts llamafactory-cli api


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _body(url: str, stream: bool = False) -> bytes:
    """One user turn, the image first (the prompt ChatModel builds for a question with one image)."""
    return json.dumps({"model": "x", "max_tokens": 4, "stream": stream, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]}).encode()  # fmt: skip


def _post(port: int, body: bytes) -> tuple[int, dict | str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.startswith("{") else text
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read().decode())


class Server:
    """``llamafactory-cli api`` on 127.0.0.1 with a recipe; its log in a file (it logs every request)."""

    def __init__(self, tmp_path, name: str, values: dict, **env: str):
        from test_commands import _free_port

        self.port, self.log = _free_port(), tmp_path / f"{name}.log"
        recipe = write_yaml(tmp_path / f"{name}.yaml", values)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(["llamafactory-cli", "api", str(recipe)], cwd=tmp_path, stdout=log,
                                         stderr=subprocess.STDOUT, env=cli_env(API_HOST="127.0.0.1", API_PORT=str(self.port),
                                                                               API_VERBOSE="0", **env))  # fmt: skip

    def __enter__(self):
        wait_for_http(f"http://127.0.0.1:{self.port}/v1/models", self.proc)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def _recipe(model, plate, **extra) -> dict:
    return dict(model_name_or_path=str(model), template="qwen2_vl_bgobj", infer_dtype="float32", image_max_pixels=50176,
                max_new_tokens=4, do_sample=False, bgobj_mask_provider="reference", bgobj_reference_image=str(plate), **extra)  # fmt: skip


@pytest.fixture(scope="module")
def sized(tmp_path_factory):
    return sized_dataset(tmp_path_factory.mktemp("api_sized"))


def test_error_contract(tiny_dir, sized, tmp_path):
    good = f"data:image/png;base64,{_png(Image.open(sized / 'one.png'))}"
    wrong_size = f"data:image/png;base64,{_png(Image.open(sized / 'one.png').resize((200, 150)))}"
    with Server(tmp_path, "strict", _recipe(tiny_dir("qwen2_vl"), sized / "plate.png", bgobj_mask_fallback="error")) as server:
        status, body = _post(server.port, _body(good))
        assert status == 200 and body["choices"]
        status, body = _post(server.port, _body("data:image/png;base64,%%%not-base64"))
        assert status == 400 and "bad image payload" in body["detail"]
        status, body = _post(server.port, _body(f"data:image/png;base64,{base64.b64encode(b'plain text').decode()}"))
        assert status == 400 and "bad image payload" in body["detail"] and "cannot identify image" in body["detail"]
        for stream in (False, True):  # the plate is 224x168: a 200x150 upload cannot be compared with it
            status, body = _post(server.port, _body(wrong_size, stream=stream))
            assert status == 422 and "reference image does not match" in body["detail"], (stream, body)
    log = server.log.read_text()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]


def test_mask_errors_fall_back_at_inference(tiny_dir, sized):
    """With a fallback provider, an upload the reference provider cannot split is answered (logged)."""
    from llamafactory.chat import ChatModel

    chat = ChatModel(_recipe(tiny_dir("qwen2_vl"), sized / "plate.png", bgobj_mask_fallback="none"))
    answer = chat.chat([{"role": "user", "content": QUESTION}], images=[Image.open(sized / "one.png").resize((200, 150))])
    assert answer[0].response_text is not None


def test_concurrent_clients_get_cache_off_answers(tiny_dir, sized, tmp_path):
    """8 HTTP clients x 10 requests (MAX_CONCURRENT=4, policy exact): no error, every answer equals the
    cache-off answer of its image, and the logged outcomes are exactly the requests' own splits."""
    from llamafactory.chat import ChatModel

    recipe = _recipe(tiny_dir("qwen2_vl"), sized / "plate.png", bgobj_cache_policy="exact")
    plain = ChatModel(dict(recipe, bgobj_cache=False))
    images = {name: Image.open(sized / f"{name}.png").convert("RGB") for name in BOXES}
    expected = {name: plain.chat([{"role": "user", "content": QUESTION}], images=[image])[0].response_text
                for name, image in images.items()}  # fmt: skip
    urls = {name: f"data:image/png;base64,{_png(image)}" for name, image in images.items()}
    plan = [list(BOXES)[(client + k) % 4] for client in range(8) for k in range(10)]
    with Server(tmp_path, "exact", recipe, MAX_CONCURRENT="4") as server:
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda name: (name, _post(server.port, _body(urls[name]))), plan))
    for name, (status, body) in replies:
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == expected[name], name
    logged = re.findall(r"background cache (hit|miss|rejection)[^:]*: (\d+) background \+ (\d+) object units", server.log.read_text())
    assert len(logged) == len(plan)
    assert Counter(int(obj) for _, _, obj in logged) == Counter(OBJECT_UNITS[name] for name in plan)
    assert all(int(bg) + int(obj) == 48 for _, bg, obj in logged)
    assert Counter(kind for kind, _, _ in logged)["hit"] >= len(plan) - 4 * 4
