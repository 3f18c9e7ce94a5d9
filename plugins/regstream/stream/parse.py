"""The Spark side of a micro-batch: parse the Kafka rows against the contract, classify them
(ok, too late, bad) and summarize them in one pass. The Spark schema is derived from the
message's JSON Schema (`contract`)."""

from __future__ import annotations

from datetime import datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DataType,
    LongType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from regstream.stream import contract
from regstream.stream.windows import (
    BAD,
    LATE,
    MAX_AHEAD,
    OK,
    TOO_NEW,
    BatchResult,
    Windows,
    micros,
    out_of_bounds,
)

SPARK_TYPES: dict[str, DataType] = {
    "integer": LongType(),
    "string": StringType(),
    "timestamp": TimestampType(),
}
EVENT_TYPE = contract.EVENT_TYPE
KNOWN_VERSIONS = contract.known_versions()
REQUIRED = contract.CONSUMED
# The fields every known version has (versions only add optional ones: the first version's),
# and what the job reads of each message: the consumed fields only. The parser skips the
# rest (names, email, captured_at) cheaply.
EVENT_SCHEMA = StructType(
    [
        StructField(name, SPARK_TYPES[kind])
        for name, kind in contract.value_fields(KNOWN_VERSIONS[0]).items()
    ]
)
PARSE_SCHEMA = StructType(
    [StructField(name, SPARK_TYPES[kind]) for name, kind in contract.consumed_fields().items()]
)
# No timestampFormat: Spark's built-in ISO 8601 parser (2026-11-25T17:22:14[.ffffff]Z) is
# a fifth faster than a pattern and rejects what is not a timestamp ("yesterday") the same.
JSON_OPTIONS = {"mode": "PERMISSIVE"}


def _reason(raw: Column, parsed: Column) -> Column:
    """Why a message is not a usable event; null when it is."""
    obj = F.from_json(raw, MapType(StringType(), StringType()))  # type: ignore[arg-type]  # pyspark's hint omits MapType, which from_json accepts
    checks = [
        F.when(raw.isNull(), F.lit("empty value")),
        F.when(raw.isNotNull() & obj.isNull(), F.lit("not a JSON object")),
    ]
    for name in REQUIRED:
        present = obj.getItem(name).isNotNull()
        checks.append(F.when(obj.isNotNull() & ~present, F.lit(f"missing field {name}")))
        checks.append(
            F.when(
                obj.isNotNull() & present & parsed[name].isNull(), F.lit(f"wrong type for {name}")
            )
        )
    checks.append(
        F.when(
            parsed["event_type"].isNotNull() & (parsed["event_type"] != EVENT_TYPE),
            F.concat(F.lit("unsupported event_type "), parsed["event_type"]),
        )
    )
    checks.append(
        F.when(
            parsed["schema_version"].isNotNull() & ~parsed["schema_version"].isin(*KNOWN_VERSIONS),
            F.concat(F.lit("unsupported schema_version "), parsed["schema_version"].cast("string")),
        )
    )
    detailed = F.concat_ws("; ", *checks)
    ok = parsed["schema_version"].isin(*KNOWN_VERSIONS) & (parsed["event_type"] == EVENT_TYPE)
    for name in REQUIRED:
        ok = ok & parsed[name].isNotNull()
    # The detailed (second) parse runs only for bad messages.
    return F.when(ok, F.lit(None).cast("string")).otherwise(
        F.when(detailed == "", F.lit("invalid event")).otherwise(detailed)
    )


def parse_events(kafka_rows: DataFrame) -> DataFrame:
    """Kafka rows -> event columns plus `reason` (null for a valid event) and Kafka position."""
    raw = F.col("value").cast("string")
    parsed = F.from_json(raw, PARSE_SCHEMA, JSON_OPTIONS)
    return (
        kafka_rows.select(
            raw.alias("raw_value"),
            F.col("key").alias("raw_key"),
            "topic",
            "partition",
            "offset",
            F.col("timestamp").alias("kafka_timestamp"),
            parsed.alias("e"),
        )
        .withColumn("reason", _reason(F.col("raw_value"), F.col("e")))
        .select(
            "e.*",
            "reason",
            "raw_value",
            "raw_key",
            "topic",
            "partition",
            "offset",
            "kafka_timestamp",
        )
    )


