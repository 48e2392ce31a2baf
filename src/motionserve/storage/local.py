"""Bytes on this node's disk: the embedded, zero-config backend (single node, or a shared volume).

Layout under `root` (Settings.files_dir):

    objects/<token>              a file's bytes
    uploads/<upload_id>/         an unfinished multipart upload: part-00001 (+ .etag), part-00002, ...
    tmp/                         request bodies and files being assembled; renamed into place

Every object lands in `tmp/` first and is renamed into place, so it appears whole. Metadata is in
the database (storage/catalog.py), not here.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from motionserve.errors import StorageFullError, is_disk_full
from motionserve.storage.catalog import FileCatalog
from motionserve.storage.store import Part
from motionserve.storage.types import Delivery, PendingUpload, ServeFile, StoredFile, UploadNotFoundError, is_token

_COPY_CHUNK = 1024 * 1024
_SIDECAR_FIELDS = ("token", "file_name", "content_type", "size", "created_at", "expires_at")


class LocalObjects:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._objects = self.root / "objects"
        self._uploads = self.root / "uploads"
        self._tmp = self.root / "tmp"
        for d in (self._objects, self._uploads, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    def adopt_previous_release(self, catalog: FileCatalog) -> int:
        """Files of releases that kept their metadata in `objects/<token>.json` sidecars: their rows
        go into the catalog (the bytes are already where this backend keeps them), then the sidecar
        goes. Run at start, so an upgraded install keeps serving its files and inputs."""
        adopted = 0
        for sidecar in self._objects.glob("*.json"):
            try:
                meta = json.loads(sidecar.read_text())
                stored = StoredFile(**{k: meta[k] for k in _SIDECAR_FIELDS}, kind="upload")
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable: leave it for an operator to look at
            if is_token(stored.token) and (self._objects / stored.token).is_file():
                catalog.adopt(stored)
                adopted += 1
            sidecar.unlink(missing_ok=True)
        return adopted

    def object_path(self, token: str) -> Path:
        return self._objects / token

    def write(self, token: str, source: bytes | Path, *, content_type: str, move: bool) -> None:
        os.replace(self._staged(source, move), self._objects / token)

    def read(self, token: str) -> bytes:
        return (self._objects / token).read_bytes()

    def delete(self, tokens: Sequence[str]) -> None:
        for token in tokens:
            (self._objects / token).unlink(missing_ok=True)

    def begin_upload(self, upload: PendingUpload) -> str | None:
        (self._uploads / upload.upload_id).mkdir()
        return None

    def write_part(self, upload: PendingUpload, number: int, source: bytes | Path, *, move: bool) -> str:
        staged = self._staged(source, move)
        digest = hashlib.md5(usedforsecurity=False)
        with open(staged, "rb") as f:
            for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
                digest.update(chunk)
        etag = f'"{digest.hexdigest()}"'
        part = self._part_path(upload, number)
        try:
            # The ETag first: a part is only listed once its data is in place, and then it has one.
            with _written_whole(part.with_suffix(".etag")):
                part.with_suffix(".etag").write_text(etag)
            os.replace(staged, part)
        except FileNotFoundError as exc:  # the upload was completed or swept meanwhile
            staged.unlink(missing_ok=True)
            raise UploadNotFoundError("Upload not found (unknown, completed or expired)") from exc
        except StorageFullError:
            staged.unlink(missing_ok=True)
            raise
        return etag

    def parts(self, upload: PendingUpload) -> dict[int, Part]:
        found = {}
        for path in (self._uploads / upload.upload_id).glob("part-?????"):
            number = int(path.name.split("-")[1])
            found[number] = Part(number, path.with_suffix(".etag").read_text(), path.stat().st_size)
        return found

    def complete_upload(self, upload: PendingUpload, parts: Sequence[Part]) -> None:
        tmp = self._temp_path()
        with _written_whole(tmp), open(tmp, "wb") as out:
            for part in parts:
                with open(self._part_path(upload, part.number), "rb") as src:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)
        os.replace(tmp, self._objects / upload.token)
        shutil.rmtree(self._uploads / upload.upload_id, ignore_errors=True)

    def discard_upload(self, upload: PendingUpload) -> None:
        shutil.rmtree(self._uploads / upload.upload_id, ignore_errors=True)
        (self._objects / upload.token).unlink(missing_ok=True)

    def delivery(self, stored: StoredFile, now: float) -> Delivery:
        return ServeFile(self._objects / stored.token)

    # ---- internals ---------------------------------------------------------------------------

    def _part_path(self, upload: PendingUpload, number: int) -> Path:
        return self._uploads / upload.upload_id / f"part-{number:05d}"

    def _temp_path(self) -> Path:
        return self._tmp / f"put-{secrets.token_hex(12)}"

    def _staged(self, source: bytes | Path, move: bool) -> Path:
        """`source` as a file in tmp/ that may be renamed into place."""
        if isinstance(source, Path) and move:
            return source  # a temp_path() of the store: tmp/ on this filesystem
        tmp = self._temp_path()
        with _written_whole(tmp):
            if isinstance(source, Path):
                shutil.copyfile(source, tmp)
            else:
                tmp.write_bytes(source)
        return tmp


@contextmanager
def _written_whole(path: Path) -> Iterator[None]:
    """Remove `path` when writing it fails: a half-written file must be neither renamed into place
    nor left to fill the disk. A full disk is reported as such (507), not as an internal error."""
    try:
        yield
    except BaseException as exc:
        path.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise StorageFullError() from exc
        raise
