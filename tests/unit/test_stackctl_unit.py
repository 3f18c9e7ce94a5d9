"""stackctl without services: secrets, per-component credentials, the supervisord config."""

from __future__ import annotations

import dataclasses
import os
import stat
import time

import pytest

from stackctl import config, services, supervisor


@pytest.fixture
def private(tmp_path, monkeypatch) -> config.Settings:
    s = config.load("test")
    # a private state folder, the real venv (its path only goes into commands)
    s = dataclasses.replace(s, state=tmp_path)
    monkeypatch.setattr(config.Settings, "venv", property(lambda self: tmp_path / "venv"))
    return s


def test_secrets_are_independent_random_and_private_from_creation(private) -> None:
    old = os.umask(0)  # a permissive umask must not matter
    try:
        values = config.secrets_for(private)
    finally:
        os.umask(old)
    assert set(values) == set(config.SECRET_MAKERS)
    assert len(set(values.values())) == len(values)  # no secret derived from another
    assert stat.S_IMODE(private.secrets_file.stat().st_mode) == 0o600
    assert config.secrets_for(private) == values  # stable once made
    from cryptography.fernet import Fernet

    Fernet(values["AIRFLOW_FERNET_KEY"])  # a valid Fernet key, not empty


def test_deleting_a_secret_line_rotates_only_that_secret(private) -> None:
    values = config.secrets_for(private)
    text = private.secrets_file.read_text()
    kept = [ln for ln in text.splitlines() if not ln.startswith("AIRFLOW_JWT_SECRET=")]
    private.secrets_file.write_text("\n".join(kept) + "\n")
    again = config.secrets_for(private)
    assert again["AIRFLOW_JWT_SECRET"] != values["AIRFLOW_JWT_SECRET"]
    assert {k: v for k, v in again.items() if k != "AIRFLOW_JWT_SECRET"} == {
        k: v for k, v in values.items() if k != "AIRFLOW_JWT_SECRET"
    }


def test_each_component_gets_only_its_connections(private) -> None:
    pw = config.secrets_for(private)
    api = services.airflow_env(private, "api-server")
    assert [k for k in api if k.startswith("AIRFLOW_CONN_")] == ["AIRFLOW_CONN_MYSQL_READER"]
    assert pw["REG_INGEST_PASSWORD"] not in "".join(api.values())
    processor = services.airflow_env(private, "dag-processor")
    assert not [k for k in processor if k.startswith("AIRFLOW_CONN_")]
    sched = services.airflow_env(private, "scheduler")
    assert pw["MYSQL_ROOT_PASSWORD"] not in "".join(sched.values())
    trig = services.airflow_env(private, "triggerer")
    assert not [k for k in trig if k.startswith("AIRFLOW_CONN_")]
    assert pw["REG_STREAM_PASSWORD"] in sched["AIRFLOW_CONN_MYSQL_STREAM"]


def test_supervisor_config_holds_no_secret_and_restarts_everything(private) -> None:
    text = supervisor.render(private, services.programs(private))
    for name, value in config.secrets_for(private).items():
        assert value not in text, name
    programs = [sec for sec in text.split("\n[") if sec.startswith("program:")]
    assert len(programs) == 7
    assert all("autorestart=true" in sec and "killasgroup=true" in sec for sec in programs)
    assert "chmod=0700" in text  # only the owner may drive supervisord
    assert "user=postgres" in text or os.geteuid() != 0


def test_supervisor_quotes_arguments_and_escapes_percent() -> None:
    assert supervisor._quote("a b") == '"a b"'
    assert supervisor._quote("-Xmx512m") == "-Xmx512m"
    s = config.load("test")
    p = supervisor.Program("x", ["echo", "50%"], s.run)
    assert "command=echo 50%%" in supervisor.render(s, [p])


def test_the_spark_task_keeps_only_its_connections(monkeypatch) -> None:
    from regstream.settings import AIRFLOW_SECRET_VARS, keep_only_connections

    # what the scrub deletes comes back after the test: later tests of the session (after
    # `stack` exported the test profile's connections) still need them
    for name in [k for k in os.environ if k.startswith("AIRFLOW_CONN_")] + [
        k for k in AIRFLOW_SECRET_VARS if k in os.environ
    ]:
        monkeypatch.setenv(name, os.environ[name])
    for name in ("MYSQL_STREAM", "MYSQL_INGEST", "SPARK_DEFAULT", "MYSQL_READER"):
        monkeypatch.setenv(f"AIRFLOW_CONN_{name}", "x")
    monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", "k")
    monkeypatch.setenv("UNRELATED", "y")
    keep_only_connections("mysql_stream", "spark_default")({})
    conns = sorted(k for k in os.environ if k.startswith("AIRFLOW_CONN_"))
    assert conns == ["AIRFLOW_CONN_MYSQL_STREAM", "AIRFLOW_CONN_SPARK_DEFAULT"]
    assert "AIRFLOW__CORE__FERNET_KEY" not in os.environ and os.environ["UNRELATED"] == "y"


