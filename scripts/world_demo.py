"""The demo's default model: the pack's story world toy model in place of a checkpoint.

Without CKPT, `make demo` runs the example workflow with the Story World Toy Model node
(models/story_world/story_world.safetensors, trained by scripts/train_world_model.py): a tiny
SD1.5-shaped text-to-image model of a procedural world of boys and girls in five scenes, so the
comic page shows characters, scenes and captions. A toy world, not art. Standard library only.
"""

from __future__ import annotations

import copy

WORLD_LOADER = "StoryDiffWorldModel"
WORLD_WEIGHTS = "story_world.safetensors"
WORLD_SIZE = 64  # the world's pictures are 64x64 (8x8 latents)
WORLD_STEPS = 20
WORLD_STYLE = "(No style)"  # the world model knows no art styles
WORLD_STORY = """[Mia]: a girl with red hair and a striped blue shirt
[Mia] wakes up in a room #Monday again.
[Mia] waits in the city #The bus is late.
[Mia] walks in the forest #A shortcut.
[Mia] on the beach at sunset #Time for a change."""
TINY_LOADER = "StoryTestTinyCheckpoint"


def to_world(prompt: dict, story: str = "", steps: int = 0, width: int = 0, height: int = 0) -> dict:
    """The API prompt with the test-only tiny loader replaced by the story world model, the world's
    story (unless one is given), its size, its step count and no style preset."""
    out = copy.deepcopy(prompt)
    for node in out.values():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == TINY_LOADER:
            node["class_type"] = WORLD_LOADER
            node["inputs"] = {"weights": WORLD_WEIGHTS}
            node.setdefault("_meta", {})["title"] = "Story World Toy Model"
        elif ct == "StoryDiffPrompt":
            inputs["story"] = story or WORLD_STORY
            inputs["style"] = WORLD_STYLE
        elif ct in ("KSampler", "KSamplerAdvanced") and not isinstance(inputs.get("steps"), list):
            inputs["steps"] = steps or WORLD_STEPS
        elif ct == "EmptyLatentImage":
            for k, v in (("width", width), ("height", height)):
                if not isinstance(inputs.get(k), list):
                    inputs[k] = v or WORLD_SIZE
    if not any(n["class_type"] == WORLD_LOADER for n in out.values()):
        raise ValueError(f"the workflow has no {TINY_LOADER} node to replace by the story world model")
    return out
