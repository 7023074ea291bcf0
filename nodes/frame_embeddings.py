"""Encode Frame Embeddings: the frames of a clip through CLIP_VISION into a training file for the
predictor."""

from __future__ import annotations

import os

import torch

import comfy.utils
import folder_paths

from ..motion.dataset import save_frame_embeddings
from .common import CATEGORY_ROOT, StoryError

CHUNK = 16  # frames per encode_image call


def encode_frames(clip_vision, images: torch.Tensor, crop: bool, progress=None) -> torch.Tensor:
    """[frames, dim] CLIP image embeddings of an IMAGE batch, encoded in chunks."""
    out = []
    for i in range(0, images.shape[0], CHUNK):
        with torch.no_grad():
            out.append(
                clip_vision.encode_image(images[i : i + CHUNK], crop=crop).image_embeds.detach().float().cpu()
            )
        if progress is not None:
            progress.update_absolute(min(i + CHUNK, images.shape[0]), images.shape[0])
    return torch.cat(out, dim=0)


class EncodeFrameEmbeddings:
    DESCRIPTION = (
        "Training data for your own motion predictor: the frames of one video clip (an IMAGE batch from any "
        "video "
        "or image-sequence loader) go through your CLIP_VISION (for SVD: the ViT-H the SVD checkpoint "
        "carries) and "
        "are saved as one embeddings .safetensors file in the output folder. Collect a folder of clips, then "
        "run "
        "`python -m motion.train --data <folder> --out models/motion_predictor/<name>.safetensors` (see the "
        "README)."
    )
    CATEGORY = f"{CATEGORY_ROOT}/video"
    FUNCTION = "encode"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Full path of the written embeddings file.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip_vision": (
                    "CLIP_VISION",
                    {
                        "tooltip": "The image encoder whose embeddings the video model uses (SVD: its own "
                        "ViT-H)."
                    },
                ),
                "images": ("IMAGE", {"tooltip": "The frames of ONE clip, in order (at least 3)."}),
                "filename_prefix": (
                    "STRING",
                    {
                        "default": "motion_embeddings/clip",
                        "tooltip": "File name prefix inside the output folder; a counter is appended.",
                    },
                ),
                "crop": (
                    ["center", "none"],
                    {
                        "default": "center",
                        "tooltip": "Centre-crop to a square before encoding (as CLIP Vision Encode and SVD "
                        "do) or squash.",
                    },
                ),
            }
        }

    def encode(self, clip_vision, images, filename_prefix: str, crop: str):
        if clip_vision is None:
            raise StoryError(
                "Encode Frame Embeddings: clip_vision is empty; connect a CLIP_VISION (e.g. from Image Only "
                "Checkpoint Loader)."
            )
        if images.dim() != 4 or images.shape[0] < 3:
            raise StoryError(
                f"Encode Frame Embeddings: images holds {images.shape[0] if images.dim() == 4 else 0} "
                f"frame(s); "
                "a training clip needs at least 3 frames (start, inner, end). Load the clip's frames as a "
                "batch."
            )
        embeds = encode_frames(
            clip_vision, images, crop == "center", comfy.utils.ProgressBar(images.shape[0])
        )
        out_dir = folder_paths.get_output_directory()
        full_dir, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
        path = os.path.join(full_dir, f"{name}_{counter:05}_.safetensors")
        save_frame_embeddings(
            embeds,
            path,
            {
                "source": "StoryDiffEncodeFrameEmbeddings",
                "crop": crop,
                "height": images.shape[1],
                "width": images.shape[2],
            },
        )
        return {"ui": {"text": [path]}, "result": (path,)}


NODE_CLASS_MAPPINGS = {"StoryDiffEncodeFrameEmbeddings": EncodeFrameEmbeddings}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffEncodeFrameEmbeddings": "Encode Frame Embeddings"}
