"""Headless Chromium for the browser tests: Debian's /usr/bin/chromium driven by Playwright's
Python package (never Playwright's own browser download), a fresh profile per session, and a
place for screenshots (tests/artifacts/, ignored by git; STORY_ARTIFACTS overrides it).

The same helpers work on the front end of each tested host (1.32 with ComfyUI 0.3.75, 1.48 with
0.33.0); where the two differ the helper names both and says which it found:
* node_search(): a canvas double-click's search box and its results (a .comfy-vue-node-search-container
  list on 1.32, a [role=dialog] with an "Add a node..." combobox and [role=option] results on 1.48);
* missing_node_reports(): what the UI tells a user about node types it lacks (a modal dialog on
  1.32, an error overlay on 1.48), and unknown_nodes(): graph nodes of a type the front end does not
  know, a check independent of any UI;
* pack_console(): console warnings and errors whose call stack passes through the pack's web files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("STORY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("STORY_ARTIFACTS", Path(__file__).resolve().parent / "artifacts"))
# first-run screens that would cover the canvas in a fresh profile
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True}
APP_READY = (
    "window.app && app.graph && window.LiteGraph && Object.keys(LiteGraph.registered_node_types).length > 50"
)
PACK_WEB = "/extensions/comfyui-storydiffusion/"
# every console warning/error with the stack that made it, so a message can be traced to the pack
RECORD_CONSOLE = """(() => {
  window.__storyConsole = [];
  for (const level of ["warn", "error"]) {
    const original = console[level].bind(console);
    console[level] = (...args) => {
      try {
        window.__storyConsole.push({level, text: args.map(String).join(" "), stack: new Error().stack || ""});
      } catch (e) { /* never break the page */ }
      return original(...args);
    };
  }
})();"""
# what the front end shows when a workflow holds node types it does not know: the 1.32 modal
# dialog ("...node types were not found"); on 1.48 an error overlay ("Missing node: X", or "N errors
# found" when there are several problems), the errors panel's missing-node group behind its "View
# details", and a missing-nodes icon in the breadcrumb
MISSING_NODE_UI = (
    "[role=dialog], .p-dialog, [data-testid=error-overlay], [data-testid=error-group-missing-node]"
)
MISSING_NODE_TEXT = "missing node|node types were not found"
MISSING_NODE_ICON = "[data-testid=subgraph-breadcrumb-missing-nodes-icon]"
SEARCH_BOX = ".comfy-vue-node-search-container, [role=dialog]:has(input[role=combobox])"
SEARCH_RESULTS = ".comfy-vue-node-search-container li, [role=dialog] [role=option]"


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
            self.profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        self.page = self.context.new_page()
        self.page.add_init_script(RECORD_CONSOLE)
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.goto(server.url)
        self.page.wait_for_function(APP_READY, timeout=120_000)
        self.frontend = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || ''")

    @property
    def frontend_version(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.frontend.split(".") if p.isdigit())

    def node_search(self):
        """(box, results): the node search a double-click on an empty canvas opens, on either front end."""
        return self.page.locator(SEARCH_BOX), self.page.locator(SEARCH_RESULTS)

    def missing_node_reports(self, details: bool = False) -> list[str]:
        """What the front end shows a user about missing node types (texts of dialogs, overlays,
        the errors panel; the breadcrumb icon as a line). details=True first opens the 1.48 errors
        panel when an overlay summarises several errors, so the report names the types."""
        if details and self.page.locator("[data-testid=error-overlay-see-errors]").count():
            self.page.locator("[data-testid=error-overlay-see-errors]").first.click()
            try:
                self.page.locator("[data-testid=error-group-missing-node]").first.wait_for(timeout=5_000)
            except Exception:  # noqa: BLE001 - no missing-node group: the reports say what there is
                pass
        return self.page.evaluate(
            """([sel, text, icon]) => {
                const out = [...document.querySelectorAll(sel)].map(e => e.innerText)
                    .filter(t => new RegExp(text, "i").test(t));
                if (document.querySelector(icon)) out.push("(the breadcrumb shows the missing-nodes icon)");
                return out; }""",
            [MISSING_NODE_UI, MISSING_NODE_TEXT, MISSING_NODE_ICON],
        )

    def unknown_nodes(self) -> list[str]:
        """Types of graph nodes the front end has no definition for (drawn as error placeholders)."""
        return self.page.evaluate(
            "() => app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)"
        )

    def assert_no_missing_nodes(self, what: str) -> None:
        reports, unknown = self.missing_node_reports(), self.unknown_nodes()
        if reports or unknown:
            shot = self.screenshot(f"missing_nodes_{what}")
            raise AssertionError(
                f"{what}: the front end reports missing nodes {reports}, unknown types {unknown} (see {shot})"
            )

    def pack_console(self) -> list[dict]:
        """Console warnings and errors raised from the pack's web extension (its files are on the stack)."""
        return self.page.evaluate(
            "web => (window.__storyConsole || []).filter(m => m.stack.includes(web))", PACK_WEB
        )

    def fit_view(self) -> None:
        """Zoom the canvas so the whole graph is in the screenshot."""
        self.page.evaluate(
            "() => { const c = app.canvas; c.deselectAll?.(); c.fitViewToSelectionAnimated?.({duration: 1}); "
            "}"
        )
        self.page.wait_for_timeout(400)

    def screenshot(self, label: str) -> Path:
        path = self.artifacts / f"{label}.png"
        self.page.screenshot(path=str(path))
        print(f"[browser] screenshot: {path}")
        return path

    def dialogs(self) -> list[str]:
        """Texts of open dialogs and error overlays (either front end)."""
        return self.page.evaluate(
            "sel => [...document.querySelectorAll(sel)].map(e => e.innerText)", MISSING_NODE_UI
        )

    def close_dialogs(self) -> None:
        for _ in range(3):
            if not self.dialogs():
                return
            self.page.keyboard.press("Escape")
            # 1.48: the error overlay closes with its own button, and "View details" opened a side panel
            self.page.evaluate("""() => {
                document.querySelectorAll('[data-testid=error-overlay-dismiss]').forEach(b => b.click());
                document.querySelectorAll('button[aria-label="Toggle properties panel"][aria-pressed=true]')
                    .forEach(b => b.click()); }""")
            self.page.wait_for_timeout(300)

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self._pw.stop()
            shutil.rmtree(self.profile, ignore_errors=True)
