"""A stand-in for motionserve.endpoints.registry, loaded by the model process in worker tests.

TEST HOOK ONLY: WorkerSupervisor(registry_module="jobs_fake_registry"). Small endpoints that
exercise what the supervisor must handle (logs, cooperative and stubborn cancellation, errors,
output files, outputs stored after the handler returned, previews, preloads) without torch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from motionserve.endpoints.base import Endpoint, EndpointInput, File, PendingOutput, RunContext
from motionserve.errors import ModelUnavailableError

MODEL_MANAGERS_CREATED = 0


class EchoInput(EndpointInput):
    message: str = ""
    file_url: str | None = None
    steps: int = 3
    step_s: float = 0.0
    gate: str | None = None  # pending outputs: the encoder waits for a file at this path to exist


class EchoOutput(BaseModel):
    echo: str
    pid: int
    models_built: int


def echo(inputs: EchoInput, ctx: RunContext) -> EchoOutput:
    for i in range(inputs.steps):
        ctx.raise_if_cancelled()
        ctx.log(f"step {i + 1}/{inputs.steps}")
        time.sleep(inputs.step_s)
    ctx.models  # noqa: B018 (touch the lazily built manager)
    return EchoOutput(echo=inputs.message, pid=os.getpid(), models_built=MODEL_MANAGERS_CREATED)


def stubborn(inputs: EchoInput, ctx: RunContext) -> EchoOutput:
    ctx.log("ignoring cancellation")
    while True:  # like a handler stuck in a long kernel: never checks for cancellation
        time.sleep(0.05)


def broken(inputs: EchoInput, ctx: RunContext) -> EchoOutput:
    raise ValueError("tensor shapes do not match")


def unavailable(inputs: EchoInput, ctx: RunContext) -> EchoOutput:
    raise ModelUnavailableError("checkpoint guoyww/animatediff-motion-adapter-v1-5-2 is missing")


def read(inputs: EchoInput, ctx: RunContext) -> EchoOutput:
    data = ctx.read_input(inputs.file_url or "", "file_url")
    return EchoOutput(echo=data.decode(), pid=os.getpid(), models_built=MODEL_MANAGERS_CREATED)


def preview(inputs: EchoInput, ctx: RunContext) -> EchoOutput:
    """Publishes `"<message> <step>"` as a preview at each step the context says one is due, as the
    real handlers' step callback does, waiting `step_s` after each step (the last one's too, so that
    its preview has time to be stored)."""
    for i in range(inputs.steps):
        ctx.raise_if_cancelled()
        if ctx.preview_due(i + 1, inputs.steps):
            ctx.preview(f"{inputs.message} {i + 1}".encode(), step=i + 1, content_type="image/webp")
        time.sleep(inputs.step_s)
    return EchoOutput(echo=inputs.message, pid=os.getpid(), models_built=MODEL_MANAGERS_CREATED)


class SaveOutput(BaseModel):
    video: File


def save(inputs: EchoInput, ctx: RunContext) -> SaveOutput:
    return SaveOutput(video=ctx.save_output(inputs.message.encode(), content_type="video/mp4", file_name="out.mp4"))


def save_later(inputs: EchoInput, ctx: RunContext) -> PendingOutput[SaveOutput]:
    """Like `save`, leaving the file to the runner's encoder, which waits for `gate` first."""
    ctx.log("handler returned")

    def encode() -> bytes:
        deadline = time.monotonic() + 60
        while inputs.gate and not Path(inputs.gate).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return inputs.message.encode()

    return PendingOutput(encode=encode, content_type="video/mp4", file_name="out.mp4",
                         finish=lambda file: SaveOutput(video=file))


def encoder_crash(inputs: EchoInput, ctx: RunContext) -> PendingOutput[SaveOutput]:
    def encode() -> bytes:
        raise RuntimeError("H.264 encoding (libx264) failed: [Errno 12] Cannot allocate memory")

    return PendingOutput(encode=encode, content_type="video/mp4", file_name="out.mp4",
                         finish=lambda file: SaveOutput(video=file))


def _not_called(inputs: EchoInput, ctx: RunContext) -> BaseModel:
    raise AssertionError("the runner calls run_pending when an endpoint has it")


def _endpoint(name: str, run: Any, output: type[BaseModel] = EchoOutput, run_pending: Any = None) -> Endpoint:
    return Endpoint(endpoint_id=f"test/{name}", title=name, description=name, input_model=EchoInput,
                    output_model=output, run=run, run_pending=run_pending)


ENDPOINTS = {e.endpoint_id: e for e in (
    _endpoint("echo", echo), _endpoint("stubborn", stubborn), _endpoint("broken", broken),
    _endpoint("unavailable", unavailable), _endpoint("save", save, SaveOutput), _endpoint("read", read),
    _endpoint("preview", preview), _endpoint("save_later", _not_called, SaveOutput, save_later),
    _endpoint("encoder_crash", _not_called, SaveOutput, encoder_crash),
)}


def get(endpoint_id: str) -> Endpoint | None:
    return ENDPOINTS.get(endpoint_id)


def create_model_manager(settings: Any, device: str) -> Any:
    global MODEL_MANAGERS_CREATED
    MODEL_MANAGERS_CREATED += 1
    return {"device": device, "data_dir": Path(settings.data_dir)}


PRELOAD_STARTED = "preload-started"  # written in the data dir when a preload begins
PRELOAD_GATE = "preload-gate"  # a preload finishes once the test creates this file there


def preload(models: Any, names: Any) -> None:
    """Like the real registry: unknown names are a ValueError, missing weights a ModelUnavailableError;
    "loading" lasts until the test opens the gate, so that it can look at the worker meanwhile."""
    for name in names:
        if name == "test/missing-weights":
            raise ModelUnavailableError("checkpoint 'sd15_base': local path /models/sd15 does not exist")
        if name not in ENDPOINTS:
            raise ValueError(f"unknown pipeline {name!r}")
    data_dir = models["data_dir"]
    (data_dir / PRELOAD_STARTED).touch()
    deadline = time.monotonic() + 60
    while not (data_dir / PRELOAD_GATE).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


def warm_endpoints(models: Any) -> list[str]:
    """Like the real registry: the endpoints whose pipelines the model manager has loaded."""
    return ["test/echo"] if models is not None else []
