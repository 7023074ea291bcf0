"""Consistent Self-Attention node: MODEL -> MODEL with StoryDiffusion's CSA patched in."""

from __future__ import annotations

import logging

from ..attention.consistent_run import ConsistentConfig, Mode
from ..attention.joint_consistent import POSITION_MODES
from ..attention.steps import is_legacy_percent, window_from_inputs
from ..attention.token_sampling import parse_probability_schedule
from .character_plan import check_story
from .common import CATEGORY_ROOT, StoryError, check_step_window, finite, step_window_inputs
from .joint_inputs import POSITION_DEFAULT, joint_inputs
from .patch_consistent import consistent_patch
from .patch_core import install

NODE = "Consistent Self-Attention"
BLOCKS = ["up", "all"]
LEVELS = (
    ("keep_rate_1_8", "1/8"),
    ("keep_rate_1_16", "1/16"),
    ("keep_rate_1_32", "1/32"),
    ("keep_rate_1_64", "1/64"),
)


def _rate_input(label: str) -> tuple:
    return (
        "FLOAT",
        {
            "default": 0.5,
            "min": 0.0,
            "max": 1.0,
            "step": 0.05,
            "tooltip": "Share of each image's tokens the other story images see at attention layers of "
            f"{label} of the image size (official: 0.5 at 1/16 and 1/32). 0 = no sharing at that "
            "resolution; 1 = all tokens.",
        },
    )


def csa_inputs() -> dict:
    """The CSA settings as node inputs (also used by the identity bank nodes' docs)."""
    req = {name: _rate_input(label) for name, label in LEVELS}
    req.update(
        {
            "blocks": (
                BLOCKS,
                {
                    "default": "up",
                    "tooltip": "Which self-attention layers are shared: 'up' = the decoder (output) "
                    "blocks, as the official StoryDiffusion; 'all' = down, middle and up blocks.",
                },
            ),
            "warmup_steps": (
                "INT",
                {
                    "default": 1,
                    "min": 0,
                    "max": 1000,
                    "tooltip": "Plain steps at the start before sharing begins (official: 1, the layout "
                    "forms first).",
                },
            ),
            **step_window_inputs(
                "Sharing starts at this fraction of the steps (after the warm-up steps), as core's "
                "start_percent.",
                "Sharing stops after this fraction of the steps (1 = until the end).",
            ),
            "apply_probability": (
                "STRING",
                {
                    "default": "0.7, 0.9@40",
                    "tooltip": "Chance that a layer shares at a step, drawn per layer and step from the "
                    "seed: 'p' or 'p@percent' entries, e.g. '0.7, 0.9@40' = 0.7, then 0.9 from 40 % of the "
                    "steps (official); '1' = always.",
                },
            ),
            "window": (
                "INT",
                {
                    "default": 0,
                    "min": 0,
                    "max": 1024,
                    "tooltip": "Sliding window for long stories: each image shares tokens only within a "
                    "run of this many consecutive story images (itself included), so the cost per image "
                    "stays flat. 0 = all images of the batch.",
                },
            ),
            "seed": (
                "INT",
                {
                    "default": 0,
                    "min": 0,
                    "max": 0xFFFFFFFFFFFFFFFF,
                    "tooltip": "Seed of the token sampling and the layer draws: same seed, same images.",
                },
            ),
            "strength": (
                "FLOAT",
                {
                    "default": 1.0,
                    "min": 0.0,
                    "max": 1.0,
                    "step": 0.05,
                    "tooltip": "Blend of consistent attention into plain self-attention: 1 = full, 0 = off "
                    "(identical to the unpatched model).",
                },
            ),
        }
    )
    return req


def story_tags(node: str, story) -> tuple[tuple[str, ...], ...]:
    """The characters each panel shows, from a connected STORY (checked like the other story nodes)."""
    check_story(node, story)
    return tuple(tuple(tags) for tags in story.tags)


