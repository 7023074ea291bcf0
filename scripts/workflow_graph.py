"""Pure conversion of an API-format prompt into a front-end (UI-format, version 0.4) workflow.

Only the node definitions of /object_info are needed: they give each node's widget order
(required then optional inputs that are INT/FLOAT/STRING/BOOLEAN/combo, unless forceInput),
its output types and names, and which widgets get a "control after generate" companion
(control_after_generate, or an INT named seed / noise_seed, as the front end decides).
"""

from __future__ import annotations

import copy
from collections import defaultdict

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
PACK_ID = "comfyui-storydiffusion"
TEST_ONLY_PREFIX = "StoryTestTiny"
# core loaders a test-only node may stand for (chosen by identical output types) and the model
# file name suggested to users until they pick their own
CORE_LOADERS = {
    "CheckpointLoaderSimple": {"sdxl": "sd_xl_base_1.0.safetensors", "sd15": "v1-5-pruned-emaonly.safetensors",
                               "flux": "flux1-dev-fp8.safetensors", "": "sd_xl_base_1.0.safetensors"},
    "ImageOnlyCheckpointLoader": {"": "svd_xt.safetensors"},
    "CLIPVisionLoader": {"": "clip_vision_h.safetensors"},
}
NODE_W, MAX_W, GAP_X, GAP_Y, TOP = 330, 560, 60, 40, 60
EXTRA_HEIGHT = {"StoryDiffPrompt": 120}  # the live-feedback box its web extension adds
VIEW_WIDTH, MIN_SCALE = 1300, 0.65


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
        raise ValueError(f"input {name!r}: control_after_generate on a {kind} widget is not supported by this converter")
    if flag is not None:
        return bool(flag)
    return kind == "INT" and name in SEED_NAMES


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


REAL_SIZE = {"sdxl": 1024, "sd15": 512, "flux": 1024}  # latent size for a real checkpoint of the family
REAL_STEPS = 30


def for_users(api: dict, object_info: dict) -> dict:
    """The workflow as a user should get it: test-only loaders swapped for core ones, and image
    size and sampler steps raised from the tiny-model test values to what a real SD1.5 / SDXL
    checkpoint needs (as scripts/run_story.py does with CKPT)."""
    families = {str(n["inputs"].get("family")) for n in api.values() if n["class_type"].startswith(TEST_ONLY_PREFIX)}
    out = swap_test_only_nodes(api, object_info)
    size = next((REAL_SIZE[f] for f in ("sdxl", "sd15", "flux") if f in families), None)
    for node in out.values():
        inputs = node["inputs"]
        if size and node["class_type"] in ("EmptyLatentImage", "EmptySD3LatentImage"):
            inputs.update({k: size for k in ("width", "height") if not _is_link(inputs.get(k))})
        if families and node["class_type"] in ("KSampler", "KSamplerAdvanced") and not _is_link(inputs.get("steps")):
            inputs["steps"] = max(int(inputs.get("steps", 0)), REAL_STEPS)
    return out


def swap_test_only_nodes(api: dict, object_info: dict) -> dict:
    """Replace StoryTestTiny* nodes by the core loader with the same output types."""
    api = copy.deepcopy(api)
    out = {}
    for nid, node in api.items():
        ct = node["class_type"]
        if ct.startswith(TEST_ONLY_PREFIX):
            outputs = list(object_info[ct]["output"])
            loader = next((c for c in CORE_LOADERS if c in object_info and list(object_info[c]["output"]) == outputs), None)
            if loader is None:
                raise ValueError(f"node {nid}: no core loader has the outputs {outputs} of test-only {ct}; add one to CORE_LOADERS")
            file_input = next(iter(object_info[loader]["input"]["required"]))
            names = CORE_LOADERS[loader]
            family = str(node["inputs"].get("family", ""))
            node = {"class_type": loader, "inputs": {file_input: names.get(family, names[""])},
                    "_meta": {"title": "Load Checkpoint" if loader == "CheckpointLoaderSimple" else object_info[loader]["display_name"]}}
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
    inputs, widgets, multiline, sockets, label_chars = [], [], 0, 0, [len(title) + 2]  # the front end widens a node to its title
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
                    inputs.append({"name": name, "type": kind, "widget": {"name": name}, "link": None, "_src": value})
            else:
                sockets += 1  # the front end shows every socket input, linked or not
                if section == "required" or linked:
                    inputs.append({"name": name, "type": kind, "link": None, "_src": value if linked else None})
    outputs = spec.get("output_name") or spec["output"]
    rows = max(sockets + sum("widget" in i for i in inputs), len(outputs))
    label_chars.append(max((len(n) for n in spec["input"].get("required", {})), default=0) + max((len(str(o)) for o in outputs), default=0) + 6)
    width = min(MAX_W, max(400 if multiline else NODE_W, 7 * max(label_chars) + 60))
    height = 46 + 22 * rows + 24 * len(widgets) + 110 * multiline
    return {"inputs": inputs, "widgets": widgets, "width": width, "height": height}


