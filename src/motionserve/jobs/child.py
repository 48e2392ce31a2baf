"""The supervisor's handle on one model process: start it, talk to it, kill it, say how it died."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from typing import Any

from motionserve.config import Settings
from motionserve.jobs.events import ChildEvent, PreloadFailed, Ready, RunJob, Shutdown, StartupFailed
from motionserve.jobs.models import Job
from motionserve.jobs.runner import DEFAULT_REGISTRY, child_main


# glibc returns freed blocks above its mmap threshold (32 MB at most) to the OS, so on a CPU every large
# activation tensor is page-faulted in again on the next allocation: bench/README.md measured a tiny
# SVD-LCM call at 70 s with glibc's defaults and 21 s with these. The model process keeps its memory
# instead, as PyTorch's CUDA allocator does on a GPU. Set at spawn, so only the model process is affected
# (glibc reads them at start-up); an operator's own values win.
CPU_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(8 * 1024**3),
    "MALLOC_TRIM_THRESHOLD_": str(16 * 1024**3),
    "MALLOC_TOP_PAD_": str(1024**3),
}


class ChildGone(Exception):
    """The model process closed its pipe or exited."""


class PreloadError(Exception):
    """The model process could not load the pipelines it was told to preload; its message is one line."""


class ModelProcess:
    def __init__(self, settings: Settings, device: str, registry_module: str = DEFAULT_REGISTRY) -> None:
        # spawn, never fork: a forked child would inherit the parent's CUDA state and threads.
        ctx = mp.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self.cancel_event = ctx.Event()
        # Not a daemon: daemonic processes may not start processes of their own (torch.compile
        # workers...). The child instead exits by itself when this process dies.
        self.process = ctx.Process(
            target=child_main,
            args=(child_conn, self.cancel_event, settings, device, registry_module),
            name=f"motionserve-model-{device}",
            daemon=False,
        )
        if device == "cpu":
            for name, value in CPU_MALLOC_ENV.items():
                os.environ.setdefault(name, value)  # the spawned interpreter inherits the environment
        self.process.start()
        child_conn.close()  # ours is the only other end: EOF on it means the child is gone
        self.ready = False
        self.startup_error: str | None = None
        self.warm_at_start: tuple[str, ...] | None = None  # what its preload left loaded

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.is_alive()

    def poll_ready(self, timeout: float) -> bool:
        """Wait up to `timeout` for the Ready message (sent once preloads are loaded); raises ChildGone
        if the child failed to start, PreloadError if it could not preload."""
        if self.ready:
            return True
        event = self.receive(timeout)
        if isinstance(event, Ready):
            self.ready, self.warm_at_start = True, event.warm
        elif isinstance(event, PreloadFailed):
            raise PreloadError(event.message)
        elif isinstance(event, StartupFailed):
            self.startup_error = event.traceback
            raise ChildGone("the model process failed to start")
        elif event is None and not self.process.is_alive():
            raise ChildGone(self.exit_description())
        return self.ready

    def run(self, job: Job) -> None:
        self.cancel_event.clear()
        try:
            self._conn.send(RunJob(job))
        except (BrokenPipeError, OSError) as exc:
            raise ChildGone(self.exit_description()) from exc

    def receive(self, timeout: float) -> ChildEvent | None:
        """The next event, or None if none came within `timeout`. Raises ChildGone at pipe EOF."""
        try:
            if not self._conn.poll(timeout):
                return None
            event: Any = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise ChildGone(self.exit_description()) from exc
        return event

    def kill(self) -> None:
        """SIGKILL: the only way to stop a handler stuck in a CUDA kernel and free its GPU memory."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self._conn.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the child to exit; kill it if it does not within `timeout`."""
        if self.process.is_alive():
            try:
                self._conn.send(Shutdown())
            except (BrokenPipeError, OSError):
                pass
            self.process.join(timeout)
        self.kill()

    def exit_description(self) -> str:
        self.process.join(1)  # the pipe can close a moment before the exit status is known
        code = self.process.exitcode
        if code is None:
            return "model process stopped responding"
        if code < 0:
            name = _signal_name(-code)
            hint = "; out of memory?" if -code == signal.SIGKILL else ""
            return f"model process exited with code {code} (signal {name}{hint})"
        return f"model process exited with code {code}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)
