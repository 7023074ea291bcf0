"""The real ComfyUI front end in headless Chromium against the live server, on whichever front end
the host ships (1.32 with ComfyUI 0.3.75, 1.48 with 0.33.0): node search, every example workflow
from the template route with no missing node (and equal to its API twin), the template browser,
missing-node detection that is shown to fire, the Story Prompt live feedback, a queue from the UI
that completes on the tiny model, and no console warning from the pack's web extension.
Screenshots go to tests/artifacts/browser/ (the path is printed)."""

import json
import time
from pathlib import Path

import pytest

from browser_support import BrowserSession, require_browser
from pack_loader import pure

pytestmark = [pytest.mark.live, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui-storydiffusion"
EXAMPLES = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def browser(live_server):
    require_browser()
    session = BrowserSession(live_server, "browser")
    yield session
    session.close()


def _load_template(browser, name):
    """Fetch a template the way the template browser does and load it into the canvas."""
    return browser.page.evaluate(
        """async ([pack, name]) => {
            const wf = await (await fetch(`/api/workflow_templates/${pack}/${name}.json`)).json();
            await app.loadGraphData(wf, true, true, name);
            await new Promise(r => setTimeout(r, 500));
            return (await app.graphToPrompt()).output;
        }""",
        [PACK, name],
    )


def test_our_nodes_appear_in_the_node_search(browser, live_server):
    info = live_server.get("/object_info")
    ours = {k: v["display_name"] for k, v in info.items() if v.get("python_module", "").endswith(PACK)}
    assert ours
    page = browser.page
    page.evaluate("() => app.graph.clear()")
    box, results = browser.node_search()
    for node_id, display in ours.items():
        for _ in range(3):  # a double-click right after the last search closed can be missed
            page.mouse.dblclick(700, 500)
            try:
                box.wait_for(state="visible", timeout=3_000)
                break
            except Exception:  # noqa: BLE001 - try again
                page.wait_for_timeout(500)
        else:
            pytest.fail(
                "double-clicking the canvas opened no node search "
                f"(see {browser.screenshot('search_failed')})"
            )
        page.keyboard.type(display)
        deprecated = info[node_id].get("deprecated")
        if not deprecated:  # a deprecated node may leave the list empty (1.48 shows no option at all)
            results.first.wait_for(timeout=10_000)
        page.wait_for_timeout(700)  # the search is debounced
        texts = results.all_inner_texts()
        if node_id == "StoryDiffComicPage":
            browser.screenshot("node_search")
        if deprecated:  # kept for saved workflows, hidden from the search
            assert not any(display in t for t in texts), f"deprecated {display} is offered: {texts[:5]}"
        else:
            assert any(display in t for t in texts[:5]), f"{display} not among the first results: {texts[:5]}"
        page.keyboard.press("Escape")
        box.wait_for(state="hidden", timeout=5_000)
        page.wait_for_timeout(300)


def test_template_route_lists_every_example_with_a_thumbnail(live_server):
    listed = live_server.get("/workflow_templates")
    assert sorted(listed.get(PACK, [])) == EXAMPLES and EXAMPLES
    for name in EXAMPLES:
        thumb = live_server.get_bytes(f"/api/workflow_templates/{PACK}/{name}.jpg")
        assert thumb[:3] == b"\xff\xd8\xff", f"{name}.jpg is not a JPEG"


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_workflow_loads_without_missing_nodes_and_matches_its_api_twin(browser, live_server, name):
    prompt = _load_template(browser, name)
    browser.page.wait_for_timeout(300)
    browser.screenshot(f"workflow_{name}")
    browser.assert_no_missing_nodes(name)
    from workflow_graph import for_users  # scripts/ is on sys.path (conftest)

    api = for_users(
        json.loads((ROOT / "example_workflows/api" / f"{name}.json").read_text()),
        live_server.get("/object_info"),
    )
    assert {k: (v["class_type"], v["inputs"]) for k, v in prompt.items()} == {
        k: (v["class_type"], v["inputs"]) for k, v in api.items()
    }, f"{name}: the canvas graph differs from its API twin"
    links = browser.page.evaluate("() => [...app.graph.links.values()].filter(l => l).length")
    assert links == sum(isinstance(v, list) for n in api.values() for v in n["inputs"].values())


def test_a_user_opens_the_example_from_the_template_browser(browser):
    page = browser.page
    browser.close_dialogs()
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    dialog = page.locator("[role=dialog]")  # a .p-dialog on 1.32, its own dialog on 1.48
    dialog.get_by_text(PACK, exact=True).first.click()
    card = dialog.get_by_text(EXAMPLES[0], exact=True).first
    card.wait_for(timeout=10_000)
    # the browser fetches the .jpg into a blob: our thumbnails are the only 512x384 images there
    thumb = (
        "() => [...document.querySelectorAll('[role=dialog] img')]"
        ".some(i => i.complete && i.naturalWidth === 512 && i.naturalHeight === 384)"
    )
    try:
        page.wait_for_function(thumb, timeout=10_000)
    except Exception:  # noqa: BLE001 - report what the dialog shows instead
        pytest.fail(
            "thumbnail not shown; images: "
            f"{page.evaluate('() => [...document.querySelectorAll(`[role=dialog] img`)].map(i => i.src)')}"
        )
    browser.screenshot("template_browser")
    page.evaluate("() => app.graph.clear()")
    card.click()
    page.wait_for_function("() => app.graph.nodes.some(n => n.type.startsWith('StoryDiff'))", timeout=15_000)
    page.wait_for_timeout(500)
    browser.assert_no_missing_nodes("template_browser")
    assert page.locator("[role=dialog]").count() == 0, "the template browser stayed open"
    browser.screenshot("template_opened")


def test_a_missing_node_is_detected_by_the_ui_and_the_graph(browser):
    """The no-missing-node checks above can fail: a workflow with an unknown node type is reported
    by the front end (dialog or overlay, naming the type) and by the graph check, and fails them."""
    browser.close_dialogs()
    wf = json.loads((ROOT / "example_workflows" / f"{EXAMPLES[0]}.json").read_text())
    wf["nodes"][0]["type"] = "StoryDiffNoSuchNode"
    browser.page.evaluate("wf => app.loadGraphData(wf, true, true, 'broken')", wf)
    deadline = time.time() + 10
    while not browser.missing_node_reports() and time.time() < deadline:
        browser.page.wait_for_timeout(250)
    reports = browser.missing_node_reports(details=True)
    shot = browser.screenshot("missing_node_reported")
    assert any("StoryDiffNoSuchNode" in r for r in reports), (
        f"front end {browser.frontend}: no missing-node report names the type: {reports} / "
        f"{browser.dialogs()} (see {shot})"
    )
    assert browser.unknown_nodes() == ["StoryDiffNoSuchNode"]
    with pytest.raises(AssertionError, match="StoryDiffNoSuchNode"):
        browser.assert_no_missing_nodes("broken")
    # a complete workflow afterwards reports nothing again (no stale report for the next test)
    browser.close_dialogs()
    _load_template(browser, EXAMPLES[0])
    browser.page.wait_for_timeout(500)
    browser.assert_no_missing_nodes("after_the_broken_workflow")
    browser.close_dialogs()


def test_story_prompt_shows_the_panel_count_while_typing(browser):
    page = browser.page
    page.evaluate("""() => { app.graph.clear();
        const n = LiteGraph.createNode('StoryDiffPrompt'); n.pos = [200, 150]; app.graph.add(n);
        app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1; app.canvas.setDirty(true, true); }""")
    area = page.locator("textarea[placeholder=story]:visible").first
    area.wait_for(timeout=10_000)
    area.fill("")
    area.type(
        "[Ann]: a girl with a yellow raincoat\n[Ann] jumps in a puddle #Splash!\n[NC] clouds\n[Anne] waves"
    )
    feedback = page.locator(".storydiff-feedback")
    feedback.wait_for(timeout=5_000)
    page.wait_for_timeout(300)
    text = feedback.inner_text()
    browser.screenshot("story_prompt_feedback")
    assert "3 panels" in text and "Ann" in text and "Splash!" in text
    assert feedback.locator(".storydiff-unknown").all_inner_texts() == ["[Anne]"]
    area.type("\n[Ann] sleeps")
    page.wait_for_timeout(200)
    assert "4 panels" in feedback.inner_text()
    # a value set by code (loading an API-format workflow, undo) refreshes the box too
    page.evaluate(
        "() => { app.graph.nodes[0].widgets.find(w => w.name === 'story').value = '[Z]: z\\n[Z] a\\n[Z] b'; }"
    )
    page.wait_for_timeout(200)
    assert "2 panels" in feedback.inner_text()
    page.evaluate(
        "() => { app.graph.nodes[0].widgets.find(w => w.name === 'story').value = "
        "'[Ann]: a girl\\n[Ann] jumps #Splash!\\n[NC] clouds\\n[Anne] waves\\n[Ann] sleeps'; }"
    )
    # the feedback box is not a widget value: the prompt holds only the node's real inputs
    values = page.evaluate("() => app.graph.nodes[0].serialize().widgets_values")
    assert len(values) == 3 and values[0].endswith("[Ann] sleeps")


def test_browser_parser_agrees_with_the_server_parser(browser):
    syntax = pure("story.syntax")
    stories = [
        "[Bob]: a man\n[Bob] walks #Monday\n[NC] a street\n// comment\n\n[bob] sits # tired",
        "[A]: x\n[B]: y\n[A] and [B] meet\n[B] leaves #bye #really",
        "[Ann]: a girl\nno tag at all\n[Ann] runs",
    ]
    got = browser.page.evaluate(
        """async (stories) => {
            const m = await import('/extensions/comfyui-storydiffusion/js/story_syntax.js');
            return stories.map(s => { const r = m.readStory(s);
                return r.panels.map(p => [p.characters, p.caption, p.noCharacter]); }); }""",
        stories,
    )
    for story, js in zip(stories, got, strict=False):
        parsed = syntax.parse_story(story)
        assert js == [[list(p.characters), p.caption, p.no_character] for p in parsed.panels]
    # a story the server rejects: the browser flags the same line and tag, and keeps counting
    bad = "[Bob]: a man\n[Bob] walks\n[Bbo] runs\n[Bob] sits"
    with pytest.raises(syntax.StorySyntaxError, match="line 3.*\\[Bbo\\]"):
        syntax.parse_story(bad)
    problems, count = browser.page.evaluate(
        """async (s) => { const m = await import('/extensions/comfyui-storydiffusion/js/story_syntax.js');
            const r = m.readStory(s); return [r.problems, r.panels.length]; }""",
        bad,
    )
    assert count == 3 and any("line 3" in p and "[Bbo]" in p for p in problems)


def test_queue_from_the_ui_completes_on_the_tiny_model(browser, live_server):
    api = json.loads((ROOT / "example_workflows/api/one_character_story.json").read_text())
    for node in api.values():
        if node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        if node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
    before = set(live_server.get("/history"))
    page = browser.page
    browser.close_dialogs()
    page.evaluate("api => app.loadApiJson(api, 'ui_queue_test')", api)
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Run", exact=True).first.click()
    # queued: the prompt reaches the server's queue (or is already done) within seconds
    deadline, seen = time.time() + 30, False
    while time.time() < deadline and not seen:
        queue = live_server.get("/queue")
        seen = bool(
            queue["queue_running"] or queue["queue_pending"] or set(live_server.get("/history")) - before
        )
        time.sleep(0.5)
    if not seen:
        pytest.fail(f"clicking Run queued nothing (see {browser.screenshot('queued_nothing')})")
    deadline, entry = time.time() + 600, None  # generous: the CPU may be shared
    while time.time() < deadline:
        new = {k: v for k, v in live_server.get("/history").items() if k not in before}
        entry = next(iter(new.values()), None)
        if entry and entry.get("status", {}).get("completed"):
            break
        time.sleep(1)
    browser.fit_view()
    page.wait_for_timeout(1000)
    browser.screenshot("queued_from_ui")
    assert entry is not None, (
        f"the prompt queued from the UI did not finish within 10 minutes: {live_server.get('/queue')}"
    )
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert any(img["filename"].startswith("comic_page") for img in images)
    assert sum(img["filename"].startswith("panel") for img in images) == 4
    for img in images:  # and on the server's disk
        assert (live_server.base / "output" / img["subfolder"] / img["filename"]).is_file(), img


def test_the_pack_writes_no_warning_to_the_browser_console(browser, live_server):
    """Every node of the pack created on the canvas, every example loaded and a story typed: no
    console warning or error comes from the pack's web files (e.g. a deprecated front-end API such
    as widget.inputEl on 1.48). The console is recorded with each message's call stack."""
    ours = [
        k for k, v in live_server.get("/object_info").items() if v.get("python_module", "").endswith(PACK)
    ]
    page = browser.page
    browser.close_dialogs()
    page.evaluate(
        """types => { app.graph.clear();
        types.forEach((t, i) => { const n = LiteGraph.createNode(t);
            n.pos = [40 + 360 * (i % 4), 60 + 320 * Math.floor(i / 4)]; app.graph.add(n); });
        app.canvas.ds.offset = [0, 0]; app.canvas.ds.scale = 1; app.canvas.setDirty(true, true); }""",
        ours,
    )
    area = page.locator("textarea[placeholder=story]:visible").first
    area.wait_for(timeout=10_000)
    area.type("\n[Bob] waves")
    for name in EXAMPLES:
        _load_template(browser, name)
    page.wait_for_timeout(500)
    messages = browser.pack_console()
    assert messages == [], f"front end {browser.frontend}: the pack wrote to the console: " + "; ".join(
        f"{m['level']}: {m['text']}" for m in messages
    )
    deprecated = [
        m
        for m in browser.console
        if "deprecated" in m.lower() and ("inputEl" in m or "storydiff" in m.lower())
    ]
    assert deprecated == [], deprecated
