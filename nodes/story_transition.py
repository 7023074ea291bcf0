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

import comfy.model_base
import comfy.utils

import nodes as comfy_nodes

from ..motion.chain import chain_frame_embeddings, start_panel_of_frame
from ..motion.interpolation import MODES, chain_length
from .common import CATEGORY_ROOT, StoryError

NODE = "Story Transition (SVD)"
SVD_EMBED_DIM = 1024  # SVD's cross-attention context: ViT-H/14 image_embeds
MAX_FRAMES = 4096


def check_frames(frames) -> str | None:
    try:
        frames = int(frames)
    except (TypeError, ValueError):
        return f"{NODE}: frames must be a whole number, got {frames!r}."
    if frames < 2:
        return (
            f"{NODE}: frames is {frames}; a transition needs at least 2 frames (its start and end panel). "
            "Use 14 or 25 for SVD."
        )
    if frames > MAX_FRAMES:
        return f"{NODE}: frames is {frames}; at most {MAX_FRAMES}."
    return None


def panels_from_inputs(start_image, end_image) -> list[torch.Tensor]:
    """The key images in order, each [1, H, W, C]: the start batch, then the end batch."""
    panels = [start_image[i : i + 1] for i in range(start_image.shape[0])]
    if end_image is not None:
        panels += [end_image[i : i + 1] for i in range(end_image.shape[0])]
    if len(panels) < 2:
        raise StoryError(
            f"{NODE}: only one image; connect end_image, or pass a batch of at least 2 panels as "
            "start_image (for a single still image use the core SVD_img2vid_Conditioning node)."
        )
    return panels


def check_model(model) -> None:
    if model is None:
        return
    base = getattr(model, "model", None)
    if not isinstance(base, comfy.model_base.SVD_img2vid):
        kind = type(base).__name__ if base is not None else type(model).__name__
        raise StoryError(
            f"{NODE}: model is a {kind} model, not Stable Video Diffusion. This conditioning (per-frame "
            "1024-d image embeddings + a concat latent) only works on an SVD img2vid checkpoint: load one "
            "with Image Only Checkpoint Loader and sample with that MODEL."
        )


def check_predictor(predictor, dim: int, frames: int) -> None:
    if predictor is None:
        return
    config = getattr(predictor, "config", None)
    if config is None:
        raise StoryError(f"{NODE}: predictor is not a motion predictor; connect Load Motion Predictor.")
    if config.embed_dim != dim:
        raise StoryError(
            f"{NODE}: the predictor works on {config.embed_dim}-d embeddings but clip_vision gives {dim}-d; "
            "train the predictor on embeddings of this CLIP vision model."
        )
    if frames > config.max_frames:
        raise StoryError(
            f"{NODE}: frames is {frames} but this predictor handles at most {config.max_frames} frames per "
            "transition; lower frames or train with a larger --max-frames."
        )


def encode_panel(vae, image, width: int, height: int, augmentation_level: float) -> torch.Tensor:
    """The concat latent of one panel, exactly as core SVD_img2vid_Conditioning computes it."""
    pixels = comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(
        1, -1
    )
    encode_pixels = pixels[:, :, :, :3]
    if augmentation_level > 0:
        encode_pixels = encode_pixels + torch.randn_like(encode_pixels) * augmentation_level
    return vae.encode(encode_pixels)


class StoryTransitionSVD:
    DESCRIPTION = (
        "Turns story panels into one smooth video through Stable Video Diffusion. Give a start and an end image, or "
        "a batch of N panels for N-1 chained transitions (consecutive transitions share their join frame: "
        "(N-1)*(frames-1)+1 frames in all). Every frame gets its own CLIP image embedding, interpolated between its "
        "panels (optionally refined by a motion predictor), and the start panel of its transition as concat image. "
        "Needs an SVD img2vid model on the KSampler (e.g. from Image Only Checkpoint Loader); an SD1.5/SDXL model "
        "cannot use this conditioning. All images are resized (centre crop) to width x height, so start and end may "
        "differ in size."
    )
    CATEGORY = f"{CATEGORY_ROOT}/video"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT", "INT")
    RETURN_NAMES = ("positive", "negative", "latent", "frame_count")
    OUTPUT_TOOLTIPS = (
        "Per-frame image embeddings [frames, 1, 1024] with the concat latent, motion bucket, fps and augmentation.",
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
                        "tooltip": "The ViT-H image encoder of the SVD checkpoint (Image Only Checkpoint Loader)."
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
                        "tooltip": "How embeddings move between panels: straight line, or along the sphere (keeps the norm).",
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
                        "tooltip": "Optional: the MODEL you sample with, checked to be SVD before sampling starts."
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
                f"{NODE}: connect clip_vision and vae (both come from Image Only Checkpoint Loader with an SVD checkpoint)."
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