def test_procs_reads_parent_state_command_line_and_open_files(tmp_path) -> None:
    import subprocess
    import sys

    from stackctl import procs

    log = tmp_path / "task_id=publish_new_events" / "attempt=1.log"
    log.parent.mkdir()
    code = "import sys, time; f = open(sys.argv[1], 'w'); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code, str(log)])
    try:
        assert procs.parent_pid(os.getpid()) == os.getppid()
        assert procs.stat_fields(os.getpid())[0] == "R"  # reading its own stat, it runs
        mine = procs.children(procs.all_pids(), {os.getpid()})  # a Spark JVM may be one too
        assert child.pid in mine and os.getpid() not in mine
        assert procs.children(procs.all_pids(), {child.pid}) == []
        assert procs.argv(child.pid) == [sys.executable, "-c", code, str(log)]
        assert code in procs.cmdline(child.pid)
        deadline = time.monotonic() + 10
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [os.getpid(), child.pid]
        assert procs.holding(pids, "task_id=publish_new_events/") == [child.pid]
        assert procs.holding(pids, "task_id=insert_fake_customers/") == []
    finally:
        child.kill()
        child.wait()
    assert procs.argv(child.pid) == [] and procs.cmdline(child.pid) == ""
    assert 0 < procs.kib(f"{os.getpid()}/status", "VmRSS") < procs.kib("meminfo", "MemTotal")
    assert procs.kib("meminfo", "NoSuchLine") == 0
    with pytest.raises(OSError):
        procs.kib(f"{child.pid}/smaps_rollup", "Pss")
    assert not procs.holds_open(child.pid, "task_id=")
    with pytest.raises(OSError):
        procs.parent_pid(child.pid)


def test_role_connections_point_every_role_at_the_given_database(private) -> None:
    import json

    from stackctl import db

    conns = db.role_connections(private, "t_0123456789")
    assert sorted(conns) == sorted(f"AIRFLOW_CONN_MYSQL_{r.upper()}" for r in config.ROLES)
    for role, user in config.ROLES.items():
        conn = json.loads(conns[f"AIRFLOW_CONN_MYSQL_{role.upper()}"])
        assert (conn["login"], conn["schema"], conn["port"]) == (
            user,
            "t_0123456789",
            private.mysql_port,
        )


def test_status_shows_each_kafka_node_on_its_own_bootstrap_ports() -> None:
    from stackctl import __main__ as ctl

    s = config.load("test-cluster")
    kafka = {k: v for k, v in ctl.program_ports(s).items() if k.startswith("kafka")}
    assert sorted(kafka) == ["kafka-1", "kafka-2", "kafka-3"]
    brokers = [kafka[f"kafka-{n}"].split(",")[0] for n in (1, 2, 3)]
    assert [f"127.0.0.1:{port}" for port in brokers] == s.kafka_bootstrap.split(",")
    assert len({p for v in kafka.values() for p in v.split(",")}) == 6


def test_a_users_platform_settings_win_in_every_profile(monkeypatch) -> None:
    from regstream.settings import DEFAULTS

    user = {
        "REGSTREAM_TOPIC": "my_topic",
        "REGSTREAM_TOPIC_REPLICATION": "2",
        "REGSTREAM_KAFKA_BOOTSTRAP": "broker.example:9092",
        "REGSTREAM_WINDOW": "5 minutes",
        "REGSTREAM_STATE_DIR": "/srv/regstream",
    }
    for name, value in user.items():
        monkeypatch.setenv(name, value)
    for profile in config.PROFILES:
        env = config.connection_env(config.load(profile))
        for name, value in user.items():
            assert env[name] == value, (profile, name)
        assert set(DEFAULTS) - {
            "REGSTREAM_SPARK_EXECUTOR_MEMORY",
            "REGSTREAM_SPARK_CORES_MAX",
        } <= set(env)
        assert "broker.example:9092" in env["AIRFLOW_CONN_KAFKA_DEFAULT"]


def test_stackctl_derives_bootstrap_and_replication_only_when_unset(monkeypatch) -> None:
    for name in ("REGSTREAM_KAFKA_BOOTSTRAP", "REGSTREAM_TOPIC_REPLICATION"):
        monkeypatch.delenv(name, raising=False)
    cluster = config.load("cluster")
    env = config.connection_env(cluster)
    assert env["REGSTREAM_KAFKA_BOOTSTRAP"] == cluster.kafka_bootstrap
    assert env["REGSTREAM_TOPIC_REPLICATION"] == "3"
    assert env["REGSTREAM_STATE_DIR"] == str(cluster.run)


def test_a_bad_platform_setting_fails_before_anything_starts(monkeypatch) -> None:
    monkeypatch.setenv("REGSTREAM_WINDOW", "5 mins please")
    with pytest.raises(ValueError, match="REGSTREAM_WINDOW"):
        config.connection_env(config.load("test"))


def test_supervisord_gets_the_platform_settings_but_no_secret(monkeypatch) -> None:
    monkeypatch.setenv("REGSTREAM_WINDOW", "5 minutes")
    monkeypatch.setenv("REG_MYSQL_PORT", "3999")
    monkeypatch.setenv("MYSQL_PWD", "hunter2")
    monkeypatch.setenv("AIRFLOW_CONN_X", "mysql://a:b@c")
    env = services.base_env(config.load("test"))
    assert env["REGSTREAM_WINDOW"] == "5 minutes"
    assert not {"REG_MYSQL_PORT", "MYSQL_PWD", "AIRFLOW_CONN_X"} & set(env)


def test_settings_env_rebuilds_every_field_of_the_profile(monkeypatch) -> None:
    """config.ENV_VARS is the one list: every settable field is in it and read from it."""
    fixed = {"profile", "executor", "kafka_nodes"}
    fields = {f.name for f in dataclasses.fields(config.Settings)}
    assert set(config.ENV_VARS) == fields - fixed
    base = config.load("test")
    for n, (field, var) in enumerate(config.ENV_VARS.items()):
        value = getattr(base, field)
        new = f"/tmp/st{n}" if field == "state" else value + 7 if isinstance(value, int) else "x"
        monkeypatch.setenv(var, str(new))
    changed = config.load("test")
    for field in config.ENV_VARS:
        assert getattr(changed, field) != getattr(base, field), field
    for var, value in services.settings_env(changed).items():
        monkeypatch.setenv(var, value)
    assert config.load("test") == changed
