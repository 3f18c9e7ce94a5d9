"""The unit tier: every test here not marked `jvm` (or `tools`) is pure, so `make test-unit`
runs with Python alone; `make test` runs the pure tier first, then the rest (-m "not pure")."""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        # A test that takes a local SparkSession needs the JVM.
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.jvm)
        if item.get_closest_marker("jvm") is None and item.get_closest_marker("tools") is None:
            item.add_marker(pytest.mark.pure)
