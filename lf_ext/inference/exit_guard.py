"""Stop and join generation threads before the interpreter exits.

LLaMA-Factory's chat engine runs ``model.generate`` in a daemon thread and streams its tokens;
``llamafactory-cli chat`` fed from a pipe exits right after the last token. A thread that is still
inside torch, or still tearing down after it, when the process exits makes libstdc++ abort the
process ("terminate called without an active exception", exit status 134). Measured here: 3 of 40
piped ``llamafactory-cli chat`` sessions aborted that way.

:func:`guard_generate` wraps one model instance's ``generate``: every call gets a stopping
criterion that ends the generation once the interpreter is exiting, and the threads that call it are
remembered. An ``atexit`` hook raises the flag, waits for the running calls to return (at most
``STOP_TIMEOUT_S``), then gives their threads ``GRACE_S`` in total to finish (a thread pool's idle
worker never finishes; an idle thread is harmless, a thread tearing down is not). An interrupted
chat therefore stops within one decoding step and exits cleanly.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from lf_ext.patching import wrap

STOP_TIMEOUT_S = 30.0
GRACE_S = 1.0

_exiting = threading.Event()
_state = threading.Condition()
_running = 0
_threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class StopAtExit(StoppingCriteria):
    """Ends every sequence once the interpreter is exiting; otherwise never stops anything."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), _exiting.is_set(), dtype=torch.bool, device=input_ids.device)


def _guarded(stock_generate):
    def generate(*args, **kwargs):
        global _running
        criteria = kwargs.get("stopping_criteria")
        kwargs["stopping_criteria"] = StoppingCriteriaList([*(criteria or []), StopAtExit()])
        with _state:
            _running += 1
            if threading.current_thread() is not threading.main_thread():
                _threads.add(threading.current_thread())
        try:
            return stock_generate(*args, **kwargs)
        finally:
            with _state:
                _running -= 1
                _state.notify_all()

    return generate


def guard_generate(model) -> None:
    """Make ``model.generate`` stoppable at exit and its calling threads joined (idempotent)."""
    wrap(model, "generate", _guarded, tag="exit_guard")


def stop_generation(stop_timeout_s: float = STOP_TIMEOUT_S, grace_s: float = GRACE_S) -> int:
    """Stop running generations, wait for them, give their threads a grace period to end.
    Returns how many calls were still running when the wait gave up."""
    _exiting.set()
    with _state:
        _state.wait_for(lambda: _running == 0, timeout=stop_timeout_s)
        running, threads = _running, [t for t in _threads if t is not threading.current_thread()]
    deadline = time.monotonic() + grace_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return running


atexit.register(stop_generation)
