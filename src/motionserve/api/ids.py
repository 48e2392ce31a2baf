"""fal endpoint ids, parsed exactly as the official clients parse them (fal-protocol.md §1.2).

`owner/alias[/path...]`, `workflows|comfy/owner/alias[/path...]`, or the legacy `12345-app`.
Submit and run address the full id; request lookups (status, result, cancel) address only
`{namespace/}owner/alias` — the subpath is dropped by the clients, so it must be ignored here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAMESPACES = ("workflows", "comfy")
_LEGACY_RE = re.compile(r"^([0-9]+)-([a-zA-Z0-9-]+)$")


@dataclass(frozen=True)
class AppId:
    owner: str
    alias: str
    path: str = ""
    namespace: str | None = None

    @property
    def app(self) -> str:
        """`{namespace/}owner/alias`: what request URLs are built on."""
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.owner}/{self.alias}"

    @property
    def endpoint_id(self) -> str:
        """The full id, subpath included: the key of `endpoints.registry.ENDPOINTS`."""
        return f"{self.app}/{self.path}" if self.path else self.app


def parse_endpoint_id(raw: str) -> AppId:
    """Parse an endpoint id (surrounding slashes tolerated). Raises ValueError like the clients do."""
    parts = [p for p in raw.strip("/").split("/")]
    if any(p == "" for p in parts):
        raise ValueError(f"Invalid app id: {raw!r}")
    if len(parts) == 1:
        legacy = _LEGACY_RE.match(parts[0])
        if legacy is None:
            raise ValueError(f"Invalid app id: {raw!r}. Must be in the format <owner>/<alias>")
        return AppId(owner=legacy.group(1), alias=legacy.group(2))
    if parts[0] in NAMESPACES:
        if len(parts) < 3:
            raise ValueError(f"Invalid app id: {raw!r}. Must be in the format <namespace>/<owner>/<alias>")
        return AppId(owner=parts[1], alias=parts[2], path="/".join(parts[3:]), namespace=parts[0])
    return AppId(owner=parts[0], alias=parts[1], path="/".join(parts[2:]))


def same_app(endpoint_id: str, app: AppId) -> bool:
    """True if a job submitted to `endpoint_id` may be looked up under `app` (subpath ignored)."""
    try:
        return parse_endpoint_id(endpoint_id).app == app.app
    except ValueError:
        return False
