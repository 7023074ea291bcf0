"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright's
Python package (never Playwright's own browser download), a fresh profile per session, and a
place for screenshots (tests/artifacts/, ignored by git; STORY_ARTIFACTS overrides it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("STORY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("STORY_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
# first-run screens that would cover the canvas in a fresh profile
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True}
APP_READY = "window.app && app.graph && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 50"


def require_browser():
    """Skip (outside CI) or fail (in CI) with the fix when the browser or Playwright is missing."""
    problem = None
    if not Path(CHROMIUM).is_file():
        problem = f"{CHROMIUM} is missing: run scripts/install_browser.sh (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            problem = "Playwright's Python package is missing: run make setup (requirements-dev.txt)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(problem)
        pytest.skip(problem)


class BrowserSession:
    """One Chromium with one page on the live server's front end."""

    def __init__(self, server, name: str):
        from playwright.sync_api import sync_playwright

        self.server, self.name = server, name
        self.profile = tempfile.mkdtemp(prefix="story-chromium-")
        self.artifacts = ARTIFACTS / name
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.console: list[str] = []
        server.post("/settings", QUIET_SETTINGS)
        self._pw = sync_playwright().start()
        self.context = self._pw.chromium.launch_persistent_context(
            self.profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1400, "height": 900})
        self.page = self.context.new_page()
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.goto(server.url)
        self.page.wait_for_function(APP_READY, timeout=120_000)

    def fit_view(self) -> None:
        """Zoom the canvas so the whole graph is in the screenshot."""
        self.page.evaluate("() => { const c = app.canvas; c.deselectAll?.(); c.fitViewToSelectionAnimated?.({duration: 1}); }")
        self.page.wait_for_timeout(400)

    def screenshot(self, label: str) -> Path:
        path = self.artifacts / f"{label}.png"
        self.page.screenshot(path=str(path))
        print(f"[browser] screenshot: {path}")
        return path

    def dialogs(self) -> list[str]:
        return self.page.evaluate("[...document.querySelectorAll('.p-dialog')].map(e => e.innerText)")

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.dialogs():
                return
            self.page.keyboard.press("Escape")
            self.page.wait_for_timeout(300)

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self.profile, ignore_errors=True)
