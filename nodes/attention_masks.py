"""Story Attention Masks node: sample, and return where each character is in each panel."""

from __future__ import annotations

import logging

import torch

from ..attention.isolated_branch import CAPTURE_LAYERS, IsolatedBranch, IsolatedConfig
from ..attention.isolated_run import IsolatedRun, mask_iou, masks_from_maps
from ..attention.steps import StepWindow
from ..story.mask_legend import with_legend
from .character_plan import build_plan
from .common import (
    CATEGORY_ROOT,
    DENOISE_INPUT,
    StoryError,
    check_step_window,
    ksample,
    sampler_inputs,
    step_window_inputs,
)
from .patch_core import install, require_family
from .patch_isolated import IsolatedPatch, installed_branch

NODE = "Story Attention Masks"
PALETTE = torch.tensor(
    [
        [0.95, 0.26, 0.21],
        [0.13, 0.59, 0.95],
        [0.30, 0.69, 0.31],
        [1.0, 0.76, 0.03],
        [0.61, 0.15, 0.69],
        [0.0, 0.74, 0.83],
        [1.0, 0.34, 0.13],
        [0.55, 0.76, 0.29],
    ]
)
BACKGROUND = 0.12


def preview(masks: torch.Tensor) -> torch.Tensor:
    """[P, K, H, W] bool -> IMAGE [P, H, W, 3]: one colour per character on a dark background."""
    P, K, H, W = masks.shape
    img = torch.full((P, H, W, 3), BACKGROUND)
    for k in range(K):
        img[masks[:, k].cpu()] = PALETTE[k % len(PALETTE)]
    return img


def upscale(masks: torch.Tensor, factor: int) -> torch.Tensor:
    return masks.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else masks


class StoryAttentionMasks:
    DESCRIPTION = (
        "Samples like a KSampler and returns, for every panel and character of the story, a mask of where "
        "the character is: the model's own cross-attention on the character's tokens, averaged over heads, "
        "layers and steps, Otsu-thresholded, overlaps given to the map with the lower coefficient of "
        "variation. On a model patched by Isolated Attention it shows the masks that node computed in the "
        "same run."
    )
    CATEGORY = f"{CATEGORY_ROOT}/attention"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "MASK", "IMAGE")
    RETURN_NAMES = ("latent", "masks", "preview")
    OUTPUT_TOOLTIPS = (
        "The sampled latent (decode it as usual).",
        "One mask per panel and character, panel-major: index = panel × characters + character (story "
        "declaration order); a character absent from a panel has an empty mask.",
        "One image per panel, each character in its own colour; with legend, a band under each image names "
        "the panel and each character's colour (characters absent from the panel greyed out).",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (plain, or patched by Isolated Attention)."}),
                "clip": (
                    "CLIP",
                    {
                        "tooltip": "The checkpoint's CLIP: tokenizes the panel prompts to find each "
                        "character's tokens."
                    },
                ),
                "story": ("STORY", {"tooltip": "The Story Prompt's story output."}),
                **sampler_inputs("Latent with one image per panel (batch = panel_count)."),
                "layers": (
                    list(CAPTURE_LAYERS),
                    {
                        "default": CAPTURE_LAYERS[0],
                        "tooltip": "Cross-attention layers averaged: the lowest-resolution up blocks (SDXL "
                        "output 0-2, SD1.5 output 3-5), all up blocks, or every block.",
                    },
                ),
                **step_window_inputs(
                    "Average the maps from this fraction of the steps.",
                    "Average the maps until this fraction of the steps.",
                ),
                "blur": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 8.0,
                        "step": 0.1,
                        "tooltip": "Gaussian blur (sigma, in latent pixels) of each map before Otsu.",
                    },
                ),
                "dilate": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 16,
                        "tooltip": "Grow each mask by this many latent pixels.",
                    },
                ),
                "min_area": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 0.9,
                        "step": 0.005,
                        "tooltip": "Drop a mask covering less than this fraction of the panel.",
                    },
                ),
            },
            "optional": {
                "denoise": DENOISE_INPUT,
                "legend": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Draw a legend under each preview image: the panel number and which "
                        "colour is which character. Off: the preview has the panels' size.",
                    },
                ),
            },
        }

    def sample(
        self,
        model,
        clip,
        story,
        positive,
        negative,
        latent_image,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        layers,
        start_percent,
        end_percent,
        blur,
        dilate,
        min_area,
        denoise=1.0,
        legend=True,
    ) -> tuple:
        check_step_window(NODE, start_percent, end_percent)
        plan = build_plan(NODE, clip, story)
        samples = latent_image["samples"]
        if samples.shape[0] != plan.panels:
            raise StoryError(
                f"{NODE}: latent_image has {samples.shape[0]} images but the story has {plan.panels} panels; "
                "connect the Story Prompt's panel_count to the latent's batch_size."
            )
        require_family(model, NODE, IsolatedPatch.families)
        branch = installed_branch(model)
        if branch is None:
            config = IsolatedConfig(
                node=NODE, isolate=False, capture=layers, story_cond=getattr(story, "positive", None)
            )
            branch = IsolatedBranch(config, IsolatedRun(plan, capture=StepWindow(start_percent, end_percent)))
            model = install(model, IsolatedPatch(branch))
        elif branch.run.plan.names != plan.names or branch.run.plan.panels != plan.panels:
            raise StoryError(
                f"{NODE}: the model was patched by Isolated Attention for another story; connect the same "
                "story to both nodes."
            )
        latent = ksample(
            model, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler, denoise
        )
        summary = branch.run.result
        masks = masks_from_maps(
            plan,
            summary.maps if summary is not None else None,
            branch.run.user_masks,
            grid=tuple(samples.shape[-2:]),
            device=torch.device("cpu"),
            blur=blur,
            dilate=dilate,
            min_area=min_area,
        )
        if masks is None:
            masks = torch.zeros(plan.panels, len(plan.names), *samples.shape[-2:], dtype=torch.bool)
        masks = masks.cpu()
        if summary is not None and summary.masks_at_70 is not None and summary.masks is not None:
            logging.info(
                "%s: mask IoU between 70%% and 100%% of the steps: %.3f",
                NODE,
                mask_iou(summary.masks_at_70.cpu(), summary.masks.cpu()),
            )
        factor = 8
        full = upscale(masks, factor)
        P, K = masks.shape[:2]
        mask_out = full.reshape(P * K, *full.shape[-2:]).float() if K else torch.zeros(0, *full.shape[-2:])
        image = preview(full)
        if legend and K:
            colours = [tuple(PALETTE[k % len(PALETTE)].tolist()) for k in range(K)]
            image = with_legend(image, list(plan.names), colours, [list(row) for row in plan.present])
        return (latent, mask_out, image)


NODE_CLASS_MAPPINGS = {"StoryDiffAttentionMasks": StoryAttentionMasks}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffAttentionMasks": "Story Attention Masks"}