def classify(
    events: DataFrame,
    event_time_watermark: datetime | None = None,
    clock: datetime | None = None,
) -> DataFrame:
    """Adds `kind`: bad (not a usable event, or with a clock: an event time more than
    MAX_AHEAD past it), late (older than the event-time watermark: not counted, recorded by event_id)
    or ok."""
    watermark = event_time_watermark
    if clock is not None:
        too_new = F.col("reason").isNull() & (
            F.unix_micros("create_date") > F.lit(micros(clock + MAX_AHEAD))
        )
        events = events.withColumn(
            "reason", F.when(too_new, F.lit(TOO_NEW)).otherwise(F.col("reason"))
        )
    kind = F.when(F.col("reason").isNotNull(), F.lit(BAD))
    if watermark is not None:
        kind = kind.when(F.unix_micros("create_date") < F.lit(micros(watermark)), F.lit(LATE))
    return events.withColumn("kind", kind.otherwise(F.lit(OK)))


def summarize(events: DataFrame, windows: Windows) -> DataFrame:
    """One small row per (kind, Kafka partition, store, slide bucket): how many rows, the
    first and last offsets, the oldest and newest event times. Every row falls in exactly one
    bucket, so the counts per window, the rows consumed and the offsets all come from this one
    pass over the batch."""
    return summary_of(events, summary_columns(windows))


SummaryColumns = tuple[list[Column], list[Column]]


def summary_columns(windows: Windows) -> SummaryColumns:
    """The summary's grouping and aggregate expressions. A column built from Python costs a
    py4j call per node of its expression: the job builds these once and reuses them in every
    micro-batch (an unresolved column belongs to no DataFrame)."""
    create_us = F.unix_micros("create_date")
    bucket = F.floor(create_us / windows.bucket_us) * windows.bucket_us
    keys = [F.col("kind"), F.col("partition"), F.col("store_id")]
    aggs = [
        F.count(F.lit(1)).alias("n"),
        F.min("offset").alias("first_offset"),
        F.max("offset").alias("last_offset"),
        F.min(create_us).alias("oldest_us"),
        F.max(create_us).alias("newest_us"),
    ]
    return [*keys, bucket.cast("long").alias("bucket_us")], aggs


def summary_of(events: DataFrame, columns: SummaryColumns) -> DataFrame:
    keys, aggs = columns
    return events.groupBy(*keys).agg(*aggs)


def classified(kafka_rows: DataFrame) -> DataFrame:
    """The job's streaming DataFrame: Kafka rows parsed and classified without per-batch
    bounds, in the query itself, so a micro-batch builds only its summary from Python (the
    parse's expressions, built in every batch, took 100-300 ms of it)."""
    return classify(parse_events(kafka_rows))


def batch_result(
    batch: DataFrame,
    windows: Windows,
    applied: dict[int, int],
    event_time_watermark: datetime | None,
    clock: datetime,
) -> tuple[BatchResult, DataFrame]:
    """What the batch adds, and its classified events (for the details of late and bad rows).

    The first pass applies no bounds: its plan, and so the Java code Spark generates for it,
    is the same in every batch, and the JIT-compiled code of one batch serves the next.
    (Spark writes a number or a time literal into the generated source, so a plan holding
    this batch's offsets, watermark or clock compiles new classes that start cold each
    batch; that cost about a sixth of the throughput.) Only a batch with rows the bounds act
    on (a replay, late events, events from the future) is read a second time, with them:
    rows below the applied offsets dropped, late and too-new events classified."""
    return events_result(
        classified(batch), windows, applied, event_time_watermark, clock, summary_columns(windows)
    )


def events_result(
    events: DataFrame,
    windows: Windows,
    applied: dict[int, int],
    event_time_watermark: datetime | None,
    clock: datetime,
    columns: SummaryColumns,
) -> tuple[BatchResult, DataFrame]:
    """batch_result of a batch already `classified` (the job's streaming DataFrame is), with
    the summary's `columns` (built once per job)."""
    summary = summary_of(events, columns).collect()
    passes = 1
    if out_of_bounds(summary, applied, event_time_watermark, clock):
        events = classify(events.where(offsets_filter(applied)), event_time_watermark, clock)
        summary = summary_of(events, columns).collect()
        passes = 2
    result = BatchResult.of(summary, windows)
    result.passes = passes
    return result, events


def offsets_filter(applied: dict[int, int]) -> Column:
    """Rows at or after the offsets the sink has applied (all rows of a partition it has
    not seen): a replayed batch, or a new checkpoint starting earlier, adds nothing twice."""
    start: Column = F.lit(0)
    for partition, offset in applied.items():
        start = F.when(F.col("partition") == partition, F.lit(offset)).otherwise(start)
    return F.col("offset") >= start
