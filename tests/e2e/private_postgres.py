"""A PostgreSQL server of the test's own (Debian's initdb and pg_ctl, a temp dir, a free loopback
port), so that a test may stop, restart or cut it off without touching anything else.

initdb refuses to run as root: as root, the cluster belongs to the `postgres` system user and every
pg_ctl call runs as that user (runuser). Without the binaries the test skips (or fails in CI, where
MOTIONSERVE_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from tests.services import free_port, unavailable

PG_TIMEOUT_S = 120


def _bin_dir() -> Path | None:
    """The newest Debian PostgreSQL (/usr/lib/postgresql/<major>/bin) with initdb and pg_ctl."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").exists()]
    on_path = shutil.which("initdb")
    if not found and on_path and shutil.which("pg_ctl"):
        found = [Path(on_path).parent]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, default=None)


@dataclass
class PrivatePostgres:
    bin_dir: Path
    data_dir: Path
    port: int
    run_as: str | None  # the system user owning the cluster when we are root

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _pg(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=PG_TIMEOUT_S)
        if out.returncode != 0:
            log = self.data_dir.parent / "postgres.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n{tail}")

    def init(self) -> None:
        self._pg("initdb", "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} -c fsync=off"
        self._pg("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.data_dir.parent / "postgres.log"),
                 "-w", "-t", str(PG_TIMEOUT_S), "start")

    def stop(self) -> None:
        """A fast shutdown: every session is ended at once, as a restart or fail-over does."""
        self._pg("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(PG_TIMEOUT_S), "stop")

    def terminate_all_connections(self) -> int:
        """pg_terminate_backend every client session but our own; how many were ended."""
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchone()
        return int(row[0]) if row else 0


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bin_dir = _bin_dir()
    if bin_dir is None:
        unavailable("PostgreSQL's initdb and pg_ctl are not installed (Debian: apt-get install postgresql)")
    assert bin_dir is not None
    root = Path(tempfile.mkdtemp(prefix="motionserve-pg-"))
    run_as = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            unavailable("running as root without a 'postgres' system user to own a private cluster")
        run_as = "postgres"
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = PrivatePostgres(bin_dir, root / "data", free_port(), run_as)
    try:
        server.init()
        server.start()
        yield server
    finally:
        try:
            server.stop()
        except Exception:
            pass  # already stopped (or never started)
        shutil.rmtree(root, ignore_errors=True)
