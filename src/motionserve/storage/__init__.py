"""File storage: uploads and outputs behind unguessable URLs, safe fetching of input URLs.

`open_file_store(settings)` picks the backend from `Settings.storage_url`: None for files under
`settings.files_dir` (zero-config), `s3://bucket[/prefix]` for an S3-compatible bucket. Either way
the metadata is in the database, so every API node and worker answers for every file.
"""

from __future__ import annotations

from sqlalchemy import Engine

from motionserve.config import Settings
from motionserve.database import make_engine
from motionserve.storage.local import LocalObjects
from motionserve.storage.store import DatabaseFileStore, ObjectBackend
from motionserve.storage.types import (
    FileReader,
    FileStore,
    FileStoreError,
    FileTooLargeError,
    PendingUpload,
    StorageConfigError,
    StorageUnavailableError,
    StoredFile,
    UploadNotFoundError,
    is_token,
    safe_file_name,
)

__all__ = [
    "FileReader",
    "FileStore",
    "FileStoreError",
    "FileTooLargeError",
    "PendingUpload",
    "StorageConfigError",
    "StorageUnavailableError",
    "StoredFile",
    "UploadNotFoundError",
    "is_token",
    "open_file_store",
    "safe_file_name",
]


def open_file_store(settings: Settings, engine: Engine | None = None) -> FileStore:
    """The file store the settings describe, on `engine` (default: one for the settings' database).

    Raises StorageConfigError (a one-line reason) when the bucket cannot be used. The tables must
    exist (the job store creates or migrates them).
    """
    backend = _open_backend(settings)
    store = DatabaseFileStore(
        engine if engine is not None else make_engine(settings.resolved_database_url),
        backend,
        tmp_dir=settings.files_dir / "tmp",
        max_bytes=settings.max_upload_bytes,
        owns_engine=engine is None,
    )
    if isinstance(backend, LocalObjects):
        backend.adopt_previous_release(store.catalog)
    return store


def _open_backend(settings: Settings) -> ObjectBackend:
    if not settings.storage_url:
        return LocalObjects(settings.files_dir)
    from motionserve.storage.s3 import open_s3_objects  # boto3 is only imported when used

    return open_s3_objects(
        settings.storage_url, delivery=settings.file_delivery, presigned_ttl_s=settings.presigned_url_ttl_s
    )
