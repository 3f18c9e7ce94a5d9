"""What the publisher writes: key and value of one `customer_registered` event.

The contract is the JSON Schema of the version it writes, `schemas/customer_registered.v<N>.json`
(docs/contract.md); tests check that the SQL below builds exactly that version's fields
(unit) and validate what Kafka holds against it (integration). The consumer accepts every
version it has a schema for, so a new version is deployed consumer first, then this number.

The value is built by the database server, one JSON object per row of `users_change_events`;
times are UTC with a Z (the session time zone is +00:00). CONCAT with JSON_QUOTE is ~3x faster
than JSON_OBJECT + DATE_FORMAT here, and one bytes column spares the client a datetime
conversion per row; building it in Python costs about a third of the publisher's throughput.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

# The version the publisher writes: the one place it is set.
SCHEMA_VERSION = 1
SCHEMA_PATH = (
    Path(__file__).resolve().parent / "schemas" / f"customer_registered.v{SCHEMA_VERSION}.json"
)
EVENT_TABLE = "users_change_events"

VALUE_SQL = (
    'CONCAT(\'{"schema_version":' + str(SCHEMA_VERSION) + ',"event_id":\', event_id, '
    "',\"event_type\":', JSON_QUOTE(event_type), ',\"customer_id\":', customer_id, "
    "',\"store_id\":', store_id, ',\"first_name\":', JSON_QUOTE(first_name), "
    "',\"last_name\":', JSON_QUOTE(last_name), "
    "',\"email\":', COALESCE(JSON_QUOTE(email), 'null'), ',\"address_id\":', address_id, "
    "',\"create_date\":\"', REPLACE(CAST(create_date AS CHAR), ' ', 'T'), "
    "'Z\",\"captured_at\":\"', REPLACE(CAST(captured_at AS CHAR), ' ', 'T'), 'Z\"}')"
)
# (event_id, store_id, value bytes) per row, in the order the publisher needs them.
SELECT_EVENTS = f"SELECT event_id, store_id, CAST({VALUE_SQL} AS BINARY) FROM {EVENT_TABLE}"


def message_key(store_id: int) -> bytes:
    """store_id as decimal UTF-8: one store's events share a partition, in event_id order."""
    return str(store_id).encode()


@cache
def schema() -> dict[str, Any]:
    """The whole contract: {"key": <schema>, "value": <schema>}."""
    return json.loads(SCHEMA_PATH.read_text())


@cache
def _validators() -> dict[str, Any]:
    from datetime import datetime

    from jsonschema import Draft202012Validator, FormatChecker

    checker = FormatChecker(formats=())

    @checker.checks("date-time", raises=ValueError)
    def _date_time(text: object) -> bool:
        if not isinstance(text, str):
            return True
        return text[10:11] in ("T", "t") and datetime.fromisoformat(text).tzinfo is not None

    return {
        part: Draft202012Validator(schema()[part], format_checker=checker)
        for part in ("key", "value")
    }


def contract_errors(key: bytes | None, value: bytes) -> list[str]:
    """Every way one message breaks the contract (empty: it conforms). Date-times are checked
    too (RFC 3339, with a zone), which jsonschema skips unless a checker is given."""
    try:
        body = json.loads(value)
    except ValueError as exc:
        return [f"value is not JSON: {exc}"]
    validators = _validators()
    errors = [f"key: {e.message}" for e in validators["key"].iter_errors(key and key.decode())]
    return errors + [f"value: {e.message}" for e in validators["value"].iter_errors(body)]
