"""`make demo` without CKPT: the example workflow with the story world toy model, not the tiny loader."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import world_demo  # noqa: E402

WORKFLOW = json.loads((ROOT / "example_workflows" / "api" / "one_character_story.json").read_text())


def test_world_prompt_swaps_the_loader_and_sets_the_worlds_story_size_steps_and_style():
    out = world_demo.to_world(WORKFLOW)
    loaders = [n for n in out.values() if n["class_type"] == world_demo.WORLD_LOADER]
    assert len(loaders) == 1 and loaders[0]["inputs"] == {"weights": world_demo.WORLD_WEIGHTS}
    assert not any(n["class_type"] == world_demo.TINY_LOADER for n in out.values())
    prompt = next(n for n in out.values() if n["class_type"] == "StoryDiffPrompt")["inputs"]
    assert prompt["story"] == world_demo.WORLD_STORY and prompt["style"] == "(No style)"
    latent = next(n for n in out.values() if n["class_type"] == "EmptyLatentImage")["inputs"]
    assert (latent["width"], latent["height"]) == (64, 64) and isinstance(latent["batch_size"], list)
    assert (
        next(n for n in out.values() if n["class_type"] == "KSampler")["inputs"]["steps"]
        == world_demo.WORLD_STEPS
    )
    assert WORKFLOW["1"]["class_type"] == world_demo.TINY_LOADER  # the template itself is untouched


def test_world_prompt_keeps_a_given_story_and_size_and_refuses_a_workflow_without_the_tiny_loader():
    out = world_demo.to_world(WORKFLOW, story="[A]: a boy\n[A] at night", steps=7, width=128, height=128)
    assert next(n for n in out.values() if n["class_type"] == "StoryDiffPrompt")["inputs"]["story"].endswith(
        "at night"
    )
    assert next(n for n in out.values() if n["class_type"] == "KSampler")["inputs"]["steps"] == 7
    assert next(n for n in out.values() if n["class_type"] == "EmptyLatentImage")["inputs"]["width"] == 128
    with pytest.raises(ValueError, match="no StoryTestTinyCheckpoint"):
        world_demo.to_world({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {}}})


def test_the_worlds_default_story_parses():
    from pack_loader import pure

    story = pure("story.syntax").parse_story(world_demo.WORLD_STORY)
    assert len(story.panels) == 4 and story.characters == {
        "Mia": "a girl with red hair and a striped blue shirt"
    }
