"""Story Prompt node: the story text -> per-panel CONDITIONING as one batch, tags and captions."""

from __future__ import annotations

import torch

from ..story.styles import NO_STYLE, STYLES, apply_style
from ..story.syntax import Story, StorySyntaxError, parse_story
from .common import CATEGORY_ROOT, StoryError
from .text_batching import batch_contexts, text_family, unequal_warning
from .user_warnings import warn

EXAMPLE_STORY = """[Bob]: a man with short black hair, wearing a red jacket and jeans
[Bob] wakes up in a small flat, morning light #Monday again.
[Bob] waits at a rainy bus stop #The bus is late.
[Bob] reads a letter at his desk #A letter from an old friend.
[Bob] smiles on a hill at sunset #Time for a change."""


def encode_batch(clip, texts: list[str]) -> list:
    """Encode texts through the user's CLIP into one CONDITIONING entry of batch len(texts).

    Contexts of different lengths are batched as the CLIP's family needs (nodes/text_batching.py):
    tiled for cross-attention, padded with a text `attention_mask` for joint-attention DiTs, with
    a logged warning where the host's model ignores that mask.
    """
    conds, pooled, extras = [], [], None
    for text in texts:
        out = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True, return_dict=True)
        conds.append(out.pop("cond"))
        p = out.pop("pooled_output", None)
        pooled.append(p)
        extras = out if extras is None else extras
    family = text_family(clip)
    cond, mask = batch_contexts(conds, family)
    meta = dict(extras or {})
    if family.side != "tile":  # one panel's own mask never describes the batch
        meta.pop("attention_mask", None)
        if mask is not None:
            meta["attention_mask"] = mask
            message = unequal_warning(family, [c.shape[1] for c in conds])
            if message:
                warn("Story Prompt", message)
    if all(p is not None for p in pooled):
        meta["pooled_output"] = torch.cat(pooled, dim=0)
    return [[cond, meta]]


class StoryPrompt:
    DESCRIPTION = (
        "Turns a story into one batch of per-panel prompts. One line per panel; declare each character once "
        "with '[Name]: description' and tag panels with [Name] (the description is substituted); [NC] marks "
        "a "
        "panel with no character; text after '#' is the panel's caption. Wire panel_count into the latent's "
        "batch_size so each panel gets its own image."
    )
    CATEGORY = f"{CATEGORY_ROOT}"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "STORY", "STRING", "INT")
    RETURN_NAMES = ("positive", "negative", "story", "captions", "panel_count")
    OUTPUT_TOOLTIPS = (
        "One conditioning row per panel, in story order (batch = number of panels): the positive of the "
        "KSampler "
        "(or Story Attention Masks) that samples the panels. The attention nodes patch the MODEL instead.",
        "The style's negative prompt plus yours, shared by all panels.",
        "The parsed story: characters and the character tags of each panel, for the attention nodes.",
        "The panel captions, one per line (empty line for a panel without caption).",
        "Number of panels: connect it to the latent's batch_size.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The text encoder of your checkpoint."}),
                "story": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": EXAMPLE_STORY,
                        "tooltip": "One panel per line. '[Name]: description' declares a character; [Name] "
                        "tags it in a "
                        "panel; [NC] = no character; '#' starts the caption; '//' comments a line out.",
                    },
                ),
                "style": (
                    list(STYLES),
                    {"default": NO_STYLE, "tooltip": "Style preset wrapped around every panel prompt."},
                ),
            },
            "optional": {
                "negative": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "Extra negative prompt, added to the style's.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, story):
        try:
            parse_story(story)
        except StorySyntaxError as e:
            return f"Story Prompt: {e}"
        return True

    def encode(self, clip, story: str, style: str, negative: str = ""):
        if clip is None:
            raise StoryError(
                "Story Prompt: the clip input is empty; connect the CLIP output of your checkpoint loader."
            )
        try:
            parsed: Story = parse_story(story)
        except StorySyntaxError as e:
            raise StoryError(f"Story Prompt: {e}") from None
        styled = [apply_style(style, p.prompt, negative) for p in parsed.panels]
        positive = encode_batch(clip, [s[0] for s in styled])
        negative_cond = encode_batch(clip, [styled[0][1]])
        parsed.encoded_prompts = [s[0] for s in styled]
        parsed.positive = positive[0][0]
        parsed.encoded_regional = [
            {name: apply_style(style, text, negative)[0] for name, text in p.regional} for p in parsed.panels
        ]
        captions = "\n".join(parsed.captions)
        return (positive, negative_cond, parsed, captions, len(parsed.panels))


NODE_CLASS_MAPPINGS = {"StoryDiffPrompt": StoryPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffPrompt": "Story Prompt"}
