"""Where analysts work, on the running platform: the notebook executed headless (nbclient)
after a known ingest, its table equal to the SQL ground truth and its figure one line per
store (saved to artifacts/notebook_registrations.png); the live view's CSV downloaded by a
logged-in Chromium equal to the page's table, 401 for an anonymous client; and an analyst's
long query stopped by the analysts' role's statement time limit while the stream keeps
committing batches.
"""

from __future__ import annotations

import base64
import csv
import io
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import MySQLdb
import pytest

from stackctl import config
from tests.conftest import ARTIFACTS, ROOT, role_conn, root_conn, wait_for
from tests.e2e.conftest import counts_match

pytestmark = pytest.mark.e2e

DB = config.DATABASE
NOTEBOOK = ROOT / "notebooks" / "registrations.ipynb"
STATEMENT_LIMIT_S = 30  # sql/30_analysts.sql


@pytest.fixture
def ingest_paused(platform) -> Iterator[None]:
    """No scheduled ingest run lands in the middle of a check."""
    platform.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": True})
    yield
    platform.call("PATCH", "/dags/ingest_fake_customers", {"is_paused": False})


def db_now(cur: Any) -> datetime:
    cur.execute("SELECT UTC_TIMESTAMP()")
    return cur.fetchone()[0]


def insert_customers(cur: Any, rows: list[tuple[int, datetime]]) -> None:
    cur.executemany(
        "INSERT INTO customer (store_id, first_name, last_name, email, address_id, active, "
        "create_date) VALUES (%s, 'Ana', 'Lyst', 'analyst@example.org', 1, 1, %s)",
        rows,
    )


def known_ingest(cur: Any, start: datetime) -> None:
    """Three hours of stores 1 and 2 in waves, from `start` (a quarter hour)."""
    rows = []
    for k in range(36):
        at = start + timedelta(minutes=5 * k, seconds=20)
        rows += [(1, at)] * (1 + k % 3) + [(2, at + timedelta(minutes=1))] * (1 + (k // 6) % 4)
    insert_customers(cur, rows)


def truth_in(start: datetime, end: datetime, window_s: int, stack: Any) -> dict[tuple, int]:
    from tests.support.streamjob import ground_truth

    got = ground_truth(stack, DB, window_s=window_s)
    return {k: n for k, n in got.items() if start <= k[0] < end}


def run_notebook(start: datetime, end: datetime, window: str, tmp: Path) -> tuple[Any, float]:
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source = f"START = {start!r}\nEND = {end!r}\nWINDOW = {window!r}\n"
    params.source = "import datetime\n\n" + params.source
    t0 = time.monotonic()
    # the kernel on unix sockets in tmp, not on unencrypted loopback TCP
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp / "kernel"))
    NotebookClient(nb, km=km, timeout=180).execute(cwd=str(ROOT))
    return nb, time.monotonic() - t0


def tagged_outputs(nb: Any, tag: str) -> list[Any]:
    return next(c for c in nb.cells if tag in c.metadata.get("tags", [])).outputs


