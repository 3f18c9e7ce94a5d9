"""supervisord brings a killed service back by itself, and says so in its log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from stackctl import procs, services, supervisor
from tests.conftest import root_conn, wait_for

pytestmark = pytest.mark.integration


def test_a_killed_database_comes_back_by_itself(stack) -> None:
    log = stack.logs / "supervisord.log"
    before = log.read_text()
    pid = services.kill_program(stack, "mariadb", signal.SIGKILL)
    new = wait_for(
        "mariadb restarted under a new pid",
        lambda: (p := supervisor.pid_of(stack, "mariadb")) and p != pid and p,
        60,
        0.1,
    )
    wait_for("mariadb to answer", lambda: services.mysql_ready(stack), 60, 0.2)
    cur = root_conn(stack).cursor()
    cur.execute("SELECT 1")
    assert cur.fetchone() == (1,)
    added = log.read_text()[len(before) :]
    assert "exited: mariadb (terminated by SIGKILL; not expected)" in added
    assert f"spawned: 'mariadb' with pid {new}" in added


# A program's main process (own group, as supervisord starts it) with a worker in its group
# and, under the worker, a task in a group of its own with a child: the LocalExecutor's shape
# (scheduler -> worker -> task runner in its own group -> spark-submit / driver).
_TREE = """
import os, subprocess, sys, time
task = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
worker = f"import subprocess, time; subprocess.Popen([{sys.executable!r}, '-c', {task!r}], start_new_session=True); time.sleep(300)"
subprocess.Popen([sys.executable, "-c", worker])
time.sleep(300)
"""


def test_a_dead_programs_leftovers_are_stopped() -> None:
    main = subprocess.Popen([sys.executable, "-c", _TREE], start_new_session=True)
    left: list[int] = []
    try:
        tree = wait_for(
            "the program's three descendants",
            lambda: len(t := services.descendants(main.pid)) == 4 and t,
            30,
            0.1,
        )
        groups = {int(procs.stat_fields(p)[2]) for p in tree}
        assert len(groups) == 2  # the task leads a group of its own
        main.kill()
        main.wait()
        left = [p for p in tree if p != main.pid]
        found = supervisor.stop_leftovers("test-program", main.pid, grace=10)
        assert sorted(found) == sorted(left)
        gone = {p for p in left if _gone(p)}
        assert gone == set(left)
    finally:
        left = left or services.descendants(main.pid)[1:]
        main.kill()
        for p in left:
            if not _gone(p):
                os.kill(p, signal.SIGKILL)


def _gone(pid: int) -> bool:
    try:
        return procs.stat_fields(pid)[0] == "Z"
    except OSError:
        return True
