"""Operator entry point: python3 -m stackctl {up,down,status,logs,install,env,exec,stream-stop}.

`make up` / `make down` / `make status` / `make logs SERVICE=kafka` call this.
REG_PROFILE=test selects the test profile (other ports and state folder).
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time

from stackctl import config, install, procs, services, supervisor

log = logging.getLogger("stackctl")

DAG_IDS = (
    "ingest_fake_customers",
    "publish_cdc_events",
    "stream_registration_counts",
    "monitor_pipeline_lag",
    "reconcile_counts",
)


def up(s: config.Settings, *, airflow: bool = True, unpause: bool = True) -> None:
    t0 = time.monotonic()
    install.everything(s)
    s.run.mkdir(parents=True, exist_ok=True)
    config.secrets_for(s)
    t_install = time.monotonic() - t0
    services.start_supervisor(s)
    steps = [("mariadb", services.start_mariadb), ("kafka", services.start_kafka)]
    if s.spark_workers:
        steps.append(("spark", services.start_spark))
    if airflow:
        steps.append(("airflow", services.start_airflow))
    for name, start in steps:
        t = time.monotonic()
        start(s)
        log.info("%-8s up (%.1fs)", name, time.monotonic() - t)
        if name == "mariadb":
            services.apply_schema(s)
    if airflow and unpause:
        unpause_dags(s)
    log.info(
        "stack %s ready in %.1fs (installs %.1fs)", s.profile, time.monotonic() - t0, t_install
    )
    if airflow:
        print(f"\nAirflow UI: {s.airflow_url}   login: admin / (password in {s.secrets_file})")
        print(f"Live view:  {s.airflow_url}/regstream/")
    print(
        f"MySQL:      127.0.0.1:{s.mysql_port} database {config.DATABASE} "
        f"(passwords in {s.secrets_file})"
    )
    print(f"Kafka:      {s.kafka_bootstrap} topic {config.TOPIC}")


def airflow_cli(s: config.Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(s.venv / "bin" / "airflow"), *args],
        env=services.airflow_env(s),
        capture_output=True,
        text=True,
        check=check,
        cwd=str(s.run),
    )


def unpause_dags(s: config.Settings, timeout: float = 120) -> None:
    """Unpause the project's DAGs once the dag processor has parsed them."""
    pending = set(DAG_IDS)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for dag_id in sorted(pending):
            res = airflow_cli(s, "dags", "unpause", dag_id, "-y", check=False)
            if res.returncode == 0:
                pending.discard(dag_id)
        if pending:
            time.sleep(2)
    if pending:
        raise services.ServiceError(
            f"DAGs not parsed in {timeout:.0f}s: {sorted(pending)}; see "
            f"{s.logs / 'airflow-dag-processor.log'} and `airflow dags list-import-errors`"
        )
    log.info("unpaused %s", ", ".join(DAG_IDS))


def program_ports(s: config.Settings) -> dict[str, str]:
    ports = {
        "mariadb": str(s.mysql_port),
        "postgres": str(s.pg_port),
        "redis": str(s.redis_port),
        "airflow-api-server": str(s.airflow_port),
        "spark-master": f"{s.spark_master_port},{s.spark_master_ui}",
    }
    for node, name in enumerate(services.kafka_node_names(s), start=1):
        ports[name] = ",".join(map(str, s.kafka_node_ports(node)))
    for n, name in enumerate(services.spark_worker_names(s), start=1):
        ports[name] = str(s.spark_master_ui + n)
    return ports


def kafka_roles(s: config.Settings) -> dict[str, str]:
    """Per Kafka node: active controller or not, and the topic partitions it leads."""
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:  # the system python before the venv exists
        return {}
    admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap, "socket.timeout.ms": 3000})
    try:
        controller = admin.describe_cluster(request_timeout=3).result().controller.id
        topic = admin.list_topics(config.TOPIC, timeout=3).topics.get(config.TOPIC)
    except Exception:  # noqa: BLE001 - status reports what it can
        return {}
    roles = {}
    for node, name in enumerate(services.kafka_node_names(s), start=1):
        leads = sorted(
            p for p, m in (topic.partitions if topic else {}).items() if m.leader == node
        )
        role = "broker+controller" + (" (active controller)" if node == controller else "")
        roles[name] = role + (f", leads p{',p'.join(map(str, leads))}" if leads else "")
    return roles


def roles(s: config.Settings) -> dict[str, str]:
    out = kafka_roles(s)
    master = services.spark_master_status(s) if s.spark_workers else None
    if master is not None:
        alive = [w for w in master.get("workers", []) if w.get("state") == "ALIVE"]
        out["spark-master"] = f"master ({len(alive)} workers alive)"
        for n, name in enumerate(services.spark_worker_names(s), start=1):
            port = str(s.spark_master_ui + n)
            up = any(w.get("webuiaddress", "").endswith(f":{port}") for w in alive)
            out[name] = "worker" + (" (registered)" if up else " (not registered)")
    for c in services.airflow_components(s):
        if c.startswith("celery-worker"):
            out[f"airflow-{c}"] = f"celery worker ({s.executor})"
    return out


