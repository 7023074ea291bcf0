"""Comic Page node: panels (IMAGE batch) + captions -> page images (layout in story/comic_layout.py)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..story.comic_layout import CAPTION_POSITIONS, LAYOUTS, PageSpec, render_pages, split_captions
from .common import CATEGORY_ROOT, StoryError


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE [B, H, W, C] floats in 0..1 -> RGB PIL images."""
    arr = (images.detach().cpu().float().clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return [Image.fromarray(a[..., :3]) for a in arr]


def pil_to_tensor(pages: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(p.convert("RGB"), dtype=np.float32) / 255.0 for p in pages]))


class ComicPage:
    DESCRIPTION = (
        "Lays the story's panels out on comic pages with their captions: a 2x2 'four panel' grid, a 'classic "
        "strip' "
        "(rows of three, then two) or a 'single column'. Connect the decoded images and the Story Prompt's "
        "captions; "
        "more panels than one page holds continue on further pages (one output image per page). Captions are "
        "plain "
        "text, word-wrapped to the panel width."
    )
    CATEGORY = f"{CATEGORY_ROOT}"
    FUNCTION = "compose"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("pages",)
    OUTPUT_TOOLTIPS = (
        "The comic pages, one image per page, in story order: connect to Save Image or Preview Image.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": (
                    "IMAGE",
                    {"tooltip": "The panels in story order (e.g. VAE Decode of the story batch)."},
                ),
                "layout": (
                    list(LAYOUTS),
                    {
                        "default": "four panel",
                        "tooltip": "four panel = 2x2 grid; classic strip = rows of 3 then 2; single column = "
                        "full-width panels, as many as fit the page height.",
                    },
                ),
                "caption_position": (
                    list(CAPTION_POSITIONS),
                    {
                        "default": "under",
                        "tooltip": "Where each panel's caption goes; 'none' draws no captions.",
                    },
                ),
                "page_width": (
                    "INT",
                    {"default": 1024, "min": 128, "max": 8192, "step": 8, "tooltip": "Page width in pixels."},
                ),
                "page_height": (
                    "INT",
                    {
                        "default": 1024,
                        "min": 128,
                        "max": 8192,
                        "step": 8,
                        "tooltip": "Page height in pixels (single column: a taller page holds more panels).",
                    },
                ),
                "margin": (
                    "INT",
                    {
                        "default": 16,
                        "min": 0,
                        "max": 512,
                        "tooltip": "White space around the page and between panels, in pixels.",
                    },
                ),
                "font_size": (
                    "INT",
                    {
                        "default": 28,
                        "min": 6,
                        "max": 256,
                        "tooltip": "Caption text size in pixels; long captions wrap to the panel width.",
                    },
                ),
            },
            "optional": {
                "captions": (
                    "STRING",
                    {
                        "multiline": True,
                        "default": "",
                        "tooltip": "One caption per line, in panel order (an empty line = no caption): "
                        "connect the Story Prompt's captions output, or type them.",
                    },
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, page_width, page_height, margin):
        try:
            PageSpec(width=page_width, height=page_height, margin=margin).validate()
        except ValueError as e:
            return f"Comic Page: {e}."
        return True

    def compose(
        self, images, layout, caption_position, page_width, page_height, margin, font_size, captions=""
    ):
        if images is None or images.ndim != 4 or images.shape[0] == 0:
            raise StoryError(
                "Comic Page: the images input is empty; connect the decoded panels (VAE Decode) to 'images'."
            )
        spec = PageSpec(
            layout=layout,
            width=page_width,
            height=page_height,
            margin=margin,
            caption_position=caption_position,
            font_size=font_size,
        )
        try:
            spec.validate()
            lines = split_captions(captions or "", images.shape[0])
        except ValueError as e:
            raise StoryError(
                f"Comic Page: {e}. Connect the captions of the same Story Prompt that made the panels."
            ) from None
        pages = render_pages(tensor_to_pil(images), lines, spec)
        return (pil_to_tensor(pages),)


NODE_CLASS_MAPPINGS = {"StoryDiffComicPage": ComicPage}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffComicPage": "Comic Page"}