def default_note(api: dict, object_info: dict) -> str:
    chain = " → ".join(object_info[n["class_type"]]["display_name"] for _, n in sorted(api.items(), key=lambda kv: _depths(api)[kv[0]]))
    return ("## Example workflow\n\n" + chain + "\n\n"
            "Pick your SD1.5 / SDXL checkpoint in **Load Checkpoint**, edit the story, then **Queue**. "
            "Help for each StoryDiffusion node: select it and open the node library's info (?) panel.")


def convert(api: dict, object_info: dict, note: str | None = None, workflow_id: str = "") -> dict:
    """The UI-format workflow for an API-format prompt (see the module docstring)."""
    api = for_users(api, object_info)
    missing = sorted({n["class_type"] for n in api.values()} - set(object_info))
    if missing:
        raise ValueError(f"/object_info has no definition for {missing}; is the pack that provides them loaded?")
    depth = _depths(api)
    if all(k.isdigit() and int(k) > 0 for k in api):  # keep the API ids: the canvas queues the same prompt
        ids = {nid: int(nid) for nid in api}
    else:
        ids = {nid: i + 1 for i, nid in enumerate(sorted(api, key=lambda k: (int(k) if k.isdigit() else 10**9, k)))}
    order = sorted(api, key=lambda k: (depth[k], ids[k]))
    links, nodes = [], {}
    out_links = defaultdict(list)
    bodies = {nid: _node_body(api[nid], object_info[api[nid]["class_type"]]) for nid in api}
    widths = defaultdict(lambda: NODE_W)
    for nid, body in bodies.items():
        widths[depth[nid]] = max(widths[depth[nid]], body["width"])
    column_x = {0: 40}
    for d in range(1, max(depth.values()) + 1):
        column_x[d] = column_x[d - 1] + widths[d - 1] + GAP_X
    column_y = defaultdict(lambda: TOP)
    column_y[0] = TOP + 300  # the note sits on top of the first column
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
        height = body["height"] + EXTRA_HEIGHT.get(node["class_type"], 0)
        d = depth[nid]
        x, y = column_x[d], column_y[d]
        column_y[d] = y + height + GAP_Y
        entry = {
            "id": ids[nid], "type": node["class_type"], "pos": [x, y],
            "size": [body["width"], height], "flags": {}, "order": index, "mode": 0,
            "inputs": inputs, "outputs": [], "properties": {
                "cnr_id": PACK_ID if spec.get("python_module", "").startswith("custom_nodes") else "comfy-core",
                "Node name for S&R": node["class_type"]},
            "widgets_values": body["widgets"],
        }
        entry["title"] = node.get("_meta", {}).get("title") or spec["display_name"]
        nodes[nid] = entry
    for nid in order:
        spec = object_info[api[nid]["class_type"]]
        names = spec.get("output_name") or spec["output"]
        nodes[nid]["outputs"] = [{"name": names[i], "type": t, "links": out_links.get((nid, i), []), "slot_index": i}
                                 for i, t in enumerate(spec["output"])]
    note_id = max(ids.values()) + 1
    note_node = {"id": note_id, "type": "MarkdownNote", "pos": [40, TOP], "size": [NODE_W, 260], "flags": {},
                 "order": len(order), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                 "widgets_values": [note or default_note(api, object_info)], "color": "#432", "bgcolor": "#653"}
    right = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    # as much of the graph in view as a laptop screen shows while node text stays drawn (the canvas
    # stops drawing text below ~0.6 zoom)
    scale = round(max(MIN_SCALE, min(1.0, VIEW_WIDTH / (right + 40))), 2)
    return {
        "id": workflow_id, "revision": 0, "last_node_id": note_id, "last_link_id": len(links),
        "nodes": [nodes[n] for n in order] + [note_node], "links": links, "groups": [], "config": {},
        # the view opens with the whole graph in sight, clear of the toolbars
        "extra": {"ds": {"scale": scale, "offset": [round(60 / scale), round(170 / scale)]}}, "version": 0.4,
    }


def graph_meaning(ui: dict) -> dict:
    """What a UI-format workflow means, free of any host's presentation: each node's type and
    widget values by node id, and each link as (source id, output slot, target id, input name,
    type). Positions, sizes, titles, unlinked output sockets and display names are left out:
    they follow the host's /object_info (a host that adds an output socket or renames a node
    draws the same graph differently)."""
    nodes = {n["id"]: {"type": n["type"], "widgets_values": n.get("widgets_values", [])} for n in ui["nodes"]}
    input_names = {(n["id"], slot): inp["name"] for n in ui["nodes"] for slot, inp in enumerate(n.get("inputs", []))}
    links = sorted((src, src_slot, dst, input_names.get((dst, dst_slot), f"#{dst_slot}"), kind)
                   for _, src, src_slot, dst, dst_slot, kind in ui["links"])
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
