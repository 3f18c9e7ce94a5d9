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

What supervisord does not do: when a program's main process dies by itself, the processes it
started live on (supervisord signals a program's process group only when *it* stops the
program). systemd's default (`KillMode=control-group`) stops them. A scheduler under
LocalExecutor is the case that matters: its task processes, the Spark driver among them, would
run on unsupervised, the driver holding the stream's MySQL lock, so the retried task could not
start its own. A program declared with `stop_leftovers` gets that systemd behaviour from a
supervisord event listener (`leftover-reaper`, this module's `reap`): on the program's
PROCESS_STATE_EXITED it sends SIGTERM to every process the dead one left (its process group,
their descendants and the groups they lead: an Airflow task runs in its own group), then
SIGKILL to any still there after the program's `stopwaitsecs`. Each step is a line in
`.state/<profile>/logs/leftover-reaper.log`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from stackctl import procs
from stackctl.config import Settings

log = logging.getLogger("stackctl.supervisor")


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
    # stop what the program leaves behind when its main process dies (module docstring)
    stop_leftovers: bool = False
    # the program writes its own log file (`stdout_logfile` is then not supervisord's pipe,
    # which supervisord closes when the main process dies: children still writing to it
    # would die of EPIPE before they could stop cleanly)
    own_log: bool = False


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
        ]
        if p.own_log:
            lines.append("stdout_logfile=NONE")
        else:
            lines += [
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
    watched = [f"{p.name}={p.stopwaitsecs}" for p in programs if p.stop_leftovers]
    if watched:
        reap = [_bin(s, "python"), "-m", "stackctl.supervisor", "reap", *watched]
        lines += [
            f"[eventlistener:{REAPER}]",
            f"command={' '.join(_quote(a) for a in reap)}",
            f"directory={Path(__file__).resolve().parent.parent}",
            "events=PROCESS_STATE_EXITED",
            "autostart=true",
            "autorestart=true",
            f"stderr_logfile={s.logs / (REAPER + '.log')}",
            "stderr_logfile_maxbytes=10MB",
            "stderr_logfile_backups=2",
            "",
        ]
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


# ---------------------------------------------------------------- leftovers of a dead program

REAPER = "leftover-reaper"


def _table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent, process group, start time) of every live process."""
    out = {}
    for pid in procs.all_pids():
        try:
            f = procs.stat_fields(pid)
        except (OSError, IndexError):
            continue
        if f[0] != "Z":
            out[pid] = (int(f[1]), int(f[2]), f[19])
    return out


def leftovers(group: int, table: dict[int, tuple[int, int, str]]) -> dict[int, str]:
    """The processes a program whose main process was `group` left: the members of its
    process group (supervisord gives each program its own), their descendants, and every
    process in a group one of them leads. pid -> start time (to never signal a reused pid)."""
    keep = {os.getpid(), os.getppid()}
    found = {pid for pid, (_, pgrp, _) in table.items() if pgrp == group} - keep
    while True:
        more = {
            pid
            for pid, (ppid, pgrp, _) in table.items()
            if pid not in found and pid not in keep and (ppid in found or pgrp in found)
        }
        if not more:
            return {pid: table[pid][2] for pid in found}
        found |= more


def _signal_alive(pids: dict[int, str], sig: signal.Signals) -> list[int]:
    """Send `sig` to those of `pids` still running (same start time); return them."""
    table = _table()
    alive = [pid for pid, start in pids.items() if table.get(pid, (0, 0, ""))[2] == start]
    for pid in alive:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    return alive


def stop_leftovers(name: str, pid: int, grace: float) -> list[int]:
    """SIGTERM what the dead program `name` (main pid `pid`) left, SIGKILL it after `grace`
    seconds. Returns the pids found."""
    pids = leftovers(pid, _table())
    if not pids:
        return []
    log.info(
        "%s (pid %d) exited and left %d processes: SIGTERM %s", name, pid, len(pids), sorted(pids)
    )
    _signal_alive(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        table = _table()
        if not any(table.get(p, (0, 0, ""))[2] == start for p, start in pids.items()):
            log.info("%s (pid %d): its leftovers are gone", name, pid)
            return sorted(pids)
        time.sleep(0.2)
    killed = _signal_alive(pids, signal.SIGKILL)
    log.warning("%s (pid %d): SIGKILL %s, still running after %.0f s", name, pid, killed, grace)
    return sorted(pids)


def reap(watched: dict[str, float]) -> None:
    """supervisord event listener: stop the leftovers of each watched program that exits.
    Protocol: READY, then a header line with `len`, a payload, and `RESULT 2\\nOK`."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    log.info("watching %s", sorted(watched))
    while True:
        stdout.write(b"READY\n")
        stdout.flush()
        line = stdin.readline()
        if not line:  # supervisord is gone
            return
        header = dict(tok.split(":", 1) for tok in line.decode().split())
        payload = stdin.read(int(header["len"])).decode()
        event = dict(tok.split(":", 1) for tok in payload.split() if ":" in tok)
        name = event.get("processname", "")
        if header.get("eventname") == "PROCESS_STATE_EXITED" and name in watched:
            threading.Thread(
                target=stop_leftovers,
                args=(name, int(event["pid"]), watched[name]),
                daemon=True,
            ).start()
        stdout.write(b"RESULT 2\nOK")
        stdout.flush()


if __name__ == "__main__":
    if sys.argv[1:2] != ["reap"]:
        raise SystemExit("usage: python -m stackctl.supervisor reap PROGRAM=GRACE_S ...")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s")
    reap({k: float(v) for k, v in (arg.split("=", 1) for arg in sys.argv[2:])})
