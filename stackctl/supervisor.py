"""supervisord runs every process of a profile and restarts any that dies.

Why supervisord (4.3, from PyPI, in the project's venv) and not code of our own: it is the
well-kept, widely deployed answer to "keep these N processes up". It restarts a program that
exits unexpectedly at once, backs off (1 s, 2 s, ... up to `startretries`) when a program dies
during start-up, logs each exit and spawn with the reason (`exited: kafka (terminated by
SIGKILL; not expected)`), kills whole process groups on stop, and is driven by a config file
that stackctl writes under `.state/<profile>/supervisor/`. No secret is in that file: Airflow's
programs start through `stackctl exec`, which reads the 0600 secrets file and `exec`s the
component with exactly the credentials it needs.

Programs are declared with autostart=false: stackctl starts them in order (databases, Kafka,
then Airflow), each only after the previous one is ready, through `supervisorctl start`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from stackctl.config import Settings


class SupervisorError(RuntimeError):
    pass


@dataclass(frozen=True)
class Program:
    name: str
    argv: list[str]
    directory: Path
    user: str | None = None
    stopsignal: str = "TERM"
    stopwaitsecs: int = 30
    # seconds a program must stay up to count as started; a quicker exit is retried with
    # supervisord's backoff (1 s, 2 s, 3 s ...) up to startretries times, then FATAL
    startsecs: int = 3
    startretries: int = 10
    env: dict[str, str] = field(default_factory=dict)


def conf_path(s: Settings) -> Path:
    return s.supervisor_dir / "supervisord.conf"


def socket_path(s: Settings) -> Path:
    return s.supervisor_dir / "supervisor.sock"


def pid_path(s: Settings) -> Path:
    return s.supervisor_dir / "supervisord.pid"


def _quote(arg: str) -> str:
    if re.fullmatch(r"[\w@%+=:,./\-\[\]*]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(s: Settings, programs: list[Program]) -> str:
    """The supervisord.conf of a profile (no secrets: see the module docstring)."""
    lines = [
        "[unix_http_server]",
        f"file={socket_path(s)}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={s.logs / 'supervisord.log'}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"pidfile={pid_path(s)}",
        f"childlogdir={s.logs}",
        f"identifier=regstream-{s.profile}",
        "nodaemon=true",
        "minfds=16384",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{socket_path(s)}",
        "",
    ]
    for p in programs:
        # supervisord expands %(...)s in its config: escape literal percent signs
        command = " ".join(_quote(a) for a in p.argv).replace("%", "%%")
        lines += [
            f"[program:{p.name}]",
            f"command={command}",
            f"directory={p.directory}",
            "autostart=false",
            "autorestart=true",
            f"startsecs={p.startsecs}",
            f"startretries={p.startretries}",
            f"stopsignal={p.stopsignal}",
            f"stopwaitsecs={p.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={s.logs / (p.name + '.log')}",
            "stdout_logfile_maxbytes=50MB",
            "stdout_logfile_backups=2",
        ]
        if p.user:
            lines.append(f"user={p.user}")
        if p.env:
            pairs = ",".join(f'{k}="{v}"' for k, v in sorted(p.env.items()))
            lines.append(f"environment={pairs.replace('%', '%%')}")
        lines.append("")
    return "\n".join(lines)


def _bin(s: Settings, name: str) -> str:
    return str(s.venv / "bin" / name)


def ctl(s: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(
        [_bin(s, "supervisorctl"), "-c", str(conf_path(s)), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # supervisorctl exits non-zero for "not running" states in `status`; callers decide
    if check and res.returncode not in (0, 3):
        raise SupervisorError(
            f"supervisorctl {' '.join(args)} failed ({res.returncode}): "
            f"{(res.stdout + res.stderr).strip()}"
        )
    return res


def daemon_pid(s: Settings) -> int | None:
    try:
        pid = int(pid_path(s).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid if socket_path(s).exists() else None


def running(s: Settings) -> bool:
    if daemon_pid(s) is None:
        return False
    return ctl(s, "pid", check=False).returncode == 0


def start_daemon(s: Settings, programs: list[Program], env: dict[str, str]) -> None:
    """Write the config and start supervisord, or make a running one re-read its config."""
    s.supervisor_dir.mkdir(parents=True, exist_ok=True)
    s.logs.mkdir(parents=True, exist_ok=True)
    conf_path(s).write_text(render(s, programs))
    if running(s):
        # picks up changed program definitions; running, unchanged programs are left alone
        ctl(s, "update")
        return
    with open(s.logs / "supervisord.out", "ab") as out:
        subprocess.Popen(
            [_bin(s, "supervisord"), "-c", str(conf_path(s))],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=str(s.run),
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if running(s):
            return
        time.sleep(0.1)
    raise SupervisorError(f"supervisord did not start; see {s.logs / 'supervisord.log'}")


@dataclass(frozen=True)
class State:
    name: str
    state: str
    pid: int | None


def states(s: Settings) -> dict[str, State]:
    if not running(s):
        return {}
    out: dict[str, State] = {}
    for line in ctl(s, "status", check=False).stdout.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        m = re.search(r"pid (\d+)", line)
        out[parts[0]] = State(parts[0], parts[1], int(m.group(1)) if m else None)
    return out


def start(s: Settings, name: str) -> None:
    st = states(s).get(name)
    if st and st.state in ("RUNNING", "STARTING"):
        return
    res = ctl(s, "start", name, check=False)
    if res.returncode != 0 and "already started" not in res.stdout:
        raise SupervisorError(
            f"{name} did not start: {res.stdout.strip()}; see {s.logs / (name + '.log')}"
        )


def pid_of(s: Settings, name: str) -> int | None:
    st = states(s).get(name)
    return st.pid if st and st.state == "RUNNING" else None


def shutdown(s: Settings, timeout: float = 120) -> None:
    """Stop every program (each one's whole process group) and supervisord itself."""
    pid = daemon_pid(s)
    if pid is None:
        return
    ctl(s, "shutdown", check=False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    """True once supervisord has exited. When this process started it (a test session),
    the exited daemon is our zombie until reaped, and os.kill(pid, 0) still succeeds."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == pid
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
