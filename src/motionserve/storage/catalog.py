"""The file catalog: the `files` and `uploads` rows every node shares (motionserve.database).

Every write the store makes is announced here before its bytes exist: an `uploads` row reserves
the token (and a multipart upload's backend id). The reservation is swapped for a `files` row in one
transaction once the bytes are in place, so
- a reader never sees a file whose bytes are incomplete (the `files` row comes last);
- every key a backend holds is named by a `files` or an `uploads` row, so sweeping expired files
  and abandoned uploads reaches every byte ever written, with no listing of the bucket.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from sqlalchemy import Connection, Engine, delete, insert, or_, select, update

from motionserve.database import WRITE_OPTION, files, uploads
from motionserve.storage.types import PendingUpload, StoredFile


class FileCatalog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.execution_options(**{WRITE_OPTION: True}).begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            with conn.begin():
                yield conn

    # ---- files ---------------------------------------------------------------------------------

    def file(self, token: str) -> StoredFile | None:
        with self._read() as conn:
            row = conn.execute(select(files).where(files.c.token == token)).first()
        return _stored(row) if row is not None else None

    def expired_files(self, now: float, limit: int) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                select(files.c.token).where(files.c.expires_at <= now).order_by(files.c.expires_at).limit(limit)
            ).all()
        return [r.token for r in rows]

    def forget_files(self, tokens: Sequence[str], now: float) -> int:
        """Delete the rows of files still expired at `now` (another node may have done it already)."""
        with self._write() as conn:
            return conn.execute(delete(files).where(files.c.token.in_(tokens), files.c.expires_at <= now)).rowcount

    def adopt(self, stored: StoredFile) -> None:
        """Add the row of a file whose bytes are already in place (a previous release's file)."""
        with self._write() as conn:
            if conn.execute(select(files.c.token).where(files.c.token == stored.token)).first() is None:
                conn.execute(insert(files).values(**_file_values(stored)))

    # ---- uploads (reservations) --------------------------------------------------------------

    def reserve(self, pending: PendingUpload) -> None:
        with self._write() as conn:
            conn.execute(insert(uploads).values(**_upload_values(pending)))

    def set_backend_upload_id(self, upload_id: str, backend_upload_id: str) -> None:
        with self._write() as conn:
            conn.execute(update(uploads).where(uploads.c.upload_id == upload_id).values(backend_upload_id=backend_upload_id))

    def pending(self, upload_id: str) -> PendingUpload | None:
        with self._read() as conn:
            row = conn.execute(select(uploads).where(uploads.c.upload_id == upload_id)).first()
        return _pending(row) if row is not None else None

    def commit(self, upload_id: str, stored: StoredFile) -> bool:
        """Swap the reservation for the file row, in one transaction. False (and nothing written)
        when the reservation is gone: completed by another request, or swept as abandoned."""
        with self._write() as conn:
            if conn.execute(delete(uploads).where(uploads.c.upload_id == upload_id)).rowcount != 1:
                return False
            conn.execute(insert(files).values(**_file_values(stored)))
            return True

    def abandoned(self, created_before: float, now: float, limit: int) -> list[PendingUpload]:
        """Reservations older than `created_before`, or whose file would already have expired."""
        with self._read() as conn:
            rows = conn.execute(
                select(uploads)
                .where(or_(uploads.c.created_at <= created_before, uploads.c.expires_at <= now))
                .order_by(uploads.c.created_at)
                .limit(limit)
            ).all()
        return [_pending(r) for r in rows]

    def release(self, upload_id: str) -> None:
        """Drop a reservation (after its bytes are gone)."""
        with self._write() as conn:
            conn.execute(delete(uploads).where(uploads.c.upload_id == upload_id))


def _stored(row: Any) -> StoredFile:
    return StoredFile(
        token=row.token, file_name=row.file_name, content_type=row.content_type, size=int(row.size),
        created_at=row.created_at, expires_at=row.expires_at, kind=row.kind,
    )


def _pending(row: Any) -> PendingUpload:
    return PendingUpload(
        upload_id=row.upload_id, token=row.token, file_name=row.file_name, content_type=row.content_type,
        created_at=row.created_at, expires_at=row.expires_at, backend_upload_id=row.backend_upload_id,
    )


def _file_values(stored: StoredFile) -> dict[str, Any]:
    return {
        "token": stored.token, "file_name": stored.file_name, "content_type": stored.content_type, "size": stored.size,
        "created_at": stored.created_at, "expires_at": stored.expires_at, "kind": stored.kind,
    }


def _upload_values(pending: PendingUpload) -> dict[str, Any]:
    return {
        "upload_id": pending.upload_id, "token": pending.token, "file_name": pending.file_name,
        "content_type": pending.content_type, "created_at": pending.created_at, "expires_at": pending.expires_at,
        "backend_upload_id": pending.backend_upload_id,
    }
