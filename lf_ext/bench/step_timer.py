"""Run one LLaMA-Factory training in this process and record the wall time of every optimizer step.

``python -m lf_ext.bench.step_timer ARGS_JSON OUT_JSON``: a fresh process per configuration, so
templates and models never share state.
"""

from __future__ import annotations

import json
import sys
import time

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time from ``on_step_begin`` to ``on_step_end`` (forward, backward, optimizer; data excluded)."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def main(args_file: str, out_file: str) -> None:
    import lf_ext
    from llamafactory.train.tuner import run_exp

    lf_ext.register()
    timer = StepTimer()
    run_exp(json.loads(open(args_file).read()), callbacks=[timer])
    with open(out_file, "w") as out:
        json.dump({"step_seconds": timer.times}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
