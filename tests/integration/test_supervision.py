"""supervisord brings a killed service back by itself, and says so in its log."""

from __future__ import annotations

import signal

import pytest

from stackctl import services, supervisor
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
