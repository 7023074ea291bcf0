"""Shared glue for the pack's nodes: category names, the user-facing error type, shared inputs."""

from __future__ import annotations

import math

import comfy.samplers

from ..attention.steps import window_error

CATEGORY_ROOT = "storydiffusion"


class StoryError(ValueError):
    """An input problem the user can fix; the message names the node, the input and the fix."""


def sampler_time_error(node: str, problem: str, fix: str) -> StoryError:
    """An error found only when the sampler runs a patch of `node` (the latent batch is known only
    then). ComfyUI shows it on the sampler node, so the text sends the user to the pack's node."""
    return StoryError(
        f"{node}: {problem}. Fix it at the {node} node (this shows on the sampler because the "
        f"sampler runs that node's patch): {fix}"
    )


def finite(node: str, name: str, value) -> float:
    """A FLOAT input as a float; NaN or infinity (which pass ComfyUI's min/max check) is a StoryError."""
    number = float(value)
    if not math.isfinite(number):
        raise StoryError(f"{node}: {name} is {value!r}; give a number (its field's range is in the tooltip).")
    return number


def check_step_window(node: str, start_percent: float, end_percent: float, legacy_ok: bool = False) -> None:
    """Raise a StoryError for a bad step window; call it when the node runs, before sampling.

    One mistake, one message: ComfyUI attaches a VALIDATE_INPUTS error to every input the method
    takes, so a check of two inputs there would show twice. Each bound's range is checked by
    ComfyUI itself at queue time (the inputs' min/max) where the node lets it; the order (and the
    range where old 0-100 values must pass queueing) is checked here, once, naming the input.
    """
    error = window_error(node, start_percent, end_percent, legacy_ok=legacy_ok)
    if error:
        raise StoryError(error)


def step_window_inputs(start_tip: str, end_tip: str) -> dict:
    """The start_percent / end_percent inputs of a node: fractions 0..1 of the steps, as in core."""
    spec = {"min": 0.0, "max": 1.0, "step": 0.01}
    return {
        "start_percent": ("FLOAT", {"default": 0.0, **spec, "tooltip": start_tip}),
        "end_percent": ("FLOAT", {"default": 1.0, **spec, "tooltip": end_tip}),
    }


def sampler_inputs(latent_tip: str) -> dict:
    """A KSampler's inputs (for nodes that sample): conditioning, latent, seed, steps, cfg, sampler."""
    return {
        "positive": ("CONDITIONING", {"tooltip": "The Story Prompt's positive output."}),
        "negative": ("CONDITIONING", {"tooltip": "The negative conditioning."}),
        "latent_image": ("LATENT", {"tooltip": latent_tip}),
        "seed": (
            "INT",
            {
                "default": 0,
                "min": 0,
                "max": 0xFFFFFFFFFFFFFFFF,
                "control_after_generate": True,
                "tooltip": "Noise seed.",
            },
        ),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Denoising steps."}),
        "cfg": (
            "FLOAT",
            {
                "default": 7.0,
                "min": 0.0,
                "max": 100.0,
                "step": 0.1,
                "tooltip": "Classifier-free guidance scale.",
            },
        ),
        "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "Sampler."}),
        "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "Scheduler."}),
    }


DENOISE_INPUT = (
    "FLOAT",
    {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Denoise strength."},
)


def ksample(
    model,
    positive,
    negative,
    latent_image,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    denoise: float = 1.0,
) -> dict:
    """Sample like core's KSampler (same noise, same progress bar and preview); returns the LATENT."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (common_ksampler), never our package

    (latent,) = comfy_nodes.common_ksampler(
        model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=denoise
    )
    return latent