def test_the_notebook_shows_the_ground_truth(stack, platform, ingest_paused, tmp_path) -> None:
    import nbformat

    cur = root_conn(stack, DB).cursor()
    now = db_now(cur)
    start = (now - timedelta(days=4)).replace(minute=0, second=0, microsecond=0)
    end = start + timedelta(hours=3)
    known_ingest(cur, start)
    counts_match(stack, 300)

    nb, seconds = run_notebook(start, end, "15 minutes", tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    nbformat.write(nb, ARTIFACTS / "registrations.executed.ipynb")
    print(f"notebook executed in {seconds:.1f}s")

    (table_out,) = [o for o in tagged_outputs(nb, "table") if "text/csv" in o.get("data", {})]
    rows = list(csv.DictReader(io.StringIO(table_out["data"]["text/csv"])))
    got = {
        (datetime.fromisoformat(r["window_start"]).replace(tzinfo=None), int(k[6:])): int(v)
        for r in rows
        for k, v in r.items()
        if k.startswith("store ") and int(v)
    }
    truth = truth_in(start, end, 900, stack)
    assert len(truth) >= 24  # 12 quarter hours, 2 stores: the known ingest is all there
    assert got == truth
    assert all(
        int(r["total"]) == sum(int(v) for k, v in r.items() if k[:6] == "store ") for r in rows
    )

    (fig,) = [o for o in tagged_outputs(nb, "figure") if "image/png" in o.get("data", {})]
    assert fig["metadata"]["regstream"]["lines"] == ["store 1", "store 2"]
    png = ARTIFACTS / "notebook_registrations.png"
    png.write_bytes(base64.b64decode(fig["data"]["image/png"]))
    assert png.stat().st_size > 10_000

    health = " ".join(
        o.get("data", {}).get(kind, "")
        for o in tagged_outputs(nb, "health")
        for kind in ("text/plain", "text/markdown")
    ).lower()
    assert "publish lag" in health and "quarantined" in health and "reconciliation" in health


def page_table(page: Any) -> list[list[str]]:
    """The page's counts table as CSV cells: window start/end as ISO UTC, stores, total."""
    header = page.eval_on_selector_all("#counts thead th", "ths => ths.map(t => t.textContent)")
    stores = [h.removeprefix("store ") for h in header if h.startswith("store ")]
    body = page.eval_on_selector_all(
        "#counts tr[data-window]",
        "trs => trs.map(tr => [tr.dataset.window, tr.cells[1].textContent, "
        "...[...tr.querySelectorAll('td.num')].map(td => td.textContent)])",
    )
    rows = [["window_start_utc", "window_end_utc", *[f"store_{s}" for s in stores], "total"]]
    for start, end, *cells in body:
        rows.append([start, end.replace(" ", "T") + "Z", *cells])
    return rows


def test_the_csv_download_is_the_pages_table(stack, platform, ingest_paused) -> None:
    from tests.support.browser import browser_page, logged_in_page

    cur = root_conn(stack, DB).cursor()
    start = db_now(cur) - timedelta(minutes=50)
    insert_customers(cur, [(1 + k % 2, start + timedelta(minutes=k)) for k in range(40)])
    counts_match(stack, 300)

    with logged_in_page(stack) as page:
        page.goto(f"{stack.airflow_url}/regstream/")
        page.select_option("#window", "5")
        page.select_option("#hours", "1")
        wait_for(
            "the page's table of 5-minute windows of the last hour",
            lambda: (
                page.get_attribute("#csv", "href").endswith("window=5&hours=1")
                and len(page_table(page)) > 10
            ),
            30,
        )

        def same() -> Any:
            shown = page_table(page)
            with page.expect_download() as dl:
                page.click("#csv")
            text = open(dl.value.path(), encoding="utf-8").read()
            got = list(csv.reader(io.StringIO(text)))
            return (shown, got) if got == shown else None

        shown, got = wait_for("the CSV == the page's table", same, 30, 1)
        assert got[0][-1] == "total" and got[1][0].endswith("Z")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "liveview_csv.png"), full_page=True)

    with browser_page() as anonymous:
        res = anonymous.request.get(
            f"{stack.airflow_url}/regstream/api/counts.csv?window=5&hours=1"
        )
        assert res.status == 401


def last_batch(stack: Any) -> int:
    cur = root_conn(stack, DB).cursor()
    cur.execute("SELECT MAX(batch_id) FROM stream_sink_commits")
    return int(cur.fetchone()[0] or -1)


def test_a_long_analyst_query_is_stopped_while_the_stream_commits(stack, platform) -> None:
    root = root_conn(stack, DB).cursor()
    insert_customers(root, [(2, db_now(root))])
    counts_match(stack, 300)  # the stream is up and caught up
    root.execute("SELECT max_statement_time FROM mysql.user WHERE user = 'reg_analyst'")
    assert [float(t) for (t,) in root.fetchall()] == [STATEMENT_LIMIT_S]
    conn = role_conn(stack, "analyst", DB)
    cur = conn.cursor()
    cur.execute("SELECT COUNT(*) FROM analyst_registrations_15_minutes")  # its views: yes
    for table in ("registrations_per_window", "customer"):  # the tables: no
        with pytest.raises(MySQLdb.MySQLError, match="denied"):
            cur.execute(f"SELECT 1 FROM {table} LIMIT 1")

    outcome: dict[str, Any] = {}

    def heavy() -> None:
        t0 = time.monotonic()
        try:
            # 10^12 rows of a cross join: hours of CPU on one core if nothing stopped it
            # (BENCHMARK() or SLEEP() would be stopped too, but answer 0 with no error)
            cur.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
                "SELECT COUNT(*) FROM n a, n b, n c, n d"
            )
            outcome["result"] = cur.fetchall()
        except MySQLdb.MySQLError as exc:
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - t0

    before = last_batch(stack)
    worker = threading.Thread(target=heavy)
    worker.start()
    insert_customers(root, [(1, db_now(root))])
    wait_for("a new micro-batch committed", lambda: last_batch(stack) > before, 60, 0.5)
    assert worker.is_alive(), f"the batch came after the query had already ended: {outcome}"
    worker.join(STATEMENT_LIMIT_S + 30)
    assert not worker.is_alive()
    assert "result" not in outcome, outcome
    assert "max_statement_time" in str(outcome["error"])
    assert STATEMENT_LIMIT_S - 1 < outcome["seconds"] < STATEMENT_LIMIT_S + 15
    conn.close()
