"""Templates carry user-facing values, never the tiny-model test values of their API twins: every
node that takes sampling steps (KSampler, KSamplerAdvanced and the pack's own samplers such as
Story Attention Masks) gets real steps, SVD frames at least the node's default (14)."""

import json
from pathlib import Path

import pytest

from workflow_graph import REAL_STEPS, for_users  # scripts/ is on sys.path (conftest)

ROOT = Path(__file__).resolve().parents[1]
API = sorted((ROOT / "example_workflows" / "api").glob("*.json"))


def _inputs(spec):
    return {**spec["input"].get("required", {}), **spec["input"].get("optional", {})}


@pytest.mark.live
@pytest.mark.parametrize("api_path", API, ids=[p.stem for p in API])
def test_every_node_with_steps_and_frames_gets_user_values(live_server, api_path):
    info = live_server.get("/object_info")
    users = for_users(json.loads(api_path.read_text()), info)
    checked = 0
    for nid, node in users.items():
        spec = _inputs(info[node["class_type"]])
        if "steps" in spec and not isinstance(node["inputs"].get("steps"), list):
            assert node["inputs"]["steps"] >= REAL_STEPS, (
                f"{api_path.stem} node {nid} ({node['class_type']}): steps {node['inputs']['steps']}"
            )
            checked += 1
        if "frames" in spec and not isinstance(node["inputs"].get("frames"), list):
            assert node["inputs"]["frames"] >= spec["frames"][1]["default"], (
                f"{api_path.stem} node {nid}: frames"
            )
    assert checked, "every template samples somewhere"
    # the UI file the template browser opens holds the same values
    ui = json.loads((ROOT / "example_workflows" / f"{api_path.stem}.json").read_text())
    for n in ui["nodes"]:
        if n["type"] in ("KSampler", "StoryDiffAttentionMasks"):
            assert n["widgets_values"][2] >= REAL_STEPS, (api_path.stem, n["type"], n["widgets_values"])


INFO = {
    "Tiny": {
        "input": {"required": {"family": [["sdxl"], {}]}},
        "output": ["MODEL"],
        "display_name": "Tiny",
        "python_module": "custom_nodes.tiny",
    },
    "PackSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {}],
                "latent_image": ["LATENT", {}],
                "steps": ["INT", {"default": 20}],
                "sampler_name": [["euler"], {}],
            }
        },
        "output": ["LATENT"],
        "display_name": "Pack Sampler",
        "python_module": "custom_nodes.pack",
    },
    "Video": {
        "input": {"required": {"frames": ["INT", {"default": 14}]}},
        "output": ["LATENT"],
        "display_name": "V",
        "python_module": "custom_nodes.pack",
    },
}


def test_a_pack_sampler_and_svd_frames_get_user_values_without_a_server(monkeypatch):
    import workflow_graph

    monkeypatch.setattr(workflow_graph, "TEST_ONLY_PREFIX", "Tiny")
    monkeypatch.setitem(workflow_graph.CORE_LOADERS, "Loader", {"": "m.safetensors"})
    info = dict(
        INFO,
        Loader={
            "input": {"required": {"ckpt": [["m.safetensors"], {}]}},
            "output": ["MODEL"],
            "display_name": "Loader",
            "python_module": "nodes",
        },
    )
    api = {
        "1": {"class_type": "Tiny", "inputs": {"family": "sdxl"}},
        "2": {
            "class_type": "PackSampler",
            "inputs": {"model": ["1", 0], "latent_image": ["3", 0], "steps": 6, "sampler_name": "euler"},
        },
        "3": {"class_type": "Video", "inputs": {"frames": 8}},
    }
    out = for_users(api, info)
    assert out["1"]["class_type"] == "Loader"
    assert out["2"]["inputs"]["steps"] == REAL_STEPS and out["3"]["inputs"]["frames"] == 14
