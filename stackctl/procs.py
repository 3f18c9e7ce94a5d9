"""Reading processes from /proc: one parser for what stackctl, the fault tests and the
benchmarks need (parent, state, group, command line, open files)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

PROC = Path("/proc")


def all_pids() -> Iterator[int]:
    """Every pid in /proc now (some may end while the caller looks)."""
    return (int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit())


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name, which may hold spaces and parentheses:
    [0] state, [1] parent pid, [2] process group. Raises OSError once the process is gone."""
    return (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()


def parent_pid(pid: int) -> int:
    return int(stat_fields(pid)[1])


def children(pids: Iterable[int], parents: set[int]) -> list[int]:
    """The pids among `pids` whose parent is one of `parents` (those gone are skipped)."""
    out = []
    for pid in pids:
        try:
            if parent_pid(pid) in parents:
                out.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return out


def argv(pid: int) -> list[str]:
    """The command line's arguments; empty for a process gone or a kernel thread."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def cmdline(pid: int) -> str:
    """The command line as one string, to search in ("" for a process gone)."""
    return " ".join(argv(pid))


def holds_open(pid: int, needle: str) -> bool:
    """Whether any file the process has open has `needle` in its path."""
    fds = PROC / str(pid) / "fd"
    try:
        return any(needle in os.readlink(fd) for fd in fds.iterdir())
    except OSError:  # gone, or a descriptor closed while we looked
        return False


def holding(pids: Iterable[int], needle: str) -> list[int]:
    """The pids among `pids` that hold a file with `needle` in its path open."""
    return [pid for pid in pids if holds_open(pid, needle)]


def kib(name: str, key: str) -> int:
    """The `<key>: <n> kB` line of a /proc file: `meminfo`, `<pid>/status`,
    `<pid>/smaps_rollup`; 0 if it has none (a kernel thread has no memory lines). Raises
    OSError once the process is gone."""
    with open(PROC / name) as fh:
        return next((int(line.split()[1]) for line in fh if line.startswith(f"{key}:")), 0)
