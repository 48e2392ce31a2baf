"""Bytes in an S3-compatible bucket (AWS S3, MinIO, R2, Ceph): `s3://bucket[/prefix]`, object `<prefix>/<token>`.

boto3 reads the endpoint and credentials itself, from the standard variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, profiles, instance roles...).
With an endpoint other than AWS, requests use path-style addressing (`{endpoint}/{bucket}/{key}`),
which MinIO, Ceph and moto need since they rarely have a DNS name per bucket.

Multipart uploads are S3's own (CreateMultipartUpload / UploadPart / CompleteMultipartUpload), so
parts sent to different API nodes meet in the bucket, and the ETags clients see are S3's. S3 wants
every part but the last to be at least 5 MiB; both fal clients send 10 MB parts.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Literal, Sequence
from urllib.parse import urlsplit

import boto3
from boto3.exceptions import S3UploadFailedError
from botocore.client import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    PartialCredentialsError,
)

from motionserve.storage.store import Part
from motionserve.storage.types import (
    Delivery,
    FileStoreError,
    PendingUpload,
    ServeRedirect,
    ServeStream,
    StorageConfigError,
    StorageUnavailableError,
    StoredFile,
    UploadNotFoundError,
)

FileDelivery = Literal["redirect", "proxy"]

MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4's limit
_STREAM_CHUNK = 1024 * 1024
_DELETE_BATCH = 1000  # DeleteObjects' limit
_PART_CHECKSUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumCRC64NVME", "ChecksumSHA1", "ChecksumSHA256")


def open_s3_objects(storage_url: str, *, delivery: FileDelivery, presigned_ttl_s: int) -> "S3Objects":
    """The backend for `storage_url`, once the bucket answered; StorageConfigError (one line) if not."""
    bucket, prefix = parse_s3_url(storage_url)
    try:
        client = make_client()
    except BotoCoreError as exc:  # e.g. a malformed AWS_ENDPOINT_URL or config file
        raise StorageConfigError(f"cannot use {storage_url}: {exc}") from exc
    objects = S3Objects(client, bucket, prefix, delivery=delivery, presigned_ttl_s=presigned_ttl_s)
    objects.check(storage_url)
    return objects


def parse_s3_url(storage_url: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` -> (bucket, prefix without surrounding slashes)."""
    parts = urlsplit(storage_url)
    if parts.scheme != "s3":
        raise StorageConfigError(f"cannot use {storage_url}: storage_url must look like s3://bucket[/prefix]")
    if not parts.netloc:
        raise StorageConfigError(f"cannot use {storage_url}: no bucket name (s3://bucket[/prefix])")
    return parts.netloc, parts.path.strip("/")


def make_client() -> Any:
    session = boto3.session.Session()
    # Where boto3 would send requests, from the environment or config files (no network here).
    endpoint = session.client("s3").meta.endpoint_url
    on_aws = ".amazonaws.com" in (urlsplit(endpoint).hostname or "")
    config = Config(
        signature_version="s3v4",  # presigned URLs too (boto3 would otherwise sign some with SigV2)
        connect_timeout=10,
        read_timeout=60,
        retries={"mode": "standard"},
        s3={} if on_aws else {"addressing_style": "path"},
    )
    return session.client("s3", config=config)


