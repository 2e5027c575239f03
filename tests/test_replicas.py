"""Two ``llamafactory-cli api`` replicas sharing backgrounds through Redis, and ``lf-ext bench replicas``."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from lf_ext.bench.replicas import ENTROPY_THRESHOLD, QUESTION, _post, camera_streams, run_bench_replicas
from lf_ext.bench.servers import ApiReplica, RedisServer

pytestmark = [pytest.mark.integration,  # starts llamafactory-cli api
              pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed "
                                 "(apt-get install redis-server; scripts/setup.sh does it as root)")]  # fmt: skip


def _recipe(model, **extra) -> dict:
    return dict(model_name_or_path=str(model), template="qwen2_vl_bgobj", infer_dtype="float32", image_max_pixels=224 * 224,
                max_new_tokens=4, do_sample=False, bgobj_mask_provider="entropy", bgobj_entropy_threshold=ENTROPY_THRESHOLD,
                bgobj_cache_policy="exact", **extra)  # fmt: skip


def _outcomes(replica: ApiReplica) -> list[str]:
    return re.findall(r"background cache (hit(?: \(redis\))?|miss|rejection)", replica.log_text())


def test_two_api_replicas_share_backgrounds_through_redis(tiny_dir, tmp_path):
    """A background computed by replica A is a verified hit in replica B; every answer equals cache-off;
    with Redis stopped both replicas still answer (locally), and they use Redis again once it is back."""
    from llamafactory.chat import ChatModel

    recipe = _recipe(tiny_dir("qwen2_vl"))
    first, second, third = (camera_streams(cameras=1, frames=2, places=1, seed=seed) for seed in (1, 2, 3))
    plain = ChatModel(dict(recipe, bgobj_cache=False))
    expected = {f.png: plain.chat([{"role": "user", "content": QUESTION}], images=[f.image()])[0].response_text
                for f in first + second + third}  # fmt: skip
    with RedisServer() as redis_server:
        shared = dict(recipe, bgobj_cache_redis_url=redis_server.url, bgobj_cache_redis_timeout_s=0.3)
        with ApiReplica(tmp_path, "a", shared) as a, ApiReplica(tmp_path, "b", shared) as b:
            answers = [_post(replica.url, frame, 4) for replica, frame in ((a, first[0]), (b, first[1]))]
            assert _outcomes(a) == ["miss"] and _outcomes(b) == ["hit (redis)"]
            redis_server.stop()
            answers += [_post(replica.url, frame, 4) for replica, frame in ((a, second[0]), (b, second[1]))]
            assert _outcomes(a) == ["miss", "miss"] and _outcomes(b) == ["hit (redis)", "miss"]  # served locally
            redis_server.start()  # empty
            time.sleep(0.5)  # the first back-off step
            answers += [_post(replica.url, frame, 4) for replica, frame in ((b, third[0]), (a, third[1]))]
            assert _outcomes(b)[-1] == "miss" and _outcomes(a)[-1] == "hit (redis)"
    frames = first + second + third
    assert [(status, text) for status, text, _ in answers] == [(200, expected[f.png]) for f in frames]
    for replica in (a, b):
        log = replica.log_text()
        assert "Traceback" not in log and "Redis at" in log and "unavailable" in log and "is back" in log


def test_bench_replicas_small(tiny_dir, tmp_path):
    """The benchmark end to end on a small stream: every phase runs, nothing fails, the JSON has the rows."""
    out = tmp_path / "replicas.json"
    result = run_bench_replicas(out, cameras=2, frames=4, places=2, repeats=1, clients=2, requests=4, workdir=tmp_path / "work")
    saved = json.loads(out.read_text())
    assert [row["phase"] for row in saved["rows"]] == ["local", "local", "shared", "shared, outage"]
    assert all(row["errors"] == 0 and row["requests"] == 8 for row in saved["rows"])
    shared = saved["rows"][2]
    assert shared["hits"] == 4  # every second visit, whichever replica gets it
    load = result["load"]
    assert load["errors"] == 0 and load["answers_equal_cache_off"] == load["requests"] == 8
