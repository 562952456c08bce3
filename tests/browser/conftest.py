"""Browser tests: Debian's chromium, headless, driven by Playwright for Python.

The Makefile installs ``chromium`` from Debian's packages; Playwright's own browser download
is never used (``executable_path``). Locally, without chromium, these tests skip; in CI
(``CI`` set) they fail instead. Each test saves a screenshot of its steps under its temporary
folder (``shot(page, "name")``): look at them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    ViewportSize,
    sync_playwright,
)

CHROMIUM = os.environ.get("PALAVER_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = ViewportSize(width=1280, height=800)
PHONE = ViewportSize(width=390, height=844)


# Module-scoped, not session-scoped: while Playwright's sync API is started, its event loop
# counts as running in this thread, and the asyncio tests of later modules could not run.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: the Makefile installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser profile (its own localStorage) for each test."""
    context = browser.new_context(viewport=LAPTOP)
    context.set_default_timeout(10_000)
    yield context
    context.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page whose script errors fail the test."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert errors == [], f"errors in the page: {errors}"


@pytest.fixture
def shot(tmp_path: Path) -> Callable[[Page, str], Path]:
    """``shot(page, "step")`` saves ``<tmp>/screens/NN-step.png`` and returns its path."""
    folder = tmp_path / "screens"
    folder.mkdir()
    count = 0

    def take(page: Page, name: str) -> Path:
        nonlocal count
        count += 1
        path = folder / f"{count:02d}-{name}.png"
        page.screenshot(path=path)
        return path

    return take
