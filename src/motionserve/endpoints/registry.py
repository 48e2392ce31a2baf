"""The endpoints this server serves, by fal endpoint id.

Importing this module is cheap (pydantic models only): endpoint modules import torch/diffusers
lazily inside `run`, so the API process never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from motionserve.endpoints import svd_lcm, text_to_video, turbo, video_to_video
from motionserve.endpoints.base import Endpoint, ModelManagerLike

if TYPE_CHECKING:
    from motionserve.config import Settings

ENDPOINTS: dict[str, Endpoint] = {
    e.endpoint_id: e
    for e in (text_to_video.ENDPOINT, video_to_video.ENDPOINT, turbo.ENDPOINT, svd_lcm.ENDPOINT)
}

# Short names for `MOTIONSERVE_PRELOAD` (the benchmark's names too); endpoint ids are accepted as well.
PRELOAD_NAMES: dict[str, str] = {
    "t2v": text_to_video.ENDPOINT.endpoint_id,
    "v2v": video_to_video.ENDPOINT.endpoint_id,
    "turbo": turbo.ENDPOINT.endpoint_id,
    "svd-lcm": svd_lcm.ENDPOINT.endpoint_id,
}


def get(endpoint_id: str) -> Endpoint | None:
    return ENDPOINTS.get(endpoint_id)


def warm_endpoints(models: ModelManagerLike) -> list[str]:
    """Ids of the endpoints whose pipelines `models` holds warm, so a worker can prefer their jobs.

    Ordered as `models.loaded()` (least recently used group first), then as `ENDPOINTS` within a group.
    """
    return [
        endpoint_id
        for group in models.loaded()
        for endpoint_id, endpoint in ENDPOINTS.items()
        if endpoint.pipeline_group == group
    ]


def create_model_manager(settings: "Settings", device: str) -> ModelManagerLike:
    """The warm-pipeline holder a model process hands to handlers as `ctx.models`.

    Lives here so the job runner can build one without importing the inference layer itself.
    """
    from motionserve.inference.models import ModelManager

    return ModelManager.from_settings(settings, device)


def preload_endpoints(names: Iterable[str]) -> list[str]:
    """The endpoint ids that `MOTIONSERVE_PRELOAD`'s names (short names or endpoint ids) stand for, in
    order, without repeats. A ValueError names every unknown one and what is known."""
    names = list(names)
    ids = [PRELOAD_NAMES.get(name, name) for name in names]
    unknown = [name for name, endpoint_id in zip(names, ids) if endpoint_id not in ENDPOINTS]
    if unknown:
        raise ValueError(f"unknown pipeline {', '.join(map(repr, unknown))}; known: {', '.join(PRELOAD_NAMES)} "
                         f"or an endpoint id ({', '.join(ENDPOINTS)})")
    return list(dict.fromkeys(ids))


def preload(models: ModelManagerLike, names: Iterable[str]) -> None:
    """Load the pipeline groups of the named endpoints into `models` (see `preload_endpoints`)."""
    groups = [ENDPOINTS[e].pipeline_group for e in preload_endpoints(names)]
    for group in dict.fromkeys(g for g in groups if g is not None):
        models.load(group)
