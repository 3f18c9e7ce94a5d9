"""Reading processes from /proc: one parser for what stackctl, the fault tests and the
benchmarks need (parent, state, group, command line, open files)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Set
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


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not; another user's process does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return stat_fields(pid)[0] != "Z"
    except OSError:
        return False


def ancestors(pid: int | None = None) -> set[int]:
    """`pid` (default: this process) and every process above it, below init."""
    out, pid = set(), os.getpid() if pid is None else pid
    while pid > 1:
        out.add(pid)
        try:
            pid = parent_pid(pid)
        except (OSError, ValueError, IndexError):
            break
    return out


def in_dir(pid: int, folder: Path) -> bool:
    """Whether the process's working directory is `folder` or below it."""
    try:
        cwd = Path(os.readlink(PROC / str(pid) / "cwd"))
    except OSError:
        return False
    return cwd == folder or folder in cwd.parents


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    kids: dict[int, list[int]] = {}
    for pid in all_pids():
        try:
            kids.setdefault(parent_pid(pid), []).append(pid)
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def marked(env_mark: str, folder: Path, groups: Set[int] = frozenset()) -> list[int]:
    """Every live process (but this one and its ancestors) with `env_mark` ("NAME=value") in
    its environment, its working directory under `folder`, or its group in `groups`."""
    needle = env_mark.encode() + b"\0"
    spare = ancestors()  # never the caller's own shell, whatever its working directory
    pids = []
    for pid in all_pids():
        if pid in spare:
            continue
        try:
            env = (PROC / str(pid) / "environ").read_bytes()
            pgid = int(stat_fields(pid)[2])
        except (OSError, ValueError, IndexError):
            continue
        if (needle in env + b"\0" or pgid in groups or in_dir(pid, folder)) and alive(pid):
            pids.append(pid)
    return pids
