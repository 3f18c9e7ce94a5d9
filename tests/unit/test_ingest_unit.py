from __future__ import annotations

from datetime import datetime, timezone

import pytest
from regstream.ingest import (
    IngestError,
    batch_key,
    batch_seed,
    generate_customers,
    validate_count,
)

START = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
END = datetime(2026, 11, 1, 10, 5, tzinfo=timezone.utc)


def test_same_interval_same_people() -> None:
    seed = batch_seed(batch_key("ingest_fake_customers", START, END))
    a = generate_customers(20, seed, START, END, [1, 2, 3], [1, 2])
    b = generate_customers(20, seed, START, END, [1, 2, 3], [1, 2])
    assert a == b
    other = batch_seed(batch_key("ingest_fake_customers", END, END.replace(minute=10)))
    assert generate_customers(20, other, END, END.replace(minute=10), [1, 2, 3], [1, 2]) != a


def test_create_dates_inside_interval_and_spread() -> None:
    people = generate_customers(500, 42, START, END, [1], [1, 2])
    dates = [p.create_date for p in people]
    naive_start, naive_end = START.replace(tzinfo=None), END.replace(tzinfo=None)
    assert all(naive_start <= d < naive_end for d in dates)
    assert all(d.microsecond == 0 for d in dates)
    # spread over the interval, not bunched at one end
    assert min(dates).minute == 0 and max(dates).minute == 4
    assert {p.store_id for p in people} == {1, 2}


def test_field_lengths_fit_sakila_columns() -> None:
    for p in generate_customers(3000, 7, START, END, [1, 2], [1, 2]):
        assert len(p.first_name) <= 45 and len(p.last_name) <= 45
        assert len(p.email) <= 50 and len(p.address) <= 50
        assert len(p.district) <= 20 and len(p.postal_code) <= 10 and len(p.phone) <= 20


@pytest.mark.parametrize("bad", [0, -3, "abc", "", None, 2.5, True, 10_000_000])
def test_bad_counts_are_rejected(bad: object) -> None:
    with pytest.raises(IngestError):
        validate_count(bad)


@pytest.mark.parametrize("good,expected", [(20, 20), ("15", 15), (1, 1), (3.0, 3)])
def test_good_counts(good: object, expected: int) -> None:
    assert validate_count(good) == expected


def test_empty_interval_is_refused() -> None:
    with pytest.raises(IngestError, match="empty data interval"):
        generate_customers(5, 1, START, START, [1], [1])


def test_no_reference_data_is_refused() -> None:
    with pytest.raises(IngestError, match="no cities or no stores"):
        generate_customers(5, 1, START, END, [], [1])


def test_emails_fit_the_column_whatever_the_names() -> None:
    from regstream.ingest import EMAIL_MAX, email_for

    long = email_for("Maximiliano-Alejandro", "Rodriguez-Fernandez de la Vega", "0a1b2c")
    assert len(long) <= EMAIL_MAX and long.endswith(".0a1b2c@sakilacustomer.org")
    assert long.startswith("MAXIMILIANO-ALEJANDRO.RO")
    assert email_for("Ann", "Lee", "000001") == "ANN.LEE.000001@sakilacustomer.org"


def test_too_many_customers_says_what_to_do_instead() -> None:
    import pytest
    from regstream.ingest import IngestError, validate_count

    with pytest.raises(IngestError, match="split the load over more runs"):
        validate_count(2_000_000)
