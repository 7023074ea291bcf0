"""A legend under each image of the mask preview: the panel's number, then one colour swatch per
character with its name (characters absent from the panel greyed out). Pure Pillow + torch."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .comic_text import font_for_text, line_height

BAND_BG = (24, 24, 28)
TEXT = (235, 235, 235)
ABSENT = (120, 120, 125)


def legend_height(width: int) -> int:
    return max(18, width // 12)


def legend_band(
    width: int, panel: int, names: list[str], colours: list[tuple[float, float, float]], present: list[bool]
) -> Image.Image:
    """One legend band, `width` pixels wide: 'panel N' and a swatch + name per character."""
    height = legend_height(width)
    size = max(9, int(height * 0.55))
    band = Image.new("RGB", (width, height), BAND_BG)
    draw = ImageDraw.Draw(band)
    label = f"panel {panel}"
    font = font_for_text(label + "".join(names), size)
    y = (height - line_height(font)) // 2
    x = max(3, height // 4)
    draw.text((x, y), label, font=font, fill=TEXT)
    x += int(draw.textlength(label, font=font)) + height // 2
    box = int(height * 0.5)
    for name, colour, here in zip(names, colours, present, strict=True):
        fill = tuple(int(round(c * 255)) for c in colour)
        top = (height - box) // 2
        draw.rectangle(
            (x, top, x + box - 1, top + box - 1),
            fill=fill if here else BAND_BG,
            outline=fill,
            width=max(1, box // 6),
        )
        x += box + max(2, box // 3)
        draw.text((x, y), name, font=font, fill=TEXT if here else ABSENT)
        x += int(draw.textlength(name, font=font)) + height // 2
    return band


def with_legend(
    preview: torch.Tensor,
    names: list[str],
    colours: list[tuple[float, float, float]],
    present: list[list[bool]],
) -> torch.Tensor:
    """IMAGE [P, H, W, 3] -> [P, H + band, W, 3] with a legend band under each panel's image;
    present[p][k]: character k is tagged in panel p."""
    P, H, W, _ = preview.shape
    bands = [
        torch.from_numpy(
            np.asarray(legend_band(W, p + 1, names, colours, present[p]), dtype=np.float32) / 255.0
        )
        for p in range(P)
    ]
    return torch.cat([preview, torch.stack(bands).to(preview.dtype)], dim=1)
