"""Style presets for the Story Prompt: a positive template ("{prompt}" is the panel text) and a negative."""

from __future__ import annotations

NO_STYLE = "(No style)"

STYLES: dict[str, tuple[str, str]] = {
    NO_STYLE: ("{prompt}", ""),
    "Japanese Anime": (
        "anime artwork illustrating {prompt}, created by japanese anime studio, highly emotional, best "
        "quality, high resolution",
        "low quality, worst quality, blurry, deformed hands, extra limbs",
    ),
    "Digital/Oil Painting": (
        "{prompt}, (extremely detailed digital painting), soft painting, oil painting, concept art, high "
        "resolution",
        "anime, cartoon, photo, low quality, blurry",
    ),
    "Pixar/Disney Character": (
        "Create a Disney Pixar 3D style illustration of {prompt}, expressive, detailed, cinematic lighting",
        "lowres, bad anatomy, bad hands, text, blurry",
    ),
    "Photographic": (
        "cinematic photo {prompt}, 35mm photograph, film grain, bokeh, professional, highly detailed",
        "drawing, painting, crayon, sketch, graphite, impressionist, noisy, blurry, deformed, ugly",
    ),
    "Comic book": (
        "comic {prompt}, graphic illustration, comic art, graphic novel art, vibrant, highly detailed",
        "photograph, deformed, glitch, noisy, realistic, stock photo",
    ),
    "Line art": (
        "line art drawing {prompt}, professional, sleek, modern, minimalist, graphic, line art, vector "
        "graphics",
        "anime, photorealistic, 35mm film, deformed, glitch, blurry, noisy, colorful, realism",
    ),
    "Black and White Film Noir": (
        "{prompt}, black and white film noir, monochrome, high contrast, dramatic shadows, 1940s style",
        "color, anime, cartoon, low contrast, blurry",
    ),
    "Isometric Rooms": (
        "Tiny cute isometric {prompt}, in a cutaway box, soft smooth lighting, soft colors, 3d render",
        "photo, realistic, deformed, blurry",
    ),
}


def apply_style(style: str, prompt: str, negative: str = "") -> tuple[str, str]:
    """Return (positive, negative) for a panel prompt under a style preset."""
    if style not in STYLES:
        raise ValueError(f"unknown style '{style}'; choose one of: {', '.join(STYLES)}")
    template, style_negative = STYLES[style]
    positive = template.replace("{prompt}", prompt)
    parts = [p for p in (style_negative, negative.strip()) if p]
    return positive, ", ".join(parts)
