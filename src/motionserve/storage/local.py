"""Files on the local disk behind unguessable URLs: uploads, request outputs, their expiry.

Layout under `root`:

    objects/<token>        the bytes
    objects/<token>.json   sidecar metadata (StoredFile); written last, so a file exists once it has one
    uploads/<upload_id>/   an unfinished upload: meta.json + part-00001, part-00002, ...
    tmp/                   files being received; renamed into place when complete

Every write lands in `tmp/` first and is renamed into place, so a reader never sees half a file and a
crash leaves only temp files (swept by `delete_expired`). Big bodies are streamed to disk by the
caller (`temp_path` + `put(path, move=True)`), never held in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Iterable
from urllib.parse import urlsplit

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME_LEN = 120
_COPY_CHUNK = 1024 * 1024
# An upload nobody completes is dropped after this long (unless its own expiry comes first).
_PENDING_UPLOAD_TTL_S = 24 * 3600
# Temp files older than this belong to a crashed or abandoned write.
_STALE_TEMP_S = 6 * 3600
_MAX_PART_NUMBER = 10_000


class FileStoreError(Exception):
    """A request to the file store that cannot be honoured (unknown upload, bad part, too big)."""


class FileTooLargeError(FileStoreError):
    """The data would exceed the store's size limit."""


@dataclass(frozen=True)
class StoredFile:
    token: str
    file_name: str
    content_type: str
    size: int
    created_at: float
    expires_at: float | None

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


