"""Endpoint ids are parsed exactly as fal_client / @fal-ai/client parse them (fal-protocol.md §1.2)."""

from __future__ import annotations

import pytest

from motionserve.api.ids import AppId, parse_endpoint_id, same_app


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("fal-ai/fast-animatediff/text-to-video", AppId("fal-ai", "fast-animatediff", "text-to-video")),
        ("fal-ai/fast-svd-lcm", AppId("fal-ai", "fast-svd-lcm")),
        ("/fal-ai/fast-svd-lcm/", AppId("fal-ai", "fast-svd-lcm")),
        ("owner/alias/a/b", AppId("owner", "alias", "a/b")),
        ("workflows/me/flow/run", AppId("me", "flow", "run", namespace="workflows")),
        ("comfy/me/graph", AppId("me", "graph", namespace="comfy")),
        ("12345-my-app", AppId("12345", "my-app")),
    ],
)
def test_parse(raw: str, expected: AppId) -> None:
    assert parse_endpoint_id(raw) == expected


def test_request_urls_drop_the_subpath_but_keep_the_namespace() -> None:
    assert parse_endpoint_id("fal-ai/fast-animatediff/text-to-video").app == "fal-ai/fast-animatediff"
    assert parse_endpoint_id("workflows/me/flow/run").app == "workflows/me/flow"
    assert parse_endpoint_id("workflows/me/flow/run").endpoint_id == "workflows/me/flow/run"


@pytest.mark.parametrize("raw", ["single", "", "a//b", "workflows/only"])
def test_invalid_ids(raw: str) -> None:
    with pytest.raises(ValueError, match="Invalid app id"):
        parse_endpoint_id(raw)


def test_same_app_ignores_subpaths() -> None:
    app = parse_endpoint_id("fal-ai/fast-animatediff")
    assert same_app("fal-ai/fast-animatediff/video-to-video", app)
    assert not same_app("fal-ai/animatediff-v2v/turbo", app)
    assert not same_app("workflows/fal-ai/fast-animatediff", app)
