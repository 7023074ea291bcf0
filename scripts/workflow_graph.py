"""Pure conversion of an API-format prompt into a front-end (UI-format, version 0.4) workflow.

Only the node definitions of /object_info are needed: they give each node's widget order
(required then optional inputs that are INT/FLOAT/STRING/BOOLEAN/combo, unless forceInput),
its output types and names, and which widgets get a "control after generate" companion
(control_after_generate, or an INT named seed / noise_seed, as the front end decides).
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
PACK_ID = "comfyui-storydiffusion"
TEST_ONLY_PREFIX = "StoryTestTiny"
# core loaders a test-only node may stand for (chosen by identical output types) and the model
# file name suggested to users until they pick their own
CORE_LOADERS = {
    "CheckpointLoaderSimple": {
        "sdxl": "sd_xl_base_1.0.safetensors",
        "sd15": "v1-5-pruned-emaonly.safetensors",
        "flux": "flux1-dev-fp8.safetensors",
        "": "sd_xl_base_1.0.safetensors",
    },
    "ImageOnlyCheckpointLoader": {"": "svd_xt.safetensors"},
    "CLIPVisionLoader": {"": "clip_vision_h.safetensors"},
}
NODE_W, MAX_W, GAP_X, GAP_Y, TOP, LEFT = 330, 560, 60, 40, 60, 40
EXTRA_HEIGHT = {"StoryDiffPrompt": 120}  # the live-feedback box its web extension adds
# a node that shows images after a run (Save Image, Preview Image, Save Animated WEBP) grows to
# about 270 to draw them on the classic canvas, and to about its width plus its header (then x1.2)
# with Nodes 2.0: that room is reserved so a preview never lands on the node below
IMAGE_OUTPUT_HEIGHT = (1.1, 90)  # x node width (square images and a legend band) + header and widgets
# The view a template opens with, on a 1400x900 browser window: the graph's origin on screen (px,
# right of the side bar, under the top bars), the canvas size, the bottom-right corner the minimap
# and the canvas controls cover, and the least zoom at which node text is still drawn (the
# front end's font-size level of detail, 8 px).
ORIGIN_PX, WINDOW_PX = (60, 170), (1400, 900)
CORNER_PX = (1130, 625)  # covered: x beyond and y below this
MARGIN_PX = 12
MIN_SCALE = 0.6
NOTE_W = 400


def _spec_type(spec) -> tuple[str, dict]:
    kind = spec[0]
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return ("COMBO" if isinstance(kind, list) else kind), opts


def _is_widget(spec) -> bool:
    kind, opts = _spec_type(spec)
    return kind in WIDGET_TYPES and not opts.get("forceInput")


def _default(spec):
    kind, opts = _spec_type(spec)
    if "default" in opts:
        return opts["default"]
    if kind == "COMBO":
        options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def _has_control(name: str, spec) -> bool:
    kind, opts = _spec_type(spec)
    flag = opts.get("control_after_generate")
    if flag and kind != "INT":
        # the front end adds a filter-list widget too for combos; not modelled here
        raise ValueError(
            f"input {name!r}: control_after_generate on a {kind} widget is not supported by this converter"
        )
    if flag is not None:
        return bool(flag)
    return kind == "INT" and name in SEED_NAMES


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


REAL_SIZE = {"sdxl": 1024, "sd15": 512, "flux": 1024}  # latent size for a real checkpoint of the family
REAL_STEPS = 30
# inputs whose tiny-model test value is raised to at least the node's own default for users
# (e.g. Story Transition (SVD) frames: 14, what SVD was trained on)
AT_LEAST_DEFAULT = ("frames",)


def is_sampling_node(spec: dict) -> bool:
    """A node that samples like a KSampler (core or the pack's, e.g. Story Attention Masks): it
    takes steps, a sampler and a latent."""
    inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
    return "steps" in inputs and "sampler_name" in inputs and ("latent_image" in inputs or "latent" in inputs)


def for_users(api: dict, object_info: dict) -> dict:
    """The workflow as a user should get it: test-only loaders swapped for core ones, and image
    size, sampling steps (every sampling node: KSampler, KSamplerAdvanced, the pack's samplers)
    and SVD frames raised from the tiny-model test values to what a real checkpoint needs (as
    scripts/run_story.py does with CKPT)."""
    families = {
        str(n["inputs"].get("family")) for n in api.values() if n["class_type"].startswith(TEST_ONLY_PREFIX)
    }
    out = swap_test_only_nodes(api, object_info)
    size = next((REAL_SIZE[f] for f in ("sdxl", "sd15", "flux") if f in families), None)
    for node in out.values():
        inputs, spec = node["inputs"], object_info.get(node["class_type"])
        if size and node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update({k: size for k in ("width", "height") if not _is_link(inputs.get(k))})
        if not families or spec is None:
            continue
        if is_sampling_node(spec) and not _is_link(inputs.get("steps")):
            inputs["steps"] = max(int(inputs.get("steps", 0)), REAL_STEPS)
        required = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
        for name in AT_LEAST_DEFAULT:
            if name in required and name in inputs and not _is_link(inputs[name]):
                inputs[name] = max(inputs[name], _default(required[name]))
    return out


def swap_test_only_nodes(api: dict, object_info: dict) -> dict:
    """Replace StoryTestTiny* nodes by the core loader with the same output types."""
    api = copy.deepcopy(api)
    out = {}
    for nid, node in api.items():
        ct = node["class_type"]
        if ct.startswith(TEST_ONLY_PREFIX):
            outputs = list(object_info[ct]["output"])
            loader = next(
                (c for c in CORE_LOADERS if c in object_info and list(object_info[c]["output"]) == outputs),
                None,
            )
            if loader is None:
                raise ValueError(
                    f"node {nid}: no core loader has the outputs {outputs} of test-only {ct}; add one to "
                    f"CORE_LOADERS"
                )
            file_input = next(iter(object_info[loader]["input"]["required"]))
            names = CORE_LOADERS[loader]
            family = str(node["inputs"].get("family", ""))
            node = {
                "class_type": loader,
                "inputs": {file_input: names.get(family, names[""])},
                "_meta": {
                    "title": "Load Checkpoint"
                    if loader == "CheckpointLoaderSimple"
                    else object_info[loader]["display_name"]
                },
            }
        out[nid] = node
    return out


def _depths(api: dict) -> dict:
    depth: dict = {}

    def visit(nid, seen=()):
        if nid in depth:
            return depth[nid]
        if nid in seen:
            raise ValueError(f"the workflow has a cycle through node {nid}")
        parents = [v[0] for v in api[nid]["inputs"].values() if _is_link(v)]
        depth[nid] = 1 + max((visit(p, seen + (nid,)) for p in parents), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


def _node_body(node: dict, spec: dict) -> dict:
    """Inputs (sockets; linked ones carry their source in _src), widget values in the front end's
    order, and a size the front end will not need to grow (so columns never overlap)."""
    title = node.get("_meta", {}).get("title") or spec["display_name"]
    inputs, widgets, multiline, sockets, label_chars = (
        [],
        [],
        0,
        0,
        [len(title) + 2],
    )  # the front end widens a node to its title
    for section in ("required", "optional"):
        for name, ispec in spec["input"].get(section, {}).items():
            value = node["inputs"].get(name)
            linked = _is_link(value)
            kind, opts = _spec_type(ispec)
            if _is_widget(ispec):
                shown = _default(ispec) if linked or name not in node["inputs"] else value
                widgets.append(shown)
                if _has_control(name, ispec):
                    widgets.append("fixed")  # keep the example reproducible
                multiline += bool(opts.get("multiline"))
                if not opts.get("multiline"):
                    label_chars.append(len(name) + len(str(shown)) + 4)
                if linked:
                    inputs.append(
                        {"name": name, "type": kind, "widget": {"name": name}, "link": None, "_src": value}
                    )
            else:
                sockets += 1  # the front end shows every socket input, linked or not
                if section == "required" or linked:
                    inputs.append(
                        {"name": name, "type": kind, "link": None, "_src": value if linked else None}
                    )
    outputs = spec.get("output_name") or spec["output"]
    rows = max(sockets + sum("widget" in i for i in inputs), len(outputs))
    label_chars.append(
        max((len(n) for n in spec["input"].get("required", {})), default=0)
        + max((len(str(o)) for o in outputs), default=0)
        + 6
    )
    width = min(MAX_W, max(400 if multiline else NODE_W, 7 * max(label_chars) + 60))
    height = 46 + 22 * rows + 24 * len(widgets) + 110 * multiline
    return {"inputs": inputs, "widgets": widgets, "width": width, "height": height}


NOTE = "note"  # the canvas note's key in the layout


def readable_note(markdown: str) -> str:
    """The note's Markdown with `inline code` as bold text: the front end draws inline code in
    blue on a translucent blue, which cannot be read on a note's coloured background (in both
    node renderers). Markdown characters inside are escaped so they show as typed."""

    def bold(match: re.Match) -> str:
        return "**" + re.sub(r"([\\`*_\[\]<>#])", r"\\\1", match.group(1)) + "**"

    return re.sub(r"`([^`\n]+)`", bold, markdown)


def is_image_output(spec: dict) -> bool:
    """An output node that shows its IMAGE input on the canvas after a run."""
    inputs = {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}
    return bool(spec.get("output_node")) and any(_spec_type(i)[0] == "IMAGE" for i in inputs.values())


def node_height(node: dict, spec: dict, body: dict) -> int:
    height = body["height"] + EXTRA_HEIGHT.get(node["class_type"], 0)
    if is_image_output(spec):
        per_width, header = IMAGE_OUTPUT_HEIGHT
        return max(height, int(per_width * body["width"]) + header)
    return height


def note_height(text: str, width: int) -> int:
    """The height a Markdown note needs to show all of its text (about 7.5 px per character,
    20 px per line, headings taller) in both node renderers."""
    per_line = max(20, int((width - 40) / 7.5))
    lines = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            lines += 2.2
        elif not line.strip():
            lines += 0.6
        else:
            lines += -(-len(line) // per_line)
    return int(60 + 20 * lines)


def flow_layout(order: list, sizes: dict, column_height: float) -> dict:
    """Positions: nodes in execution order fill a column top to bottom (up to column_height), then
    the next column to the right. Every link runs down its column or to a column on the right."""
    columns: list[list] = [[]]
    used = 0
    for key in order:
        h = sizes[key][1]
        if columns[-1] and used + GAP_Y + h > column_height:
            columns.append([])
            used = 0
        used += (GAP_Y if columns[-1] else 0) + h
        columns[-1].append(key)
    pos, x = {}, LEFT
    for column in columns:
        y = TOP
        width = max(sizes[k][0] for k in column)
        for key in column:
            pos[key] = [x, y]
            y += sizes[key][1] + GAP_Y
        x += width + GAP_X
    return pos


TITLE_H = 30  # the title bar sits above a node's pos


def view_scale(pos: dict, sizes: dict) -> float | None:
    """The largest zoom (≤ 1, ≥ MIN_SCALE, in 0.01 steps) at which every node lies on screen and
    clear of the covered bottom-right corner; None when there is none."""
    for step in range(100, int(MIN_SCALE * 100) - 1, -1):
        s = step / 100
        ok = True
        for key, (x, y) in pos.items():
            w, h = sizes[key]
            right, bottom = ORIGIN_PX[0] + s * (x + w), ORIGIN_PX[1] + s * (y + h)
            if (
                right > WINDOW_PX[0] - MARGIN_PX
                or bottom > WINDOW_PX[1] - MARGIN_PX
                or (right > CORNER_PX[0] - MARGIN_PX and bottom > CORNER_PX[1] - MARGIN_PX)
            ):
                ok = False
                break
        if ok:
            return s
    return None


def fit_layout(order: list, sizes: dict) -> tuple[dict, float]:
    """The flow layout whose column height lets the whole graph open in view at the largest zoom
    (previews included, the covered corner left free): tried for column heights in 20-unit steps."""
    best = None
    tallest = max(h for _, h in sizes.values())
    for column_height in range(int(tallest), 2400, 20):
        pos = flow_layout(order, sizes, column_height)
        scale = view_scale(pos, sizes)
        if scale is not None and (best is None or scale > best[1]):
            best = (pos, scale)
    if best is None:  # too big for one screen: the readable zoom, the graph continues off screen
        return flow_layout(order, sizes, (WINDOW_PX[1] - ORIGIN_PX[1]) / MIN_SCALE - TOP), MIN_SCALE
    return best


def default_note(api: dict, object_info: dict) -> str:
    chain = " → ".join(
        object_info[n["class_type"]]["display_name"]
        for _, n in sorted(api.items(), key=lambda kv: _depths(api)[kv[0]])
    )
    return (
        "## Example workflow\n\n" + chain + "\n\n"
        "Pick your SD1.5 / SDXL checkpoint in **Load Checkpoint**, edit the story, then **Queue**. "
        "Help for each StoryDiffusion node: select it and open the node library's info (?) panel."
    )


def convert(api: dict, object_info: dict, note: str | None = None, workflow_id: str = "") -> dict:
    """The UI-format workflow for an API-format prompt (see the module docstring)."""
    api = for_users(api, object_info)
    missing = sorted({n["class_type"] for n in api.values()} - set(object_info))
    if missing:
        raise ValueError(
            f"/object_info has no definition for {missing}; is the pack that provides them loaded?"
        )
    depth = _depths(api)
    if all(k.isdigit() and int(k) > 0 for k in api):  # keep the API ids: the canvas queues the same prompt
        ids = {nid: int(nid) for nid in api}
    else:
        ids = {
            nid: i + 1
            for i, nid in enumerate(sorted(api, key=lambda k: (int(k) if k.isdigit() else 10**9, k)))
        }
    order = sorted(api, key=lambda k: (depth[k], ids[k]))
    links, nodes = [], {}
    out_links = defaultdict(list)
    bodies = {nid: _node_body(api[nid], object_info[api[nid]["class_type"]]) for nid in api}
    note_text = readable_note(note or default_note(api, object_info))
    sizes = {
        nid: [bodies[nid]["width"], node_height(api[nid], object_info[api[nid]["class_type"]], bodies[nid])]
        for nid in order
    }
    sizes[NOTE] = [NOTE_W, note_height(note_text, NOTE_W)]
    pos, scale = fit_layout([NOTE] + order, sizes)
    for index, nid in enumerate(order):
        node, spec, body = api[nid], object_info[api[nid]["class_type"]], bodies[nid]
        inputs = body["inputs"]
        for slot, entry in enumerate(inputs):
            src = entry.pop("_src")
            if src is not None:
                link_id = len(links) + 1
                src_type = object_info[api[src[0]]["class_type"]]["output"][src[1]]
                links.append([link_id, ids[src[0]], src[1], ids[nid], slot, src_type])
                out_links[(src[0], src[1])].append(link_id)
                entry["link"] = link_id
        entry = {
            "id": ids[nid],
            "type": node["class_type"],
            "pos": pos[nid],
            "size": sizes[nid],
            "flags": {},
            "order": index,
            "mode": 0,
            "inputs": inputs,
            "outputs": [],
            "properties": {
                "cnr_id": PACK_ID
                if spec.get("python_module", "").startswith("custom_nodes")
                else "comfy-core",
                "Node name for S&R": node["class_type"],
            },
            "widgets_values": body["widgets"],
        }
        entry["title"] = node.get("_meta", {}).get("title") or spec["display_name"]
        nodes[nid] = entry
    for nid in order:
        spec = object_info[api[nid]["class_type"]]
        names = spec.get("output_name") or spec["output"]
        nodes[nid]["outputs"] = [
            {"name": names[i], "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
            for i, t in enumerate(spec["output"])
        ]
    note_id = max(ids.values()) + 1
    note_node = {
        "id": note_id,
        "type": "MarkdownNote",
        "pos": pos[NOTE],
        "size": sizes[NOTE],
        "flags": {},
        "order": len(order),
        "mode": 0,
        "inputs": [],
        "outputs": [],
        "properties": {},
        "widgets_values": [note_text],
        "color": "#432",
        "bgcolor": "#653",
    }
    return {
        "id": workflow_id,
        "revision": 0,
        "last_node_id": note_id,
        "last_link_id": len(links),
        "nodes": [nodes[n] for n in order] + [note_node],
        "links": links,
        "groups": [],
        "config": {},
        # the view opens with the whole graph in sight, clear of the toolbars
        "extra": {
            "ds": {"scale": scale, "offset": [round(ORIGIN_PX[0] / scale), round(ORIGIN_PX[1] / scale)]},
            # web/js/template_view.js fits the view to the window (and to Nodes 2.0) on load
            "storydiffusion": {"template": True},
        },
        "version": 0.4,
    }


def graph_meaning(ui: dict) -> dict:
    """What a UI-format workflow means, free of any host's presentation: each node's type and
    widget values by node id, and each link as (source id, output slot, target id, input name,
    type). Positions, sizes, titles, unlinked output sockets and display names are left out:
    they follow the host's /object_info (a host that adds an output socket or renames a node
    draws the same graph differently)."""
    nodes = {n["id"]: {"type": n["type"], "widgets_values": n.get("widgets_values", [])} for n in ui["nodes"]}
    input_names = {
        (n["id"], slot): inp["name"] for n in ui["nodes"] for slot, inp in enumerate(n.get("inputs", []))
    }
    links = sorted(
        (src, src_slot, dst, input_names.get((dst, dst_slot), f"#{dst_slot}"), kind)
        for _, src, src_slot, dst, dst_slot, kind in ui["links"]
    )
    return {"nodes": nodes, "links": links}


def meaning_differences(expected: dict, actual: dict) -> list[str]:
    """Readable differences between two graph_meaning() results (empty when they agree)."""
    out = []
    a, b = expected["nodes"], actual["nodes"]
    for nid in sorted(set(a) | set(b)):
        if nid not in b:
            out.append(f"node {nid} ({a[nid]['type']}) is missing")
        elif nid not in a:
            out.append(f"node {nid} ({b[nid]['type']}) is extra")
        elif a[nid] != b[nid]:
            out.append(f"node {nid}: expected {a[nid]}, found {b[nid]}")
    want, got = set(map(tuple, expected["links"])), set(map(tuple, actual["links"]))
    out += [f"link {link} is missing" for link in sorted(want - got)]
    out += [f"link {link} is extra" for link in sorted(got - want)]
    return out
