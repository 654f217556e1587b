"""Headless Chromium (Debian's package) driven by Playwright; no browser is ever downloaded.

The `browser` and `page` fixtures live in tests/conftest.py so that every test package shares
one Playwright instance (two sync instances in one process cannot coexist).
"""

import os
import shutil
from pathlib import Path

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    path = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if not path:
        pytest.fail(
            "Chromium is missing: `apt-get install chromium` (make test does this as root)."
        )
    return path


def login(page, username: str, password: str = "pw") -> None:
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def shot(page, name: str, **kwargs) -> None:
    """A screenshot for the README, written to docs/screenshots/ only when asked
    (VEREDICTO_SCREENSHOTS=1 make test): a test run must not rewrite tracked files."""
    if not os.environ.get("VEREDICTO_SCREENSHOTS"):
        page.screenshot(**kwargs)  # still rendered, so a page that cannot be drawn fails
        return
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), **kwargs)


# The elements that stick out past the right edge: named in the failure, so it says what to fix.
_WIDE_ELEMENTS = """[...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
  .slice(0, 6).map(e => e.tagName.toLowerCase() + '.' + e.className)"""


def assert_no_sideways_scroll(page) -> None:
    """The page is no wider than the window: a phone never scrolls it sideways."""
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 0:
        wide = page.evaluate(_WIDE_ELEMENTS)
        pytest.fail(f"{page.url} is {overflow} px wider than {page.viewport_size}: {wide}")
