"""Pillow drawing of a Picture: flat colours, a dark outline, one scene and up to two characters
(drawn on a CANVAS-sized canvas, box-filtered down to SIZE)."""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .vocabulary import CANVAS, HAIR, SHIRT, SIZE, Character, Picture

SKIN = (236, 188, 150)
TROUSERS = (45, 45, 70)
OUTLINE = (15, 15, 15)
CENTRE_X = {"left": 36, "right": 92}
GROUND_Y = 112


def _scene(d: ImageDraw.ImageDraw, scene: str, rng: random.Random) -> None:
    S = CANVAS
    if scene == "beach":
        d.rectangle([0, 0, S, 62], fill=(140, 205, 245))
        d.rectangle([0, 62, S, 80], fill=(30, 105, 190))
        d.rectangle([0, 80, S, S], fill=(235, 215, 150))
        x = rng.randint(10, 118)
        d.ellipse([x - 7, 8, x + 7, 22], fill=(255, 240, 120))
    elif scene == "forest":
        d.rectangle([0, 0, S, S], fill=(175, 215, 170))
        d.rectangle([0, 92, S, S], fill=(55, 115, 45))
        for _ in range(rng.randint(3, 5)):
            x, h = rng.randint(0, S), rng.randint(45, 70)
            d.rectangle([x - 3, 92 - h // 2, x + 3, 95], fill=(105, 65, 30))
            d.ellipse([x - 16, 92 - h - 10, x + 16, 92 - h // 2 + 8], fill=(30, 95, 40))
    elif scene == "city":
        d.rectangle([0, 0, S, S], fill=(195, 195, 205))
        x = -rng.randint(0, 10)
        while x < S:
            w, h = rng.randint(18, 30), rng.randint(40, 80)
            d.rectangle(
                [x, 96 - h, x + w, 96], fill=rng.choice([(95, 95, 110), (125, 110, 105), (80, 85, 95)])
            )
            for wy in range(96 - h + 6, 90, 10):
                for wx in range(x + 4, x + w - 4, 8):
                    d.rectangle([wx, wy, wx + 3, wy + 4], fill=(250, 230, 120))
            x += w + rng.randint(1, 6)
        d.rectangle([0, 96, S, S], fill=(60, 60, 62))
    elif scene == "night":
        d.rectangle([0, 0, S, S], fill=(15, 20, 60))
        for _ in range(14):
            x, y = rng.randint(0, S), rng.randint(0, 60)
            d.rectangle([x, y, x + 1, y + 1], fill=(255, 255, 255))
        x = rng.randint(14, 114)
        d.ellipse([x - 9, 8, x + 9, 26], fill=(245, 245, 205))
        d.rectangle([0, 96, S, S], fill=(30, 38, 55))
    elif scene == "room":
        d.rectangle([0, 0, S, S], fill=(235, 205, 205))
        x = rng.randint(10, 80)
        d.rectangle([x, 18, x + 36, 50], fill=(240, 240, 240), outline=(120, 80, 50), width=3)
        d.rectangle([x + 3, 21, x + 33, 47], fill=(150, 200, 240))
        d.rectangle([0, 92, S, S], fill=(140, 90, 50))
    else:
        raise ValueError(f"unknown scene {scene!r}")


def _character(d: ImageDraw.ImageDraw, c: Character) -> None:
    s = c.scale
    cx = CENTRE_X[c.position] + c.dx
    foot = GROUND_Y + c.dy

    def y(v):  # height above the feet, scaled
        return foot - v * s

    def x(v):
        return cx + v * s

    hair, shirt = HAIR[c.hair], SHIRT[c.shirt]
    head_r = 11 * s
    head_cy = y(64)
    if c.kind == "girl":  # long hair behind the head and shoulders
        d.rectangle([x(-14), y(66), x(14), y(36)], fill=hair, outline=OUTLINE)
    # legs
    d.rectangle([x(-9), y(26), x(-1), y(0)], fill=TROUSERS, outline=OUTLINE)
    d.rectangle([x(1), y(26), x(9), y(0)], fill=TROUSERS, outline=OUTLINE)
    # arms, then the body (shirt)
    d.rectangle([x(-17), y(50), x(-11), y(28)], fill=shirt, outline=OUTLINE)
    d.rectangle([x(11), y(50), x(17), y(28)], fill=shirt, outline=OUTLINE)
    d.rectangle([x(-12), y(52), x(12), y(24)], fill=shirt, outline=OUTLINE)
    if c.pattern == "striped":
        for k in range(3):
            top = y(47 - 8 * k)
            d.rectangle([x(-11), top, x(11), top + 3 * s], fill=(250, 250, 250))
    # head and hair cap
    d.ellipse([cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r], fill=SKIN, outline=OUTLINE)
    d.chord(
        [cx - head_r - 1, head_cy - head_r - 3, cx + head_r + 1, head_cy + head_r - 2],
        180,
        360,
        fill=hair,
        outline=OUTLINE,
    )
    d.rectangle([x(-3), y(63), x(-1), y(61)], fill=OUTLINE)
    d.rectangle([x(1), y(63), x(3), y(61)], fill=OUTLINE)


def draw(picture: Picture) -> Image.Image:
    """The picture as a SIZE x SIZE RGB image (deterministic for equal pictures)."""
    img = Image.new("RGB", (CANVAS, CANVAS))
    d = ImageDraw.Draw(img)
    _scene(d, picture.scene, random.Random(picture.variant))
    for c in picture.characters:
        _character(d, c)
    return img.resize((SIZE, SIZE), Image.Resampling.BOX) if SIZE != CANVAS else img
