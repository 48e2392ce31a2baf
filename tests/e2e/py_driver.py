"""Drives a motionserve with the official `fal-client`, one scenario per process.

`fal_client` reads FAL_RUN_HOST / FAL_QUEUE_RUN_HOST once, at import, so each scenario runs in a fresh
interpreter whose environment points the client at the test server (see conftest.py). Upload hosts have
no environment variable: MOTIONSERVE_E2E_BASE patches `REST_URL` / `CDN_URL`, as fal-protocol.md §4.1 says.

Usage: python py_driver.py SCENARIO '{"json": "arguments"}'. The last stdout line is a JSON result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable

import fal_client
import fal_client.client as fal_client_module

BASE = os.environ.get("MOTIONSERVE_E2E_BASE")
if BASE:
    fal_client_module.REST_URL = f"{BASE}/rest"
    fal_client_module.CDN_URL = f"{BASE}/cdn"

POLL_S = 0.1
STEP_LINE = re.compile(r"\bstep \d+/\d+", re.IGNORECASE)
DEADLINE_S = float(os.environ.get("MOTIONSERVE_E2E_JOB_TIMEOUT_S", "300"))


def http_error(exc: fal_client.FalClientHTTPError) -> dict[str, Any]:
    return {"status_code": exc.status_code, "detail": exc.message, "error_type": exc.error_type}


def status_dict(status: fal_client.Status) -> dict[str, Any]:
    if isinstance(status, fal_client.Queued):
        return {"status": "IN_QUEUE", "position": status.position}
    if isinstance(status, fal_client.InProgress):
        return {"status": "IN_PROGRESS", "logs": status.logs}
    assert isinstance(status, fal_client.Completed)
    return {"status": "COMPLETED", "logs": status.logs, "metrics": status.metrics, "error": status.error, "error_type": status.error_type}


def result_or_error(fetch: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"result": fetch()}
    except fal_client.FalClientHTTPError as exc:
        return {"error": http_error(exc)}


def _has_step_line(logs: list[dict[str, Any]] | None) -> bool:
    """A "step i/n" line of the denoising loop (other lines, e.g. the plan, come before any work)."""
    return any(STEP_LINE.search(line["message"]) for line in logs or [])


def wait_until(handle: fal_client.SyncRequestHandle, wanted: type, *, with_logs: bool = False,
               need_logs: bool = False) -> list[dict[str, Any]]:
    """Poll status until an instance of `wanted` (with a step line, if `need_logs`) or Completed is seen.

    Returns every status seen.
    """
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        status = handle.status(with_logs=with_logs or need_logs)
        seen.append(status_dict(status))
        if isinstance(status, fal_client.Completed):
            return seen
        if isinstance(status, wanted) and not (need_logs and not _has_step_line(getattr(status, "logs", None))):
            return seen
        time.sleep(POLL_S)
    raise TimeoutError(f"no {wanted.__name__} within {DEADLINE_S}s; saw {seen[-3:]}")


def scenario_run(endpoint: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return result_or_error(lambda: fal_client.run(endpoint, arguments=arguments))


def scenario_subscribe(endpoint: str, arguments: dict[str, Any]) -> dict[str, Any]:
    updates: list[dict[str, Any]] = []
    enqueued: list[str] = []
    out = result_or_error(
        lambda: fal_client.subscribe(
            endpoint, arguments=arguments, with_logs=True, on_enqueue=enqueued.append,
            on_queue_update=lambda s: updates.append(status_dict(s)),
        )
    )
    return {**out, "updates": updates, "request_id": enqueued[0] if enqueued else None}


def scenario_submit(endpoint: str, arguments: dict[str, Any], webhook_url: str | None = None) -> dict[str, Any]:
    handle = fal_client.submit(endpoint, arguments=arguments, webhook_url=webhook_url)
    seen = wait_until(handle, fal_client.Completed, with_logs=True)
    out: dict[str, Any] = {"request_id": handle.request_id, "statuses": seen}
    out["via_handle"] = result_or_error(handle.get)
    # The module-level helpers rebuild the URLs from the endpoint id (no subpath), as users do later.
    out["via_id"] = result_or_error(lambda: fal_client.result(endpoint, handle.request_id))
    out["status_without_logs"] = status_dict(fal_client.status(endpoint, handle.request_id, with_logs=False))
    return out


def scenario_cancel(endpoint: str, long_arguments: dict[str, Any]) -> dict[str, Any]:
    """Occupy the worker with `running`, queue `queued` behind it, cancel both in turn.

    `running` is cancelled only once its first step lines have been read while it is IN_PROGRESS:
    proof that logs reach the client during the run, not only at the end.
    """
    running = fal_client.submit(endpoint, arguments=long_arguments)
    wait_until(running, fal_client.InProgress, need_logs=True)
    queued = fal_client.submit(endpoint, arguments=long_arguments)
    queued_before = status_dict(queued.status())
    queued.cancel()
    queued_after = wait_until(queued, fal_client.Completed, with_logs=True)[-1]
    running_before = status_dict(running.status(with_logs=True))
    running.cancel()
    running_after = wait_until(running, fal_client.Completed, with_logs=True)[-1]
    return {
        "queued": {"before": queued_before, "after": queued_after, **result_or_error(queued.get)},
        "running": {"before": running_before, "after": running_after, **result_or_error(running.get)},
    }


def _payload(size: int, seed: int) -> bytes:
    if size > 1024 * 1024:
        return os.urandom(size)  # big enough that a mix-up would not match by chance
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def scenario_upload(size: int, content_type: str = "application/octet-stream", file_name: str | None = None,
                    repository: str | None = None, via_file: bool = False) -> dict[str, Any]:
    data = _payload(size, seed=size)
    kwargs: dict[str, Any] = {}
    if repository:
        kwargs = {"repository": repository, "fallback_repository": []}
    if via_file:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, file_name or "upload.bin")
            with open(path, "wb") as fh:
                fh.write(data)
            url = fal_client.upload_file(path, **kwargs)
    else:
        url = fal_client.upload(data, content_type, file_name, **kwargs)
    return {"url": url, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def scenario_upload_media(path: str, content_type: str) -> dict[str, Any]:
    with open(path, "rb") as fh:
        data = fh.read()
    return {"url": fal_client.upload(data, content_type, os.path.basename(path))}


def scenario_run_with_data_uri(endpoint: str, arguments: dict[str, Any], field: str, path: str,
                               content_type: str, subscribe: bool = False) -> dict[str, Any]:
    """Inline a local file as a `data:` URI with `fal_client.encode`, as the fal docs suggest."""
    with open(path, "rb") as fh:
        arguments = {**arguments, field: fal_client.encode(fh.read(), content_type)}
    if subscribe:
        return result_or_error(lambda: fal_client.subscribe(endpoint, arguments=arguments))
    return scenario_run(endpoint, arguments)


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
