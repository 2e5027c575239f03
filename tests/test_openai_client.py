"""The ``openai`` Python client against ``llamafactory-cli api`` with a tiny bgobj model: base64 data URLs,
a background shared by two requests (miss, then hit, read from ``GET /metrics``), streaming, and the
4xx answers to bad image payloads. ``/metrics`` itself is also scraped without a model."""

from __future__ import annotations

import re
import urllib.request

import pytest
from PIL import Image

from test_api_contract import Server, _png, _recipe, sized  # noqa: F401 - sized is a fixture
from test_reliability import QUESTION


def _scrape(port: int) -> dict[str, float]:
    """``GET /metrics`` as {sample name with labels: value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def _value(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        have = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if base == name and all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def _message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": QUESTION}]}]


@pytest.mark.integration
def test_openai_client_miss_hit_stream_and_errors(tiny_dir, sized, tmp_path):  # noqa: F811
    import openai

    urls = {name: f"data:image/png;base64,{_png(Image.open(sized / f'{name}.png'))}" for name in ("two", "one")}
    with Server(tmp_path, "openai", _recipe(tiny_dir("qwen2_vl"), sized / "plate.png")) as server:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0, timeout=300)
        before = _scrape(server.port)
        assert _value(before, "lf_ext_generations_total") == 0

        # "one"'s object lies inside "two"'s: every background unit of "two"'s entry is unchanged in "one"
        answers = {}
        for name in ("two", "one"):
            reply = client.chat.completions.create(model="x", messages=_message(urls[name]), max_tokens=4)
            answers[name] = reply.choices[0].message.content
            assert reply.choices[0].finish_reason in ("stop", "length") and answers[name] is not None
        after = _scrape(server.port)
        assert _value(after, "lf_ext_generations_total", outcome="miss") == 1
        assert _value(after, "lf_ext_generations_total", outcome="hit") == 1
        assert _value(after, "lf_ext_cache_lookups_total") == 2 and _value(after, "lf_ext_cache_hits_total") == 1
        assert _value(after, "lf_ext_cache_entries") == 1 and _value(after, "lf_ext_cache_bytes") > 0
        assert _value(after, "lf_ext_ttft_seconds_count") == 2
        for component in ("mask", "lookup", "vision", "prefill"):
            assert _value(after, "lf_ext_component_seconds_count", component=component) >= 2, component
        assert _value(after, "lf_ext_http_requests_total", path="/v1/chat/completions", status="200") == 2

        # streaming: the chunks join to the answer of the same image (greedy decoding)
        chunks = client.chat.completions.create(model="x", messages=_message(urls["one"]), max_tokens=4, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert streamed == answers["one"]
        assert _value(_scrape(server.port), "lf_ext_generations_total", outcome="hit") == 2

        # a client's mistakes are 4xx errors the client raises as such
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="x", messages=_message("data:image/png;base64,%%%not-base64"), max_tokens=4)
        assert bad.value.status_code == 400 and "bad image payload" in bad.value.response.json()["detail"]
        errors = _scrape(server.port)
        assert _value(errors, "lf_ext_http_requests_total", path="/v1/chat/completions", status="400") == 1
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]


def test_metrics_route_without_a_model():
    """``create_app`` (patched on import) serves ``/metrics`` and counts the requests it answered."""
    from fastapi.testclient import TestClient
    from llamafactory.api.app import create_app

    client = TestClient(create_app(chat_model=None))  # no lifespan: the chat model is never touched
    for _ in range(3):
        assert client.get("/v1/models").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert "# TYPE lf_ext_ttft_seconds histogram" in text and "# TYPE lf_ext_generations_total counter" in text
    count = re.search(r'lf_ext_http_requests_total\{path="/v1/models",status="200"\} (\S+)', text)
    assert count is not None and float(count.group(1)) >= 3