def pss_mib(pids: list[int]) -> float:
    """Proportional set size: pages shared by forked workers counted once, in proportion."""
    kb = 0
    for pid in pids:
        try:
            kb += procs.kib(f"{pid}/smaps_rollup", "Pss")
        except OSError:
            continue  # ended while we looked
    return kb / 1024


def status(s: config.Settings) -> int:
    """Each program: state, pid, port, memory (its whole process tree). Exit 1 if any is down."""
    states = supervisor.states(s)
    print(f"profile {s.profile} ({s.run})")
    if not states:
        print("supervisord is not running: `make up` starts the stack")
        return 1
    ports = program_ports(s)
    role = roles(s)
    down = 0
    total = 0.0
    print(f"{'program':26} {'state':9} {'pid':>8} {'port':>11} {'PSS MiB':>8} procs  role")
    for name in (p.name for p in services.programs(s)):
        st = states.get(name)
        tree = services.descendants(st.pid) if st and st.pid else []
        mem = pss_mib(tree)
        total += mem
        down += not st or st.state != "RUNNING"
        print(
            f"{name:26} {st.state if st else 'UNKNOWN':9} {st.pid if st and st.pid else '-':>8} "
            f"{ports.get(name, '-'):>11} {mem:8.0f} {len(tree):5}  {role.get(name, '')}"
        )
    everything = services.descendants(supervisor.daemon_pid(s) or 0)
    print(
        f"supervisord pid {supervisor.daemon_pid(s)}; whole stack {len(everything)} processes, "
        f"PSS {pss_mib(everything):,.0f} MiB"
    )
    return 1 if down else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stackctl", description=__doc__)
    p.add_argument("--profile", choices=sorted(config.PROFILES), default=None)
    sub = p.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="install what is missing, start everything, run the flow")
    p_up.add_argument("--no-airflow", action="store_true", help="only MariaDB and Kafka")
    p_up.add_argument("--paused", action="store_true", help="leave the DAGs paused")
    sub.add_parser("down", help="stop every process of the profile")
    sub.add_parser("status", help="each service up or down, with port and pid")
    p_logs = sub.add_parser("logs", help="tail a service's log")
    p_logs.add_argument("service", help="a program of `make status`, or supervisord")
    p_logs.add_argument("-n", type=int, default=50)
    p_logs.add_argument("-f", action="store_true", help="follow")
    p_inst = sub.add_parser("install", help="only install (Debian packages, venv, jars)")
    p_inst.add_argument("--with-test-packages", action="store_true")
    p_inst.add_argument(
        "--python-only", action="store_true", help="only the venv (for test-unit and lint)"
    )
    sub.add_parser("env", help="print the environment (connections) as shell exports")
    p_exec = sub.add_parser("exec", help="(supervisord's command) run one Airflow component")
    p_exec.add_argument("component", help="api-server, scheduler, ..., celery-worker-N")
    sub.add_parser("stream-stop", help="pause the stream DAG and stop the Spark job cleanly")
    return p


def logs(s: config.Settings, service: str, n: int, follow: bool) -> int:
    names = [p.name for p in services.programs(s)] + ["supervisord"]
    if service not in names:
        log.error("no service %r in profile %s: one of %s", service, s.profile, names)
        return 2
    logfile = s.logs / f"{service}.log"
    os.execvp("tail", ["tail", f"-n{n}"] + (["-F"] if follow else []) + [str(logfile)])


def stream_stop(s: config.Settings) -> None:
    airflow_cli(s, "dags", "pause", "stream_registration_counts", "-y")
    stop = s.spark_state / "checkpoints" / "STOP"
    stop.parent.mkdir(parents=True, exist_ok=True)
    stop.touch()
    print(
        f"paused stream_registration_counts and asked the job to stop ({stop}); "
        "`airflow dags unpause stream_registration_counts` restarts it"
    )


def print_env(s: config.Settings) -> None:
    import shlex

    for k, v in services.airflow_env(s).items():
        if k.startswith(("AIRFLOW", "REGSTREAM")):
            print(f"export {k}={shlex.quote(v)}")


def run(s: config.Settings, args: argparse.Namespace) -> int:
    """One command of `parser()`; its exit code."""
    if args.cmd == "up":
        up(s, airflow=not args.no_airflow, unpause=not args.paused)
    elif args.cmd == "down":
        print(f"stopped {len(services.stop_all(s))} processes of profile {s.profile}")
    elif args.cmd == "status":
        return status(s)
    elif args.cmd == "logs":
        return logs(s, args.service, args.n, args.f)
    elif args.cmd == "exec":
        services.exec_component(s, args.component)
    elif args.cmd == "install":
        install.everything(
            s, with_test_packages=args.with_test_packages, python_only=args.python_only
        )
    elif args.cmd == "stream-stop":
        stream_stop(s)
    elif args.cmd == "env":
        print_env(s)
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    args = parser().parse_args(argv)
    s = config.load(args.profile)
    try:
        return run(s, args)
    except (services.ServiceError, supervisor.SupervisorError, ValueError) as exc:
        log.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
