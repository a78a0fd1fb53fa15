"""Rows waiting between the stages, read from Ray Data's executor as it runs.

The executor (in the driver) calls each registered `ExecutionCallback` at every step of its loop.
`WaitingRows` reads, at most once a second, the runtime metrics Ray Data keeps per operator:

    rows the decode operator's tasks put out − rows the inference operator's tasks put out

(`rows_task_outputs_generated` of each): the decoded clips that are queued for inference or inside an
inference batch, and reports them to the gauge of the run being watched (`watching(ds, gauge)`).
Inference puts out one row per row it takes (a clip's result, or a failure passed through), so the
difference is what sits between the two. Ray Data bundles the decode stage's one-row outputs into blocks
and hands an actor several rows per task, so neither queue lengths nor rows handed to tasks count clips
waiting. If a Ray version lacks these fields, the gauge stays unset and the run goes on.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator

log = logging.getLogger(__name__)

INFER_OP = "ClipEmbedder"          # the inference operator's name contains its class's
_report: Callable[[float], None] | None = None


@contextlib.contextmanager
def watching(ds, report: Callable[[float], None]) -> Iterator[None]:
    """Register `WaitingRows` with the dataset `ds` (its own copy of Ray Data's context, taken when it
    was made) and send the rows waiting to `report` while in the block."""
    global _report
    context = ds.context
    context.custom_execution_callback_classes.append(WaitingRows)
    _report = report
    try:
        yield
    finally:
        _report = None
        with contextlib.suppress(ValueError):
            context.custom_execution_callback_classes.remove(WaitingRows)


def _callback_base():
    from ray.data._internal.execution.execution_callback import ExecutionCallback

    return ExecutionCallback


class WaitingRows(_callback_base()):
    """Reports the rows between decoding and inference at most once a second."""

    def __init__(self):
        self.last, self.broken = 0.0, False

    def on_execution_step(self, executor) -> None:
        if _report is None or self.broken or time.monotonic() - self.last < 1.0:
            return
        self.last = time.monotonic()
        try:
            _report(rows_waiting(list(executor._topology)))
        except Exception as exc:                               # noqa: BLE001 - a gauge must not stop a run
            self.broken = True
            log.debug("rows waiting between the stages cannot be read from this Ray Data: %r", exc)

    def after_execution_succeeds(self, executor) -> None:
        if _report is not None:
            _report(0.0)


def rows_waiting(operators: list) -> float:
    """Rows decoded and not yet out of inference, from the operators of the executor."""
    infer = next(op for op in reversed(operators) if INFER_OP in op.name)
    decode = infer.input_dependencies[0]
    return float(decode.metrics.rows_task_outputs_generated - infer.metrics.rows_task_outputs_generated)
