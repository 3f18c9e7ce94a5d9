"""The unit tier: every test here not marked `jvm` (or `tools`) is pure, so `make test-unit`
runs with Python alone; `make test` runs the pure tier first, then the rest (-m "not pure")."""

from __future__ import annotations

from pathlib import Path

import pytest

# Fixtures that run an installed binary: `resolved` is docker-compose's own parser.
TOOL_FIXTURES = {"resolved"}
UNIT = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # pytest hands this hook every item of the session, not only this folder's
        if UNIT not in Path(str(item.path)).parents:
            continue
        # A test that takes a local SparkSession needs the JVM.
        fixtures = getattr(item, "fixturenames", ())
        if "spark" in fixtures:
            item.add_marker(pytest.mark.jvm)
        if TOOL_FIXTURES & set(fixtures):
            item.add_marker(pytest.mark.tools)
        if item.get_closest_marker("jvm") is None and item.get_closest_marker("tools") is None:
            item.add_marker(pytest.mark.pure)
