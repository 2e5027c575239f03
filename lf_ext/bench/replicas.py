"""``lf-ext bench replicas``: two ``llamafactory-cli api`` replicas behind a round-robin client, with and
without the shared Redis tier.

The stream: ``cameras`` fixed cameras, each with its own background (a smooth, low-entropy texture).
In every frame a new object (random pixels, ``side`` x ``side`` units) stands at one of ``places``
spots of that camera, visited in a patrol order (a seeded permutation, repeated), so every spot comes
back ``frames / places`` times. Masks come from the ``entropy`` provider with a threshold (the object
is the only high-entropy region), so one recipe serves every camera. The cameras' frames interleave in
a seeded random order (each camera keeps its own order: cameras do not tick in lockstep), and the
client sends them one at a time to the replicas in turn (request i to replica i mod 2). ``repeats``
independent sets of cameras (other backgrounds) are sent one after the other. Policy ``exact``: a hit
answers exactly as cache-off.

Phases (fresh replicas for each configuration; each phase with backgrounds no replica has seen):

- ``local``: replicas without Redis, round-robin: each replica must see a spot itself before it hits;
- ``local, sticky``: the same replicas, each camera pinned to one replica (the alternative to sharing);
- ``shared``: replicas on one redis-server, round-robin, the same stream as ``local``;
- ``load``: ``clients`` concurrent clients x ``requests`` requests on the shared replicas (frames of the
  shared stream): errors, answers against cache-off answers (computed in-process with ``ChatModel``,
  ``bgobj_cache: false``, the prompt built like the API's: image first, then text), RSS of each replica
  sampled every half second. Each replica's memory tier (``cache_mb``) is smaller than the stream's
  backgrounds, so it evicts and Redis serves what it dropped;
- ``shared, outage``: redis-server is stopped after a third of the requests and restarted (empty) after
  two thirds: hits are lost, no request fails.

Latency is client-side, per request, with ``max_tokens: 1`` (time to the first token plus HTTP).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lf_ext.bench.report import machine_info, print_table, write_json
from lf_ext.bench.servers import ApiReplica, RedisServer

QUESTION = "What is in the picture?"
UNIT = 28  # Qwen2-VL: 28 px per visual token
ENTROPY_THRESHOLD = 3.0  # bits: the backgrounds stay below ~2, random objects reach ~4.6
OUTCOME = re.compile(r"background cache (hit|miss|rejection)(?: \((disk|redis)\))?[^:\n]*: ")
REDIS_TOTALS = re.compile(r"redis: (\d+) hits, (\d+) errors, (\d+) skipped, ([\d.]+) MiB")
MEMORY_TOTALS = re.compile(r"(\d+) entries, ([\d.]+) MiB")


@dataclass(frozen=True)
class Frame:
    camera: int
    place: int
    png: bytes

    @property
    def data_url(self) -> str:
        return f"data:image/png;base64,{base64.b64encode(self.png).decode()}"

    def image(self) -> Image.Image:
        return Image.open(io.BytesIO(self.png)).convert("RGB")


def _background(rng: np.random.Generator, px: int) -> np.ndarray:
    """A smooth texture (low entropy per unit) in a random colour."""
    yy, xx = np.mgrid[0:px, 0:px]
    fx, fy, phase = rng.uniform(0.02, 0.08), rng.uniform(0.02, 0.08), rng.uniform(0, 2 * np.pi)
    pattern = 14 * np.sin(fx * xx + phase) + 10 * np.cos(fy * yy)
    base = rng.integers(50, 200, 3)
    return np.clip(base + pattern[..., None] * np.array([1.0, 0.8, 0.6]), 0, 255).astype(np.uint8)


def camera_streams(cameras: int, frames: int, places: int, px: int = 224, seed: int = 0, side: int = 2) -> list[Frame]:
    """Every camera's frames (see the module doc), interleaved in a seeded random order."""
    rng = np.random.default_rng(seed)
    cells = px // UNIT // side
    if places > cells * cells:
        raise ValueError(f"{places} places of {side}x{side} units do not fit a {px} px frame")
    streams = []
    for camera in range(cameras):
        plate = _background(rng, px)
        spots = rng.permutation(cells * cells)[:places]
        patrol = [int(p) for p in rng.permutation(places)]
        stream = []
        for index in range(frames):
            place = patrol[index % places]
            top, left = (spots[place] // cells) * side * UNIT, (spots[place] % cells) * side * UNIT
            pixels = plate.copy()
            pixels[top : top + side * UNIT, left : left + side * UNIT] = rng.integers(0, 256, (side * UNIT, side * UNIT, 3))
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            stream.append(Frame(camera, place, buffer.getvalue()))
        streams.append(stream)
    order = rng.permutation(np.repeat(np.arange(cameras), frames))
    cursors = [iter(stream) for stream in streams]
    return [next(cursors[camera]) for camera in order]


def _post(base_url: str, frame: Frame, max_tokens: int) -> tuple[int, str, float]:
    """(HTTP status, answer or error text, client-side ms) of one chat completion, the image first."""
    body = json.dumps({"model": "bgobj", "max_tokens": max_tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": frame.data_url}}, {"type": "text", "text": QUESTION}]}]}).encode()  # fmt: skip
    request = urllib.request.Request(f"{base_url}/v1/chat/completions", body, {"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            status, text = response.status, json.loads(response.read())["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode(errors="replace")
    except (OSError, ValueError, KeyError) as err:
        status, text = 0, f"{type(err).__name__}: {err}"
    return status, text, (time.perf_counter() - start) * 1000


class ReplicaSet:
    """Two (or more) api replicas of one recipe; outcomes read from their logs, phase by phase."""

    def __init__(self, workdir: Path, name: str, recipe: dict, count: int = 2, **env: str):
        self.replicas = [ApiReplica(workdir, f"{name}{i}", recipe, **env) for i in range(count)]

    def __enter__(self) -> "ReplicaSet":
        try:
            for replica in self.replicas:
                replica.start()
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for replica in self.replicas:
            replica.stop()

    def marks(self) -> list[int]:
        return [len(replica.log_text()) for replica in self.replicas]

    def outcomes(self, marks: list[int]) -> list[list[tuple[str, str]]]:
        """Per replica, (kind, source) of every request logged since ``marks``, in order."""
        return [[(kind, source or "memory") for kind, source in OUTCOME.findall(replica.log_text()[mark:])]
                for replica, mark in zip(self.replicas, marks)]  # fmt: skip

    def totals(self, pattern: re.Pattern, names: tuple[str, ...]) -> list[dict | None]:
        """Per replica, the totals ``pattern`` finds in its last logged request."""
        found = [pattern.findall(replica.log_text()) for replica in self.replicas]
        return [dict(zip(names, map(float, f[-1]))) if f else None for f in found]

    def rss_mb(self) -> list[float]:
        return [round(replica.rss_mb(), 1) for replica in self.replicas]


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _stream(replicas: ReplicaSet, frames: list[Frame], route, hooks: dict | None = None) -> list[dict]:
    """Send ``frames`` one at a time (request i to replica ``route(i, frame)``); returns one dict per request."""
    marks, sent = replicas.marks(), []
    for index, frame in enumerate(frames):
        if hooks and index in hooks:
            hooks[index]()
        target = route(index, frame)
        status, _, ms = _post(replicas.replicas[target].url, frame, max_tokens=1)
        sent.append({"replica": target, "camera": frame.camera, "place": frame.place, "status": status, "ms": ms})
    time.sleep(0.5)  # the last log lines
    outcomes = [iter(found) for found in replicas.outcomes(marks)]
    for request in sent:
        request["kind"], request["source"] = next(outcomes[request["replica"]], ("unknown", "-"))
    return sent


def _row(phase: str, routing: str, sent: list[dict]) -> dict:
    ms = [r["ms"] for r in sent]
    kinds = [r["kind"] for r in sent]
    hit_ms = {source: [r["ms"] for r in sent if r["kind"] == "hit" and r["source"] == source] for source in ("memory", "redis")}
    computed_ms = [r["ms"] for r in sent if r["kind"] in ("miss", "rejection")]
    return {"phase": phase, "routing": routing, "requests": len(sent), "errors": sum(r["status"] != 200 for r in sent),
            "hits": kinds.count("hit"), "redis_hits": sum(r["source"] == "redis" for r in sent),
            "misses": kinds.count("miss") + kinds.count("rejection"), "hit_rate": kinds.count("hit") / len(sent),
            "p50_ms": _percentile(ms, 50), "p95_ms": _percentile(ms, 95), "memory_hit_p50_ms": _percentile(hit_ms["memory"], 50),
            "redis_hit_p50_ms": _percentile(hit_ms["redis"], 50), "computed_p50_ms": _percentile(computed_ms, 50)}  # fmt: skip


def _load(replicas: ReplicaSet, frames: list[Frame], expected: dict[bytes, str], clients: int, requests: int) -> dict:
    """``clients`` threads x ``requests`` requests, round-robin over the replicas; answers checked."""
    counter, lock, done = itertools.count(), threading.Lock(), threading.Event()
    rss_before, samples, marks = replicas.rss_mb(), [], replicas.marks()

    def sample() -> None:  # RSS of each replica every half second
        while not done.wait(0.5):
            samples.append([round(time.perf_counter() - start, 1), *replicas.rss_mb()])

    def client(worker: int) -> list[tuple[int, bool, float]]:
        out = []
        for j in range(requests):
            frame = frames[(worker * requests + j) % len(frames)]
            with lock:
                target = next(counter) % len(replicas.replicas)
            status, text, ms = _post(replicas.replicas[target].url, frame, max_tokens=4)
            out.append((status, status == 200 and text == expected[frame.png], ms))
        return out

    start = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for found in pool.map(client, range(clients)) for r in found]
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    time.sleep(0.5)  # the last log lines
    served = Counter(f"{kind} ({source})" if kind == "hit" else kind for found in replicas.outcomes(marks) for kind, source in found)
    ms = [r[2] for r in results]
    return {"clients": clients, "requests": len(results), "errors": sum(r[0] != 200 for r in results),
            "answers_equal_cache_off": sum(r[1] for r in results), "seconds": seconds,
            "requests_per_s": len(results) / seconds, "p50_ms": _percentile(ms, 50), "p95_ms": _percentile(ms, 95),
            "rss_mb_before": rss_before, "rss_mb_after": replicas.rss_mb(), "rss_mb_samples": samples,
            "rss_mb_max": [max(s[i + 1] for s in samples) for i in range(len(rss_before))] if samples else rss_before,
            "memory_tier": replicas.totals(MEMORY_TOTALS, ("entries", "mib")), "outcomes": dict(served)}  # fmt: skip


def _cache_off_answers(recipe: dict, frames: list[Frame]) -> dict[bytes, str]:
    """Greedy answers without the cache, in-process, the prompt as the API builds it (image first)."""
    from llamafactory.chat import ChatModel

    chat = ChatModel(dict(recipe, bgobj_cache=False))
    answers = {}
    for frame in frames:
        if frame.png not in answers:
            answers[frame.png] = chat.chat([{"role": "user", "content": QUESTION}], images=[frame.image()])[0].response_text
    del chat
    return answers


def _redis_usage(server: RedisServer) -> dict:
    client = server.client()
    keys = client.keys("lfx:bg:*:bytes")
    return {"namespace_bytes": sum(int(client.get(k) or 0) for k in keys), "entries": sum(client.zcard(k[:-5] + b"lru") for k in keys),
            "used_memory": int(client.info("memory")["used_memory"])}  # fmt: skip


COLUMNS = [("phase", "{}"), ("routing", "{}"), ("requests", "{}"), ("errors", "{}"), ("hits", "{}"), ("redis_hits", "{}"),
           ("misses", "{}"), ("hit_rate", "{:.2f}"), ("p50_ms", "{:.0f}"), ("p95_ms", "{:.0f}"), ("memory_hit_p50_ms", "{:.0f}"),
           ("redis_hit_p50_ms", "{:.0f}"), ("computed_p50_ms", "{:.0f}")]  # fmt: skip


def run_bench_replicas(json_out: str | Path, cameras: int = 4, frames: int = 16, places: int = 8, repeats: int = 3,
                       px: int = 224, clients: int = 8, requests: int = 200, seed: int = 0,
                       workdir: str | Path = "work/bench/replicas", cache_mb: float = 8.0) -> dict:  # fmt: skip
    """Run every phase (see the module doc), print the table, write JSON."""
    from lf_ext.tiny.checkpoint import build_checkpoint

    started, load_start = time.perf_counter(), os.getloadavg()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "tiny_qwen2_vl"
    if not (model / "config.json").exists():
        build_checkpoint("qwen2_vl", model, seed=0)
    recipe = dict(model_name_or_path=str(model), template="qwen2_vl_bgobj", infer_dtype="float32", image_max_pixels=px * px,
                  max_new_tokens=4, do_sample=False, bgobj_mask_provider="entropy", bgobj_entropy_threshold=ENTROPY_THRESHOLD,
                  bgobj_cache_policy="exact", bgobj_cache_max_mb=cache_mb)  # fmt: skip
    env = dict(MAX_CONCURRENT="4", OMP_NUM_THREADS="1", LF_EXT_VERBOSITY="INFO")

    def stream(offset: int) -> list[Frame]:
        return [f for r in range(repeats) for f in camera_streams(cameras, frames, places, px, seed + offset + r)]

    main, sticky_stream, outage_stream = stream(0), stream(1000), stream(2000)
    print(f"stream: {cameras} cameras x {frames} frames x {repeats} sets, {places} places, {px} px; "
          f"cache-off answers in-process...", flush=True)  # fmt: skip
    expected = _cache_off_answers(recipe, main)
    round_robin = lambda index, frame: index % 2  # noqa: E731
    rows, result, per_request = [], {}, {}

    def phase(name: str, routing: str, sent: list[dict]) -> None:
        rows.append(_row(name, routing, sent))
        per_request[f"{name} / {routing}"] = sent

    with RedisServer() as redis_server:
        print("local replicas (no shared tier)...", flush=True)
        with ReplicaSet(workdir, "local", recipe, **env) as local:
            phase("local", "round-robin", _stream(local, main, round_robin))
            phase("local", "sticky (camera -> replica)", _stream(local, sticky_stream, lambda i, f: f.camera % 2))
        print("shared replicas (Redis)...", flush=True)
        with ReplicaSet(workdir, "shared", dict(recipe, bgobj_cache_redis_url=redis_server.url), **env) as shared:
            rss_start = shared.rss_mb()
            phase("shared", "round-robin", _stream(shared, main, round_robin))
            result["redis_after_shared"] = _redis_usage(redis_server)
            print(f"load: {clients} clients x {requests} requests...", flush=True)
            result["load"] = dict(_load(shared, main, expected, clients, requests), rss_mb_start=rss_start)
            third = len(outage_stream) // 3
            hooks = {third: redis_server.stop, 2 * third: redis_server.start}
            print("outage: redis-server stopped after a third of the stream, restarted after two thirds...", flush=True)
            phase("shared, outage", "round-robin", _stream(shared, outage_stream, round_robin, hooks))
            result["redis_totals_after_outage"] = shared.totals(REDIS_TOTALS, ("hits", "errors", "skipped", "mib"))
            result["redis_after_outage"] = _redis_usage(redis_server)
    local_rate, shared_rate = rows[0]["hit_rate"], rows[2]["hit_rate"]
    ratio = shared_rate / local_rate if local_rate else None
    print(f"\nReplicas (2 x llamafactory-cli api, tiny qwen2_vl fp32, {px} px; {time.perf_counter() - started:.0f} s)")
    print_table(rows, COLUMNS)
    load = result["load"]
    print(f"load: {load['requests']} requests from {clients} clients in {load['seconds']:.0f} s, {load['errors']} errors, "
          f"{load['answers_equal_cache_off']} answers equal cache-off; RSS MiB at start {load['rss_mb_start']}, before "
          f"{load['rss_mb_before']}, max {load['rss_mb_max']}, after {load['rss_mb_after']}; memory tier "
          f"{load['memory_tier']} (bound {cache_mb:g} MiB); outcomes {load['outcomes']}")  # fmt: skip
    print(f"outage: replicas' Redis counters {result['redis_totals_after_outage']}")
    print(f"Redis after the shared stream: {result['redis_after_shared']}")
    print(f"hit rate shared / local (round-robin): {ratio:.2f}x (goal >= 1.8x)" if ratio else "no local hits")
    result.update({"benchmark": "replicas", "machine": dict(machine_info(), loadavg_start=load_start, loadavg_end=os.getloadavg()),
                   "cameras": cameras, "frames": frames, "places": places, "repeats": repeats, "px": px, "seed": seed,
                   "policy": "exact", "cache_mb": cache_mb, "rows": rows, "hit_rate_ratio": ratio,
                   "goal_met": bool(ratio and ratio >= 1.8), "seconds": time.perf_counter() - started,
                   "per_request": per_request})  # fmt: skip
    write_json(json_out, result)
    return result
