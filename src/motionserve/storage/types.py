"""What the API, the job runner and the fetcher know of file storage: the `FileStore` protocol and its values.

A file is a token (the unguessable secret in its URL), metadata in the database (`files`, `uploads`
tables), and bytes in a backend (local disk or an S3-compatible bucket). Callers depend on this
module only, never on a backend.
"""

from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Protocol
from urllib.parse import urlsplit

from motionserve.errors import MotionserveError

FileKind = Literal["upload", "output", "preview"]  # preview: a live preview image of a running job

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_LEN = 120


class FileStoreError(Exception):
    """A request to the file store that cannot be honoured (bad part, ETag mismatch...)."""


class UploadNotFoundError(FileStoreError):
    """The upload id is unknown, completed or expired."""


class FileTooLargeError(FileStoreError):
    """The data would exceed the store's size limit."""


class StorageUnavailableError(FileStoreError):
    """The backend (bucket, disk) did not answer as it should; worth retrying later."""


class StorageConfigError(MotionserveError):
    """The storage settings cannot work (no such bucket, access denied, endpoint unreachable).
    Raised at start; the message is one line fit to print before exiting."""


@dataclass(frozen=True)
class StoredFile:
    token: str
    file_name: str
    content_type: str
    size: int
    created_at: float
    expires_at: float | None
    kind: FileKind = "upload"

    def is_expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (time.time() if now is None else now)


@dataclass(frozen=True)
class PendingUpload:
    """An upload in progress. `token`/`file_name` are reserved: its final URL is known from the start."""

    upload_id: str
    token: str
    file_name: str
    content_type: str
    created_at: float
    expires_at: float | None
    backend_upload_id: str | None = None  # S3's UploadId; None on the local backend


# ---- how a file is served ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServeFile:
    """Send this local file (Range requests handled by the HTTP layer)."""

    path: Path


@dataclass(frozen=True)
class ServeRedirect:
    """Redirect the client to this short-lived URL (S3 presigned GET)."""

    url: str


@dataclass(frozen=True)
class ServeStream:
    """Relay the bytes: `open(first, last)` yields the inclusive byte range from the backend."""

    open: Callable[[int, int], Iterator[bytes]]


Delivery = ServeFile | ServeRedirect | ServeStream


# ---- the protocols ------------------------------------------------------------------------------


class FileReader(Protocol):
    """What the input fetcher needs: recognise our own file URLs and read them through the store."""

    def token_from_url(self, url: str, own_base_urls: Iterable[str]) -> str | None: ...

    def read_bytes(self, token: str, max_bytes: int) -> bytes | None:
        """The file's bytes; None if unknown or expired; FileTooLargeError above `max_bytes`."""
        ...


class FileStore(FileReader, Protocol):
    """Files behind unguessable URLs: uploads, request outputs, their expiry. Any node answers for
    any file: metadata is in the database, bytes in a backend every node reaches."""

    max_bytes: int | None

    def put(
        self,
        data: bytes | Path,
        *,
        content_type: str,
        file_name: str,
        expires_at: float | None = None,
        kind: FileKind = "upload",
        move: bool = False,
    ) -> StoredFile:
        """Store bytes or a file's content under a new token; visible only once complete.
        `move=True` takes ownership of a Path from `temp_path()` (no copy on the local backend)."""
        ...

    def get(self, token: str, *, now: float | None = None) -> StoredFile | None:
        """The file's metadata, or None if unknown or expired."""
        ...

    def delivery(self, stored: StoredFile, *, now: float | None = None) -> Delivery:
        """How to serve the file's bytes to an HTTP client."""
        ...

    def temp_path(self) -> Path:
        """A fresh node-local path to stream a request body into before `put`/`put_part(move=True)`."""
        ...

    def begin_multipart(self, content_type: str, file_name: str, expires_at: float | None = None) -> PendingUpload:
        """Start an upload and reserve its final token. The upload id is itself unguessable:
        knowing it is what allows writing parts."""
        ...

    def pending(self, upload_id: str) -> PendingUpload | None: ...

    def put_part(self, upload_id: str, part_number: int, data: bytes | Path, *, move: bool = False) -> str:
        """Store one part (replacing an earlier try of the same number); returns its ETag."""
        ...

    def complete_multipart(self, upload_id: str, parts: Iterable[tuple[int, str | None]] | None = None) -> StoredFile:
        """Join the listed `(part_number, etag)`s in number order (every uploaded part when None)
        into the reserved token; the upload is gone afterwards."""
        ...

    def delete_expired(self, now: float | None = None) -> int:
        """Delete expired files (rows and bytes), abandoned uploads and stale temp files.
        Returns the number of expired files removed."""
        ...

    def file_url(self, base_url: str, stored: StoredFile | PendingUpload) -> str: ...

    def close(self) -> None: ...


# ---- names, tokens and URLs ---------------------------------------------------------------------


def safe_file_name(name: str | None, default: str = "file") -> str:
    """A file name that is one URL path segment of [A-Za-z0-9._-] and never a hidden/dot name."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = unicodedata.normalize("NFKD", base).encode("ascii", "ignore").decode("ascii")
    base = _UNSAFE_NAME_CHARS.sub("_", base).strip("._-")
    if not base:
        return default
    if len(base) > _MAX_NAME_LEN:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: _MAX_NAME_LEN - len(ext) - 1] + "." + ext) if dot and len(ext) <= 16 else base[:_MAX_NAME_LEN]
    return base


def is_token(value: str) -> bool:
    return bool(_TOKEN_RE.match(value))


def file_url(base_url: str, stored: StoredFile | PendingUpload) -> str:
    """`{base}/files/{token}/{name}`: stable and keyless, whichever backend holds the bytes."""
    return f"{base_url.rstrip('/')}/files/{stored.token}/{stored.file_name}"


_FILE_PATH = re.compile(r"/files/([A-Za-z0-9_-]{16,64})/[^/]+$")


def token_in_path(url: str) -> str | None:
    """The token of a URL shaped like one of our file URLs (`.../files/{token}/{name}`) on any host.

    Another API node of the fleet (or one behind another name) hands out such URLs; a worker that
    finds the token in the store reads the file from there instead of over the network, which also
    keeps working after the node that took the upload is gone."""
    try:
        path = urlsplit(url).path
    except ValueError:
        return None
    match = _FILE_PATH.search(path)
    return match.group(1) if match else None


def token_from_url(url: str, own_base_urls: Iterable[str]) -> str | None:
    """The token of one of our own file URLs (under any of `own_base_urls`), else None."""
    try:
        target = urlsplit(url)
    except ValueError:
        return None
    for base in own_base_urls:
        own = urlsplit(base.rstrip("/"))
        if (target.scheme.lower(), target.netloc.lower()) != (own.scheme.lower(), own.netloc.lower()):
            continue
        prefix = own.path.rstrip("/") + "/files/"
        if target.path.startswith(prefix):
            token = target.path[len(prefix):].split("/", 1)[0]
            return token if is_token(token) else None
    return None
