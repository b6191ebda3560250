"""Which process is which, read from Linux's /proc: gunicorn's workers and who holds a socket.

A fault is only worth injecting at the right place: the worker that holds a lock is the one
whose TCP connection to the fake upstream carries the holder's call (the upstream sees the
client port; /proc/net/tcp maps the port to a socket inode; /proc/PID/fd maps the inode to
a process). The same tables count the callers each worker is serving.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_ESTABLISHED = "01"


@dataclass(frozen=True)
class Pid:
    """A process id with its start time, so a reused id is never mistaken for it."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> Pid | None:
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def alive(self) -> bool:
        return start_time(self.pid) == self.started


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", comm may hold spaces
    if fields[0] == "Z":  # a zombie has stopped; only its exit status is left
        return None
    return int(fields[19])


def children(pid: int) -> list[int]:
    """The running child processes of ``pid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def _tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4 and IPv6 TCP socket."""
    rows = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            rows.append((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16), state, inode))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        fds = os.scandir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    with fds:
        for fd in fds:
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def owner_of_connection(local_port: int, remote_port: int, pids: list[int]) -> int | None:
    """Which of ``pids`` holds the established TCP connection from ``local_port`` to ``remote_port``."""
    inodes = {
        inode
        for local, remote, state, inode in _tcp_table()
        if local == local_port and remote == remote_port and state == _ESTABLISHED
    }
    for pid in pids:
        if inodes & _socket_inodes(pid):
            return pid
    return None


def connections_served(server_port: int, pids: list[int]) -> Counter[int]:
    """How many established connections to ``server_port`` each of ``pids`` holds (its callers)."""
    inodes = {inode for local, _, state, inode in _tcp_table() if local == server_port and state == _ESTABLISHED}
    return Counter({pid: len(inodes & _socket_inodes(pid)) for pid in pids})
