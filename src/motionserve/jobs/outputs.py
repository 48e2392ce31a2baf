"""Output files made off the model's critical path: the model process's encoder thread.

A handler that returns a `PendingOutput` (its frames, and how to encode them) is done with the model:
the model process hands the output to `OutputEncoder`, tells the supervisor `OutputPending`, and takes
the next job while this thread encodes the MP4 and stores it. Only then is the job's `Done` sent, so a
request is COMPLETED only once its file is stored and readable. If encoding or storing fails the job
fails, with a reason in its error and the traceback in its logs.

At most `MAX_WAITING` outputs wait behind the one being encoded; a handler that finishes while they
wait blocks in `submit`, so frames never pile up in memory when the encoder is slower than the model.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from motionserve.endpoints.base import PendingOutput, SaveOutput
from motionserve.errors import MotionserveError
from motionserve.jobs.events import ChildEvent, Done, Log
from motionserve.jobs.models import error_dict

MAX_WAITING = 1
# How much nicer than the model process the encoder thread runs (Linux: per thread, and x264's own
# threads inherit it). The next job's denoising runs meanwhile and is what a request waits for; the
# encode only has to finish before the encoder is needed again, so it takes the CPU denoising leaves.
# Measured on 2 vCPUs: a denoising loop beside a continuous encode ran 12% slower with the encoder at
# the same priority, 4% at +10.
ENCODER_NICENESS = 10

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputJob:
    """One handler's output to encode and store, and what its `Done` should carry."""

    job_id: str
    pending: PendingOutput[Any]
    save: SaveOutput
    started: float  # time.perf_counter() when the handler started: `inference_time` covers the encode too
    warm: tuple[str, ...] | None


class OutputEncoder:
    def __init__(self, send: Callable[[ChildEvent], None], max_waiting: int = MAX_WAITING) -> None:
        self._send = send
        self._queue: queue.Queue[OutputJob] = queue.Queue(maxsize=max_waiting)
        self._thread: threading.Thread | None = None

    def submit(self, output: OutputJob) -> None:
        """Queue an output; blocks while `max_waiting` others wait behind the one being encoded."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outputs", daemon=True)
            self._thread.start()
        self._queue.put(output)

    def drain(self) -> None:
        """Wait until every queued output is stored (or failed) and its `Done` sent."""
        if self._thread is not None:
            self._queue.join()

    def _run(self) -> None:
        _yield_cpu_to_denoising()
        while True:
            output = self._queue.get()
            try:
                self._send(self._complete(output))
            except (BrokenPipeError, EOFError, OSError):
                log.warning("request %s: the supervisor is gone; its output is dropped", output.job_id)
            finally:
                self._queue.task_done()

    def _complete(self, output: OutputJob) -> Done:
        try:
            result = output.pending.complete(output.save)
            return Done(output.job_id, result=result.model_dump(mode="json", exclude_none=True),
                        inference_time=time.perf_counter() - output.started, warm=output.warm)
        except MotionserveError as exc:  # e.g. the file store is full: the store's own status and reason
            return Done(output.job_id, error=error_dict(exc.status_code, exc.detail(), exc.error_type), warm=output.warm)
        except BaseException:  # whatever happened, the job must fail with a reason, not wait forever
            log.exception("request %s: the output could not be encoded or stored", output.job_id)
            self._send(Log(output.job_id, "ERROR", traceback.format_exc(), time.time()))
            detail = f"The output file ({output.pending.file_name}) could not be encoded or stored; see the request's logs"
            return Done(output.job_id, error=error_dict(500, detail, "internal_error"), warm=output.warm)


def _yield_cpu_to_denoising() -> None:
    """Lower this thread's CPU priority (a no-op where threads have no priority of their own)."""
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + ENCODER_NICENESS))
    except (AttributeError, OSError):  # not Linux, or a sandbox that forbids it: encode at normal priority
        log.debug("could not lower the encoder thread's priority", exc_info=True)
