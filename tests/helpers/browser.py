"""A real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) for the pages a
person opens: DVC's plots page and the MLflow UI. Screenshots go to the test's tmp folder
(never into the project); CXR_SCREENSHOTS=<dir> keeps copies to look at."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium"))
# Flags that work in a container without a display, GPU or network.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Page:
    """What a loaded page showed: console errors, failed requests, and the live page."""

    page: Any
    errors: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # HTTP >= 400 responses: "404 URL"

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path), full_page=True)
        keep = os.environ.get("CXR_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return path


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium with a fresh, empty profile."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: apt-get install chromium (CI's .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            yield context
        finally:
            context.close()


def open_page(context: Any, url: str, ready: str, timeout_ms: int = 60_000) -> Page:
    """Load `url`, collecting console errors, uncaught exceptions and failed requests, and
    wait until the CSS selector `ready` is on the page."""
    page = context.new_page()
    seen = Page(page)
    page.on("console", lambda m: m.type == "error" and seen.errors.append(f"console: {m.text}"))
    page.on("pageerror", lambda exc: seen.errors.append(f"exception: {exc}"))
    page.on("requestfailed", lambda r: seen.errors.append(f"request failed: {r.url}"))
    page.on("response", lambda r: r.status >= 400 and seen.missing.append(f"{r.status} {r.url}"))
    page.goto(url)
    page.wait_for_selector(ready, timeout=timeout_ms)
    return seen
