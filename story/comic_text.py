"""Caption text for comic pages, without ComfyUI: font lookup and word wrapping.

Captions are drawn as plain text: nothing in them is interpreted (no markup, no escapes);
control characters are turned into spaces so a stray tab or carriage return cannot break
the layout.

Fonts: the first TrueType font found among STORYDIFF_FONT (an environment variable naming a
.ttf/.otf file), the DejaVu Sans of most Linux distributions (Debian: fonts-dejavu-core), and
the usual macOS / Windows sans-serif fonts. Without any of them, Pillow's built-in font
(``ImageFont.load_default(size=...)``, Pillow >= 10.1) is used: it scales, but covers Latin
script only, so install DejaVu (or point STORYDIFF_FONT at a font) for other scripts.
"""

from __future__ import annotations

import os
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import ImageFont

FONT_ENV = "STORYDIFF_FONT"
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",  # Debian / Ubuntu
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",  # Fedora / Arch
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/Library/Fonts/Arial Unicode.ttf",  # macOS
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",  # Windows
)
CJK_FONT_CANDIDATES = (  # DejaVu has no Chinese/Japanese/Korean glyphs: captions using them get one of these
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian: fonts-noto-cjk
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # Debian: fonts-wqy-zenhei
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",  # macOS
    "C:/Windows/Fonts/msyh.ttc",  # Windows
)
CJK_RANGES = ((0x2E80, 0x9FFF), (0xAC00, 0xD7AF), (0xF900, 0xFAFF), (0xFF00, 0xFFEF), (0x20000, 0x2FA1F))
ELLIPSIS = "\u2026"


def find_font_file(candidates=FONT_CANDIDATES) -> str | None:
    """The path of the first usable TrueType font, or None (then Pillow's built-in font is used)."""
    env = os.environ.get(FONT_ENV, "").strip()
    for path in ([env] if env else []) + list(candidates):
        if path and Path(path).is_file():
            return path
    return None


@lru_cache(maxsize=32)
def _load(path: str | None, size: int):
    if path:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


def load_font(size: int, path: str | None = None):
    """A font of `size` pixels: `path`, else find_font_file(), else Pillow's built-in font."""
    return _load(path or find_font_file(), int(size))


def has_cjk(text: str) -> bool:
    return any(lo <= ord(ch) <= hi for ch in text for lo, hi in CJK_RANGES)


def font_for_text(text: str, size: int, path: str | None = None, cjk_candidates=CJK_FONT_CANDIDATES) -> Any:
    """The font for one caption: `path` when given; for Chinese/Japanese/Korean text the first
    CJK font found (when none is installed, the usual font: those characters show as boxes)."""
    if not path and has_cjk(text):
        cjk = next((c for c in cjk_candidates if Path(c).is_file()), None)
        if cjk:
            return _load(cjk, int(size))
    return load_font(size, path)


def clean_caption(text: str) -> str:
    """One line of plain text: control characters (tabs, CR, zero-width format marks kept) -> spaces."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        out.append(" " if cat == "Cc" else ch)
    return " ".join("".join(out).split())


def _split_long_word(word: str, font, width: int) -> list[str]:
    """Break a word wider than `width` into pieces that fit (at least one character each)."""
    pieces, current = [], ""
    for ch in word:
        if current and font.getlength(current + ch) > width:
            pieces.append(current)
            current = ch
        else:
            current += ch
    if current:
        pieces.append(current)
    return pieces


def wrap_text(text: str, font, width: int) -> list[str]:
    """Greedy word wrap of `text` into lines no wider than `width` pixels.

    Words longer than a line (or scripts written without spaces) break between characters.
    """
    text = clean_caption(text)
    if not text:
        return []
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        if font.getlength(word) <= width:
            current = word
        else:
            *full, current = _split_long_word(word, font, width)
            lines.extend(full)
    if current:
        lines.append(current)
    return lines


def fit_lines(lines: list[str], font, width: int, max_lines: int) -> list[str]:
    """At most `max_lines` lines; when cut, the last one ends with an ellipsis that fits."""
    if max_lines <= 0:
        return []
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    last = kept[-1]
    while last and font.getlength(last + ELLIPSIS) > width:
        last = last[:-1]
    kept[-1] = last.rstrip() + ELLIPSIS
    return kept


def line_height(font) -> int:
    """Pixels from one baseline to the next for `font`."""
    ascent, descent = font.getmetrics()
    return int(round((ascent + descent) * 1.15))
