"""Values a user might set: a valid, non-default value for every platform setting."""

from __future__ import annotations

from regstream import settings


def non_default(spec: settings.Spec) -> str:
    """A valid value that differs from the default (what a user would set)."""
    if spec.kind == "int":
        return str(int(spec.default or "1") + 3)
    if spec.kind == "interval":
        return "5 minutes" if spec.default != "5 minutes" else "2 minutes"
    if spec.kind == "memory":
        return "1g" if spec.default != "1g" else "3g"
    if spec.kind == "cron":
        return "*/7 * * * *"
    return f"{spec.default}_custom"


NON_DEFAULTS = {spec.name: non_default(spec) for spec in settings.SPECS}
