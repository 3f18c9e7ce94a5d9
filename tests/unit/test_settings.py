"""The platform's settings object (regstream.settings): one table, checked values, clear
errors, the reference doc, and the product never importing its dev tool."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from regstream import settings
from regstream.intervals import interval_seconds

from tests.support.settings_values import NON_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]


def test_every_default_is_valid_and_round_trips() -> None:
    s = settings.load({})
    assert s == settings.defaults()
    assert {k: v for k, v in s.env().items()} == settings.DEFAULTS
    assert settings.load(s.env()) == s
    assert s.window_seconds == interval_seconds(settings.DEFAULTS["REGSTREAM_WINDOW"])
    assert s.lateness_seconds == interval_seconds(settings.DEFAULTS["REGSTREAM_LATENESS"])


def test_every_setting_is_read_from_its_variable() -> None:
    s = settings.load(NON_DEFAULTS)
    assert s.env() == NON_DEFAULTS
    for spec in settings.SPECS:
        assert getattr(s, spec.field) != getattr(settings.defaults(), spec.field), spec.name


def test_blank_means_the_default() -> None:
    assert settings.load({"REGSTREAM_WINDOW": "  "}).window == settings.DEFAULTS["REGSTREAM_WINDOW"]


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("REGSTREAM_TOPIC_PARTITIONS", "two", ["REGSTREAM_TOPIC_PARTITIONS='two'", "integer"]),
        ("REGSTREAM_TOPIC_PARTITIONS", "0", ["at least 1", "REGSTREAM_TOPIC_PARTITIONS='2'"]),
        ("REGSTREAM_WINDOW", "5 minuets", ["REGSTREAM_WINDOW", "minuets", "'5 minutes'"]),
        ("REGSTREAM_LATENESS", "soon", ["REGSTREAM_LATENESS='soon'", "not an interval"]),
        ("REGSTREAM_SPARK_DRIVER_MEMORY", "2 GB", ["REGSTREAM_SPARK_DRIVER_MEMORY", "'2g'"]),
        ("REGSTREAM_RECONCILE_SCHEDULE", "every 5", ["cron", "'*/5 * * * *'"]),
    ],
)
def test_a_bad_value_names_the_variable_and_says_what_to_write(
    name: str, value: str, words: list[str]
) -> None:
    with pytest.raises(settings.SettingsError) as err:
        settings.load({name: value})
    for word in words:
        assert word in str(err.value)


def test_the_functions_tasks_call_read_the_environment_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in NON_DEFAULTS.items():
        monkeypatch.setenv(name, value)
    assert settings.topic() == NON_DEFAULTS["REGSTREAM_TOPIC"]
    assert settings.kafka_bootstrap() == NON_DEFAULTS["REGSTREAM_KAFKA_BOOTSTRAP"]
    assert settings.topic_partitions() == int(NON_DEFAULTS["REGSTREAM_TOPIC_PARTITIONS"])
    assert settings.gap_max_wait_s() == int(NON_DEFAULTS["REGSTREAM_GAP_MAX_WAIT_S"])
    assert settings.reconcile_stale_s() == int(NON_DEFAULTS["REGSTREAM_RECONCILE_STALE_S"])
    args = settings.stream_job_args(Path("/cp"))
    assert args[args.index("--window") + 1] == NON_DEFAULTS["REGSTREAM_WINDOW"]
    conf = settings.spark_submit_conf()
    assert conf["spark.executor.memory"] == NON_DEFAULTS["REGSTREAM_SPARK_EXECUTOR_MEMORY"]
    monkeypatch.setenv("REGSTREAM_TOPIC_PARTITIONS", "x")
    with pytest.raises(ValueError, match="REGSTREAM_TOPIC_PARTITIONS"):
        settings.topic_partitions()


def test_the_reference_doc_is_the_table() -> None:
    doc = (ROOT / "docs" / "settings.md").read_text()
    assert settings.reference_table() in doc
    documented = set(re.findall(r"^\| `(REGSTREAM_\w+)`", doc, re.M))
    assert documented == set(settings.DEFAULTS)


def test_regstream_never_imports_stackctl() -> None:
    """Every module of the package imports with stackctl made unimportable."""
    script = """
import importlib, pkgutil, sys
sys.modules["stackctl"] = None  # any `import stackctl...` now raises ImportError
import regstream
names = [m.name for m in pkgutil.walk_packages(regstream.__path__, "regstream.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'plugins'}:{ROOT / 'spark_jobs'}")
    res = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd="/"
    )
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[-1]) >= 10
    for path in (ROOT / "plugins" / "regstream").rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) stackctl", text, re.M), path
