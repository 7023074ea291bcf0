"""Consistent Self-Attention node: MODEL -> MODEL with StoryDiffusion's CSA patched in."""

from __future__ import annotations

from ..attention.token_sampling import parse_probability_schedule
from .common import CATEGORY_ROOT, StoryError, check_step_window
from .csa_hooks import CSAConfig, CSAPatch, install

NODE = "Consistent Self-Attention"
BLOCKS = ["up", "all"]
LEVELS = (("keep_rate_1_8", "1/8"), ("keep_rate_1_16", "1/16"), ("keep_rate_1_32", "1/32"), ("keep_rate_1_64", "1/64"))


def _rate_input(label: str):
    return ("FLOAT", {
        "default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
        "tooltip": f"Share of each image's tokens the other story images see at attention layers of {label} of "
                   "the image size (official: 0.5 at 1/16 and 1/32). 0 = no sharing at that resolution; 1 = all tokens."})


def csa_inputs() -> dict:
    """The CSA settings as node inputs (also used by the identity bank nodes' docs)."""
    req = {name: _rate_input(label) for name, label in LEVELS}
    req.update({
        "blocks": (BLOCKS, {"default": "up", "tooltip": "Which self-attention layers are shared: 'up' = the decoder "
                            "(output) blocks, as the official StoryDiffusion; 'all' = down, middle and up blocks."}),
        "warmup_steps": ("INT", {"default": 1, "min": 0, "max": 1000, "tooltip": "Plain steps at the start before "
                                 "sharing begins (official: 1, the layout forms first)."}),
        "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 1.0, "tooltip":
                                    "Sharing starts at this percent of the steps (after the warm-up steps)."}),
        "end_percent": ("FLOAT", {"default": 100.0, "min": 0.0, "max": 100.0, "step": 1.0, "tooltip":
                                  "Sharing stops at this percent of the steps (100 = until the end)."}),
        "apply_probability": ("STRING", {"default": "0.7, 0.9@40", "tooltip": "Chance that a layer shares at a "
                                         "step, drawn per layer and step from the seed: 'p' or 'p@percent' entries, e.g. "
                                         "'0.7, 0.9@40' = 0.7, then 0.9 from 40 % of the steps (official); '1' = always."}),
        "window": ("INT", {"default": 0, "min": 0, "max": 1024, "tooltip": "Sliding window for long stories: each "
                           "image shares tokens only within a run of this many consecutive story images (itself "
                           "included), so the cost per image stays flat. 0 = all images of the batch."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip":
                         "Seed of the token sampling and the layer draws: same seed, same images."}),
        "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip":
                               "Blend of consistent attention into plain self-attention: 1 = full, 0 = off (identical to "
                               "the unpatched model)."}),
    })
    return req


def validate_settings(node: str, apply_probability):
    """VALIDATE_INPUTS check of apply_probability alone (ComfyUI reports the error on every input
    the check takes; the step window's order is checked when the node runs, see check_step_window)."""
    try:
        parse_probability_schedule(apply_probability)
    except ValueError as e:
        return f"{node}: apply_probability: {e}"
    return True


def config_from(settings: dict, node: str = NODE) -> CSAConfig:
    try:
        schedule = parse_probability_schedule(settings["apply_probability"])
    except ValueError as e:
        raise StoryError(f"{node}: apply_probability: {e}") from None
    check_step_window(node, settings["start_percent"], settings["end_percent"])
    if settings["blocks"] not in BLOCKS:
        raise StoryError(f"{node}: blocks must be one of {BLOCKS}, got {settings['blocks']!r}.")
    return CSAConfig(
        keep_rates=tuple(float(settings[name]) for name, _ in LEVELS), blocks=settings["blocks"],
        warmup_steps=int(settings["warmup_steps"]), start_percent=float(settings["start_percent"]),
        end_percent=float(settings["end_percent"]), schedule=schedule, window=int(settings["window"]),
        seed=int(settings["seed"]), strength=float(settings["strength"]))


class ConsistentSelfAttention:
    DESCRIPTION = (
        "StoryDiffusion's Consistent Self-Attention on your MODEL: every image of the batch (one per story panel) "
        "also attends to a seeded random share of the other images' self-attention tokens, so characters keep "
        "their face and clothes across panels. Works on SD1.5 and SDXL UNets at any size and with LoRA, ControlNet "
        "and other attention patches. Batch of one = unchanged model.")
    CATEGORY = f"{CATEGORY_ROOT}/attention"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The model with consistent self-attention; sample the whole story as one batch.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "The model to patch (it is cloned, never changed)."}),
                             **csa_inputs()}}

    @classmethod
    def VALIDATE_INPUTS(cls, apply_probability):
        return validate_settings(NODE, apply_probability)

    def patch(self, model, **settings):
        return (install(model, CSAPatch(config_from(settings))),)


NODE_CLASS_MAPPINGS = {"StoryDiffConsistentSelfAttention": ConsistentSelfAttention}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffConsistentSelfAttention": "Consistent Self-Attention"}
