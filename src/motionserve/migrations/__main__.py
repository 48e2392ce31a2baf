"""`python -m motionserve.migrations revision MESSAGE`: draft the next revision from what
`motionserve.database` has and the migrations do not make yet.

Run it in a source checkout: it writes `versions/NNNN_<message>.py`, to be read and finished by
hand (Alembic's autogenerate sees added and dropped tables, columns and indexes, but not renames,
data updates, nor the server default a NOT NULL column added to a table with rows needs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Sequence

from alembic import command

from motionserve.migrations import _config, _engine, head, upgrade


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m motionserve.migrations")
    sub = parser.add_subparsers(dest="command", required=True)
    revision = sub.add_parser("revision", help="draft the next revision (autogenerate)")
    revision.add_argument("message", help="what it changes, e.g. 'jobs.tenant'")
    revision.add_argument("--database-url", help="compare on this database, brought to head first "
                          "(default: a scratch SQLite one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        url = args.database_url or f"sqlite:///{scratch}/draft.db"
        upgrade(url)
        with _engine(url) as engine, engine.connect() as conn:
            # Alembic prints the path it writes.
            command.revision(_config(conn), args.message, autogenerate=True, rev_id=f"{int(head()) + 1:04d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
