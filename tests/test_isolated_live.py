"""The two-character isolated-attention workflow through a real headless ComfyUI queue."""

import json
from pathlib import Path

import pytest

from story_client import PromptFailed, PromptRejected, download_images, run_prompt

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "example_workflows/api/two_characters_isolated.json"


def test_two_characters_isolated_workflow_runs(live_server, tmp_path):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["1"]["inputs"]["family"] = "sd15"  # the lighter tiny model keeps the live test short
    prompt["6"]["inputs"].update(width=128, height=128)
    prompt["7"]["inputs"]["steps"] = 3
    entry = run_prompt(live_server, prompt, timeout=600)
    assert entry["status"]["status_str"] == "success"
    outputs = entry["outputs"]
    assert len(outputs["9"]["images"]) == 4  # one image per panel
    assert len(outputs["10"]["images"]) == 4  # one colour preview per panel
    assert len(outputs["12"]["images"]) == 8  # 4 panels x 2 characters
    saved = download_images(live_server, entry, tmp_path)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in saved)


def test_bad_mask_batch_is_reported_naming_the_input(live_server):
    prompt = json.loads(WORKFLOW.read_text())
    prompt["6"]["inputs"].update(width=64, height=64)
    prompt["7"]["inputs"]["steps"] = 1
    prompt["22"] = {"class_type": "ImageToMask", "inputs": {"image": ["23", 0], "channel": "red"}}
    prompt["23"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 3, "color": 0},
    }
    prompt["5"]["inputs"]["mask_1"] = ["22", 0]
    with pytest.raises((PromptFailed, PromptRejected)) as e:
        run_prompt(live_server, prompt, timeout=300)
    assert "mask_1" in str(e.value) and "4 panels" in str(e.value)
