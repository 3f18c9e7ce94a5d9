"""stackctl: installs and runs the platform's local stack (`python3 -m stackctl`).

stackctl builds the venv, so `make up` first runs it on the system Python, before the project
is installed: then `regstream` (whose settings stackctl reads) is found in plugins/ beside
it. Once the venv exists, its editable install provides both and this adds nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("regstream") is None:
    sys.path.append(str(Path(__file__).resolve().parent.parent / "plugins"))
