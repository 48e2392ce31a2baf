"""The endpoint registry: which endpoints a model process has warm pipelines for (no model is loaded)."""

from __future__ import annotations

import subprocess
import sys

from motionserve.endpoints import registry

T2V = "fal-ai/fast-animatediff/text-to-video"
V2V = "fal-ai/fast-animatediff/video-to-video"
TURBO = "fal-ai/animatediff-v2v/turbo"
SVD_LCM = "fal-ai/fast-svd-lcm"


class WarmGroups:
    """Stands in for the ModelManager: only `loaded()` is asked for."""

    def __init__(self, *groups: str) -> None:
        self.groups = list(groups)

    def loaded(self) -> list[str]:
        return self.groups


def test_nothing_warm_means_no_endpoint() -> None:
    assert registry.warm_endpoints(WarmGroups()) == []


def test_each_group_maps_to_the_endpoints_it_serves() -> None:
    assert registry.warm_endpoints(WarmGroups("animatediff")) == [T2V, V2V]
    assert registry.warm_endpoints(WarmGroups("turbo")) == [TURBO]
    assert registry.warm_endpoints(WarmGroups("svd_lcm")) == [SVD_LCM]


def test_endpoints_follow_the_groups_recency_order() -> None:
    warm = registry.warm_endpoints(WarmGroups("svd_lcm", "turbo", "animatediff"))
    assert warm == [SVD_LCM, TURBO, T2V, V2V]


def test_unknown_groups_are_ignored() -> None:
    assert registry.warm_endpoints(WarmGroups("someone-elses", "turbo")) == [TURBO]


def test_every_served_endpoint_declares_its_pipeline_group() -> None:
    groups = {e.endpoint_id: e.pipeline_group for e in registry.ENDPOINTS.values()}
    assert groups == {T2V: "animatediff", V2V: "animatediff", TURBO: "turbo", SVD_LCM: "svd_lcm"}


def test_the_registry_stays_cheap_to_import() -> None:
    # The API process imports it; the ModelManagerLike protocol must not pull the inference layer in.
    code = (
        "import sys, motionserve.endpoints.registry; "
        "print(sorted(m for m in ('torch', 'diffusers', 'motionserve.inference') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"