FLOATS = (*(name for name, _ in LEVELS), "strength", "keep_rate_double", "keep_rate_single")


def config_from(settings: dict, node: str = NODE) -> ConsistentConfig:
    for name in FLOATS:
        if name in settings:
            finite(node, name, settings[name])
    try:
        schedule = parse_probability_schedule(settings["apply_probability"])
    except ValueError as e:
        raise StoryError(f"{node}: apply_probability: {e}") from None
    if settings["blocks"] not in BLOCKS:
        raise StoryError(f"{node}: blocks must be one of {BLOCKS}, got {settings['blocks']!r}.")
    start, end = settings["start_percent"], settings["end_percent"]
    check_step_window(node, start, end, legacy_ok=True)
    if is_legacy_percent(start, end):
        logging.warning(
            "%s: start_percent %s / end_percent %s read as percents of the old 0-100 scale (%g..%g of the "
            "steps); step windows are fractions 0-1 now, as in core nodes: re-save the workflow with the "
            "fractions.",
            node,
            start,
            end,
            float(start) / 100,
            float(end) / 100,
        )
    positions = settings.get("dit_positions", POSITION_DEFAULT)
    if positions not in POSITION_MODES:
        raise StoryError(f"{node}: dit_positions must be one of {list(POSITION_MODES)}, got {positions!r}.")
    return ConsistentConfig(
        keep_rates=tuple(float(settings[name]) for name, _ in LEVELS),
        keep_double=float(settings.get("keep_rate_double", 0.5)),
        keep_single=float(settings.get("keep_rate_single", 0.5)),
        positions=positions,
        blocks=settings["blocks"],
        warmup_steps=int(settings["warmup_steps"]),
        steps=window_from_inputs(start, end),
        schedule=schedule,
        window=int(settings["window"]),
        seed=int(settings["seed"]),
        strength=float(settings["strength"]),
    )


class ConsistentSelfAttention:
    DESCRIPTION = (
        "StoryDiffusion's Consistent Self-Attention on your MODEL: every image of the batch (one per story "
        "panel) also attends to a seeded random share of the other images' self-attention tokens, so "
        "characters keep their face and clothes across panels. With the Story Prompt's story connected, a "
        "panel shares only with panels whose characters it all shows ([NC] and untagged panels take no "
        "part, exactly as if sampled alone); without it, every image shares with every other. Works on "
        "SD1.5 and SDXL UNets at any size and with LoRA, ControlNet and other attention patches, and on "
        "Flux.1/.2, Chroma, Qwen-Image, SD3.5 and Z-Image (image tokens shared in their joint attention, "
        "text never; the keep_rate_double/single and dit_positions inputs). Batch of one = unchanged model."
    )
    CATEGORY = f"{CATEGORY_ROOT}/attention"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with consistent self-attention; sample the whole story as one batch.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model to patch (it is cloned, never changed)."}),
                **csa_inputs(),
            },
            "optional": {
                "story": (
                    "STORY",
                    {
                        "tooltip": "The Story Prompt's story (recommended): a panel takes tokens only from "
                        "panels whose characters it all shows, so Bob's panels never take Alice's tokens and "
                        "[NC] or untagged panels neither give nor take; the latent's batch_size must be its "
                        "panel_count. Empty: every image shares with every other."
                    },
                ),
                **joint_inputs(),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent, end_percent) -> bool:
        """Lifts ComfyUI's max check of the window (release-0.1 workflows saved percents 0-100); every
        check runs once when the node runs (ComfyUI would show a check here on each input it takes)."""
        return True

    def patch(self, model, story=None, **settings) -> tuple:
        mode = Mode(tags=story_tags(NODE, story)) if story is not None else Mode()
        return (install(model, consistent_patch(model, config_from(settings), mode)),)


NODE_CLASS_MAPPINGS = {"StoryDiffConsistentSelfAttention": ConsistentSelfAttention}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffConsistentSelfAttention": "Consistent Self-Attention"}
