"""Submit the streaming job outside Airflow (spark-submit, as the Airflow task does), for the
integration tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from regstream.settings import spark_submit_conf

from stackctl import config

JOB = config.ROOT / "spark_jobs" / "registration_counts.py"


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
    fault: str | None = None,
) -> subprocess.Popen:
    """spark-submit in a session of its own; `fault`: a fault the job injects into itself
    (REGSTREAM_FAULT, see the job's `inject_fault`)."""
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
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**spark_env(s), **({"REGSTREAM_FAULT": fault} if fault else {})},
            start_new_session=True,
        )


def kill_job(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """SIGKILL the driver (the python process and its JVM: the whole session)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)
