"""The story-to-video example through a real headless ComfyUI: panels -> transitions -> SVD ->
animated WEBP."""

import json
from pathlib import Path

import pytest
from PIL import Image

from story_client import PromptFailed, PromptRejected, download_images, run_prompt

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[1]


def _tiny_prompt():
    prompt = json.loads((ROOT / "example_workflows/api/story_to_video.json").read_text())
    prompt["3"]["inputs"].update(width=64, height=64)
    prompt["4"]["inputs"]["steps"] = 2
    prompt["8"]["inputs"].update(width=64, height=64, frames=3)
    prompt["10"]["inputs"]["steps"] = 2
    return prompt


def test_story_to_video_example_runs_through_the_queue(live_server, tmp_path):
    entry = run_prompt(live_server, _tiny_prompt(), timeout=600)
    assert entry["status"]["status_str"] == "success"
    saved = download_images(live_server, entry, tmp_path)
    panels = [p for p in saved if p.suffix == ".png"]
    videos = [p for p in saved if p.suffix == ".webp"]
    assert len(panels) == 4 and len(videos) == 1
    with Image.open(videos[0]) as webp:
        assert webp.n_frames == 3 * (3 - 1) + 1  # 4 panels -> 3 transitions of 3 frames sharing joins
        assert webp.size == (64, 64)


def test_frame_count_below_two_is_rejected_before_queueing(live_server):
    prompt = _tiny_prompt()
    prompt["8"]["inputs"]["frames"] = 1
    with pytest.raises(PromptRejected) as e:
        run_prompt(live_server, prompt, timeout=60)
    assert "at least 2 frames" in str(e.value)


def test_linked_frame_count_is_checked_when_the_node_runs(live_server):
    prompt = _tiny_prompt()
    prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 1}, "_meta": {"title": "frames"}}
    prompt["8"]["inputs"]["frames"] = ["20", 0]
    with pytest.raises(PromptFailed) as e:
        run_prompt(live_server, prompt, timeout=300)
    assert "StoryDiffTransitionSVD" in str(e.value) and "at least 2 frames" in str(e.value)
