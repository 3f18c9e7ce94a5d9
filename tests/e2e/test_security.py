"""Nothing anonymous, no secret where it does not belong, least privilege per process: checked
from outside, the way an anonymous client, another local user or a curious task would."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import MySQLdb
import pytest

from stackctl import config, services
from stackctl.airflow_api import token
from tests.conftest import role_conn, wait_for
from tests.e2e.conftest import profile_pids_matching

pytestmark = pytest.mark.e2e

LIVE_VIEW = (
    "/regstream/",
    "/regstream/api/counts?window=5",
    "/regstream/api/health",
    "/regstream/api/series?window=5&hours=3",
    "/regstream/static/liveview.js",
)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def secret_values(s: config.Settings) -> dict[str, str]:
    return config.secrets_for(s)


@pytest.mark.parametrize("path", LIVE_VIEW)
def test_anonymous_requests_get_no_data(stack, platform, path) -> None:
    code, body = get(f"{stack.airflow_url}{path}")
    assert code in (401, 403), (code, body[:200])
    assert b"window_start" not in body and b"watermark" not in body and b"<table" not in body


def test_a_forged_token_is_refused(stack, platform) -> None:
    code, _ = get(f"{stack.airflow_url}/regstream/api/health", {"Authorization": "Bearer x.y.z"})
    assert code in (401, 403)


def test_a_bearer_token_reads_the_json(stack, platform) -> None:
    tok = token(stack.airflow_url, "admin", secret_values(stack)["AIRFLOW_ADMIN_PASSWORD"])
    code, body = get(
        f"{stack.airflow_url}/regstream/api/health", {"Authorization": f"Bearer {tok}"}
    )
    assert code == 200
    assert "watermark_event_id" in json.loads(body)


def test_the_ui_session_cookie_reads_the_json(stack, platform) -> None:
    from tests.support.browser import logged_in_page

    with logged_in_page(stack) as page:
        res = page.request.get(f"{stack.airflow_url}/regstream/api/counts?window=5")
        assert res.status == 200
        assert "windows" in res.json()


def _all_cmdlines() -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
    return out


def test_no_secret_on_any_command_line(stack, platform) -> None:
    """Every process of the machine (this profile's and its children: Spark, task runners,
    postgres backends, psql/mariadb clients), against every generated secret."""
    wait_for(
        "the Spark driver of the stream DAG",
        lambda: profile_pids_matching(stack, "registration_counts.py"),
        240,
        1,
    )
    secrets = secret_values(stack)
    leaks = [
        (pid, name)
        for pid, cmd in _all_cmdlines().items()
        for name, value in secrets.items()
        if value in cmd
    ]
    assert leaks == []
    assert len(services.profile_pids(stack)) > 10  # the walk did see the stack


def test_every_file_holding_a_secret_is_private(stack, platform) -> None:
    """Any file under the profile's folder that holds a secret value has mode 0600 or
    stricter (data directories of the databases aside: their servers own them)."""
    values = [v.encode() for v in secret_values(stack).values()]
    skip = {stack.run / "mysql", stack.run / "postgres", stack.run / "kafka" / "data"}
    holding = []
    for path in stack.run.rglob("*"):
        if not path.is_file() or any(p in skip for p in path.parents):
            continue
        if path.stat().st_size > 20_000_000:
            continue
        data = path.read_bytes()
        if any(v in data for v in values):
            holding.append((str(path.relative_to(stack.run)), oct(path.stat().st_mode & 0o777)))
    assert ("secrets.env", "0o600") in holding
    assert [h for h in holding if h[1] != "0o600"] == []
    # the supervisor config is the one file every program is started from: no secret in it
    assert not any(h[0].startswith("supervisor/") for h in holding)


def test_the_spark_driver_gets_only_the_stream_role(stack, platform) -> None:
    pids = wait_for(
        "the Spark driver",
        lambda: [
            p
            for p in profile_pids_matching(stack, "registration_counts.py")
            if "java" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0].decode()
        ],
        240,
        1,
    )
    env = Path(f"/proc/{pids[0]}/environ").read_bytes().decode(errors="replace")
    pw = secret_values(stack)
    assert pw["REG_STREAM_PASSWORD"] in env
    for other in (
        "REG_INGEST_PASSWORD",
        "REG_PUBLISHER_PASSWORD",
        "REG_READER_PASSWORD",
        "MYSQL_ROOT_PASSWORD",
        "AIRFLOW_DB_PASSWORD",
        "AIRFLOW_JWT_SECRET",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_ADMIN_PASSWORD",
    ):
        assert pw[other] not in env, other


def test_reader_role_cannot_read_customers(stack, platform) -> None:
    cur = role_conn(stack, "reader", config.DATABASE).cursor()
    for sql in (
        "SELECT * FROM customer LIMIT 1",
        "SELECT email FROM users_change_events LIMIT 1",
        "SELECT raw_value FROM stream_quarantine LIMIT 1",
    ):
        with pytest.raises(MySQLdb.OperationalError, match="denied"):
            cur.execute(sql)
    cur.execute("SELECT COUNT(*) FROM registrations_per_window")  # what the page shows
    assert cur.fetchone()[0] >= 0


def test_role_accounts_accept_loopback_only(stack, platform) -> None:
    cur = services.mysql_cli(
        stack, "SELECT DISTINCT Host FROM mysql.user WHERE User LIKE 'reg\\_%' AND is_role = 'N'"
    ).stdout.decode()
    assert cur.split() == ["127.0.0.1"]


def test_root_has_no_network_login(stack, platform) -> None:
    """root logs in over the socket only: no passwordless root@127.0.0.1 left behind."""
    for password in ("", config.secrets_for(stack)["MYSQL_ROOT_PASSWORD"]):
        with pytest.raises(MySQLdb.OperationalError, match="denied"):
            MySQLdb.connect(host="127.0.0.1", port=stack.mysql_port, user="root", password=password)


def test_every_listening_socket_is_on_loopback(stack, platform) -> None:
    mine = set(services.profile_pids(stack))
    out = subprocess.run(["ss", "-H", "-ltnup"], capture_output=True, text=True, check=True)
    sockets = []
    for line in out.stdout.splitlines():
        pids = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if pids & mine:
            sockets.append(line.split()[4])
    assert len(sockets) >= 5  # mariadb, postgres, kafka x2, api-server, spark driver
    public = [a for a in sockets if not re.match(r"(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.)", a)]
    assert public == [], public
