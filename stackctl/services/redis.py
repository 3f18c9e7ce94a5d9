"""Redis: the Celery broker of the cluster profile."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from stackctl import supervisor
from stackctl.config import Settings, secrets_for, write_private
from stackctl.services.common import Service, check_ports_free, port_open, wait_until
from stackctl.supervisor import Program


def _redis_conf(s: Settings) -> Path:
    """redis.conf holds the password (requirepass), so it is written 0600."""
    rdir = s.run / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    conf = rdir / "redis.conf"
    write_private(
        conf,
        "\n".join(
            [
                "bind 127.0.0.1",
                f"port {s.redis_port}",
                f"dir {rdir}",
                "protected-mode yes",
                f"requirepass {secrets_for(s)['REDIS_PASSWORD']}",
                "appendonly yes",
                "save ''",
                "",
            ]
        ),
    )
    return conf


def _redis_programs(s: Settings) -> list[Program]:
    if not s.redis_port or s.executor != "CeleryExecutor":
        return []
    return [
        Program("redis", ["redis-server", str(s.run / "redis" / "redis.conf")], s.run / "redis")
    ]


def start_redis(s: Settings) -> None:
    if not _redis_programs(s):
        return
    _redis_conf(s)
    if not supervisor.pid_of(s, "redis"):
        check_ports_free(s, "redis", s.redis_port)
        supervisor.start(s, "redis")
    wait_until("Redis", partial(redis_ready, s), 30, s.logs / "redis.log")


def redis_ready(s: Settings) -> bool:
    return port_open(s.redis_port)


SERVICE = Service("redis", _redis_conf, _redis_programs, redis_ready, start_redis)
