"""Headless Chromium for the page tests: Debian's `chromium`, driven by Playwright (never
`playwright install`: nothing can be downloaded here), and where their screenshots go."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: Screenshots a reviewer (or CI) can look at: `$MESHOP_TEST_ARTIFACTS/<test>/`, by default
#: `artifacts/` at the repository's root (ignored by git).
ARTIFACTS = Path(os.environ.get("MESHOP_TEST_ARTIFACTS") or Path(__file__).parents[2] / "artifacts")


def _available() -> bool:
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return False
    return Path(CHROMIUM).exists() or shutil.which("chromium") is not None


@contextlib.asynccontextmanager
async def browser_page(what: str) -> AsyncIterator[tuple[Page, list[str]]]:
    """A fresh page, and the script errors and console errors it reports (CSP violations too).

    Skips when Playwright or chromium is missing, except in CI, where `.ci/run` installs both.
    """
    if not _available():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} needs Playwright and Debian's chromium in CI")
        pytest.skip("Playwright or /usr/bin/chromium is missing (apt-get install chromium)")
    from playwright.async_api import async_playwright

    problems: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = await browser.new_page()
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
            yield page, problems
        finally:
            await browser.close()


def artifacts(name: str) -> Path:
    """The directory that keeps one test's screenshots, created."""
    path = ARTIFACTS / name
    path.mkdir(parents=True, exist_ok=True)
    return path
