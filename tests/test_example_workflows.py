"""Example workflows as ComfyUI serves them: every UI-format workflow is the up-to-date twin of
its API-format workflow (the same nodes, links and widget values on any host; the same bytes on
the embedded host that generates them), listed by /workflow_templates with a thumbnail, made of
nodes the server knows with consistent links; the web extension and the help pages are served."""

import json
from pathlib import Path

import pytest

from api_to_ui import build, dump, stale_reasons  # scripts/ is on sys.path (conftest)
from workflow_graph import convert, graph_meaning, meaning_differences

ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui-storydiffusion"
TEMPLATE_HOST = "0.3.75"  # the embedded host scripts/api_to_ui.py writes the templates on
API = sorted((ROOT / "example_workflows" / "api").glob("*.json"))
FRONTEND_ONLY = {"MarkdownNote", "Note"}


@pytest.fixture(scope="module")
def object_info(live_server):
    return live_server.get("/object_info")


@pytest.mark.live
@pytest.mark.parametrize("api_path", API, ids=[p.stem for p in API])
def test_ui_workflow_means_the_same_graph_as_its_api_twin(api_path, object_info):
    """Nodes, links and widget values, on whichever host runs the tests."""
    ui_path = ROOT / "example_workflows" / f"{api_path.stem}.json"
    reasons = stale_reasons(ui_path, build(api_path, object_info))
    assert not reasons, (
        f"{ui_path.name} is out of date with api/{api_path.name}: "
        "run .venv/bin/python scripts/api_to_ui.py\n  " + "\n  ".join(reasons)
    )
    assert ui_path.with_suffix(".jpg").read_bytes()[:3] == b"\xff\xd8\xff"


@pytest.mark.live
@pytest.mark.parametrize("api_path", API, ids=[p.stem for p in API])
def test_ui_workflow_is_what_the_converter_writes_on_the_embedded_host(api_path, object_info, live_server):
    """Layout and titles too, where the templates are generated (they follow that host's display names)."""
    version = live_server.get("/system_stats")["system"]["comfyui_version"]
    if version != TEMPLATE_HOST:
        pytest.skip(
            f"layout follows ComfyUI {TEMPLATE_HOST}'s display names and sockets; this host is {version}"
        )
    ui_path = ROOT / "example_workflows" / f"{api_path.stem}.json"
    assert ui_path.read_text() == dump(build(api_path, object_info)), (
        f"{ui_path.name} is out of date with scripts/api_to_ui.py: run .venv/bin/python scripts/api_to_ui.py"
    )


def _tiny_ui():
    return convert(
        {
            "1": {"class_type": "Loader", "inputs": {"name": "b.ckpt"}},
            "2": {
                "class_type": "Sampler",
                "inputs": {"model": ["1", 0], "seed": 7, "steps": 3, "batch": ["1", 1]},
            },
        },
        INFO,
    )


def test_graph_meaning_ignores_presentation():
    ui = _tiny_ui()
    moved = json.loads(json.dumps(ui))
    for n in moved["nodes"]:
        n["pos"], n["size"], n["title"] = [0, 0], [10, 10], "renamed"
        n["outputs"].append(
            {"name": "new socket", "type": "IMAGE", "links": []}
        )  # a host adds an output socket
    assert meaning_differences(graph_meaning(ui), graph_meaning(moved)) == []


def test_graph_meaning_sees_a_changed_widget_link_or_node():
    ui = _tiny_ui()
    base = graph_meaning(ui)
    widget = json.loads(json.dumps(ui))
    widget["nodes"][1]["widgets_values"][0] = 8
    assert meaning_differences(base, graph_meaning(widget)) == [
        "node 2: expected {'type': 'Sampler', 'widgets_values': [7, 'fixed', 3, 1, 'hi', 'x', 3, 'fixed']}, "
        "found {'type': 'Sampler', 'widgets_values': [8, 'fixed', 3, 1, 'hi', 'x', 3, 'fixed']}"
    ]
    relinked = json.loads(json.dumps(ui))
    relinked["links"][1][2] = 0  # batch fed from MODEL's slot instead of count
    assert meaning_differences(base, graph_meaning(relinked)) == [
        "link (1, 1, 2, 'batch', 'INT') is missing",
        "link (1, 0, 2, 'batch', 'INT') is extra",
    ]
    retyped = json.loads(json.dumps(ui))
    retyped["nodes"][0]["type"] = "OtherLoader"
    assert meaning_differences(base, graph_meaning(retyped))[0].startswith(
        "node 1: expected {'type': 'Loader'"
    )


def test_check_names_the_difference_and_tells_to_regenerate(tmp_path, capsys, monkeypatch):
    import api_to_ui

    api_path = tmp_path / "api" / "tiny.json"
    api_path.parent.mkdir()
    api_path.write_text(json.dumps({"1": {"class_type": "Loader", "inputs": {"name": "b.ckpt"}}}))
    out = tmp_path / "tiny.json"
    monkeypatch.setattr(api_to_ui, "fetch_object_info", lambda server: INFO)
    assert api_to_ui.main([str(api_path), "--out", str(out)]) == 0
    assert api_to_ui.main([str(api_path), "--out", str(out), "--check"]) == 0
    api_path.write_text(json.dumps({"1": {"class_type": "Loader", "inputs": {"name": "a.ckpt"}}}))
    assert api_to_ui.main([str(api_path), "--out", str(out), "--check"]) == 1
    err = capsys.readouterr().err
    assert "run .venv/bin/python scripts/api_to_ui.py" in err and "['b.ckpt']" in err and "['a.ckpt']" in err