class LocalFileStore:
    def __init__(self, root: Path | str, *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._objects = self.root / "objects"
        self._uploads = self.root / "uploads"
        self._tmp = self.root / "tmp"
        for d in (self._objects, self._uploads, self._tmp):
            d.mkdir(parents=True, exist_ok=True)

    # ---- single files ------------------------------------------------------------------------

    def put(
        self,
        data: bytes | Path,
        *,
        content_type: str,
        file_name: str,
        expires_at: float | None = None,
        move: bool = False,
    ) -> StoredFile:
        """Store bytes or a file's content under a new token. `move=True` takes ownership of a Path
        (it must be on the same filesystem, e.g. from `temp_path()`), avoiding a copy."""
        token = secrets.token_urlsafe(24)
        self._place(token, data, move=move)
        stored = StoredFile(
            token=token,
            file_name=safe_file_name(file_name),
            content_type=content_type or "application/octet-stream",
            size=(self._objects / token).stat().st_size,
            created_at=time.time(),
            expires_at=expires_at,
        )
        self._write_json(self._objects / f"{token}.json", asdict(stored))
        return stored

    def get(self, token: str, *, now: float | None = None) -> tuple[Path, StoredFile] | None:
        """The file and its metadata, or None if unknown or expired."""
        if not is_token(token):
            return None
        meta = self._read_json(self._objects / f"{token}.json")
        if meta is None:
            return None
        stored = StoredFile(**meta)
        path = self._objects / token
        if stored.is_expired(now) or not path.is_file():
            return None
        return path, stored

    def delete(self, token: str) -> bool:
        if not is_token(token):
            return False
        found = (self._objects / f"{token}.json").exists()
        # Sidecar first: once it is gone the file is invisible, whatever happens to the data.
        (self._objects / f"{token}.json").unlink(missing_ok=True)
        (self._objects / token).unlink(missing_ok=True)
        return found

    def temp_path(self) -> Path:
        """A fresh path inside the store to stream a body into before `put(path, move=True)`."""
        return self._tmp / f"recv-{secrets.token_hex(12)}"

    # ---- multipart ---------------------------------------------------------------------------

    def begin_multipart(self, content_type: str, file_name: str, expires_at: float | None = None) -> str:
        """Start an upload; its final token is reserved now (see `pending`). Returns the upload id,
        which is itself unguessable: knowing it is what allows writing parts."""
        upload_id = secrets.token_urlsafe(24)
        pending = PendingUpload(
            upload_id=upload_id,
            token=secrets.token_urlsafe(24),
            file_name=safe_file_name(file_name),
            content_type=content_type or "application/octet-stream",
            created_at=time.time(),
            expires_at=expires_at,
        )
        (self._uploads / upload_id).mkdir()
        self._write_json(self._uploads / upload_id / "meta.json", asdict(pending))
        return upload_id

    def pending(self, upload_id: str) -> PendingUpload | None:
        if not is_token(upload_id):
            return None
        meta = self._read_json(self._uploads / upload_id / "meta.json")
        return PendingUpload(**meta) if meta is not None else None

    def put_part(self, upload_id: str, part_number: int, data: bytes | Path | BinaryIO, *, move: bool = False) -> str:
        """Store one part (replacing an earlier try of the same number); returns its ETag (quoted MD5)."""
        if self.pending(upload_id) is None:
            raise FileStoreError(f"Unknown upload {upload_id!r}")
        if not 1 <= part_number <= _MAX_PART_NUMBER:
            raise FileStoreError(f"Part number must be between 1 and {_MAX_PART_NUMBER}")
        tmp = self.temp_path()
        digest = hashlib.md5(usedforsecurity=False)
        if isinstance(data, Path) and move:
            os.replace(data, tmp)
            with open(tmp, "rb") as f:
                for chunk in iter(lambda: f.read(_COPY_CHUNK), b""):
                    digest.update(chunk)
        else:
            with open(tmp, "wb") as out:
                for chunk in _chunks(data):
                    digest.update(chunk)
                    out.write(chunk)
        if self.max_bytes is not None and tmp.stat().st_size > self.max_bytes:
            tmp.unlink(missing_ok=True)
            raise FileTooLargeError(f"Part exceeds the upload limit of {self.max_bytes} bytes")
        etag = f'"{digest.hexdigest()}"'
        part = self._uploads / upload_id / f"part-{part_number:05d}"
        os.replace(tmp, part)
        (part.with_suffix(".etag")).write_text(etag)
        return etag

    def complete_multipart(self, upload_id: str, parts: Iterable[tuple[int, str | None]] | None = None) -> StoredFile:
        """Join the parts (the listed `(part_number, etag)`s in number order, or every uploaded part
        when `parts` is None) into the reserved token; the upload is gone afterwards."""
        pending = self.pending(upload_id)
        if pending is None:
            raise FileStoreError(f"Unknown upload {upload_id!r}")
        updir = self._uploads / upload_id
        if parts is None:
            numbers = sorted(int(p.name.split("-")[1]) for p in updir.glob("part-?????") if p.is_file())
            wanted: list[tuple[int, str | None]] = [(n, None) for n in numbers]
        else:
            wanted = sorted(parts, key=lambda p: p[0])
        if not wanted:
            raise FileStoreError("No parts to complete the upload with")
        total = 0
        for number, etag in wanted:
            part = updir / f"part-{number:05d}"
            if not part.is_file():
                raise FileStoreError(f"Part {number} was not uploaded")
            if etag is not None and etag.strip('"') != part.with_suffix(".etag").read_text().strip('"'):
                raise FileStoreError(f"Part {number} ETag does not match")
            total += part.stat().st_size
        if self.max_bytes is not None and total > self.max_bytes:
            raise FileTooLargeError(f"Upload exceeds the limit of {self.max_bytes} bytes")
        tmp = self.temp_path()
        with open(tmp, "wb") as out:
            for number, _ in wanted:
                with open(updir / f"part-{number:05d}", "rb") as src:
                    shutil.copyfileobj(src, out, _COPY_CHUNK)
        self._place(pending.token, tmp, move=True)
        stored = StoredFile(
            token=pending.token,
            file_name=pending.file_name,
            content_type=pending.content_type,
            size=total,
            created_at=time.time(),
            expires_at=pending.expires_at,
        )
        self._write_json(self._objects / f"{pending.token}.json", asdict(stored))
        shutil.rmtree(updir, ignore_errors=True)
        return stored

    def abort_multipart(self, upload_id: str) -> None:
        if is_token(upload_id):
            shutil.rmtree(self._uploads / upload_id, ignore_errors=True)

    # ---- expiry ------------------------------------------------------------------------------

    def delete_expired(self, now: float | None = None) -> int:
        """Remove expired files, abandoned uploads and stale temp files. Returns the files removed."""
        now = time.time() if now is None else now
        removed = 0
        for sidecar in self._objects.glob("*.json"):
            meta = self._read_json(sidecar)
            expires_at = meta.get("expires_at") if meta else None
            if expires_at is not None and expires_at <= now and self.delete(sidecar.stem):
                removed += 1
        for updir in self._uploads.iterdir():
            pending = self.pending(updir.name)
            if pending is None:
                stale = _mtime(updir) < now - _STALE_TEMP_S
            else:
                deadline = pending.created_at + _PENDING_UPLOAD_TTL_S
                stale = min(deadline, pending.expires_at or deadline) <= now
            if stale:
                shutil.rmtree(updir, ignore_errors=True)
        for tmp in self._tmp.iterdir():
            if _mtime(tmp) < now - _STALE_TEMP_S:
                tmp.unlink(missing_ok=True)
        # Data without a sidecar: a crash between placing the bytes and writing the metadata.
        for data in self._objects.iterdir():
            if data.suffix != ".json" and not data.with_name(data.name + ".json").exists() and _mtime(data) < now - _STALE_TEMP_S:
                data.unlink(missing_ok=True)
        return removed

    # ---- URLs --------------------------------------------------------------------------------

    @staticmethod
    def file_url(base_url: str, stored: StoredFile) -> str:
        return f"{base_url.rstrip('/')}/files/{stored.token}/{stored.file_name}"

    @staticmethod
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

    # ---- internals ---------------------------------------------------------------------------

    def _place(self, token: str, data: bytes | Path, *, move: bool) -> None:
        final = self._objects / token
        if isinstance(data, Path):
            if move:
                tmp = data
            else:
                tmp = self.temp_path()
                shutil.copyfile(data, tmp)
        else:
            tmp = self.temp_path()
            tmp.write_bytes(data)
        if self.max_bytes is not None and tmp.stat().st_size > self.max_bytes:
            tmp.unlink(missing_ok=True)
            raise FileTooLargeError(f"File exceeds the limit of {self.max_bytes} bytes")
        os.replace(tmp, final)

    def _write_json(self, path: Path, value: dict) -> None:
        tmp = self.temp_path()
        tmp.write_text(json.dumps(value))
        os.replace(tmp, path)

    @staticmethod
    def _read_json(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return None


def _chunks(data: bytes | Path | BinaryIO) -> Iterable[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        yield bytes(data)
    elif isinstance(data, Path):
        with open(data, "rb") as f:
            yield from iter(lambda: f.read(_COPY_CHUNK), b"")
    else:
        yield from iter(lambda: data.read(_COPY_CHUNK), b"")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")
