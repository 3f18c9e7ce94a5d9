"""Spark standalone master and workers (the cluster profile)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from functools import partial

from stackctl import supervisor
from stackctl.config import Settings
from stackctl.services.common import Service, wait_until
from stackctl.supervisor import Program


def spark_worker_names(s: Settings) -> list[str]:
    return [f"spark-worker-{n}" for n in range(1, s.spark_workers + 1)]


def _spark_programs(s: Settings) -> list[Program]:
    """A standalone master and its workers (1 core each), on loopback. The streaming job's
    checkpoint is a path under the profile's folder, which every node on this machine sees."""
    if not s.spark_workers:
        return []
    spark_class = str(s.venv / "bin" / "spark-class")
    master = [
        spark_class,
        "org.apache.spark.deploy.master.Master",
        "--host",
        "127.0.0.1",
        "--port",
        str(s.spark_master_port),
        "--webui-port",
        str(s.spark_master_ui),
    ]
    programs = [Program("spark-master", master, s.run / "spark")]
    for n, name in enumerate(spark_worker_names(s), start=1):
        work = s.run / "spark" / name
        worker = [
            spark_class,
            "org.apache.spark.deploy.worker.Worker",
            f"spark://127.0.0.1:{s.spark_master_port}",
            "--host",
            "127.0.0.1",
            "--cores",
            "1",
            "--memory",
            s.spark_worker_memory,
            "--webui-port",
            str(s.spark_master_ui + n),
            "--work-dir",
            str(work),
        ]
        programs.append(Program(name, worker, s.run / "spark"))
    return programs


def spark_master_status(s: Settings) -> dict | None:
    """The master's JSON view (workers, their state, running apps), or None."""
    try:
        url = f"http://127.0.0.1:{s.spark_master_ui}/json/"
        with urllib.request.urlopen(url, timeout=2) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def start_spark(s: Settings) -> None:
    if not s.spark_workers:
        return
    prepare_spark(s)
    for program in _spark_programs(s):
        supervisor.start(s, program.name)
    wait_until("Spark workers", partial(spark_ready, s), 120, s.logs / "spark-master.log")


def prepare_spark(s: Settings) -> None:
    for sub in ["spark", *(f"spark/{w}" for w in spark_worker_names(s))]:
        (s.run / sub).mkdir(parents=True, exist_ok=True)


def spark_ready(s: Settings) -> bool:
    """Every worker registered with the master and ALIVE."""
    st = spark_master_status(s)
    alive = [w for w in (st or {}).get("workers", []) if w.get("state") == "ALIVE"]
    return len(alive) >= s.spark_workers


SERVICE = Service("spark", prepare_spark, _spark_programs, spark_ready, start_spark)
