"""The pack inside a real headless ComfyUI: /object_info, and workflows through /prompt."""

import json
from pathlib import Path

import pytest

from story_client import PromptRejected, download_images, run_prompt

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[1]


def _our_nodes(server):
    info = server.get("/object_info")
    return {k: v for k, v in info.items() if v.get("python_module", "").endswith("comfyui-storydiffusion")}


def test_every_node_is_listed_with_description_tooltips_and_category(live_server, node_classes):
    ours = _our_nodes(live_server)
    assert set(ours) == set(node_classes), "every node of NODE_CLASS_MAPPINGS must reach /object_info"
    for name, spec in ours.items():
        assert name.startswith("StoryDiff"), f"{name}: node IDs share the StoryDiff prefix"
        assert spec["category"].startswith("storydiffusion"), name
        assert len(spec["description"]) > 40, f"{name} needs a description"
        assert spec["display_name"] and spec["display_name"] != name
        for section in ("required", "optional"):
            for inp, cfg in spec["input"].get(section, {}).items():
                opts = cfg[1] if len(cfg) > 1 else {}
                assert opts.get("tooltip"), f"{name}.{inp} has no tooltip"
    failures = [
        line
        for line in live_server.log_tail(2000).splitlines()
        if ("IMPORT FAILED" in line or "Cannot import" in line) and "storydiffusion" in line
    ]
    assert failures == []


def test_example_story_runs_through_the_queue(live_server, tmp_path):
    prompt = json.loads((ROOT / "example_workflows/api/one_character_story.json").read_text())
    prompt["3"]["inputs"].update(width=64, height=64)
    prompt["4"]["inputs"]["steps"] = 2
    entry = run_prompt(live_server, prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    saved = download_images(live_server, entry, tmp_path)
    panels = [p for p in saved if p.name.startswith("panel")]
    pages = [p for p in saved if p.name.startswith("comic_page")]
    assert len(panels) == 4 and len(pages) == 1  # one image per panel, one four-panel page
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in saved)


def test_bad_story_is_rejected_with_the_line_number(live_server):
    prompt = json.loads((ROOT / "example_workflows/api/one_character_story.json").read_text())
    prompt["2"]["inputs"]["story"] = "[Bob]: a man\n[Bob] walks\n[Bbo] runs"
    with pytest.raises(PromptRejected) as e:
        run_prompt(live_server, prompt, timeout=60)
    assert "line 3" in str(e.value) and "[Bbo]" in str(e.value)
