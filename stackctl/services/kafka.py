"""Kafka (KRaft): one broker+controller per node."""

from __future__ import annotations

import subprocess
from functools import partial

from stackctl import supervisor
from stackctl.config import Settings
from stackctl.services.common import Service, check_ports_free, port_open, wait_until
from stackctl.supervisor import Program


def kafka_node_names(s: Settings) -> list[str]:
    """Program names of the Kafka nodes: `kafka` alone, or `kafka-1` ... `kafka-N`."""
    if s.kafka_nodes == 1:
        return ["kafka"]
    return [f"kafka-{n}" for n in range(1, s.kafka_nodes + 1)]


def _node(name: str) -> int:
    return int(name.rsplit("-", 1)[1]) if "-" in name else 1


def _kafka_properties(s: Settings, name: str) -> str:
    """server.properties of one node: broker and controller in one process (KRaft combined
    mode); with N nodes, N voters and replication factor min(N, 3), min ISR N-1."""
    node = _node(name)
    port, cport = s.kafka_node_ports(node)
    n = s.kafka_nodes
    rf, isr = min(n, 3), max(1, min(n, 3) - 1)
    if n == 1:
        quorum = f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}"
    else:
        voters = ",".join(f"{i}@127.0.0.1:{s.kafka_node_ports(i)[1]}" for i in range(1, n + 1))
        quorum = f"controller.quorum.voters={voters}"
    return "\n".join(
        [
            "process.roles=broker,controller",
            f"node.id={node}",
            quorum,
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={s.run / name / 'data'}",
            "num.partitions=2",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={isr}",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={isr}",
            f"share.coordinator.state.topic.replication.factor={rf}",
            f"share.coordinator.state.topic.min.isr={isr}",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=false",
            "log.retention.hours=336",
            "",
        ]
    )


def _kafka_java(s: Settings, name: str, cls: str, *args: str, heap: bool = False) -> list[str]:
    argv = ["java"]
    if heap:
        argv += [
            f"-Xms{min(256, s.kafka_heap_mb)}m",
            f"-Xmx{s.kafka_heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
        ]
    log4j = s.run / name / "log4j2.yaml"
    argv += [
        f"-Dlog4j2.configurationFile={log4j}",
        "-cp",
        f"{s.jars / 'kafka-broker'}/*",
        cls,
        *args,
    ]
    return argv


LOG4J2 = """Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.request.logger
        level: WARN
      - name: org.apache.kafka.controller
        level: WARN
"""


def kafka_ready(s: Settings, name: str = "kafka", since: int = 0) -> bool:
    logfile = s.logs / f"{name}.log"
    if not port_open(s.kafka_node_ports(_node(name))[0]):
        return False
    try:
        with open(logfile, "rb") as fh:
            fh.seek(since)
            return b"Kafka Server started" in fh.read()
    except OSError:
        return False


def _kafka_programs(s: Settings) -> list[Program]:
    return [
        Program(
            name,
            _kafka_java(s, name, "kafka.Kafka", str(s.run / name / "server.properties"), heap=True),
            s.run / name,
        )
        for name in kafka_node_names(s)
    ]


def _kafka_cluster_id(s: Settings) -> str:
    """One id for every node of the profile's Kafka cluster, made once."""
    path = s.run / "kafka-cluster.id"
    if path.exists():
        return path.read_text().strip()
    out = subprocess.run(
        _kafka_java(s, kafka_node_names(s)[0], "kafka.tools.StorageTool", "random-uuid"),
        check=True,
        capture_output=True,
        text=True,
    )
    cluster_id = out.stdout.strip().splitlines()[-1]
    path.write_text(cluster_id)
    return cluster_id


def init_kafka(s: Settings, name: str) -> None:
    kdir = s.run / name
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(_kafka_properties(s, name))
    (kdir / "log4j2.yaml").write_text(LOG4J2)
    if (kdir / "data" / "meta.properties").exists():
        return
    fmt = ["format", "-t", _kafka_cluster_id(s), "-c", str(props)]
    if s.kafka_nodes == 1:
        fmt.append("--standalone")
    subprocess.run(
        _kafka_java(s, name, "kafka.tools.StorageTool", *fmt), check=True, capture_output=True
    )


def start_kafka(s: Settings) -> None:
    """Start every node, then wait for all of them (a quorum needs its voters together)."""
    offsets = {}
    for name in kafka_node_names(s):
        port, cport = s.kafka_node_ports(_node(name))
        if supervisor.pid_of(s, name) and port_open(port):
            continue
        check_ports_free(s, name, port, cport)
        init_kafka(s, name)
        logfile = s.logs / f"{name}.log"
        offsets[name] = logfile.stat().st_size if logfile.exists() else 0
        supervisor.start(s, name)
    for name, offset in offsets.items():
        wait_until(
            f"Kafka node {name}",
            partial(kafka_ready, s, name, offset),
            120,
            s.logs / f"{name}.log",
        )


def prepare_kafka(s: Settings) -> None:
    for name in kafka_node_names(s):
        init_kafka(s, name)


def kafka_nodes_ready(s: Settings) -> bool:
    return all(kafka_ready(s, name) for name in kafka_node_names(s))


SERVICE = Service("kafka", prepare_kafka, _kafka_programs, kafka_nodes_ready, start_kafka)
