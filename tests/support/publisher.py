"""A publisher in its own process, for tests that kill it at an exact point."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    """A publisher in its own process, with the test's connections and topic."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=300,
    )


# Publishes once; SIGKILLs itself exactly when Kafka has acknowledged every message of the run
# and the new watermark is not committed yet (the transaction is still open).
KILL_AT_ACK = """
import json, logging, os, signal, sys
logging.basicConfig(level=logging.INFO)
from regstream.publish import HookedPublisher

def die(acked):
    state = acked.decision.state
    print("ACKED " + json.dumps([acked.before.last_event_id, state.last_event_id,
          acked.decision.published]), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

HookedPublisher().run(max_events=int(sys.argv[1]), on_acked=die)
"""


def killed_at_ack(max_events: int) -> tuple[int, int, int]:
    """(watermark before, watermark it was about to write, messages acknowledged)."""
    proc = run_script(KILL_AT_ACK, str(max_events))
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("ACKED ")]
    before, after, published = json.loads(line.removeprefix("ACKED "))
    return before, after, published
