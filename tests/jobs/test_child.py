"""The model process handle: the child goes away with its supervisor, and exits are described."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from motionserve.config import Settings
from motionserve.jobs.child import ChildGone, ModelProcess

HERE = Path(__file__).parent


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_model_process_exits_when_its_supervisor_dies(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, time
        from motionserve.config import Settings
        from motionserve.jobs.child import ModelProcess
        if __name__ == "__main__":
            child = ModelProcess(Settings(data_dir={str(tmp_path)!r}), "cpu", "jobs_fake_registry")
            while not child.poll_ready(1.0):
                pass
            print(child.pid, flush=True)
            os._exit(0)  # die without any cleanup, as a SIGKILLed supervisor would
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.strip())
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(pid), "the model process outlived its supervisor"


def test_exit_descriptions(tmp_path: Path) -> None:
    child = ModelProcess(Settings(data_dir=tmp_path), "cpu", "jobs_fake_registry")
    try:
        while not child.poll_ready(1.0):
            pass
        child.process.terminate()
        child.process.join(30)
        assert child.exit_description() == "model process exited with code -15 (signal SIGTERM)"
    finally:
        child.kill()
    crashed = ModelProcess(Settings(data_dir=tmp_path), "cpu", "jobs_no_such_registry")
    try:
        with pytest.raises(ChildGone):
            while not crashed.poll_ready(1.0):
                pass
        assert "No module named 'jobs_no_such_registry'" in (crashed.startup_error or "")
        assert crashed.exit_description() == "model process exited with code 1"
    finally:
        crashed.kill()


def test_cpu_model_process_keeps_freed_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """glibc's allocator settings reach the CPU model process (they avoid re-faulting big tensors)."""
    from motionserve.jobs.child import CPU_MALLOC_ENV

    for name in CPU_MALLOC_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MALLOC_TOP_PAD_", "12345")  # an operator's own value wins
    child = ModelProcess(Settings(data_dir=tmp_path), "cpu", "jobs_fake_registry")
    try:
        while not child.poll_ready(1.0):
            pass
        raw = Path(f"/proc/{child.pid}/environ").read_bytes().split(b"\0")
        environ = dict(item.decode().split("=", 1) for item in raw if b"=" in item)
        assert environ["MALLOC_MMAP_THRESHOLD_"] == CPU_MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"]
        assert environ["MALLOC_TRIM_THRESHOLD_"] == CPU_MALLOC_ENV["MALLOC_TRIM_THRESHOLD_"]
        assert environ["MALLOC_TOP_PAD_"] == "12345"
    finally:
        child.kill()
