"""A small client of Airflow's REST API (v2), as a user or a script drives it: a token from
`/auth/token`, then JSON calls. Used by the e2e tests and the benchmarks."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

from stackctl.config import Settings, secrets_for


class AirflowAPIError(RuntimeError):
    def __init__(self, method: str, path: str, code: int, body: bytes) -> None:
        super().__init__(f"{method} {path}: {code} {body[:500]!r}")
        self.code = code


def token(base_url: str, username: str, password: str) -> str:
    body = json.dumps({"username": username, "password": password}).encode()
    req = urllib.request.Request(
        f"{base_url}/auth/token", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["access_token"]


class Airflow:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.token = ""

    def login(self) -> None:
        password = secrets_for(self.s)["AIRFLOW_ADMIN_PASSWORD"]
        self.token = token(self.s.airflow_url, "admin", password)

    def _request(self, method: str, path: str, body: Any) -> bytes:
        req = urllib.request.Request(
            f"{self.s.airflow_url}/api/v2{path}",
            json.dumps(body).encode() if body is not None else None,
            {
                "Content-Type": "application/json",
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
            },
            method=method,
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.read()
        except urllib.error.HTTPError as exc:
            raise AirflowAPIError(method, path, exc.code, exc.read()) from exc

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One call; an expired token is renewed once, any other error is raised."""
        if not self.token:
            self.login()
        try:
            data = self._request(method, path, body)
        except AirflowAPIError as exc:
            if exc.code != 401:
                raise
            self.login()
            data = self._request(method, path, body)
        return json.loads(data or b"null")

    def trigger(self, dag_id: str, logical_date: datetime | None, conf: dict | None = None) -> str:
        run = self.call(
            "POST",
            f"/dags/{dag_id}/dagRuns",
            {
                "logical_date": logical_date.isoformat() if logical_date else None,
                "conf": conf or {},
            },
        )
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        q = urllib.parse.quote(run_id, safe="")
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{q}")["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(1)
        raise TimeoutError(f"{dag_id} {run_id} still {state!r} after {timeout:.0f}s")

    def log(self, dag_id: str, run_id: str, task_id: str, attempt: int = 1) -> str:
        """A task attempt's log (structured entries), as one searchable string."""
        q = urllib.parse.quote(run_id, safe="")
        data = self.call(
            "GET",
            f"/dags/{dag_id}/dagRuns/{q}/taskInstances/{task_id}/logs/{attempt}?full_content=true",
        )
        return json.dumps(data, ensure_ascii=False)

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=-run_after")["dag_runs"]
