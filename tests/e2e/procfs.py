"""What a server process holds, read from /proc (Linux): its model processes, open file descriptors
and TCP connections. The fault tests count these before and after to prove nothing leaked."""

from __future__ import annotations

import os
from pathlib import Path

_TCP_ESTABLISHED = "01"


def children(pid: int) -> list[int]:
    """Direct child processes of `pid`."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except FileNotFoundError:
        return ""


def model_processes(server_pid: int) -> list[int]:
    """The server's model processes: multiprocessing *spawn* children (not its resource tracker)."""
    return [pid for pid in children(server_pid) if "spawn_main" in cmdline(pid)]


def open_fds(pid: int) -> dict[int, str]:
    """Every open descriptor of `pid` and what it points at (a path, socket:[inode], pipe:[...])."""
    fds = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            fds[int(entry.name)] = os.readlink(entry)
        except FileNotFoundError:
            continue  # closed while we looked
    return fds


def established_to_port(port: int) -> int:
    """TCP connections in ESTABLISHED state whose local end is `port` (the server's side)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == _TCP_ESTABLISHED:
                count += 1
    return count
