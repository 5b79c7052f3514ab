"""Fixtures shared by every test module. Each helper adds its own block; keep edits additive."""

from __future__ import annotations

# Browser harness (tests/browser.py): serve_blocks, browser, page, tab_url.
from tests.browser import browser, page, serve_blocks, tab_url  # noqa: F401
