"""Isolated Attention warns when a regional prompt (character_N fed by typed text) does not name
the story's character N: the story renamed its characters, or the wires are swapped. The
two_characters_isolated template has no regional prompt nodes (the story's own descriptions are
used; the note shows the override)."""

import json
import logging
from pathlib import Path

from isolated_helpers import encode_story, isolated

ROOT = Path(__file__).resolve().parents[1]
RENAMED = """[Tom]: a man with short black hair, red jacket
[Eve]: a woman with long silver hair, green dress
[Tom] waits at a bus stop
[Eve] reads in a library
[Tom] and [Eve] walk in a park"""


def graph(text_1: str, text_2: str | None = None) -> dict:
    """The queued prompt as ComfyUI's hidden PROMPT gives it: node 5 is Isolated Attention."""
    prompt = {
        "3": {
            "class_type": "CLIPTextEncode",
            "inputs": {"clip": ["1", 1], "text": text_1},
            "_meta": {"title": "Regional prompt: Bob"},
        },
        "5": {"class_type": "StoryDiffIsolatedAttention", "inputs": {"character_1": ["3", 0]}},
    }
    if text_2 is not None:
        prompt["4"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text_2}}
        prompt["5"]["inputs"]["character_2"] = ["4", 0]
    return prompt


def patch_with(tiny, story_text, prompt, caplog):
    model, clip, _ = tiny("sd15")
    _, _, story, _ = encode_story(clip, story_text)
    import nodes as comfy_nodes  # ComfyUI's nodes.py: the regional prompts are plain CLIP Text Encode nodes

    overrides = {
        f"character_{i}": comfy_nodes.CLIPTextEncode().encode(clip, prompt[nid]["inputs"]["text"])[0]
        for i, nid in ((1, "3"), (2, "4"))
        if nid in prompt
    }
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        isolated(model, clip, story, prompt=prompt, unique_id="5", **overrides)
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "character_" in r.getMessage()
    ]


def test_a_regional_prompt_for_a_renamed_character_is_warned_about(tiny, caplog):
    got = patch_with(tiny, RENAMED, graph("Bob, a man with short black hair, red jacket"), caplog)
    assert len(got) == 1, got
    assert (
        "character_1 is the story's [Tom]" in got[0]
        and "Regional prompt: Bob (#3)" in got[0]
        and "does not name Tom" in got[0]
    )
    assert "disconnect character_1" in got[0]


def test_swapped_regional_prompts_are_warned_about_naming_the_other_character(tiny, caplog):
    from isolated_helpers import TWO_CHARACTERS

    got = patch_with(
        tiny, TWO_CHARACTERS, graph("Alice, a woman with long silver hair", "Bob, a man, red jacket"), caplog
    )
    assert len(got) == 2, got
    assert "it names [Alice], the story's character 2: swap the wires" in got[0]
    assert "character_2 is the story's [Alice]" in got[1]


def test_matching_regional_prompts_and_no_graph_give_no_warning(tiny, caplog):
    from isolated_helpers import TWO_CHARACTERS

    assert patch_with(tiny, TWO_CHARACTERS, graph("bob in a red jacket", "ALICE, green dress"), caplog) == []
    model, clip, _ = tiny("sd15")
    _, _, story, _ = encode_story(clip, RENAMED)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        isolated(model, clip, story)  # called outside a queued graph: nothing to check
    assert not [r for r in caplog.records if "character_" in r.getMessage()]


def test_the_two_character_template_uses_the_story_descriptions_and_shows_the_override_in_its_note():
    api = json.loads((ROOT / "example_workflows/api/two_characters_isolated.json").read_text())
    assert not any(n["class_type"] == "CLIPTextEncode" for n in api.values())
    iso = next(n for n in api.values() if n["class_type"] == "StoryDiffIsolatedAttention")
    assert not any(k.startswith("character_") for k in iso["inputs"])
    note = (ROOT / "example_workflows/api/two_characters_isolated.md").read_text()
    assert "character_1" in note and "CLIP Text Encode" in note