class S3Objects:
    def __init__(self, client: Any, bucket: str, prefix: str, *, delivery: FileDelivery, presigned_ttl_s: int) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.file_delivery = delivery
        self.presigned_ttl_s = presigned_ttl_s
        # As boto3's own transfers do: when botocore adds CRC32 checksums to parts by default, the
        # upload must be created with that algorithm, and the completion must repeat each part's.
        # With AWS_REQUEST_CHECKSUM_CALCULATION=when_required (stores without checksum support) none.
        when_supported = client.meta.config.request_checksum_calculation == "when_supported"
        self._checksum: dict[str, str] = {"ChecksumAlgorithm": "CRC32"} if when_supported else {}

    def key(self, token: str) -> str:
        return f"{self.prefix}/{token}" if self.prefix else token

    def check(self, storage_url: str) -> None:
        """HeadBucket; StorageConfigError saying in one line what is wrong."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            raise StorageConfigError(f"cannot use {storage_url}: {_bucket_problem(exc)}") from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise StorageConfigError(
                f"cannot use {storage_url}: no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or AWS_PROFILE, or run with an instance role)"
            ) from exc
        except (EndpointConnectionError, ConnectTimeoutError) as exc:
            raise StorageConfigError(
                f"cannot use {storage_url}: cannot connect to {self.client.meta.endpoint_url} (check AWS_ENDPOINT_URL)"
            ) from exc
        except BotoCoreError as exc:
            raise StorageConfigError(f"cannot use {storage_url}: {exc}") from exc

    # ---- objects -------------------------------------------------------------------------------

    def write(self, token: str, source: bytes | Path, *, content_type: str, move: bool) -> None:
        try:
            with self._errors("storing a file"):
                if isinstance(source, Path):
                    # Managed transfer: big files go up in parallel parts, never whole in memory.
                    self.client.upload_file(str(source), self.bucket, self.key(token), ExtraArgs={"ContentType": content_type})
                else:
                    self.client.put_object(Bucket=self.bucket, Key=self.key(token), Body=source, ContentType=content_type)
        finally:
            if move and isinstance(source, Path):
                source.unlink(missing_ok=True)  # it was ours to consume

    def read(self, token: str) -> bytes:
        with self._errors("reading a file"):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(token))["Body"]
            try:
                return body.read()
            finally:
                body.close()

    def delete(self, tokens: Sequence[str]) -> None:
        for start in range(0, len(tokens), _DELETE_BATCH):
            batch = [{"Key": self.key(t)} for t in tokens[start:start + _DELETE_BATCH]]
            with self._errors("deleting files"):
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageUnavailableError(f"deleting {first.get('Key')} failed: {first.get('Code')} {first.get('Message')}")

    # ---- multipart -----------------------------------------------------------------------------

    def begin_upload(self, upload: PendingUpload) -> str | None:
        with self._errors("starting an upload"):
            answer = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key(upload.token), ContentType=upload.content_type, **self._checksum
            )
        return str(answer["UploadId"])

    def write_part(self, upload: PendingUpload, number: int, source: bytes | Path, *, move: bool) -> str:
        if upload.backend_upload_id is None:
            raise UploadNotFoundError("Upload not found (unknown, completed or expired)")
        try:
            with self._errors("storing a part"), _opened(source) as body:
                answer = self.client.upload_part(
                    Bucket=self.bucket, Key=self.key(upload.token), UploadId=upload.backend_upload_id,
                    PartNumber=number, Body=body, **self._checksum,
                )
        finally:
            if move and isinstance(source, Path):
                source.unlink(missing_ok=True)
        return str(answer["ETag"])

    def parts(self, upload: PendingUpload) -> dict[int, Part]:
        found: dict[int, Part] = {}
        with self._errors("listing parts"):
            pages = self.client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=self.key(upload.token), UploadId=upload.backend_upload_id or ""
            )
            for page in pages:
                for p in page.get("Parts", []):
                    checksums = {k: p[k] for k in _PART_CHECKSUMS if p.get(k)}
                    found[p["PartNumber"]] = Part(p["PartNumber"], p["ETag"], int(p["Size"]), checksums)
        return found

    def complete_upload(self, upload: PendingUpload, parts: Sequence[Part]) -> None:
        listed = [{"PartNumber": p.number, "ETag": p.etag, **p.checksums} for p in parts]
        with self._errors("completing an upload"):
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key(upload.token), UploadId=upload.backend_upload_id or "",
                MultipartUpload={"Parts": listed},
            )

    def discard_upload(self, upload: PendingUpload) -> None:
        key = self.key(upload.token)
        with self._errors("discarding an upload"):
            # Listed rather than taken from the row: a crash may have come between S3 creating the
            # upload and the row recording its id.
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=key)
            for page in pages:
                for found in page.get("Uploads", []):
                    if found["Key"] == key:
                        self._abort(key, found["UploadId"])
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def _abort(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as exc:
            if _code(exc) != "NoSuchUpload":  # aborted or completed meanwhile
                raise

    # ---- serving -------------------------------------------------------------------------------

    def delivery(self, stored: StoredFile, now: float) -> Delivery:
        key = self.key(stored.token)
        if self.file_delivery == "proxy":
            return ServeStream(lambda first, last: self._stream(key, first, last))
        # Valid no longer than the file itself: an expired file must not stay downloadable.
        left = stored.expires_at - now if stored.expires_at is not None else self.presigned_ttl_s
        ttl = max(1, min(self.presigned_ttl_s, int(left), MAX_PRESIGN_S))
        url = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ResponseContentType": stored.content_type,
                "ResponseContentDisposition": f'inline; filename="{stored.file_name}"',
            },
            ExpiresIn=ttl,
        )
        return ServeRedirect(url)

    def _stream(self, key: str, first: int, last: int) -> Iterator[bytes]:
        # The request is made now, not on first iteration: a failure becomes an error response
        # instead of a connection cut after the headers went out.
        with self._errors("reading a file"):
            body = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}")["Body"]
        return _chunks(body)

    # ---- errors --------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """botocore's exceptions as FileStoreErrors that say what failed."""
        try:
            yield
        except ClientError as exc:
            code = _code(exc)
            if code == "NoSuchUpload":
                raise UploadNotFoundError("Upload not found (unknown, completed or expired)") from exc
            if code == "EntityTooSmall":
                raise FileStoreError("Every part but the last must be at least 5 MiB (S3's minimum)") from exc
            if code in ("InvalidPart", "InvalidPartOrder"):
                raise FileStoreError(exc.response.get("Error", {}).get("Message") or code) from exc
            raise StorageUnavailableError(f"object storage failed while {doing}: {code}") from exc
        except (BotoCoreError, S3UploadFailedError) as exc:
            raise StorageUnavailableError(f"object storage failed while {doing}: {exc}") from exc


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _bucket_problem(exc: ClientError) -> str:
    code = _code(exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code in ("404", "NoSuchBucket") or status == 404:
        return "the bucket does not exist"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
        return "access denied (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that they may use this bucket)"
    region = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
    if status in (301, 400) and region:
        return f"the bucket is in region {region} (set AWS_DEFAULT_REGION={region})"
    return f"the bucket answered HTTP {status} {code}".rstrip()


@contextmanager
def _opened(source: bytes | Path) -> Iterator[bytes | BinaryIO]:
    if isinstance(source, Path):
        with open(source, "rb") as f:
            yield f
    else:
        yield source


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(_STREAM_CHUNK)
    finally:
        body.close()
