"""A stand-in for motionserve.endpoints.registry, loaded by the model processes of bench_scale.py's
warm-claiming figure: `WorkerSupervisor(registry_module="_warm_registry")` (bench/ on sys.path).

The four real endpoint ids with their real pipeline groups (text-to-video and video-to-video share
`animatediff`), and a model manager that, like the real `ModelManager` under its memory budget, holds
ONE group at a time: using another group evicts the loaded one and "loads" the new one (a sleep).
So what a worker claims next decides how often it loads, which is what warm-aware claiming is about.
"""

from __future__ import annotations

import os
import time
from typing import Any

from pydantic import BaseModel

from motionserve.endpoints import registry as real
from motionserve.endpoints.base import Endpoint, EndpointInput, RunContext

# Load and run times, from the environment so the benchmark can scale them.
LOAD_S = float(os.environ.get("BENCH_WARM_LOAD_S", "0.3"))
RUN_S = float(os.environ.get("BENCH_WARM_RUN_S", "0.05"))


class OneGroupModels:
    """`ctx.models`: one pipeline group loaded at a time."""

    def __init__(self) -> None:
        self.group: str | None = None

    def use(self, group: str) -> bool:
        """Make `group` the loaded one; True if that took a load."""
        if group == self.group:
            return False
        time.sleep(LOAD_S)
        self.group = group
        return True

    def loaded(self) -> list[str]:
        return [self.group] if self.group is not None else []


class WarmOutput(BaseModel):
    loaded: bool  # this job had to load its pipeline group
    pid: int


def _handler(group: str) -> Any:
    def run(inputs: EndpointInput, ctx: RunContext) -> WarmOutput:
        loaded = ctx.models.use(group)
        time.sleep(RUN_S)
        return WarmOutput(loaded=loaded, pid=os.getpid())

    return run


ENDPOINTS: dict[str, Endpoint] = {
    endpoint_id: Endpoint(
        endpoint_id=endpoint_id, title=endpoint.title, description="bench stand-in", input_model=EndpointInput,
        output_model=WarmOutput, run=_handler(endpoint.pipeline_group or endpoint_id),
        pipeline_group=endpoint.pipeline_group,
    )
    for endpoint_id, endpoint in real.ENDPOINTS.items()
}


def get(endpoint_id: str) -> Endpoint | None:
    return ENDPOINTS.get(endpoint_id)


def warm_endpoints(models: OneGroupModels) -> list[str]:
    """The endpoints of the loaded group, as the real registry reports them."""
    return [e.endpoint_id for e in ENDPOINTS.values() if e.pipeline_group in models.loaded()]


def create_model_manager(settings: Any, device: str) -> OneGroupModels:
    return OneGroupModels()
