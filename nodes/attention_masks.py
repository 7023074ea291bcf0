"""Story Attention Masks node: sample, and return where each character is in each panel."""

from __future__ import annotations

import logging

import torch

import comfy.samplers

from ..attention.isolation_run import IsolationRun, mask_iou
from ..story.mask_legend import with_legend
from .character_plan import build_plan
from .common import CATEGORY_ROOT, StoryError, check_step_window
from .isolation_patch import CAPTURE_LAYERS, IsolationConfig, IsolationState, find_state, install

NODE = "Story Attention Masks"
PALETTE = torch.tensor([[0.95, 0.26, 0.21], [0.13, 0.59, 0.95], [0.30, 0.69, 0.31], [1.0, 0.76, 0.03],
                        [0.61, 0.15, 0.69], [0.0, 0.74, 0.83], [1.0, 0.34, 0.13], [0.55, 0.76, 0.29]])
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
        "Samples like a KSampler and returns, for every panel and character of the story, a mask of where the "
        "character is: the model's own cross-attention on the character's tokens, averaged over heads, layers "
        "and steps, Otsu-thresholded, overlaps given to the map with the lower coefficient of variation. "
        "On a model patched by Isolated Attention it shows the masks that node computed in the same run."
    )
    CATEGORY = f"{CATEGORY_ROOT}/attention"
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "MASK", "IMAGE")
    RETURN_NAMES = ("latent", "masks", "preview")
    OUTPUT_TOOLTIPS = (
        "The sampled latent (decode it as usual).",
        "One mask per panel and character, panel-major: index = panel × characters + character (story declaration "
        "order); a character absent from a panel has an empty mask.",
        "One image per panel, each character in its own colour; with legend, a band under each image names the "
        "panel and each character's colour (characters absent from the panel greyed out).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (plain, or patched by Isolated Attention)."}),
                "clip": ("CLIP", {"tooltip": "The checkpoint's CLIP: tokenizes the panel prompts to find each character's tokens."}),
                "story": ("STORY", {"tooltip": "The Story Prompt's story output."}),
                "positive": ("CONDITIONING", {"tooltip": "The Story Prompt's positive output."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative conditioning."}),
                "latent_image": ("LATENT", {"tooltip": "Latent with one image per panel (batch = panel_count)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                                 "tooltip": "Noise seed."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Denoising steps."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "tooltip": "Classifier-free guidance scale."}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": "Sampler."}),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": "Scheduler."}),
                "layers": (list(CAPTURE_LAYERS), {"default": CAPTURE_LAYERS[0], "tooltip":
                           "Cross-attention layers averaged: the lowest-resolution up blocks (SDXL output 0-2, SD1.5 output "
                           "3-5), all up blocks, or every block."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                            "tooltip": "Average the maps from this fraction of the steps."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                          "tooltip": "Average the maps until this fraction of the steps."}),
                "blur": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 8.0, "step": 0.1,
                                   "tooltip": "Gaussian blur (sigma, in latent pixels) of each map before Otsu."}),
                "dilate": ("INT", {"default": 0, "min": 0, "max": 16, "tooltip": "Grow each mask by this many latent pixels."}),
                "min_area": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.9, "step": 0.005,
                                       "tooltip": "Drop a mask covering less than this fraction of the panel."}),
            },
            "optional": {
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Denoise strength."}),
                "legend": ("BOOLEAN", {"default": True, "tooltip": "Draw a legend under each preview image: the panel "
                                       "number and which colour is which character. Off: the preview has the panels' size."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, start_percent=0.0, end_percent=1.0):
        return check_step_window(NODE, start_percent, end_percent)

    def sample(self, model, clip, story, positive, negative, latent_image, seed, steps, cfg, sampler_name, scheduler,
               layers, start_percent, end_percent, blur, dilate, min_area, denoise=1.0, legend=True):
        import nodes as comfy_nodes  # ComfyUI's nodes.py (common_ksampler), never our package

        plan = build_plan(NODE, clip, story)
        samples = latent_image["samples"]
        if samples.shape[0] != plan.panels:
            raise StoryError(f"{NODE}: latent_image has {samples.shape[0]} images but the story has {plan.panels} panels; "
                             f"connect the Story Prompt's panel_count to the latent's batch_size.")
        state = find_state(model)
        if state is None:
            config = IsolationConfig(node=NODE, isolate=False, capture=layers)
            state = IsolationState(config, IsolationRun(plan, capture_range=(start_percent, end_percent)))
            model = install(model, state)
        elif state.run.plan.names != plan.names or state.run.plan.panels != plan.panels:
            raise StoryError(f"{NODE}: the model was patched by Isolated Attention for another story; connect the same "
                             f"story to both nodes.")
        (latent,) = comfy_nodes.common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
                                                latent_image, denoise=denoise)
        result = state.run.result or {}
        post = IsolationRun(state.run.plan, blur=blur, dilate=dilate, min_area=min_area, user_masks=state.run.user_masks)
        maps = result.get("maps")
        masks = post._masks_from(maps, grid=tuple(samples.shape[-2:]), device=torch.device("cpu"))
        if masks is None:
            masks = torch.zeros(plan.panels, len(plan.names), *samples.shape[-2:], dtype=torch.bool)
        masks = masks.cpu()
        if result.get("masks_70") is not None and result.get("masks") is not None:
            logging.info("%s: mask IoU between 70%% and 100%% of the steps: %.3f", NODE,
                         mask_iou(result["masks_70"].cpu(), result["masks"].cpu()))
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
