"""Every template as a user meets it, in both node renderers of the front end (classic LiteGraph
canvas and Nodes 2.0 / Vue nodes): opened from the template route, run on the tiny model, and
then every image output's preview lies fully in view and overlaps no other node. Screenshots of
each template after its run: tests/artifacts/templates_<renderer>/<template>.png."""

import json
import time
from pathlib import Path

import pytest

from browser_support import BrowserSession, require_browser

pytestmark = [pytest.mark.live, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui-storydiffusion"
TEMPLATES = sorted(p.stem for p in (ROOT / "example_workflows").glob("*.json"))
RENDERERS = {"classic": False, "nodes2": True}  # Comfy.VueNodes.Enabled
# a laptop window for the classic canvas; Nodes 2.0 draws node text only from about 0.67 zoom (its
# 12 px text against the 8 px level-of-detail threshold) and spreads layouts by 1.2, so a whole
# template needs a desktop window there
VIEWPORTS = {"classic": (1400, 900), "nodes2": (1920, 1080)}
# the stored identity bank the read template loads: written by the write template first
ORDER = sorted(TEMPLATES, key=lambda n: (n != "identity_bank_write", n))


def tiny_prompt(name: str) -> dict:
    """The template's API twin (same node ids, tiny loaders), cheaper still: 2 steps, sizes / 4."""
    api = json.loads((ROOT / "example_workflows" / "api" / f"{name}.json").read_text())
    for node in api.values():
        inputs = node["inputs"]
        if "steps" in inputs and not isinstance(inputs["steps"], list):
            inputs["steps"] = 2
        for key in ("width", "height"):
            if isinstance(inputs.get(key), int) and inputs[key] > 256:
                inputs[key] //= 4
        if isinstance(inputs.get("frames"), int):
            inputs["frames"] = 3
    return api


@pytest.fixture(scope="module", params=list(RENDERERS), ids=list(RENDERERS))
def canvas(request, live_server):
    require_browser()
    renderer = request.param
    live_server.post("/settings", {"Comfy.VueNodes.Enabled": RENDERERS[renderer]})
    session = BrowserSession(live_server, f"templates_{renderer}")
    session.renderer = renderer
    width, height = VIEWPORTS[renderer]
    session.page.set_viewport_size({"width": width, "height": height})
    session.page.wait_for_timeout(500)
    try:
        enabled = session.page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')")
        assert enabled == RENDERERS[renderer], (
            f"the front end did not take Comfy.VueNodes.Enabled={RENDERERS[renderer]}"
        )
        yield session
    finally:
        session.close()
        live_server.post("/settings", {"Comfy.VueNodes.Enabled": False})


# The geometry probes read front end 1.32's internals: node.imgs (classic), <img> and <p> inside
# Vue nodes, textarea placeholders. Front end 1.48 keeps previews and labels elsewhere, so there the
# runs and screenshots happen but the geometry assertions are skipped, visibly, until ported.
LAYOUT_PROBES_UNTIL = (1, 40)
PROBES_NOT_PORTED = "layout probes not yet ported to front end >= 1.40"


def open_template(browser, name: str) -> None:
    """Fetch the template as the template browser does and load it (its saved view included)."""
    browser.close_dialogs()
    browser.page.evaluate(
        """async ([pack, name]) => {
            const wf = await (await fetch(`/api/workflow_templates/${pack}/${name}.json`)).json();
            await app.loadGraphData(wf, true, true, name);
        }""",
        [PACK, name],
    )
    browser.page.wait_for_timeout(1500)


def run_on_tiny_model(browser, live_server, name: str) -> dict:
    """Queue the template's tiny twin with the page's client id: the canvas receives the outputs
    of its own nodes (the ids are the same) exactly as after a click on Run."""
    before = set(live_server.get("/history"))
    client_id = browser.page.evaluate("async () => (await import('/scripts/api.js')).api.clientId")
    status, body = live_server.post("/prompt", {"prompt": tiny_prompt(name), "client_id": client_id})
    assert status == 200, body
    deadline, entry = time.time() + 600, None
    while time.time() < deadline:
        entry = live_server.get("/history").get(body["prompt_id"])
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        time.sleep(1)
    assert entry and entry["status"]["status_str"] == "success", entry and entry["status"]
    assert body["prompt_id"] not in before
    # previews load and nodes grow; the pointer crosses the canvas as a user's would (the
    # classic canvas places DOM previews, e.g. animated ones, when it redraws)
    page = browser.page
    for x, y in ((700, 450), (720, 470), (700, 450)):
        page.mouse.move(x, y)
        page.evaluate("() => app.canvas.setDirty(true, true)")
        page.wait_for_timeout(800)
    page.mouse.move(25, 700)  # then off the canvas: no hover highlight or tooltip in the shots
    page.wait_for_timeout(500)
    return entry


# every node's box on screen, the image outputs' previews, and what covers each preview
GEOMETRY = """([vue, imageNodes]) => {
    const rectOf = r => ({x: r.left, y: r.top, w: r.width, h: r.height});
    const canvasEl = app.canvas.canvas;
    const view = rectOf(canvasEl.getBoundingClientRect());
    const nodes = {};
    const previews = {};
    for (const node of app.graph.nodes) {
        let box;
        if (vue) {
            const el = document.querySelector(`[data-node-id="${node.id}"]`);
            if (!el) continue;
            box = rectOf(el.getBoundingClientRect());
        } else {
            const [x, y, w, h] = node.getBounding();
            const [sx, sy] = app.canvas.ds.convertOffsetToCanvas([x, y]);
            const s = app.canvas.ds.scale, c = canvasEl.getBoundingClientRect();
            box = {x: c.left + sx, y: c.top + sy, w: w * s, h: h * s};
        }
        nodes[node.id] = {box, title: node.title, type: node.type};
        if (!imageNodes.includes(node.id)) continue;
        if (vue) {
            const imgs = [...document.querySelectorAll(`[data-node-id="${node.id}"] img`)]
                .filter(i => i.complete && i.naturalWidth);
            previews[node.id] = imgs.length ? imgs.map(i => rectOf(i.getBoundingClientRect())) : null;
        } else {
            previews[node.id] = node.imgs?.length ? [box] : null;  // drawn inside the node's own box
        }
    }
    // what the user sees at points across each preview: the canvas / the node itself, or a cover
    const covers = {};
    for (const [id, rects] of Object.entries(previews)) {
        covers[id] = [];
        for (const r of rects || []) for (const fx of [0.02, 0.5, 0.98]) for (const fy of [0.02, 0.5, 0.98]) {
            const el = document.elementFromPoint(r.x + fx * r.w, r.y + fy * r.h);
            if (!el) continue;
            const owner = el.closest('[data-node-id]');
            // classic: the canvas, or a DOM preview of the node itself (animated images)
            const node = app.graph.getNodeById(Number(id));
            const own = (node?.widgets ?? []).some(w => w.element && w.element.contains(el));
            const ok = vue ? owner && owner.dataset.nodeId === String(id) : el === canvasEl || own;
            if (!ok) covers[id].push((owner ? `node ${owner.dataset.nodeId}` : '')
                                     + ` <${el.tagName.toLowerCase()} class="${el.className}">`);
        }
    }
    const box = t => { const el = [...document.querySelectorAll(`textarea[placeholder="${t}"]`)]
                                      .find(e => e.offsetParent);
                       return el ? el.getBoundingClientRect().height : null; };
    return {view, nodes, previews, covers, window: [innerWidth, innerHeight], scale: app.canvas.ds.scale,
            story_box: box('story'), negative_box: box('negative')};
}"""


def _overlap(a, b) -> bool:
    return (
        a["x"] < b["x"] + b["w"] - 1
        and b["x"] < a["x"] + a["w"] - 1
        and a["y"] < b["y"] + b["h"] - 1
        and b["y"] < a["y"] + a["h"] - 1
    )


def _inside(r, view) -> bool:
    return (
        r["x"] >= view["x"] - 1
        and r["y"] >= view["y"] - 1
        and r["x"] + r["w"] <= view["x"] + view["w"] + 1
        and r["y"] + r["h"] <= view["y"] + view["h"] + 1
    )


@pytest.mark.parametrize("name", ORDER)
def test_template_previews_are_in_view_and_uncovered_after_a_run(canvas, live_server, name):
    open_template(canvas, name)
    entry = run_on_tiny_model(canvas, live_server, name)
    image_nodes = sorted(int(k) for k, out in entry["outputs"].items() if out.get("images"))
    assert image_nodes, f"{name} produced no image output"
    geo = canvas.page.evaluate(GEOMETRY, [canvas.renderer == "nodes2", image_nodes])
    shot = canvas.screenshot(name)
    print(f"[{canvas.renderer}] {name}: " + json.dumps({k: v for k, v in geo.items() if k != "covers"}))
    if canvas.frontend_version >= LAYOUT_PROBES_UNTIL:
        pytest.skip(PROBES_NOT_PORTED + f" (screenshot: {shot})")
    problems = []
    for nid in image_nodes:
        title = geo["nodes"][str(nid)]["title"]
        rects = geo["previews"].get(str(nid))
        if not rects:
            problems.append(f"{title}: no preview shown")
            continue
        box = geo["nodes"][str(nid)]["box"]
        for r in rects:
            if not _inside(r, geo["view"]):
                problems.append(f"{title}: preview {r} not fully in view {geo['view']}")
        for other, info in geo["nodes"].items():
            if other != str(nid) and _overlap(box, info["box"]):
                problems.append(f"{title}: overlaps {info['title']!r}")
        if geo["covers"][str(nid)]:
            problems.append(f"{title}: preview covered by {sorted(set(geo['covers'][str(nid)]))}")
    # the note covers no node; the story box is the big one
    for nid, info in geo["nodes"].items():
        if info["type"] == "MarkdownNote":
            problems += [
                f"the note overlaps {o['title']!r}"
                for k, o in geo["nodes"].items()
                if k != nid and _overlap(info["box"], o["box"])
            ]
    if not (geo["story_box"] and geo["negative_box"] and geo["story_box"] >= 2 * geo["negative_box"]):
        problems.append(
            f"story box {geo['story_box']} px is not at least twice the negative box {geo['negative_box']} px"
        )
    assert not problems, f"{name} ({canvas.renderer}, see {shot}):\n  " + "\n  ".join(problems)


def test_keep_rate_widgets_show_distinct_whole_labels(canvas):
    """The keep-rate widgets read 'keep 1/8' ... 'keep 1/64', 'keep double', 'keep single'
    (locales/en/nodeDefs.json), whole in both renderers; the saved input names are unchanged."""
    open_template(canvas, "one_character_story")
    got = canvas.page.evaluate(
        """(vue) => {
        const node = app.graph.nodes.find(n => n.type === 'StoryDiffConsistentSelfAttention');
        const widgets = node.widgets.filter(w => w.name.startsWith('keep_rate')).map(w => [w.name, w.label]);
        if (!vue) return {widgets, shown: null};
        const el = document.querySelector(`[data-node-id="${node.id}"]`);
        const shown = [...el.querySelectorAll('p')].filter(p => /^keep /.test(p.textContent.trim()))
            .map(p => [p.textContent.trim(), p.scrollWidth <= p.clientWidth + 1]);
        return {widgets, shown};
    }""",
        canvas.renderer == "nodes2",
    )
    expected = [
        ["keep_rate_1_8", "keep 1/8"],
        ["keep_rate_1_16", "keep 1/16"],
        ["keep_rate_1_32", "keep 1/32"],
        ["keep_rate_1_64", "keep 1/64"],
        ["keep_rate_double", "keep double"],
        ["keep_rate_single", "keep single"],
    ]
    assert got["widgets"] == expected, got
    if got["shown"] is not None and canvas.frontend_version >= LAYOUT_PROBES_UNTIL:
        pytest.skip(PROBES_NOT_PORTED + " (the labels' names above are checked)")
    if got["shown"] is not None:
        assert got["shown"] == [[label, True] for _, label in expected], f"truncated labels: {got['shown']}"


CONTRAST = """(vue) => {
    const note = app.graph.nodes.find(n => n.type === 'MarkdownNote');
    const root = vue ? document.querySelector(`[data-node-id="${note.id}"]`) : note.widgets[0].element;
    const parse = c => { const m = c.match(/[\\d.]+/g).map(Number);
                         return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
    const hex = h => { h = h.replace('#', ''); if (h.length === 3) h = [...h].map(c => c + c).join('');
                       return [0, 2, 4].map(i => parseInt(h.slice(i, i + 2), 16)).concat([1]); };
    const over = (top, base) => [0, 1, 2].map(i => top[i] * top[3] + base[i] * (1 - top[3])).concat([1]);
    const lum = c => { const [r, g, b] = c.slice(0, 3).map(v => {
                           v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
                       return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p);
                              return (x + 0.05) / (y + 0.05); };
    const out = [];
    for (const el of root.querySelectorAll('*')) {
        const own = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim());
        if (!own || !el.offsetParent) continue;
        const layers = [];
        for (let e = el; e && e !== root.parentElement; e = e.parentElement)
            layers.push(parse(getComputedStyle(e).backgroundColor));
        let bg = hex(note.bgcolor || '#353535');
        for (const layer of layers.reverse()) bg = over(layer, bg);
        const fg = over(parse(getComputedStyle(el).color), bg);
        out.push([el.tagName.toLowerCase(), el.textContent.trim().slice(0, 30),
                  Math.round(ratio(fg, bg) * 100) / 100]);
    }
    return out;
}"""


@pytest.mark.parametrize("name", ["one_character_story", "two_characters_isolated"])
def test_note_text_is_readable(canvas, name):
    """Every piece of text in a template's note (inline code included) reads against the note's
    colour: WCAG contrast at least 4.5."""
    open_template(canvas, name)
    texts = canvas.page.evaluate(CONTRAST, canvas.renderer == "nodes2")
    assert len(texts) > 5, texts
    poor = [t for t in texts if t[2] < 4.5]
    assert not poor, f"{name} ({canvas.renderer}): text with poor contrast {poor}"


def test_browser_parser_reports_a_missing_bracket_at_its_own_line(canvas):
    """The live feedback (web/js/story_syntax.js) flags a missing ']' at the same line as the
    server's parser (story/syntax.py), not as an unknown tag on the next line."""
    from pack_loader import pure

    syntax = pure("story.syntax")
    stories = {
        "[Bob: a man\n[Bob] wakes up\n[Bob] sleeps": 1,
        "[Bob]: a man\n[Bob walks to work #Monday\n[Bob] sleeps": 2,
    }
    for story, line in stories.items():
        with pytest.raises(syntax.StorySyntaxError, match=f"^line {line}: .*closing ']'"):
            syntax.parse_story(story)
        problems = canvas.page.evaluate(
            """async (s) => (await import('/extensions/comfyui-storydiffusion/js/story_syntax.js'))
                .readStory(s).problems""",
            story,
        )
        assert problems and problems[0].startswith(f"line {line}: ") and "closing ']'" in problems[0], (
            problems
        )
