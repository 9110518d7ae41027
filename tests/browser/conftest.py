"""Browser tests: Debian's Chromium driven by Playwright (sync API), no browser download.

``./scripts/browser`` installs both (``./lab test`` calls it). Every test in this folder gets the
``browser`` marker. Without a usable browser the tests skip with the reason, except under
``CI=true``, where a missing browser is a failure: CI must never go green by skipping them.

Fixtures:

* ``chromium`` (module): one headless Chromium per test module. ``launch()`` gives it a fresh
  temporary user-data directory of its own (Playwright creates and deletes it), so no profile,
  cache or cookie from an earlier run leaks in. Module, not session, scope: Playwright's sync API
  keeps an asyncio loop running in the main thread while it is open, and every ``asyncio.run`` of
  a later (unit or integration) test in the same pytest process would fail with "cannot be called
  from a running event loop". So a browser test module must not run asyncio code itself either.
* ``browser_page``: a :class:`BrowserPage` in a new, isolated browser context (its own storage)
  that records console errors and uncaught page errors, so a test ends with
  ``browser_page.assert_no_console_errors()``.

Helpers for the assertions every dashboard test makes live in ``tests/browser/pagecheck.py``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("ASGI_LAB_CHROMIUM", "/usr/bin/chromium")
#: --no-sandbox: the suite runs as root. The --disable-* flags stop Chromium calling hosts this
#: network refuses (component updates, sync, field trials), which would otherwise log errors and
#: slow every start.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
HERE = Path(__file__).resolve().parent


def _ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.browser)


def _unavailable(reason: str) -> None:
    message = f"{reason} (run ./scripts/browser)"
    if _ci():
        pytest.fail(f"CI=true and the browser tests cannot run: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)) and not shutil.which(CHROMIUM):
        _unavailable(f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS), headless=True)
        except Exception as exc:
            _unavailable(f"Chromium at {CHROMIUM} does not start: {exc}")
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class BrowserPage:
    """A page plus what went wrong in it: console ``error`` messages and uncaught exceptions."""

    page: Any
    console_errors: list[str] = field(default_factory=list)

    def assert_no_console_errors(self) -> None:
        assert not self.console_errors, "console errors:\n" + "\n".join(self.console_errors)


@pytest.fixture
def browser_page(chromium: Any) -> Iterator[BrowserPage]:
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    bp = BrowserPage(page)

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            loc = msg.location or {}
            where = f"{loc.get('url', '')}:{loc.get('lineNumber', '')}"
            bp.console_errors.append(f"console.error: {msg.text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: bp.console_errors.append(f"uncaught: {exc}"))
    try:
        yield bp
    finally:
        context.close()
