"""Fault: the disk that holds uploads and outputs fills up.

The server's files folder is a 2 MB tmpfs, filled to the last byte while the server runs. An upload
is refused with 507 and a `detail`; a job whose output cannot be written fails with the same 507;
no half-written file is left behind or served (files appear by rename, whole, or not at all); the
server recovers as soon as space is freed. Mounting needs root (skipped otherwise; CI requires it).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.services import unavailable

from .common import SMALL_T2V, T2V, download
from .http_queue import QueueClient
from .test_durability import assert_completed_with_video

pytestmark = pytest.mark.e2e

DISK_FULL = "No space left on the server's file storage; try again later"


@pytest.fixture()
def small_files_disk(tmp_path: Path) -> Iterator[Path]:
    """A data dir whose `files` folder is a fresh 2 MB tmpfs."""
    if os.geteuid() != 0:
        unavailable("mounting a small tmpfs for the files folder needs root")
    data_dir = tmp_path / "data"
    files = data_dir / "files"
    files.mkdir(parents=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "motionserve-test", str(files)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield data_dir
    finally:
        subprocess.run(["umount", "-l", str(files)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the disk is full (unbuffered: every byte that fits is kept); the bytes written."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    written += os.write(fd, b"\0" * chunk)
            except OSError:
                continue  # ENOSPC: try a smaller piece
    finally:
        os.close(fd)
    return written


def upload(http: httpx.Client, data: bytes) -> tuple[httpx.Response, str]:
    """fal's two-step upload (the JS client's): initiate, then PUT the bytes. The PUT's answer, the file URL."""
    r = http.post("/rest/storage/upload/initiate", json={"content_type": "application/octet-stream", "file_name": "x.bin"})
    if r.status_code != 200:
        return r, ""
    urls = r.json()
    return http.put(urls["upload_url"], content=data), urls["file_url"]


def test_files_disk_full(server_factory, small_files_disk: Path) -> None:
    server = server_factory("disk-full", data_dir=small_files_disk)
    files = small_files_disk / "files"
    client = QueueClient(server, server.create_key("disk"))
    try:
        before = os.urandom(100_000)
        r, kept_url = upload(client.http, before)
        assert r.status_code == 200, r.text

        filler = files / "filler"
        print(f"filled the files disk with {fill(filler)} bytes")

        r, refused_url = upload(client.http, os.urandom(300_000))
        print("upload:", r.status_code, r.text)
        assert r.status_code == 507 and r.json() == {"detail": DISK_FULL, "error_type": "insufficient_storage"}
        # The reserved URL of the refused upload is not a file, and never a truncated one.
        if refused_url:
            assert httpx.get(refused_url, verify=str(server.tls.ca_cert)).status_code == 404

        job = client.submit(T2V, SMALL_T2V)
        final = client.wait(job)
        print("job:", final["error"], final["error_type"])
        assert final["error"] == DISK_FULL and final["error_type"] == "insufficient_storage", final
        result = client.result(job)
        assert result.status_code == 507 and result.json()["detail"] == DISK_FULL, result.text

        # What was stored before is served whole; nothing half-written was left on the disk.
        assert download(server, kept_url) == before
        assert sorted(p.name for p in (files / "tmp").iterdir()) == []
        # The refused upload keeps its reservation (the client may PUT again), but no bytes.
        assert [list(p.iterdir()) for p in (files / "uploads").iterdir()] in ([], [[]])
        assert len(list((files / "objects").iterdir())) == 1  # the upload from before (previews failed too)

        filler.unlink()  # space returns: the server needs no restart
        data = os.urandom(300_000)
        r, url = upload(client.http, data)
        assert r.status_code == 200, r.text
        assert download(server, url) == data
        assert_completed_with_video(client, server, client.submit(T2V, {**SMALL_T2V, "seed": 9}))
    finally:
        client.close()
        server.stop()
