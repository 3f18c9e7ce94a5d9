"""The `test-cluster` profile: 3 Kafka nodes, a Spark master with 2 workers, Airflow with 2
Celery workers on Redis, all under supervisord, started once for the cluster tests and
stopped after them. The single-node test profile is stopped first (2 cores: one stack at a
time); a later test that needs it starts it afresh."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from stackctl import __main__ as ctl
from stackctl import config, services
from stackctl.airflow_api import Airflow
from stackctl.db import root_conn
from tests.conftest import stop_profile, wipe_profile


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[config.Settings, Airflow]]:
    stop_profile(config.load("test"))
    s = config.load("test-cluster")
    wipe_profile(s)
    t0 = time.monotonic()
    ctl.up(s)
    print(f"cluster profile up in {time.monotonic() - t0:.0f}s")
    af = Airflow(s)
    af.login()
    try:
        yield s, af
    finally:
        services.stop_all(s)


class Writers:
    """Customers inserted straight into MySQL from two threads, as other applications do:
    single commits, transactions held open for a few seconds, and rollbacks."""

    def __init__(self, s: config.Settings) -> None:
        self.s = s
        self.stop = threading.Event()
        self.committed = 0
        self.rolled_back = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in (0, 1)]

    def _insert(self, cur: Any, store: int) -> None:
        cur.execute(
            "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
            "create_date) VALUES (%s, 'Chaos', 'Writer', 'chaos@example.org', 1, 1, "
            "UTC_TIMESTAMP())",
            (store,),
        )

    def _round(self, conn: Any, k: int, n: int) -> None:
        cur = conn.cursor()
        cur.execute("START TRANSACTION")
        self._insert(cur, 1 + (n + k) % 2)
        if n % 7 == 3:
            conn.rollback()
            self.rolled_back += 1
            return
        if n % 5 == 2:  # held open while the other thread commits later ids
            self.stop.wait(3)
        conn.commit()
        self.committed += 1

    def _run(self, k: int) -> None:
        n = 0
        conn = None
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = root_conn(self.s, config.DATABASE)
                    conn.autocommit(False)
                self._round(conn, k, n)
                n += 1
            except Exception as exc:  # noqa: BLE001 - MariaDB may be restarting: reconnect
                self.errors.append(repr(exc))
                conn = None
                self.stop.wait(1)
            self.stop.wait(0.3)

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
