"""Python API: answer one question per frame or screenshot, reusing backgrounds across the stream.

    from lf_ext.inference.stream import FrameStream
    stream = FrameStream({"model_name_or_path": "saves/merged", "template": "qwen2_vl_bgobj",
                          "bgobj_mask_provider": "reference", "bgobj_reference_image": "plate.png"})
    for frame in frames:
        answer = stream.ask(frame, "What time does the clock show?")
        print(answer.text, answer.outcome.kind, answer.seconds)
    print(stream.stats())

It is LLaMA-Factory's ``ChatModel`` (same arguments as ``llamafactory-cli chat``, ``bgobj_*`` keys
included) with the background cache that loading a bgobj model installs. ``ask`` is thread-safe:
each answer carries its own request's outcome.

:class:`VideoStream` does the same for clips (a video file, or a list of frames), e.g. a sliding
window over a fixed camera's recording: each clip whose first slice matches a cached background
encodes and prefills only the units that move::

    stream = VideoStream({"model_name_or_path": "saves/merged", "template": "qwen2_vl_bgobj",
                          "bgobj_mask_provider": "motion", "video_fps": 2.0})
    answer = stream.ask("clips/cam0_0001.mp4", "What appears?")
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from lf_ext.inference.reuse import Outcome
from lf_ext.inference.runtime import runtime_of
from lf_ext.plugins.image_labels import REQUEST_KEY


@dataclass
class FrameAnswer:
    """The answer to one frame; ``outcome`` is None when the request was not served by the cache."""

    text: str
    outcome: Outcome | None
    seconds: float


def tagged(image: Any, request: int) -> dict:
    """An image as LLaMA-Factory accepts it (path, bytes, PIL), carrying a request id."""
    if isinstance(image, Image.Image):
        return {"image": image, "path": None, REQUEST_KEY: request}
    if isinstance(image, bytes):
        return {"bytes": image, "path": None, REQUEST_KEY: request}
    if isinstance(image, dict):
        return dict(image, **{REQUEST_KEY: request})
    return {"path": str(image) if isinstance(image, Path) else image, "bytes": None, REQUEST_KEY: request}


class FrameStream:
    """A stream of (image, question) requests against one bgobj model."""

    def __init__(self, args: dict[str, Any]):
        from llamafactory.chat import ChatModel

        self.chat_model = ChatModel(dict(args))
        self.model = self.chat_model.engine.model
        self.runtime = runtime_of(self.model)
        if self.runtime is None or self.runtime.cache is None:
            raise ValueError("FrameStream needs a bgobj model with the background cache on "
                             "(a bgobj template such as qwen2_vl_bgobj, and bgobj_cache: true)")  # fmt: skip

    def ask(self, image: Any, question: str, **generating_args: Any) -> FrameAnswer:
        """Answer ``question`` about ``image`` (path, PIL image or bytes)."""
        request = self.runtime.new_request()
        start = time.perf_counter()
        messages = [{"role": "user", "content": question}]
        responses = self.chat_model.chat(messages, images=[tagged(image, request)], **generating_args)
        return FrameAnswer(responses[0].response_text, self.runtime.take_outcome(request), time.perf_counter() - start)

    def stats(self) -> dict:
        """Cache totals: lookups, hits, misses, rejections, entries, bytes, ..."""
        return self.runtime.stats()


class VideoStream(FrameStream):
    """A stream of (clip, question) requests against one bgobj model (see the module docstring)."""

    def ask(self, clip: Any, question: str, **generating_args: Any) -> FrameAnswer:
        """Answer ``question`` about ``clip``: a video file or a list of frames (paths or PIL images)."""
        request = self.runtime.new_request()
        start = time.perf_counter()
        frames = [str(f) if isinstance(f, Path) else f for f in clip] if isinstance(clip, (list, tuple)) else str(clip)
        messages = [{"role": "user", "content": question}]
        responses = self.chat_model.chat(messages, videos=[{"path": frames, REQUEST_KEY: request}], **generating_args)
        return FrameAnswer(responses[0].response_text, self.runtime.take_outcome(request), time.perf_counter() - start)
