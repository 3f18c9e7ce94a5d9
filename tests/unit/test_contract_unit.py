"""One message contract: the JSON Schema files are its source. The SQL that builds the message,
the capture trigger's columns and the stream's schema must agree with them, and a new version
must keep the compatibility rule (docs/contract.md)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from regstream import messages
from regstream.stream import contract

ROOT = Path(__file__).resolve().parents[2]
CDC_SQL = (ROOT / "sql" / "10_cdc.sql").read_text()


def sql_json_keys() -> list[str]:
    return re.findall(r'\\?"(\w+)\\?":', messages.VALUE_SQL)


def sql_columns() -> set[str]:
    """The columns of users_change_events that VALUE_SQL reads."""
    unquoted = re.sub(r"'(?:[^'\\]|\\.)*'", "''", messages.VALUE_SQL)
    words = set(re.findall(r"\b([a-z_]+)\b", unquoted))
    return words - {"concat", "json_quote", "coalesce", "replace", "cast", "as", "char", "null"}


def test_the_sql_builds_exactly_the_published_versions_fields() -> None:
    version = messages.SCHEMA_VERSION
    keys = sql_json_keys()
    fields = contract.value_fields(version)
    assert len(keys) == len(set(keys)), keys
    assert set(keys) <= set(fields), f"not in the v{version} schema: {set(keys) - set(fields)}"
    missing = set(contract.required(version)) - set(keys)
    assert not missing, f"required by v{version} but not built by VALUE_SQL: {missing}"
    assert f'"schema_version":{version},' in messages.VALUE_SQL.replace("'", "")


def test_the_capture_table_and_trigger_hold_every_column_the_sql_reads() -> None:
    table = CDC_SQL[CDC_SQL.index("CREATE TABLE IF NOT EXISTS users_change_events") :]
    table = table[: table.index(") ENGINE")]
    table_columns = set(re.findall(r"^\s+([a-z_]+) [A-Z]", table, flags=re.M))
    trigger = CDC_SQL[CDC_SQL.index("INSERT INTO users_change_events") :]
    listed = set(re.findall(r"[a-z_]+", trigger[trigger.index("(") : trigger.index(")")]))
    read = sql_columns()
    assert read <= table_columns, f"not columns of users_change_events: {read - table_columns}"
    # event_id is the table's own (AUTO_INCREMENT); the trigger fills every other one.
    assert read - {"event_id"} <= listed, f"not filled by the trigger: {read - listed}"


def test_every_known_version_keeps_the_consumed_fields() -> None:
    assert contract.known_versions()[0] == 1
    kinds = contract.consumed_fields()
    assert kinds["create_date"] == "timestamp"
    assert kinds["store_id"] == "integer"
    for version in contract.known_versions():
        assert set(contract.CONSUMED) <= set(contract.required(version))


def _with(monkeypatch: pytest.MonkeyPatch, v2_value: dict[str, Any]) -> None:
    v1 = contract.schemas()[1]
    fake = {1: v1, 2: {"key": v1["key"], "value": v2_value}}
    monkeypatch.setattr(contract, "schemas", lambda: fake)
    contract.consumed_fields.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_cache() -> Any:
    contract.consumed_fields.cache_clear()
    yield
    contract.consumed_fields.cache_clear()


def test_a_version_that_drops_or_retypes_a_consumed_field_breaks_the_rule(monkeypatch) -> None:
    value = contract.schemas()[1]["value"]
    dropped = {**value, "required": [f for f in value["required"] if f != "store_id"]}
    _with(monkeypatch, dropped)
    with pytest.raises(contract.ContractError, match="field store_id must stay required"):
        contract.consumed_fields()
    props = {**value["properties"], "create_date": {"type": "integer"}}
    _with(monkeypatch, {**value, "properties": props})
    with pytest.raises(contract.ContractError, match="create_date must stay required"):
        contract.consumed_fields()


def test_a_version_that_requires_a_new_field_breaks_the_rule(monkeypatch) -> None:
    value = contract.schemas()[1]["value"]
    props = {**value["properties"], "city_id": {"type": "integer"}}
    _with(monkeypatch, {**value, "properties": props, "required": [*value["required"], "city_id"]})
    with pytest.raises(contract.ContractError, match=r"requires new ones \['city_id'\]"):
        contract.consumed_fields()
    _with(monkeypatch, {**value, "properties": props})  # optional: compatible
    assert contract.consumed_fields()["event_id"] == "integer"


def test_the_contract_and_windows_import_without_pyspark_or_mysqldb() -> None:
    code = (
        "import sys; import regstream.stream.contract, regstream.stream.windows; "
        "bad = {'pyspark', 'MySQLdb'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