@pytest.mark.live
def test_templates_route_lists_exactly_the_ui_workflows(live_server):
    listed = live_server.get("/workflow_templates").get(PACK, [])
    assert sorted(listed) == sorted(p.stem for p in API)


@pytest.mark.live
@pytest.mark.parametrize("api_path", API, ids=[p.stem for p in API])
def test_ui_workflow_nodes_exist_and_links_are_consistent(api_path, object_info):
    ui = json.loads((ROOT / "example_workflows" / f"{api_path.stem}.json").read_text())
    assert ui["version"] == 0.4 and ui["last_link_id"] == len(ui["links"])
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert ui["last_node_id"] == max(nodes)
    assert any(n["type"] in FRONTEND_ONLY and n["widgets_values"][0].strip() for n in ui["nodes"]), (
        "a note on the canvas"
    )
    for n in ui["nodes"]:
        assert n["type"] in object_info or n["type"] in FRONTEND_ONLY, f"{n['type']} is unknown to ComfyUI"
        assert not n["type"].startswith("StoryTest"), "test-only nodes never reach users"
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        out = nodes[src]["outputs"][src_slot]
        assert link_id in out["links"] and out["type"] == kind
        inp = nodes[dst]["inputs"][dst_slot]
        assert inp["link"] == link_id and inp["type"] == kind, (api_path.stem, link_id)
    all_out = sorted(i for n in ui["nodes"] for o in n["outputs"] for i in o["links"])
    assert all_out == sorted(link[0] for link in ui["links"])


@pytest.mark.live
def test_web_extension_and_help_pages_are_served(live_server, object_info):
    assert f"/extensions/{PACK}/js/story_prompt_feedback.js" in live_server.get("/extensions")
    js = live_server.get_bytes(f"/extensions/{PACK}/js/story_prompt_feedback.js").decode()
    assert 'from "../../../scripts/app.js"' in js  # /extensions/<pack>/js/ -> the app shim at /scripts/
    ours = [k for k, v in object_info.items() if v.get("python_module", "").endswith(PACK)]
    for node_id in ours:
        page = live_server.get_bytes(f"/extensions/{PACK}/docs/{node_id}.md").decode()
        assert page.startswith("# ") and len(page) > 300, f"web/docs/{node_id}.md is missing or too short"


# ---- the converter on hand-made node definitions (no server) ----------------------------
INFO = {
    "Loader": {
        "input": {"required": {"name": [["a.ckpt", "b.ckpt"], {}]}},
        "output": ["MODEL", "INT"],
        "output_name": ["MODEL", "count"],
        "display_name": "Loader",
        "python_module": "nodes",
    },
    "Sampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "seed": ["INT", {"default": 0}],
                "steps": ["INT", {"default": 20}],
                "batch": ["INT", {"default": 1}],
            },
            "optional": {
                "text": ["STRING", {"multiline": True, "default": "hi"}],
                "forced": ["FLOAT", {"forceInput": True}],
                "mode": ["COMBO", {"options": ["x", "y"]}],
                "noise": ["INT", {"default": 3, "control_after_generate": True}],
            },
        },
        "output": ["LATENT"],
        "display_name": "Sampler",
        "python_module": "custom_nodes.comfyui-storydiffusion",
    },
}


def test_convert_orders_widgets_adds_seed_controls_and_links_widget_inputs():
    api = {
        "1": {"class_type": "Loader", "inputs": {"name": "b.ckpt"}},
        "2": {
            "class_type": "Sampler",
            "inputs": {"model": ["1", 0], "seed": 7, "steps": 3, "batch": ["1", 1], "mode": "y"},
        },
    }
    ui = convert(api, INFO, note="hello")
    loader, sampler, note = ui["nodes"]
    assert loader["widgets_values"] == ["b.ckpt"] and loader["properties"]["cnr_id"] == "comfy-core"
    # required then optional; a seed gets its "control after generate" ("fixed": reproducible);
    # a linked widget keeps its default value; forceInput is no widget; a missing optional takes its default
    assert sampler["widgets_values"] == [7, "fixed", 3, 1, "hi", "y", 3, "fixed"]
    assert [(i["name"], i.get("widget")) for i in sampler["inputs"]] == [
        ("model", None),
        ("batch", {"name": "batch"}),
    ]
    assert ui["links"] == [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "INT"]]
    assert loader["outputs"][1] == {"name": "count", "type": "INT", "links": [2], "slot_index": 1}
    assert sampler["pos"][0] > loader["pos"][0] + loader["size"][0]  # left to right
    assert note["type"] == "MarkdownNote" and note["widgets_values"] == ["hello"]
    assert sampler["properties"]["cnr_id"] == PACK


def test_convert_refuses_combo_seed_controls_it_cannot_model():
    info = {
        "N": {
            "input": {"required": {"m": ["COMBO", {"options": ["a"], "control_after_generate": True}]}},
            "output": [],
            "display_name": "N",
            "python_module": "nodes",
        }
    }
    with pytest.raises(ValueError, match="control_after_generate on a COMBO"):
        convert({"1": {"class_type": "N", "inputs": {"m": "a"}}}, info)


def test_convert_refuses_unknown_nodes_and_cycles():
    with pytest.raises(ValueError, match="no definition for \\['Nope'\\]"):
        convert({"1": {"class_type": "Nope", "inputs": {}}}, INFO)
    cyc = {
        "1": {"class_type": "Sampler", "inputs": {"model": ["2", 0]}},
        "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0]}},
    }
    with pytest.raises(ValueError, match="cycle"):
        convert(cyc, INFO)
