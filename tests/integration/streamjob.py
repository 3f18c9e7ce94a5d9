"""Run the Spark job as its own process (spark-submit), as the Airflow task does."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from regstream.settings import spark_submit_conf

from stackctl import config
from tests.conftest import ROOT, root_conn, wait_for

JOB = ROOT / "spark_jobs" / "registration_counts.py"


def spark_env(s: config.Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{s.venv / 'bin'}:{env['PATH']}"
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    env["PYSPARK_PYTHON"] = str(s.venv / "bin" / "python")
    env["PYSPARK_DRIVER_PYTHON"] = str(s.venv / "bin" / "python")
    return env


def start_job(
    s: config.Settings,
    topic: str,
    checkpoints: Path,
    log: Path,
    master: str = "local[2]",
    extra: list[str] | None = None,
) -> subprocess.Popen:
    jars = ",".join(str(p) for p in config.spark_kafka_jars(s))
    argv = [
        str(s.venv / "bin" / "spark-submit"),
        "--master",
        master,
        "--jars",
        jars,
        *(a for k, v in spark_submit_conf().items() for a in ("--conf", f"{k}={v}")),
        str(JOB),
        "--bootstrap",
        s.kafka_bootstrap,
        "--topic",
        topic,
        "--checkpoint-dir",
        str(checkpoints),
        "--trigger",
        "500 milliseconds",
        *(extra or []),
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab")
    return subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, env=spark_env(s), start_new_session=True
    )


def kill_job(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """SIGKILL the driver (the python process and its JVM: the whole session)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def ground_truth(s: config.Settings, database: str, minutes: int = 1) -> dict[tuple, int]:
    cur = root_conn(s, database).cursor()
    cur.execute(
        "SELECT FROM_UNIXTIME(FLOOR(UNIX_TIMESTAMP(create_date) / %s) * %s) AS ws, store_id, "
        "COUNT(*) FROM customer GROUP BY ws, store_id",
        (minutes * 60, minutes * 60),
    )
    return {(ws, store): n for ws, store, n in cur.fetchall()}


def stream_counts(s: config.Settings, database: str) -> dict[tuple, int]:
    cur = root_conn(s, database).cursor()
    cur.execute("SELECT window_start, store_id, registrations FROM registrations_per_window")
    return {(ws, store): n for ws, store, n in cur.fetchall()}


def wait_counts_match(
    s: config.Settings, database: str, proc: subprocess.Popen | None = None, timeout: float = 180
) -> dict[tuple, int]:
    truth = ground_truth(s, database)

    def check() -> Any:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the streaming job exited with {proc.returncode}")
        got = stream_counts(s, database)
        return got if got == truth else None

    try:
        return wait_for("stream counts to equal the SQL ground truth", check, timeout, 0.5)
    except AssertionError:
        got = stream_counts(s, database)
        diff = {
            k: (truth.get(k), got.get(k))
            for k in set(truth) | set(got)
            if truth.get(k) != got.get(k)
        }
        raise AssertionError(
            f"{len(diff)} windows differ (truth, stream): {dict(list(diff.items())[:10])}"
        ) from None
