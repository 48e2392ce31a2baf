"""`motionserve run ENDPOINT_ID`: one request from a shell, to this server or any fal-compatible one.

Input flags come from the endpoint's input schema (client_schema.py): this package's own endpoints from
`endpoints.registry` (no server needed, so `--help` works offline), other ids from the server's
`/openapi/{id}.json` (fal.ai's own catalogue when no server is given). `--input request.json` and
`--set KEY=VALUE` cover what has no flag. Local files are
uploaded first. Underneath is the official `fal-client` (submit, status with logs, cancel, upload), so
what works here works in user code; the status is polled for the queue position and "step k/n" lines.

Only `endpoints.registry` of the server is imported: a client machine needs neither torch nor FastAPI.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import re
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import fal_client
import fal_client.client as fal_module
import httpx
from fal_client.auth import MissingCredentialsError
from tqdm import tqdm

from motionserve.client_schema import FieldFlag, InputSchema, add_field_flags, local_schema, openapi_input_schema
from motionserve.endpoints import registry

PROG = "motionserve run"
FAL_OPENAPI_URL = "https://fal.ai/api/openapi/queue/openapi.json"
POLL_S = 0.25
PROBE_TIMEOUT_S = 10.0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
STEP = re.compile(r"\bstep (\d+)/(\d+)", re.IGNORECASE)


class CliError(Exception):
    """A failure the user can act on, printed as one line."""


# ---------------------------------------------------------------- the command line


def base_parser(*, add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} ENDPOINT_ID [--FIELD VALUE ...] [options]",
        description="Run one request on an endpoint of this server or any fal-compatible one (fal.ai with FAL_KEY), "
        "with a progress bar; Ctrl-C cancels it on the server.",
        allow_abbrev=False,  # `--out` must never quietly mean `--output`, nor a field flag its longer neighbour
        add_help=add_help,
        epilog="Endpoints of this package: " + ", ".join(registry.ENDPOINTS) + ". `motionserve run ENDPOINT_ID --help` lists its fields.",
    )
    parser.add_argument("endpoint_id", nargs="?", metavar="ENDPOINT_ID", help="e.g. fal-ai/fast-animatediff/text-to-video")
    parser.add_argument("--server", default=default_server(),
                        help="base URL, e.g. https://127.0.0.1:8443 (default: $MOTIONSERVE_URL, else the server "
                        "$FAL_QUEUE_RUN_HOST names as HOST:PORT/queue, else fal.ai's hosts)")
    parser.add_argument("--key", help="API key KEY_ID:SECRET (default: $FAL_KEY)")
    parser.add_argument("--input", metavar="REQUEST.json", help="the input as a JSON file; flags override its fields")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set any field (VALUE converted by the schema when known, else JSON or text); repeatable")
    parser.add_argument("-o", "--output", type=Path, help="where to write the result's video or first file (default: REQUEST_ID.ext)")
    parser.add_argument("--json", action="store_true", help="print the raw result JSON instead of progress and summary")
    return parser


def default_server() -> str | None:
    """$MOTIONSERVE_URL; else this server's layout in the fal_client variables (`FAL_QUEUE_RUN_HOST=HOST:PORT/queue`,
    as `serve --tls auto` prints them), so a shell set up for fal_client needs no --server; else None: fal.ai."""
    if os.environ.get("MOTIONSERVE_URL"):
        return os.environ["MOTIONSERVE_URL"]
    queue_host = os.environ.get("FAL_QUEUE_RUN_HOST", "").rstrip("/")
    return "https://" + queue_host.removesuffix("/queue") if queue_host.endswith("/queue") else None


@dataclass(frozen=True)
class Invocation:
    args: argparse.Namespace
    server: str | None
    fields: list[FieldFlag]


def normalise_server(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise CliError(f"--server must be an http(s) URL such as https://127.0.0.1:8443, got {url!r}")
    return url.rstrip("/")


def parse_command_line(argv: Sequence[str]) -> Invocation:
    """Two passes: the common options find the endpoint, whose schema then adds the field flags."""
    first, _ = base_parser(add_help=False).parse_known_args(argv)
    if first.endpoint_id is None:
        parser = base_parser(add_help=True)
        if "-h" in argv or "--help" in argv:
            parser.print_help()
            raise SystemExit(0)
        parser.error("ENDPOINT_ID is required, e.g. fal-ai/fast-animatediff/text-to-video")
    server = normalise_server(first.server) if first.server else None
    parser, fields = endpoint_parser(local_schema(first.endpoint_id) or remote_schema(first.endpoint_id, server))
    return Invocation(parser.parse_args(argv), server, fields)


def endpoint_parser(schema: InputSchema | None) -> tuple[argparse.ArgumentParser, list[FieldFlag]]:
    """The full command line for one endpoint: the common options and a flag per input field."""
    parser = base_parser(add_help=True)
    if schema is None:
        return parser, []
    parser.description = f"{schema.title}: {schema.description}".strip(": ")
    return parser, add_field_flags(parser, schema)


def build_arguments(inv: Invocation) -> dict[str, Any]:
    """The request body: --input's file, then --set, then the field flags (later ones win)."""
    arguments: dict[str, Any] = {}
    if inv.args.input:
        try:
            loaded = json.loads(Path(inv.args.input).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"cannot read --input {inv.args.input}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise CliError(f"--input {inv.args.input} must hold a JSON object")
        arguments.update(loaded)
    parsers = {f.name: f.parse for f in inv.fields}
    for item in inv.args.set:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            arguments[key] = parsers[key](text) if key in parsers else _json_or_text(text)
        except argparse.ArgumentTypeError as exc:
            raise CliError(f"--set {key}: {exc}") from exc
    for flag in inv.fields:
        if hasattr(inv.args, flag.dest):
            arguments[flag.name] = getattr(inv.args, flag.dest)
    return arguments


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _local_file(value: str) -> Path | None:
    try:
        path = Path(value).expanduser()
        return path if path.is_file() else None
    except (OSError, ValueError):  # a long prompt is not a path
        return None


def upload_local_files(value: Any, upload: Callable[[Path], str], key: str = "") -> Any:
    """`value` with every existing local file path replaced by its uploaded URL.

    A `*_url` field whose value is neither a URL nor a file is an error here, not a 422 later.
    """
    if isinstance(value, dict):
        return {k: upload_local_files(v, upload, k) for k, v in value.items()}
    if isinstance(value, list):
        return [upload_local_files(v, upload, key) for v in value]
    if isinstance(value, str):
        path = _local_file(value)
        if path is not None:
            return upload(path)
        if key.endswith("_url") and "://" not in value and not value.startswith("data:"):
            raise CliError(f"{key}: no such file: {value}")
    return value


# ---------------------------------------------------------------- talking to the server


def use_server(server: str | None) -> str:
    """Point fal_client at `server`; returns the URL to name in messages and probe (the server, else the queue host).

    fal_client has no base-URL option: its hosts are module globals built at import from FAL_RUN_HOST /
    FAL_QUEUE_RUN_HOST (https only) and hard-coded upload hosts. Setting them here, in this one process,
    maps a server's layout (/queue, /rest, /cdn, as README's quick start does for uploads) and allows
    http://. Without a server they stay as the environment made them (fal.ai's hosts by default).
    """
    if not server:
        return fal_module.QUEUE_URL_FORMAT.rstrip("/")
    fal_module.QUEUE_URL_FORMAT = f"{server}/queue/"
    fal_module.REST_URL = f"{server}/rest"
    fal_module.CDN_URL = f"{server}/cdn"
    return server


def remote_schema(endpoint_id: str, server: str | None) -> InputSchema | None:
    """The input schema from the endpoint's OpenAPI document (this server's layout, or fal.ai's catalogue).

    None, with a warning, when there is none: the request can still be made with --input / --set.
    """
    if server:
        url, params = f"{server}/openapi/{endpoint_id}.json", {}
    else:
        url, params = FAL_OPENAPI_URL, {"endpoint_id": endpoint_id}
    try:
        response = httpx.get(url, params=params, timeout=PROBE_TIMEOUT_S, follow_redirects=True)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {url}: {connection_reason(exc)}") from exc
    schema = None
    if response.status_code == 200:
        try:
            schema = openapi_input_schema(response.json(), endpoint_id)
        except ValueError:  # not JSON
            pass
    if schema is None:
        print(f"{PROG}: no input schema for {endpoint_id} at {url} (HTTP {response.status_code}); "
              "give the input with --input or --set", file=sys.stderr)
    return schema


def connection_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words (the root cause, not httpx's wrapper)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({cause.verify_message}); set SSL_CERT_FILE to the server's CA"
        if isinstance(cause, socket.gaierror):
            return "unknown host"
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


def probe(base: str) -> None:
    """Fail fast when the server cannot be reached: fal_client retries connection errors for ~50 s."""
    try:
        httpx.get(base, timeout=PROBE_TIMEOUT_S)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {base}: {connection_reason(exc)}") from exc


def http_error_message(exc: fal_client.FalClientHTTPError) -> str:
    detail = exc.message
    if exc.status_code in (401, 403):
        return f"the server refused the key: {_detail_text(detail)}"
    if exc.status_code == 422 and isinstance(detail, list):
        return "invalid input: " + "; ".join(_field_error(entry) for entry in detail)
    return f"HTTP {exc.status_code}: {_detail_text(detail)}"


def _detail_text(detail: Any) -> str:
    return detail if isinstance(detail, str) else json.dumps(detail)


def _field_error(entry: Any) -> str:
    """One of fal's `detail` entries, {loc: ["body", "num_frames"], msg, input}, as `num_frames: msg (got 0)`."""
    if not isinstance(entry, dict):
        return str(entry)
    field = ".".join(str(p) for p in entry.get("loc", []) if p != "body")
    text = f"{field}: {entry.get('msg')}" if field else str(entry.get("msg"))
    given = entry.get("input")
    if "input" in entry and not isinstance(given, (dict, list)) and f"got {given}" not in text:
        text += f" (got {json.dumps(given)})"
    return text


class Interrupts:
    """While a request is on the server, Ctrl-C asks for it to be cancelled instead of killing the
    process mid-call (so the request id is known); a second Ctrl-C gives up at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "Interrupts":
        self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class Progress:
    """A tqdm bar on stderr: the queue position while queued, denoising steps while running, other
    log lines printed above it. Silent when disabled (--json)."""

    _WAITING = "{desc} [{elapsed}]"
    _STEPS = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._seen: set[tuple[Any, Any]] = set()

    def note(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def update(self, status: fal_client.Status) -> None:
        if not self.enabled:
            return
        if isinstance(status, fal_client.Queued):
            self._describe(f"in queue, position {status.position}")
            return
        for line in getattr(status, "logs", None) or []:
            key = (line.get("timestamp"), line.get("message"))
            if key not in self._seen:  # fal's status repeats every line so far on each poll
                self._seen.add(key)
                self._log_line(str(line.get("message", "")))
        if self._open().total is None:
            self._describe("running")

    def _open(self) -> tqdm:
        if self._bar is None:
            self._bar = tqdm(total=None, file=sys.stderr, bar_format=self._WAITING, desc="", dynamic_ncols=True)
        return self._bar

    def _describe(self, text: str) -> None:
        bar = self._open()
        if bar.desc != text:
            bar.set_description_str(text)

    def _log_line(self, message: str) -> None:
        bar = self._open()
        match = STEP.search(message)
        if match is None:
            bar.write(message, file=sys.stderr)
            return
        step, total = int(match.group(1)), int(match.group(2))
        if bar.total != total or step < bar.n:  # the first step, or a new denoising loop
            bar.bar_format = self._STEPS
            bar.set_description_str("denoising", refresh=False)
            bar.reset(total=total)
        bar.update(step - bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def wait_for_completion(handle: fal_client.SyncRequestHandle, progress: Progress, interrupts: Interrupts) -> fal_client.Completed:
    while True:
        if interrupts.requested:
            raise KeyboardInterrupt
        status = handle.status(with_logs=True)
        progress.update(status)
        if isinstance(status, fal_client.Completed):
            return status
        time.sleep(POLL_S)


def cancel(handle: fal_client.SyncRequestHandle, progress: Progress) -> None:
    progress.close()
    try:
        handle.cancel()
    except fal_client.FalClientHTTPError as exc:
        print(f"{PROG}: could not cancel request {handle.request_id}: {http_error_message(exc)}", file=sys.stderr)
        return
    print(f"{PROG}: cancelled request {handle.request_id} on the server", file=sys.stderr)


# ---------------------------------------------------------------- the result


def first_file(result: Any) -> Mapping[str, Any] | None:
    """The result's `video`, else the first fal `File` ({url, ...}) found in it."""
    if isinstance(result, dict):
        video = result.get("video")
        if isinstance(video, dict) and isinstance(video.get("url"), str):
            return video
        if isinstance(result.get("url"), str) and ("content_type" in result or "file_name" in result):
            return result
        values: list[Any] = list(result.values())
    elif isinstance(result, list):
        values = result
    else:
        return None
    return next((f for f in map(first_file, values) if f is not None), None)


def default_name(request_id: str, file: Mapping[str, Any]) -> Path:
    suffix = Path(str(file.get("file_name") or "")).suffix or Path(urlsplit(str(file["url"])).path).suffix
    if not suffix and file.get("content_type"):
        suffix = mimetypes.guess_extension(str(file["content_type"])) or ""
    return Path(f"{request_id}{suffix or '.bin'}")


def download(url: str, path: Path) -> int:
    """Write `url` to `path`; no key is sent (result URLs carry their own access, and may be on a CDN)."""
    try:
        with httpx.stream("GET", url, timeout=120, follow_redirects=True) as response:
            if response.status_code != 200:
                raise CliError(f"could not download {url}: HTTP {response.status_code}")
            size = 0
            with path.open("wb") as fh:
                for chunk in response.iter_bytes():
                    fh.write(chunk)
                    size += len(chunk)
            return size
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach {url}: {connection_reason(exc)}") from exc


def summary(result: Mapping[str, Any], saved: tuple[Path, int, Mapping[str, Any]] | None, elapsed_s: float) -> list[str]:
    lines = [f"done in {elapsed_s:.1f} s"]
    if saved is not None:
        path, size, file = saved
        lines.append(f"saved {path} ({size / 1024:.1f} KiB{', ' + str(file['content_type']) if file.get('content_type') else ''})")
    for key, value in result.items():
        if saved is not None and value is saved[2]:
            continue
        lines.append(f"{key}: {value if isinstance(value, str) else json.dumps(value)}")
    return lines


# ---------------------------------------------------------------- main


def execute(inv: Invocation) -> int:
    args = inv.args
    arguments = build_arguments(inv)
    base = use_server(inv.server)
    client = fal_client.SyncClient(key=args.key)
    progress = Progress(enabled=not args.json)
    started = time.monotonic()
    probe(base)

    def upload(path: Path) -> str:
        progress.note(f"uploading {path} ({path.stat().st_size / 1024:.1f} KiB)")
        return client.upload_file(path)

    arguments = upload_local_files(arguments, upload)
    with Interrupts() as interrupts:
        handle = client.submit(args.endpoint_id, arguments)
        progress.note(f"request {handle.request_id} submitted to {base}")
        try:
            status = wait_for_completion(handle, progress, interrupts)
        except KeyboardInterrupt:
            cancel(handle, progress)
            return EXIT_INTERRUPTED
        finally:
            progress.close()
    if status.error_type == "client_cancelled":
        raise CliError(f"request {handle.request_id} was cancelled")
    try:
        result = handle.get()
    except fal_client.FalClientHTTPError as exc:
        raise CliError(f"request {handle.request_id} failed: {http_error_message(exc)}") from exc

    file = first_file(result)
    saved = None
    if file is not None and (args.output or not args.json):
        path = args.output or default_name(handle.request_id, file)
        saved = (path, download(str(file["url"]), path), file)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(summary(result, saved, time.monotonic() - started)))
    if args.output and file is None:
        raise CliError(f"the result has no file to write to {args.output}")
    return 0


def main(argv: Sequence[str]) -> int:
    try:
        inv = parse_command_line(argv)
        return execute(inv)
    except CliError as exc:
        message = str(exc)
    except fal_client.FalClientHTTPError as exc:
        message = http_error_message(exc)
    except MissingCredentialsError:
        message = "no API key: pass --key KEY_ID:SECRET or set FAL_KEY"
    except httpx.TransportError as exc:
        url = exc.request.url if _has_request(exc) else "the server"
        message = f"cannot reach {url}: {connection_reason(exc)}"
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"{PROG}: {message}", file=sys.stderr)
    return EXIT_FAILED


def _has_request(exc: httpx.TransportError) -> bool:
    try:
        exc.request
    except RuntimeError:  # httpx raises when the error was made without one
        return False
    return True
