"""fal's request headers: queue priority, start timeout, object lifecycle, runner hint, no-retry, webhook URL.

Bad values are 422s in the same `{"detail": [{loc, msg, type}]}` shape as bad input fields, with
`loc` naming the header (or query parameter), so clients show them the same way.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit

from motionserve.errors import InputValidationError
from motionserve.jobs.models import Priority

PRIORITY_HEADER = "x-fal-queue-priority"
TIMEOUT_HEADER = "x-fal-request-timeout"
RUNNER_HINT_HEADER = "x-fal-runner-hint"
NO_RETRY_HEADER = "x-fal-no-retry"
MAX_HINT_LENGTH = 200
LIFECYCLE_HEADERS = ("x-fal-object-lifecycle-preference", "x-fal-object-lifecycle")


@dataclass(frozen=True)
class SubmitOptions:
    priority: int
    start_timeout_s: float | None
    file_retention_s: int | None
    webhook_url: str | None
    runner_hint: str | None = None
    no_retry: bool = False


def _header_error(header: str, msg: str, value: str | None) -> InputValidationError:
    return InputValidationError([{"loc": ["header", header], "msg": msg, "type": "value_error", "input": value}])


def parse_lifecycle(headers: Mapping[str, str]) -> int | None:
    """`X-Fal-Object-Lifecycle(-Preference): {"expiration_duration_seconds": N, ...}` -> N seconds."""
    for name in LIFECYCLE_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise _header_error(name, "Must be a JSON object", raw) from exc
        if not isinstance(value, dict):
            raise _header_error(name, "Must be a JSON object", raw)
        seconds = value.get("expiration_duration_seconds")
        if seconds is None:
            return None
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
            raise _header_error(name, "expiration_duration_seconds must be a positive number", raw)
        return int(math.ceil(seconds))
    return None


def parse_submit_options(headers: Mapping[str, str], webhook: str | None) -> SubmitOptions:
    raw_priority = headers.get(PRIORITY_HEADER)
    priority_name = (raw_priority or "normal").strip().lower()
    if priority_name not in ("normal", "low"):
        raise _header_error(PRIORITY_HEADER, "Must be 'normal' or 'low'", raw_priority)
    priority = Priority.LOW if priority_name == "low" else Priority.NORMAL

    timeout_s = None
    raw_timeout = headers.get(TIMEOUT_HEADER)
    if raw_timeout is not None:
        try:
            timeout_s = float(raw_timeout)  # Python sends "30.0", JS "30"
        except ValueError as exc:
            raise _header_error(TIMEOUT_HEADER, "Must be a number of seconds", raw_timeout) from exc
        if not math.isfinite(timeout_s) or timeout_s <= 0:
            raise _header_error(TIMEOUT_HEADER, "Must be a positive number of seconds", raw_timeout)

    if webhook is not None:
        parts = urlsplit(webhook)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputValidationError(
                [{"loc": ["query", "fal_webhook"], "msg": "Must be an http(s) URL", "type": "value_error", "input": webhook}]
            )
    return SubmitOptions(
        priority, timeout_s, parse_lifecycle(headers), webhook or None, _runner_hint(headers), _no_retry(headers)
    )


def _runner_hint(headers: Mapping[str, str]) -> str | None:
    hint = (headers.get(RUNNER_HINT_HEADER) or "").strip()
    if len(hint) > MAX_HINT_LENGTH:
        raise _header_error(RUNNER_HINT_HEADER, f"At most {MAX_HINT_LENGTH} characters", hint[:MAX_HINT_LENGTH] + "...")
    return hint or None


def _no_retry(headers: Mapping[str, str]) -> bool:
    """fal documents `x-fal-no-retry: 1|true|yes`; anything else (or no header) keeps retries on."""
    return (headers.get(NO_RETRY_HEADER) or "").strip().lower() in ("1", "true", "yes")
