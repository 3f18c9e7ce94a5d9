from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {
        "ingest_fake_customers",
        "publish_cdc_events",
        "stream_registration_counts",
        "monitor_pipeline_lag",
        "reconcile_counts",
    }


def test_dag_files_are_named_like_their_dag(dagbag) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert Path(dag.fileloc).stem == dag_id
        assert dag.doc_md, dag_id
        for t in dag.tasks:
            assert t.retries >= 1, (dag_id, t.task_id)


def test_ingest_dag_has_data_intervals_and_a_validated_param(dagbag) -> None:
    dag = dagbag.dags["ingest_fake_customers"]
    param = dag.params.get_param("customers")
    assert param.value == 20
    assert param.schema["minimum"] == 1
    assert type(dag.timetable).__name__ == "CronDataIntervalTimetable"
    assert [t.task_id for t in dag.tasks] == ["insert_fake_customers"]


def runs_per_hour_when_every_try_fails_at_once(args: dict) -> float:
    """Airflow's exponential backoff waits at least delay * multiplier**(try - 1) (capped)
    before each retry; a @continuous DAG starts its next run when one has failed."""
    delay = args["retry_delay"].total_seconds()
    mult = args.get("retry_exponential_backoff") or 1.0
    cap = args["max_retry_delay"].total_seconds() if args.get("max_retry_delay") else 1e9
    waits = sum(min(cap, delay * mult**k) for k in range(args["retries"]))
    return 3600 / waits


def test_publish_dag_is_one_long_running_task_with_bounded_restarts(dagbag) -> None:
    dag = dagbag.dags["publish_cdc_events"]
    assert dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    assert [t.task_id for t in dag.tasks] == ["publish_new_events"]
    task = dag.get_task("publish_new_events")
    args = {k: getattr(task, k) for k in ("retries", "retry_delay", "max_retry_delay")}
    args["retry_exponential_backoff"] = task.retry_exponential_backoff
    assert runs_per_hour_when_every_try_fails_at_once(args) <= 30
    assert task.retry_delay.total_seconds() <= 2  # a killed publisher is back within seconds


def test_stream_dag_keeps_one_job_alive_with_bounded_restarts(dagbag) -> None:
    dag = dagbag.dags["stream_registration_counts"]
    assert dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    task = dag.get_task("run_streaming_job")
    args = {k: getattr(task, k) for k in ("retries", "retry_delay", "max_retry_delay")}
    args["retry_exponential_backoff"] = task.retry_exponential_backoff
    assert runs_per_hour_when_every_try_fails_at_once(args) <= 30
    assert type(task).__name__ == "SparkSubmitOperator"
    assert task._conn_id == "spark_default"


def test_installed_pyspark_is_the_pinned_version() -> None:
    import pyspark

    pinned = next(
        line.split("==")[1].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.startswith("pyspark==")
    )
    assert version("pyspark") == pinned
    assert pyspark.__version__ == pinned
    jars = Path(pyspark.__file__).parent / "jars"
    assert (jars / f"spark-core_2.13-{pinned}.jar").exists(), (
        "pyspark's jars differ from its python side"
    )
    assert version("pyspark-client") == pinned


@pytest.mark.tools  # reads the connector jars `make test` fetches from Maven Central
def test_spark_kafka_connector_matches_pyspark() -> None:
    import pyspark

    from stackctl import config

    jars = [p.name for p in config.spark_kafka_jars(config.load("test"))]
    assert f"spark-sql-kafka-0-10_2.13-{pyspark.__version__}.jar" in jars


def test_reconcile_dag_runs_on_its_schedule_with_a_settle_param(dagbag) -> None:
    dag = dagbag.dags["reconcile_counts"]
    assert dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["reconcile_window_counts"]
    assert dag.params.get_param("settle_s").value == 120
    assert dag.timetable.expression == "*/5 * * * *"
