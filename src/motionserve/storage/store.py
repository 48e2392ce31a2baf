"""The one `FileStore` implementation: metadata in the database (`FileCatalog`), bytes in a backend.

The rules that make files safe to share between nodes live here once, whatever holds the bytes:
unguessable tokens, safe names, the size limit, expiry, "bytes first, then the row" (see catalog.py),
and the sweep of expired files and abandoned uploads. A backend (`ObjectBackend`: local disk,
S3) only moves bytes.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

from sqlalchemy import Engine

from motionserve.storage.catalog import FileCatalog
from motionserve.storage.types import (
    Delivery,
    FileKind,
    FileStoreError,
    FileTooLargeError,
    PendingUpload,
    StoredFile,
    UploadNotFoundError,
    file_url,
    is_token,
    safe_file_name,
    token_from_url,
)

# An upload nobody completes is dropped after this long (unless its own expiry comes first).
PENDING_UPLOAD_TTL_S = 24 * 3600
# Temp files older than this belong to a crashed or abandoned write.
STALE_TEMP_S = 6 * 3600
MAX_PART_NUMBER = 10_000
_SWEEP_BATCH = 500
_MAX_CONTENT_TYPE_LEN = 200  # the column's width


@dataclass(frozen=True)
class Part:
    """One uploaded part as the backend knows it. `checksums`: what S3 wants echoed on completion."""

    number: int
    etag: str
    size: int
    checksums: Mapping[str, str] = field(default_factory=dict)


class ObjectBackend(Protocol):
    """Where bytes live: `<token>` objects and in-progress multipart uploads. No metadata."""

    def write(self, token: str, source: bytes | Path, *, content_type: str, move: bool) -> None:
        """Place the whole object at once (a reader of `token` never sees part of it)."""
        ...

    def read(self, token: str) -> bytes: ...

    def delete(self, tokens: Sequence[str]) -> None:
        """Delete objects; missing ones are no error."""
        ...

    def begin_upload(self, upload: PendingUpload) -> str | None:
        """Prepare a multipart upload; the backend's own upload id, if it has one."""
        ...

    def write_part(self, upload: PendingUpload, number: int, source: bytes | Path, *, move: bool) -> str:
        """Store (or replace) one part; its ETag."""
        ...

    def parts(self, upload: PendingUpload) -> dict[int, Part]: ...

    def complete_upload(self, upload: PendingUpload, parts: Sequence[Part]) -> None:
        """Join `parts` (in this order) into the object at `upload.token`."""
        ...

    def discard_upload(self, upload: PendingUpload) -> None:
        """Forget an upload: its parts, any backend upload under its key, and its object if written."""
        ...

    def delivery(self, stored: StoredFile, now: float) -> Delivery: ...


