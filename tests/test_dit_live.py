"""The Flux story workflow through a real headless ComfyUI's /prompt on the tiny Flux model."""

import json
from pathlib import Path

import pytest

from story_client import download_images, run_prompt

pytestmark = pytest.mark.live
ROOT = Path(__file__).resolve().parents[1]


def test_flux_story_runs_through_the_queue(live_server, tmp_path):
    prompt = json.loads((ROOT / "example_workflows/api/flux_story.json").read_text())
    prompt["3"]["inputs"].update(width=64, height=64)
    prompt["4"]["inputs"]["steps"] = 2
    prompt["7"]["inputs"].update(warmup_steps=0, apply_probability="1")
    entry = run_prompt(live_server, prompt, timeout=300)
    assert entry["status"]["status_str"] == "success"
    saved = download_images(live_server, entry, tmp_path)
    panels = [p for p in saved if p.name.startswith("flux_panel")]
    pages = [p for p in saved if p.name.startswith("flux_comic_page")]
    assert len(panels) == 4 and len(pages) == 1
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in saved)
