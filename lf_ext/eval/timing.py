"""Per-request component times of one loaded ``ChatModel`` (``lf-ext eval`` asks one question at a time).

Components, in milliseconds:

- ``load``: opening the images and the processor (the plugin's ``process_messages`` and
  ``_get_mm_inputs``), without the mask;
- ``mask``: the mask provider (reported by the labeler);
- ``lookup``: the background cache lookup (served requests);
- ``vision``: the vision encoder: the separated encoding (reported by the layout forward or the
  cache) or the stock tower (timed by forward hooks on it);
- ``prefill``: the LLM over the prompt (served requests report it; otherwise TTFT - vision);
- ``decode``: from the first token to the end of ``generate``;
- ``ttft``: from ``generate`` being called to the first token; ``total``: the whole chat call.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

from lf_ext.families import family_of
from lf_ext.inference.metrics import add_listener, remove_listener, with_first_token_clock
from lf_ext.patching import wrap

_ACTIVE: list["ComponentTimer"] = []  # the timer of the request being answered (one at a time)

REPORTED = ("mask", "lookup", "vision", "prefill")  # sent by lf_ext's own code (lf_ext.inference.metrics)


class ComponentTimer:
    """Times the components of each request of one ``ChatModel`` (see the module docstring)."""

    def __init__(self, chat):
        engine = chat.engine
        self.model = engine.model
        self._seconds: dict[str, float] = defaultdict(float)
        self._active = False
        plugin = engine.template.mm_plugin  # may be shared by several ChatModels: its wrapper times the active timer
        for name in ("process_messages", "_get_mm_inputs"):
            wrap(plugin, name, _loading, tag="eval_timer")
        tower = family_of(self.model).vision_tower(self.model)
        tower.register_forward_pre_hook(lambda *_: self._start("stock_vision"))
        tower.register_forward_hook(lambda *_: self._stop("stock_vision"))
        wrap(self.model, "generate", self._generating, tag="eval_timer")
        self._started: dict[str, float] = {}
        add_listener(self._reported)

    def close(self) -> None:
        remove_listener(self._reported)

    @contextmanager
    def request(self) -> Iterator[dict[str, float]]:
        """Time one chat call; the yielded dict is filled with the components (ms) when the block ends."""
        self._seconds.clear()
        self._active = True
        _ACTIVE.append(self)
        times: dict[str, float] = {}
        started = time.perf_counter()
        try:
            yield times
        finally:
            self._active = False
            _ACTIVE.remove(self)
            s = self._seconds
            vision = s["vision"] + s["stock_vision"]
            prefill = s["prefill"] if "prefill" in s else max(0.0, s["ttft"] - vision - s["lookup"])
            times.update({"load": max(0.0, s["load"] - s["mask"]), "mask": s["mask"], "lookup": s["lookup"],
                          "vision": vision, "prefill": prefill, "decode": s["decode"], "ttft": s["ttft"],
                          "total": time.perf_counter() - started})  # fmt: skip
            for key in times:
                times[key] *= 1000

    # ------------------------------------------------------------------ sources
    def _reported(self, component: str, seconds: float) -> None:
        if self._active and component in REPORTED:
            self._seconds[component] += seconds

    def _start(self, name: str) -> None:
        self._started[name] = time.perf_counter()

    def _stop(self, name: str) -> None:
        if self._active and name in self._started:
            self._seconds[name] += time.perf_counter() - self._started.pop(name)

    def _generating(self, original):
        def generate(*args, **kwargs):
            started = time.perf_counter()
            first: list[float] = []

            def on_first(seconds: float) -> None:
                first.append(time.perf_counter())
                if self._active:
                    self._seconds["ttft"] += seconds

            try:
                return original(*args, **with_first_token_clock(kwargs, on_first))
            finally:
                if self._active and first:
                    self._seconds["decode"] += time.perf_counter() - first[0]
                elif self._active:
                    self._seconds["ttft"] += time.perf_counter() - started

        return generate


def _loading(original):
    depth = [0]  # process_messages may call _get_mm_inputs: count the outer call only

    def timed(*args, **kwargs):
        depth[0] += 1
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            depth[0] -= 1
            if depth[0] == 0 and _ACTIVE:
                _ACTIVE[-1]._seconds["load"] += time.perf_counter() - started

    return timed
