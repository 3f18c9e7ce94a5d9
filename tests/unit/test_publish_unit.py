from __future__ import annotations

import json
from pathlib import Path

from regstream.publish import PRODUCER_CONFIG, Gap, subtract

SCHEMA = (
    Path(__file__).resolve().parents[2] / "plugins/regstream/schemas/customer_registered.v1.json"
)


def test_subtract_splits_ranges() -> None:
    assert subtract([(1, 10)], [1, 5, 10]) == [(2, 4), (6, 9)]
    assert subtract([(1, 3), (7, 9)], [2, 8, 100]) == [(1, 1), (3, 3), (7, 7), (9, 9)]
    assert subtract([(4, 4)], [4]) == []
    assert subtract([(4, 6)], []) == [(4, 6)]


def test_gap_round_trips_through_json() -> None:
    g = Gap(5, 9, ["123", "456"], 1700000000.5)
    assert Gap.from_json(json.loads(json.dumps(g.to_json()))) == g
    assert g.size == 5


def test_producer_waits_for_all_replicas_and_is_idempotent() -> None:
    assert PRODUCER_CONFIG["acks"] == "all"
    assert PRODUCER_CONFIG["enable.idempotence"] is True


def test_message_schema_documents_every_field_and_a_version() -> None:
    schema = json.loads(SCHEMA.read_text())
    props = schema["value"]["properties"]
    for field in (
        "schema_version",
        "event_id",
        "event_type",
        "customer_id",
        "store_id",
        "first_name",
        "last_name",
        "email",
        "address_id",
        "create_date",
        "captured_at",
    ):
        assert field in props, field
    assert props["schema_version"]["const"] == 1
    assert "store_id" in schema["key"]["description"]
