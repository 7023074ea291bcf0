"""Story Prompt node on a tiny CLIP, through the real ComfyUI encode path."""

import pytest
import torch

from pack_loader import submodule


@pytest.fixture(scope="module")
def story_prompt(pack):
    return submodule("nodes.story_prompt")


def test_panels_become_one_conditioning_batch(story_prompt, tiny):
    _, clip, _ = tiny("sdxl")
    node = story_prompt.StoryPrompt()
    text = "[Bob]: a man in a red jacket\n[Bob] walks #one\n[NC] a street\n[Bob] sits"
    pos, neg, story, captions, count = node.encode(clip, text, "Comic book")
    assert count == 3
    cond, meta = pos[0]
    assert cond.shape == (3, 77, 2048)
    assert meta["pooled_output"].shape == (3, 1280)
    assert neg[0][0].shape == (1, 77, 2048)
    assert story.tags == [["Bob"], [], ["Bob"]]
    assert captions == "one\n\n"
    # each row is exactly what CLIPTextEncode gives for that panel alone
    single = clip.encode_from_tokens(
        clip.tokenize(node_prompt(story_prompt, story, 1, "Comic book")), return_pooled=True
    )
    assert torch.equal(cond[1:2], single[0])


def node_prompt(mod, story, index, style):
    return mod.apply_style(style, story.panels[index].prompt, "")[0]


def test_long_prompts_are_tiled_to_a_common_length(story_prompt, tiny):
    _, clip, _ = tiny("sd15")
    long = "a very " + "long " * 100 + "prompt"
    pos, *_ = story_prompt.StoryPrompt().encode(clip, f"short one\n{long}", "(No style)")
    cond = pos[0][0]
    assert cond.shape[1] % 77 == 0 and cond.shape[1] > 77
    short = clip.encode_from_tokens(clip.tokenize("short one"))
    reps = cond.shape[1] // 77
    assert torch.equal(cond[0:1], short.repeat(1, reps, 1))


def test_typo_is_reported_at_validation_with_the_line(story_prompt):
    msg = story_prompt.StoryPrompt.VALIDATE_INPUTS(story="[Bob]: a man\n[Bbo] walks")
    assert isinstance(msg, str) and "line 2" in msg and "[Bbo]" in msg
    assert story_prompt.StoryPrompt.VALIDATE_INPUTS(story="[Bob]: a man\n[Bob] walks") is True
    msg = story_prompt.StoryPrompt.VALIDATE_INPUTS(story="[Bob]: a man\n[Bob walks to school")
    assert isinstance(msg, str) and msg.startswith("Story Prompt: line 2:") and "no closing ']'" in msg


def test_missing_clip_is_actionable(story_prompt):
    with pytest.raises(ValueError, match="connect the CLIP output"):
        story_prompt.StoryPrompt().encode(None, "a cat", "(No style)")
