"""Example workflows as ComfyUI serves them: every UI-format workflow is the up-to-date twin of
its API-format workflow, listed by /workflow_templates with a thumbnail, made of nodes the server
knows with consistent links; the web extension and the help pages are served."""

import json
from pathlib import Path

import pytest

from api_to_ui import build, dump  # scripts/ is on sys.path (conftest)
from workflow_graph import convert

ROOT = Path(__file__).resolve().parents[1]
PACK = "comfyui-storydiffusion"
API = sorted((ROOT / "example_workflows" / "api").glob("*.json"))
FRONTEND_ONLY = {"MarkdownNote", "Note"}


@pytest.fixture(scope="module")
def object_info(live_server):
    return live_server.get("/object_info")


@pytest.mark.live
@pytest.mark.parametrize("api_path", API, ids=[p.stem for p in API])
def test_ui_workflow_is_in_sync_with_its_api_twin(api_path, object_info):
    ui_path = ROOT / "example_workflows" / f"{api_path.stem}.json"
    assert ui_path.is_file(), f"missing {ui_path.name}: run .venv/bin/python scripts/api_to_ui.py"
    assert ui_path.read_text() == dump(build(api_path, object_info)), \
        f"{ui_path.name} is out of date with api/{api_path.name}: run .venv/bin/python scripts/api_to_ui.py"
    thumb = ui_path.with_suffix(".jpg")
    assert thumb.is_file() and thumb.read_bytes()[:3] == b"\xff\xd8\xff"


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
    assert any(n["type"] in FRONTEND_ONLY and n["widgets_values"][0].strip() for n in ui["nodes"]), "a note on the canvas"
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
    "Loader": {"input": {"required": {"name": [["a.ckpt", "b.ckpt"], {}]}}, "output": ["MODEL", "INT"],
               "output_name": ["MODEL", "count"], "display_name": "Loader", "python_module": "nodes"},
    "Sampler": {"input": {"required": {"model": ["MODEL", {}], "seed": ["INT", {"default": 0}],
                                       "steps": ["INT", {"default": 20}], "batch": ["INT", {"default": 1}]},
                          "optional": {"text": ["STRING", {"multiline": True, "default": "hi"}],
                                       "forced": ["FLOAT", {"forceInput": True}],
                                       "mode": ["COMBO", {"options": ["x", "y"]}],
                                       "noise": ["INT", {"default": 3, "control_after_generate": True}]}},
                "output": ["LATENT"], "display_name": "Sampler", "python_module": "custom_nodes.comfyui-storydiffusion"},
}


def test_convert_orders_widgets_adds_seed_controls_and_links_widget_inputs():
    api = {"1": {"class_type": "Loader", "inputs": {"name": "b.ckpt"}},
           "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0], "seed": 7, "steps": 3, "batch": ["1", 1], "mode": "y"}}}
    ui = convert(api, INFO, note="hello")
    loader, sampler, note = ui["nodes"]
    assert loader["widgets_values"] == ["b.ckpt"] and loader["properties"]["cnr_id"] == "comfy-core"
    # required then optional; a seed gets its "control after generate" ("fixed": reproducible);
    # a linked widget keeps its default value; forceInput is no widget; a missing optional takes its default
    assert sampler["widgets_values"] == [7, "fixed", 3, 1, "hi", "y", 3, "fixed"]
    assert [(i["name"], i.get("widget")) for i in sampler["inputs"]] == [("model", None), ("batch", {"name": "batch"})]
    assert ui["links"] == [[1, 1, 0, 2, 0, "MODEL"], [2, 1, 1, 2, 1, "INT"]]
    assert loader["outputs"][1] == {"name": "count", "type": "INT", "links": [2], "slot_index": 1}
    assert sampler["pos"][0] > loader["pos"][0] + loader["size"][0]  # left to right
    assert note["type"] == "MarkdownNote" and note["widgets_values"] == ["hello"]
    assert sampler["properties"]["cnr_id"] == PACK


def test_convert_refuses_combo_seed_controls_it_cannot_model():
    info = {"N": {"input": {"required": {"m": ["COMBO", {"options": ["a"], "control_after_generate": True}]}},
                  "output": [], "display_name": "N", "python_module": "nodes"}}
    with pytest.raises(ValueError, match="control_after_generate on a COMBO"):
        convert({"1": {"class_type": "N", "inputs": {"m": "a"}}}, info)


def test_convert_refuses_unknown_nodes_and_cycles():
    with pytest.raises(ValueError, match="no definition for \\['Nope'\\]"):
        convert({"1": {"class_type": "Nope", "inputs": {}}}, INFO)
    cyc = {"1": {"class_type": "Sampler", "inputs": {"model": ["2", 0]}}, "2": {"class_type": "Sampler", "inputs": {"model": ["1", 0]}}}
    with pytest.raises(ValueError, match="cycle"):
        convert(cyc, INFO)