class DatabaseFileStore:
    """A `FileStore` (storage/types.py). `tmp_dir` is node-local scratch space for request bodies."""

    def __init__(
        self,
        engine: Engine,
        backend: ObjectBackend,
        *,
        tmp_dir: Path,
        max_bytes: int | None = None,
        owns_engine: bool = False,
    ) -> None:
        self.catalog = FileCatalog(engine)
        self.backend = backend
        self.max_bytes = max_bytes
        self._tmp = Path(tmp_dir)
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._owns_engine = owns_engine

    def close(self) -> None:
        if self._owns_engine:
            self.catalog.engine.dispose()

    # ---- single files ------------------------------------------------------------------------

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
        size = data.stat().st_size if isinstance(data, Path) else len(data)
        if self.max_bytes is not None and size > self.max_bytes:
            _discard_source(data, move)
            raise FileTooLargeError(f"File exceeds the limit of {self.max_bytes} bytes")
        reservation = self._reserve(content_type, file_name, expires_at)
        try:
            self.backend.write(reservation.token, data, content_type=reservation.content_type, move=move)
        except BaseException:
            _discard_source(data, move)
            self._drop(reservation)
            raise
        stored = StoredFile(
            token=reservation.token, file_name=reservation.file_name, content_type=reservation.content_type,
            size=size, created_at=time.time(), expires_at=expires_at, kind=kind,
        )
        self._commit(reservation, stored)
        return stored

    def get(self, token: str, *, now: float | None = None) -> StoredFile | None:
        if not is_token(token):
            return None
        stored = self.catalog.file(token)
        return None if stored is None or stored.is_expired(now) else stored

    def read_bytes(self, token: str, max_bytes: int) -> bytes | None:
        stored = self.get(token)
        if stored is None:
            return None
        if stored.size > max_bytes:
            raise FileTooLargeError(f"File is larger than the {max_bytes} bytes allowed")
        return self.backend.read(token)

    def delivery(self, stored: StoredFile, *, now: float | None = None) -> Delivery:
        return self.backend.delivery(stored, time.time() if now is None else now)

    def temp_path(self) -> Path:
        return self._tmp / f"recv-{secrets.token_hex(12)}"

    # ---- multipart ---------------------------------------------------------------------------

    def begin_multipart(self, content_type: str, file_name: str, expires_at: float | None = None) -> PendingUpload:
        pending = self._reserve(content_type, file_name, expires_at)
        try:
            backend_id = self.backend.begin_upload(pending)
            if backend_id is not None:
                self.catalog.set_backend_upload_id(pending.upload_id, backend_id)
                pending = replace(pending, backend_upload_id=backend_id)
        except BaseException:
            self._drop(pending)
            raise
        return pending

    def pending(self, upload_id: str) -> PendingUpload | None:
        return self.catalog.pending(upload_id) if is_token(upload_id) else None

    def put_part(self, upload_id: str, part_number: int, data: bytes | Path, *, move: bool = False) -> str:
        try:
            upload = self._pending_or_raise(upload_id)
            if not 1 <= part_number <= MAX_PART_NUMBER:
                raise FileStoreError(f"Part number must be between 1 and {MAX_PART_NUMBER}")
            size = data.stat().st_size if isinstance(data, Path) else len(data)
            if self.max_bytes is not None and size > self.max_bytes:
                raise FileTooLargeError(f"Part exceeds the upload limit of {self.max_bytes} bytes")
        except FileStoreError:
            _discard_source(data, move)
            raise
        return self.backend.write_part(upload, part_number, data, move=move)

    def complete_multipart(self, upload_id: str, parts: Iterable[tuple[int, str | None]] | None = None) -> StoredFile:
        upload = self._pending_or_raise(upload_id)
        chosen = _choose_parts(self.backend.parts(upload), parts)
        total = sum(p.size for p in chosen)
        if self.max_bytes is not None and total > self.max_bytes:
            raise FileTooLargeError(f"Upload exceeds the limit of {self.max_bytes} bytes")
        self.backend.complete_upload(upload, chosen)
        stored = StoredFile(
            token=upload.token, file_name=upload.file_name, content_type=upload.content_type,
            size=total, created_at=time.time(), expires_at=upload.expires_at, kind="upload",
        )
        self._commit(upload, stored)
        return stored

    # ---- expiry ------------------------------------------------------------------------------

    def delete_expired(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        removed = 0
        while tokens := self.catalog.expired_files(now, _SWEEP_BATCH):
            # Bytes first: the rows are already invisible, and a row outliving a failed delete
            # means the next sweep tries again (nothing is ever left unnamed).
            self.backend.delete(tokens)
            removed += self.catalog.forget_files(tokens, now)
        while abandoned := self.catalog.abandoned(now - PENDING_UPLOAD_TTL_S, now, _SWEEP_BATCH):
            for upload in abandoned:
                self._drop(upload)
        self._sweep_temp(now)
        return removed

    # ---- URLs --------------------------------------------------------------------------------

    def file_url(self, base_url: str, stored: StoredFile | PendingUpload) -> str:
        return file_url(base_url, stored)

    def token_from_url(self, url: str, own_base_urls: Iterable[str]) -> str | None:
        return token_from_url(url, own_base_urls)

    # ---- internals ---------------------------------------------------------------------------

    def _reserve(self, content_type: str, file_name: str, expires_at: float | None) -> PendingUpload:
        pending = PendingUpload(
            upload_id=secrets.token_urlsafe(24),
            token=secrets.token_urlsafe(24),
            file_name=safe_file_name(file_name),
            content_type=_content_type(content_type),
            created_at=time.time(),
            expires_at=expires_at,
        )
        self.catalog.reserve(pending)
        return pending

    def _commit(self, reservation: PendingUpload, stored: StoredFile) -> None:
        if not self.catalog.commit(reservation.upload_id, stored):
            # Completed by a concurrent request (its bytes are the ones at the key), or swept as
            # abandoned (a day after it began, or past its expiry: the sweep removed the bytes).
            raise UploadNotFoundError("Upload not found (unknown, completed or expired)")

    def _drop(self, reservation: PendingUpload) -> None:
        # Bytes first, row last: if the backend fails, the row stays and the next sweep retries,
        # so nothing is ever left in the bucket unnamed.
        self.backend.discard_upload(reservation)
        self.catalog.release(reservation.upload_id)

    def _pending_or_raise(self, upload_id: str) -> PendingUpload:
        upload = self.pending(upload_id)
        if upload is None:
            raise UploadNotFoundError("Upload not found (unknown, completed or expired)")
        return upload

    def _sweep_temp(self, now: float) -> None:
        for tmp in self._tmp.iterdir():
            try:
                if tmp.stat().st_mtime < now - STALE_TEMP_S:
                    tmp.unlink()
            except FileNotFoundError:
                pass  # removed by its writer meanwhile


def _choose_parts(uploaded: dict[int, Part], wanted: Iterable[tuple[int, str | None]] | None) -> list[Part]:
    """The parts to join, in number order, checked against what was uploaded."""
    if wanted is None:
        requested: dict[int, str | None] = {n: None for n in uploaded}
    else:
        requested = dict(wanted)
    if not requested:
        raise FileStoreError("No parts to complete the upload with")
    chosen = []
    for number in sorted(requested):
        part = uploaded.get(number)
        if part is None:
            raise FileStoreError(f"Part {number} was not uploaded")
        etag = requested[number]
        if etag is not None and etag.strip().strip('"') != part.etag.strip('"'):
            raise FileStoreError(f"Part {number} ETag does not match")
        chosen.append(part)
    return chosen


def _content_type(value: str | None) -> str:
    value = (value or "").strip()
    return value if value and len(value) <= _MAX_CONTENT_TYPE_LEN else "application/octet-stream"


def _discard_source(data: bytes | Path, move: bool) -> None:
    """A refused or failed `move=True` write still owns its temp file: remove it."""
    if move and isinstance(data, Path):
        data.unlink(missing_ok=True)
