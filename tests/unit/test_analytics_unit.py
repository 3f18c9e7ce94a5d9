"""The analysts' read API and the notebook as committed: no services, no JVM."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from regstream import analytics, liveview

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "registrations.ipynb"


def test_the_committed_notebook_has_no_outputs() -> None:
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == [], "strip outputs: pre-commit run notebook-outputs-stripped"
        assert cell["execution_count"] is None


def test_the_notebook_opens_by_saying_what_it_shows_then_its_parameters() -> None:
    cells = json.loads(NOTEBOOK.read_text())["cells"]
    assert cells[0]["cell_type"] == "markdown"
    assert "what the analyst looks at" in "".join(cells[0]["source"])
    first_code = next(c for c in cells if c["cell_type"] == "code")
    assert "parameters" in first_code["metadata"]["tags"]
    src = "".join(first_code["source"])
    assert "START" in src and "END" in src and "WINDOW" in src
    # never a credential in the notebook: the connection comes from the environment
    text = NOTEBOOK.read_text().lower()
    assert "password" not in text and "analytics.connect()" in text


@pytest.mark.parametrize(
    "window, minutes", [("15 minutes", 15), ("1 hour", 60), (5, 5), ("1 day", 1440)]
)
def test_window_lengths(window: str | int, minutes: int) -> None:
    assert analytics.window_minutes(window) == minutes


@pytest.mark.parametrize("window", ["7 minutes", "30 seconds", 2, "soon"])
def test_a_window_the_views_do_not_offer_is_refused(window: str | int) -> None:
    with pytest.raises(ValueError, match="window"):
        analytics.window_minutes(window)


def test_bounds_become_naive_utc() -> None:
    cet = timezone(timedelta(hours=1))
    assert analytics._naive_utc(datetime(2026, 12, 1, 10, tzinfo=cet)) == datetime(2026, 12, 1, 9)
    assert analytics._naive_utc("2026-12-01T09:00:00Z") == datetime(2026, 12, 1, 9)
    assert analytics._naive_utc(None) is None


def test_rollup_is_exact_or_refused() -> None:
    assert analytics.rollup_seconds(60, True, 15) == 900
    assert analytics.rollup_seconds(300, True, 1) is None
    assert analytics.rollup_seconds(60, False, 5) is None


def test_table_is_one_row_per_window_with_a_column_per_store() -> None:
    t0 = pd.Timestamp("2026-12-01 09:00", tz="UTC")
    step = pd.Timedelta(minutes=15)
    df = pd.DataFrame(
        {
            "window_start": [t0, t0, t0 + step],
            "window_end": [t0 + step, t0 + step, t0 + 2 * step],
            "store_id": [1, 2, 2],
            "registrations": [3, 4, 5],
        }
    )
    got = analytics.table(df)
    assert list(got.columns) == ["window_start", "window_end", "store 1", "store 2", "total"]
    assert got[["store 1", "store 2", "total"]].values.tolist() == [[3, 4, 7], [0, 5, 5]]


def test_csv_rows_are_the_pages_table() -> None:
    result = {
        "windows": [
            {
                "window_start": "2026-12-01T09:05:00Z",
                "window_end": "2026-12-01T09:10:00Z",
                "stores": {"10": 2},
                "total": 2,
            },
            {
                "window_start": "2026-12-01T09:00:00Z",
                "window_end": "2026-12-01T09:05:00Z",
                "stores": {"2": 1, "10": 3},
                "total": 4,
            },
        ]
    }
    assert liveview.csv_rows(result) == [
        ["window_start_utc", "window_end_utc", "store_2", "store_10", "total"],
        ["2026-12-01T09:05:00Z", "2026-12-01T09:10:00Z", "0", "2", "2"],
        ["2026-12-01T09:00:00Z", "2026-12-01T09:05:00Z", "1", "3", "4"],
    ]


def test_csv_row_cap_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REGSTREAM_CSV_MAX_ROWS", raising=False)
    assert liveview.csv_max_rows() == 100_000
    monkeypatch.setenv("REGSTREAM_CSV_MAX_ROWS", "20")
    assert liveview.csv_max_rows() == 20
    for bad in ("lots", "0"):
        monkeypatch.setenv("REGSTREAM_CSV_MAX_ROWS", bad)
        with pytest.raises(ValueError, match="REGSTREAM_CSV_MAX_ROWS"):
            liveview.csv_max_rows()


def test_connect_says_how_to_get_a_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MYSQL_READER", raising=False)
    with pytest.raises(analytics.ConnectionNotConfigured, match="make notebook"):
        analytics.connect()
