"""Python API: answer one question per frame or screenshot, reusing backgrounds across the stream.

    from lf_ext.inference.stream import FrameStream
    stream = FrameStream({"model_name_or_path": "saves/merged", "template": "qwen2_vl_bgobj",
                          "bgobj_mask_provider": "reference", "bgobj_reference_image": "plate.png"})
    for frame in frames:
        answer = stream.ask(frame, "What time does the clock show?")
        print(answer.text, answer.outcome.kind, answer.seconds)
    print(stream.stats())

It is LLaMA-Factory's ``ChatModel`` (same arguments as ``llamafactory-cli chat``, ``bgobj_*`` keys
included) with the background cache that loading a bgobj model installs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lf_ext.inference.generate import cache_stats, last_outcome
from lf_ext.inference.reuse import Outcome


@dataclass
class FrameAnswer:
    """The answer to one frame; ``outcome`` is None when the request was not served by the cache."""

    text: str
    outcome: Outcome | None
    seconds: float


class FrameStream:
    """A stream of (image, question) requests against one bgobj model."""

    def __init__(self, args: dict[str, Any]):
        from llamafactory.chat import ChatModel

        self.chat_model = ChatModel(dict(args))
        self.model = self.chat_model.engine.model
        if cache_stats(self.model) is None:
            raise ValueError("FrameStream needs a bgobj model with the background cache on "
                             "(template qwen2_vl_bgobj and bgobj_cache: true)")  # fmt: skip

    def ask(self, image: Any, question: str, **generating_args: Any) -> FrameAnswer:
        """Answer ``question`` about ``image`` (path, PIL image or bytes)."""
        self.model._lf_ext_last_outcome = None
        start = time.perf_counter()
        responses = self.chat_model.chat([{"role": "user", "content": question}], images=[image], **generating_args)
        return FrameAnswer(responses[0].response_text, last_outcome(self.model), time.perf_counter() - start)

    def stats(self) -> dict:
        """Cache totals: lookups, hits, misses, rejections, entries, bytes, ..."""
        return cache_stats(self.model)
