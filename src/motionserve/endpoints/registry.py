"""The endpoints this server serves, by fal endpoint id.

Importing this module is cheap (pydantic models only): endpoint modules import torch/diffusers
lazily inside `run`, so the API process never loads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from motionserve.endpoints import svd_lcm, text_to_video, turbo, video_to_video
from motionserve.endpoints.base import Endpoint, ModelManagerLike

if TYPE_CHECKING:
    from motionserve.config import Settings

ENDPOINTS: dict[str, Endpoint] = {
    e.endpoint_id: e
    for e in (text_to_video.ENDPOINT, video_to_video.ENDPOINT, turbo.ENDPOINT, svd_lcm.ENDPOINT)
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
