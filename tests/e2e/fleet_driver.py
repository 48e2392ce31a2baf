"""Drives a motionserve fleet with the official `fal-client`: many requests at once, one node per process.

Like py_driver.py (whose set-up and helpers this reuses), each run talks to the one API node its
environment names (FAL_QUEUE_RUN_HOST, MOTIONSERVE_E2E_BASE for uploads and status streams). The fleet
test runs it against different nodes in turn: submit through one, follow and fetch through the other.
Status streams (SSE) use httpx-sse, as fal's JavaScript client's `streamStatus` does: the Python client
has no status stream.

Usage: python fleet_driver.py SCENARIO '{"json": "arguments"}'. The last stdout line is a JSON result.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable
from urllib.parse import urlsplit

import fal_client
import httpx
from httpx_sse import connect_sse

from py_driver import BASE, result_or_error, status_dict

FOLLOW_DEADLINE_S = float(os.environ.get("MOTIONSERVE_E2E_FLEET_DEADLINE_S", "600"))


def scenario_submit_many(jobs: list[dict[str, Any]], webhook_url: str) -> dict[str, Any]:
    """Submit every job (in order) with the webhook; their ids and the URLs the node answered with."""
    submitted = []
    for job in jobs:
        handle = fal_client.submit(job["endpoint"], arguments=job["arguments"], webhook_url=webhook_url)
        submitted.append({
            "endpoint": job["endpoint"], "request_id": handle.request_id,
            "status_url": handle.status_url, "response_url": handle.response_url,
        })
    return {"submitted": submitted}


def _on_this_node(url: str) -> str:
    """The same request URL on the node this process talks to (another node answered the submit)."""
    assert BASE, "MOTIONSERVE_E2E_BASE is not set"
    return BASE + urlsplit(url).path


def _poll(endpoint: str, request_id: str, poll_s: float) -> list[dict[str, Any]]:
    """fal_client.status until COMPLETED; every distinct status seen, the last one with its logs."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + FOLLOW_DEADLINE_S
    while time.monotonic() < deadline:
        status = status_dict(fal_client.status(endpoint, request_id, with_logs=True))
        if not seen or seen[-1]["status"] != status["status"]:
            seen.append(status)
        if status["status"] == "COMPLETED":
            seen[-1] = status
            return seen
        time.sleep(poll_s)
    raise TimeoutError(f"{request_id} not COMPLETED within {FOLLOW_DEADLINE_S}s; saw {seen[-3:]}")


def _stream(http: httpx.Client, status_url: str) -> list[str]:
    """The status stream (SSE, with logs) until COMPLETED: the status of each event, in order."""
    statuses: list[str] = []
    with connect_sse(http, "GET", _on_this_node(status_url) + "/stream", params={"logs": "1"}) as events:
        events.response.raise_for_status()
        for event in events.iter_sse():
            if not event.data:
                continue
            statuses.append(json.loads(event.data)["status"])
            if statuses[-1] == "COMPLETED":
                break
    return statuses


def _follow_one(http: httpx.Client, job: dict[str, Any], poll_s: float) -> dict[str, Any]:
    streamed: dict[str, Any] = {}

    def stream() -> None:
        try:
            streamed["statuses"] = _stream(http, job["status_url"])
        except Exception as exc:  # reported, and the test fails on it
            streamed["error"] = repr(exc)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    polled = _poll(job["endpoint"], job["request_id"], poll_s)
    streamer.join(FOLLOW_DEADLINE_S)
    out = {"request_id": job["request_id"], "polled": polled, "streamed": streamed}
    out.update(result_or_error(lambda: fal_client.result(job["endpoint"], job["request_id"])))
    return out


def scenario_follow(jobs: list[dict[str, Any]], poll_s: float = 1.0) -> dict[str, Any]:
    """For every job at once: poll its status and stream it (SSE), then fetch its result, all here."""
    key = os.environ["FAL_KEY"]
    headers = {"Authorization": f"Key {key}"}
    timeout = httpx.Timeout(30.0, read=FOLLOW_DEADLINE_S)
    with httpx.Client(verify=os.environ["SSL_CERT_FILE"], headers=headers, timeout=timeout) as http:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            followed = list(pool.map(lambda job: _follow_one(http, job, poll_s), jobs))
    return {"jobs": followed}


def scenario_results(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """fal_client.result for each (finished) job, through this process's node."""
    return {"jobs": [
        {"request_id": job["request_id"], **result_or_error(lambda: fal_client.result(job["endpoint"], job["request_id"]))}
        for job in jobs
    ]}


SCENARIOS: dict[str, Callable[..., dict[str, Any]]] = {
    name.removeprefix("scenario_"): fn for name, fn in globals().items() if name.startswith("scenario_")
}


def main() -> None:
    name = sys.argv[1]
    kwargs = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    out = SCENARIOS[name](**kwargs)
    sys.stdout.write("\n" + json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
