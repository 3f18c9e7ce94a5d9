"""Headless Chromium (Debian's package, driven by Playwright) logged in through Airflow's own
login form, as a person logs in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from stackctl import config

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def browser_page() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


@contextmanager
def logged_in_page(s: config.Settings) -> Iterator[Any]:
    password = config.secrets_for(s)["AIRFLOW_ADMIN_PASSWORD"]
    with browser_page() as page:
        page.goto(f"{s.airflow_url}/auth/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/auth/login" not in url, timeout=30_000)
        yield page
