"""What every service shares: errors, readiness polling, the supervisord environment,
port clashes, and the common shape (Service)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from stackctl import supervisor
from stackctl.config import Settings
from stackctl.supervisor import Program

MARK = "REGSTREAM_RUN_DIR"


class ServiceError(RuntimeError):
    pass


def wait_until(what: str, check: Callable[[], bool], timeout: float, logfile: Path) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
    tail = ""
    if logfile.exists():
        tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
    raise ServiceError(f"{what} did not become ready in {timeout:.0f}s; see {logfile}\n{tail}")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def base_env(s: Settings) -> dict[str, str]:
    """The environment of supervisord and so of every program: no secrets in it. The
    platform's REGSTREAM_* settings pass (none is a secret): a value the user set reaches
    every program; stackctl's own REG_* reach them through settings_env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("REGSTREAM_") or not k.startswith(("AIRFLOW", "REG_", "MYSQL_", "PG"))
    }
    env[MARK] = str(s.run)
    env["PATH"] = f"{s.venv / 'bin'}:{env.get('PATH', '')}"
    env["TZ"] = "UTC"
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return env


def check_ports_free(s: Settings, program: str, *ports: int) -> None:
    """A port answered by something that is not this profile's program is a clash to name."""
    if supervisor.pid_of(s, program):
        return
    for port in ports:
        if port_open(port):
            raise ServiceError(
                f"port {port} (for {program}) is taken by another program: "
                "choose another with the REG_*_PORT variables (README, Configuration)"
            )


@dataclass(frozen=True)
class Service:
    """The common shape of a service: what to prepare on disk before its programs start
    (data directories, configuration; idempotent), its supervisord programs (none when the
    profile does not run it), and whether it answers. `start` does the three in order."""

    name: str
    prepare: Callable[[Settings], object]
    programs: Callable[[Settings], list[Program]]
    ready: Callable[[Settings], bool]
    start: Callable[[Settings], None]
