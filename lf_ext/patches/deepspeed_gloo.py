"""DeepSpeed ZeRO-3 on CPU (gloo): finish each parameter all-gather before using it.

DeepSpeed 0.16's ``Init._allgather_params`` (``deepspeed/runtime/zero/partition_parameters.py``) starts one
``all_gather_into_tensor(..., async_op=True)`` per parameter and then waits on the *last* handle only
("Wait ensures the operation is enqueued, but not necessarily complete"): right for NCCL, whose
collectives complete in stream order, wrong for gloo, whose async work may finish out of order. On a
CPU run with two ranks, gathered parameters then sometimes hold uninitialised memory (values such as
2e37), the forward pass gives NaN, and the Trainer logs a loss of 0.

This patch makes ``deepspeed.comm.all_gather_into_tensor`` wait for its own work when the group's
backend is gloo. Other backends (NCCL on GPUs) are untouched; on gloo the result is what a completed
all-gather gives, only earlier.
"""

from __future__ import annotations

from types import ModuleType

from lf_ext.patching import wrap


def _is_gloo(group) -> bool:
    try:
        import torch.distributed as dist

        return dist.get_backend(group) == "gloo"
    except Exception:  # not initialised, or a group torch does not know: leave it alone
        return False


def _completing_on_gloo(original):
    def all_gather_into_tensor(output_tensor, tensor, group=None, async_op=False, *args, **kwargs):
        work = original(output_tensor, tensor, group, async_op, *args, **kwargs)
        if async_op and work is not None and _is_gloo(group):
            work.wait()  # waiting again later is a no-op
        return work

    return all_gather_into_tensor


def patch_comm(comm_module: ModuleType) -> None:
    """Wrap ``deepspeed.comm.all_gather_into_tensor`` (what ``partition_parameters`` calls as ``dist.…``)."""
    if hasattr(comm_module, "all_gather_into_tensor"):
        wrap(comm_module, "all_gather_into_tensor", _completing_on_gloo)
