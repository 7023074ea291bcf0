"""Story Transition (SVD)'s input checks and the concat latent of a panel, exactly as core SVD makes it."""

from __future__ import annotations

import torch

import comfy.model_base
import comfy.utils

from .common import StoryError

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
