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


def test_publish_dag_is_event_driven_and_serial(dagbag) -> None:
    dag = dagbag.dags["publish_cdc_events"]
    assert dag.max_active_runs == 1
    assert [t.task_id for t in dag.tasks] == ["publish_new_events"]
    timetable = dag.timetable
    assert type(timetable).__name__ == "AssetOrTimeSchedule"
    # the asset's watcher: a trigger of ours that the triggerer runs, keyed to the publisher
    (asset,) = [a for _, a in dag.timetable.asset_condition.iter_assets()]
    (watcher,) = asset.watchers
    trigger = watcher.trigger  # as the DAG processor serialised it for the triggerer
    classpath, kwargs = trigger["classpath"], trigger["kwargs"]
    assert classpath == "regstream.triggers.NewCdcEventsTrigger"
    assert kwargs["conn_id"] == "mysql_publisher" and kwargs["poll_interval"] <= 1


def test_stream_dag_keeps_one_job_alive(dagbag) -> None:
    dag = dagbag.dags["stream_registration_counts"]
    assert dag.max_active_runs == 1
    assert type(dag.timetable).__name__ == "ContinuousTimetable"
    task = dag.get_task("run_streaming_job")
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
