"""Story Transition (SVD): story panels -> per-frame CLIP conditioning for a stock KSampler on SVD.

Core SVD gives every frame the same image embedding. Its cross-attention context is repeated
per frame (batch = frames), so a context of shape [frames, 1, 1024] gives each frame its own
embedding: here the interpolation (optionally refined by a Semantic Motion Predictor) between
consecutive panels. The concat latent of each frame is its transition's start panel, as core
SVD conditions on the start image; temporal blocks see frame 0's context, as in core SVD.
"""

from __future__ import annotations

import logging

import torch

import nodes as comfy_nodes

from ..motion.chain import chain_frame_embeddings, start_panel_of_frame
from ..motion.interpolation import MODES, chain_length
from .common import CATEGORY_ROOT, StoryError
from .story_transition_inputs import (
    MAX_FRAMES,
    NODE,
    SVD_EMBED_DIM,
    check_frames,
    check_model,
    check_predictor,
    encode_panel,
    panels_from_inputs,
)


class StoryTransitionSVD:
    DESCRIPTION = (
        "Turns story panels into one smooth video through Stable Video Diffusion. Give a start and an end "
        "image, or "
        "a batch of N panels for N-1 chained transitions (consecutive transitions share their join frame: "
        "(N-1)*(frames-1)+1 frames in all). Every frame gets its own CLIP image embedding, interpolated "
        "between its "
        "panels (optionally refined by a motion predictor), and the start panel of its transition as concat "
        "image. "
        "Needs an SVD img2vid model on the KSampler (e.g. from Image Only Checkpoint Loader); an SD1.5/SDXL "
        "model "
        "cannot use this conditioning. All images are resized (centre crop) to width x height, so start and "
        "end may "
        "differ in size."
    )
    CATEGORY = f"{CATEGORY_ROOT}/video"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "INT")
    RETURN_NAMES = ("positive", "negative", "latent", "frame_count")
    OUTPUT_TOOLTIPS = (
        "Per-frame image embeddings [frames, 1, 1024] with the concat latent, motion bucket, fps and "
        "augmentation.",
        "Zero embeddings and zero concat latent of the same shapes (as core SVD conditioning).",
        "An empty video latent of the clip's total frame count, for the KSampler.",
        "Total frames of the clip.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_vision": (
                    "CLIP_VISION",
                    {
                        "tooltip": "The ViT-H image encoder of the SVD checkpoint (Image Only Checkpoint "
                        "Loader)."
                    },
                ),
                "vae": (
                    "VAE",
                    {"tooltip": "The SVD checkpoint's VAE (encodes the start panels as concat latents)."},
                ),
                "start_image": (
                    "IMAGE",
                    {"tooltip": "The first panel, or a batch of N panels for N-1 chained transitions."},
                ),
                "width": (
                    "INT",
                    {
                        "default": 1024,
                        "min": 16,
                        "max": comfy_nodes.MAX_RESOLUTION,
                        "step": 8,
                        "tooltip": "Video width; every image is resized (centre crop) to it.",
                    },
                ),
                "height": (
                    "INT",
                    {
                        "default": 576,
                        "min": 16,
                        "max": comfy_nodes.MAX_RESOLUTION,
                        "step": 8,
                        "tooltip": "Video height; every image is resized (centre crop) to it.",
                    },
                ),
                "frames": (
                    "INT",
                    {
                        "default": 14,
                        "min": 2,
                        "max": MAX_FRAMES,
                        "tooltip": "Frames per transition, both panels included (SVD: 14 or 25 in all).",
                    },
                ),
                "interpolation": (
                    list(MODES),
                    {
                        "default": "linear",
                        "tooltip": "How embeddings move between panels: straight line, or along the sphere "
                        "(keeps the norm).",
                    },
                ),
                "motion_bucket_id": (
                    "INT",
                    {
                        "default": 127,
                        "min": 1,
                        "max": 1023,
                        "tooltip": "SVD motion amount (higher = more motion).",
                    },
                ),
                "fps": (
                    "INT",
                    {"default": 6, "min": 1, "max": 1024, "tooltip": "SVD frame-rate conditioning."},
                ),
                "augmentation_level": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "Noise added to the concat images (more = less tied to the panels).",
                    },
                ),
            },
            "optional": {
                "end_image": ("IMAGE", {"tooltip": "The last panel (appended after start_image's batch)."}),
                "predictor": (
                    "MOTION_PREDICTOR",
                    {"tooltip": "A trained motion predictor; without one, plain interpolation."},
                ),
                "model": (
                    "MODEL",
                    {
                        "tooltip": "Optional: the MODEL you sample with, checked to be SVD before sampling "
                        "starts."
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, frames=None):
        if frames is None:  # linked from another node: checked when the node runs
            return True
        problem = check_frames(frames)
        return problem or True

    def encode(
        self,
        clip_vision,
        vae,
        start_image,
        width,
        height,
        frames,
        interpolation,
        motion_bucket_id,
        fps,
        augmentation_level,
        end_image=None,
        predictor=None,
        model=None,
    ):
        problem = check_frames(frames)
        if problem:
            raise StoryError(problem)
        if interpolation not in MODES:
            raise StoryError(f"{NODE}: interpolation '{interpolation}' is not one of {', '.join(MODES)}.")
        if clip_vision is None or vae is None:
            raise StoryError(
                f"{NODE}: connect clip_vision and vae (both come from Image Only Checkpoint Loader with an "
                f"SVD checkpoint)."
            )
        check_model(model)
        panels = panels_from_inputs(start_image, end_image)
        with torch.no_grad():
            keys = torch.cat(
                [clip_vision.encode_image(p).image_embeds.detach() for p in panels], dim=0
            )  # [N, D]
            if keys.shape[-1] != SVD_EMBED_DIM:
                raise StoryError(
                    f"{NODE}: clip_vision gives {keys.shape[-1]}-d embeddings; SVD needs {SVD_EMBED_DIM}-d "
                    "(ViT-H/14). Use the CLIP_VISION of the SVD checkpoint."
                )
            check_predictor(predictor, keys.shape[-1], frames)
            trained = (getattr(predictor, "metadata", None) or {}).get("interpolation")
            if trained and trained != interpolation:
                logging.warning(
                    "%s: the predictor was trained on %s interpolation but interpolation is %s; "
                    "results are best with the mode it was trained on.",
                    NODE,
                    trained,
                    interpolation,
                )
            try:
                per_frame = chain_frame_embeddings(keys, frames, interpolation, predictor)  # [F, D]
            except ValueError as e:
                raise StoryError(f"{NODE}: {e}") from None
            latents = [encode_panel(vae, p, width, height, augmentation_level) for p in panels[:-1]]
        total = chain_length(len(panels), frames)
        if len(latents) == 1:
            concat = latents[0]  # one transition: the start image, exactly as core SVD
        else:
            concat = torch.cat([latents[i] for i in start_panel_of_frame(len(panels), frames)], dim=0)
        context = per_frame.unsqueeze(1)  # [F, 1, D]: one context (of one token) per frame
        values = {"motion_bucket_id": motion_bucket_id, "fps": fps, "augmentation_level": augmentation_level}
        positive = [[context, dict(values, concat_latent_image=concat)]]
        negative = [[torch.zeros_like(context), dict(values, concat_latent_image=torch.zeros_like(concat))]]
        latent = torch.zeros([total, 4, height // 8, width // 8])
        return (positive, negative, {"samples": latent}, total)


NODE_CLASS_MAPPINGS = {"StoryDiffTransitionSVD": StoryTransitionSVD}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffTransitionSVD": "Story Transition (SVD)"}
