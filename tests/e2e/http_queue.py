"""The fal queue protocol spoken with plain httpx, for tests about the server rather than the clients."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from .server import Server


@dataclass(frozen=True)
class Submitted:
    request_id: str
    status_url: str
    response_url: str
    cancel_url: str


class QueueClient:
    def __init__(self, server: Server, key: str) -> None:
        self.server = server
        self.http = server.http(key)

    def close(self) -> None:
        self.http.close()

    def submit(self, endpoint: str, payload: Any, **params: str) -> Submitted:
        r = self.http.post(f"/queue/{endpoint}", json=payload, params=params)
        assert r.status_code == 200, f"submit -> {r.status_code} {r.text[:500]}"
        body = r.json()
        return Submitted(body["request_id"], body["status_url"], body["response_url"], body["cancel_url"])

    def status(self, job: Submitted, logs: bool = False) -> dict[str, Any]:
        r = self.http.get(job.status_url, params={"logs": "1" if logs else "0"})
        assert r.status_code in (200, 202), f"status -> {r.status_code} {r.text[:500]}"
        return r.json()

    def wait(self, job: Submitted, until: str = "COMPLETED", timeout_s: float = 300) -> dict[str, Any]:
        """Poll until `until` (or COMPLETED, which ends every wait) and return that status."""
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status(job)
            except httpx.TransportError:
                last = {"status": "unreachable"}  # a server being restarted
            if last.get("status") in (until, "COMPLETED"):
                return last
            time.sleep(0.1)
        raise AssertionError(f"{job.request_id} not {until} within {timeout_s}s; last status {last}")

    def result(self, job: Submitted) -> httpx.Response:
        return self.http.get(job.response_url)
