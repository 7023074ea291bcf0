"""Comic pages from panels and captions, without ComfyUI (Pillow only).

Layouts (what StoryDiffusion users know):

* ``four panel``: a 2x2 grid, four panels per page.
* ``classic strip``: rows of three panels, then two wider ones, five panels per page.
* ``single column``: one panel per row at full width, as many rows as fit the page height
  (at least one; a tall page gives a scrolling-comic strip).

Each panel is scaled to fit its cell (aspect ratio kept, never cropped) and framed; its caption
is drawn as plain text under or over it, word-wrapped to the cell width, and panel + caption
sit centred in the cell. A caption band never
takes more than 40 % of a cell: a caption longer than that ends with an ellipsis. More panels
than a page holds continue on further pages; unused cells of the last page stay blank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from .comic_text import fit_lines, font_for_text, line_height, load_font, wrap_text

LAYOUT_ROWS = {  # panels per row, row by row, for one page
    "four panel": (2, 2),
    "classic strip": (3, 2),
    "single column": None,  # rows depend on the page height (rows_for_single_column)
}
LAYOUTS = tuple(LAYOUT_ROWS)
CAPTION_POSITIONS = ("under", "over", "none")
MAX_CAPTION_SHARE = 0.4
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


@dataclass(frozen=True)
class PageSpec:
    layout: str = "four panel"
    width: int = 1024
    height: int = 1024
    margin: int = 16
    caption_position: str = "under"
    font_size: int = 28
    border: int = 2
    font_path: str | None = None

    def validate(self) -> None:
        if self.layout not in LAYOUT_ROWS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        if self.caption_position not in CAPTION_POSITIONS:
            raise ValueError(
                f"caption position must be one of {', '.join(CAPTION_POSITIONS)}, not "
                f"{self.caption_position!r}"
            )
        if self.margin < 0 or self.font_size < 1 or self.border < 0:
            raise ValueError("margin and border must be >= 0 and the font size >= 1")
        smallest = 3 * self.margin + 16
        if self.width < smallest or self.height < smallest:
            raise ValueError(
                f"a {self.width}x{self.height} page leaves no room for panels with a {self.margin}px margin; "
                f"make the page at least {smallest}px each way or the margin smaller"
            )


@dataclass(frozen=True)
class Cell:
    x: int
    y: int
    w: int
    h: int


def _padding(spec: PageSpec) -> int:
    return max(2, spec.font_size // 4)


def rows_for_single_column(spec: PageSpec, panel_size: tuple[int, int]) -> int:
    """How many full-width panels (with a one-line caption) fit one page, at least 1."""
    pw, ph = panel_size
    inner_w = spec.width - 2 * spec.margin
    band = (
        0
        if spec.caption_position == "none"
        else line_height(load_font(spec.font_size, spec.font_path)) + 2 * _padding(spec)
    )
    row_h = inner_w * ph / max(pw, 1) + band
    return max(1, int((spec.height - spec.margin) // (row_h + spec.margin)))


def page_rows(spec: PageSpec, panel_size: tuple[int, int]) -> tuple[int, ...]:
    rows = LAYOUT_ROWS[spec.layout]
    return rows if rows is not None else (1,) * rows_for_single_column(spec, panel_size)


def panels_per_page(spec: PageSpec, panel_size: tuple[int, int]) -> int:
    return sum(page_rows(spec, panel_size))


def page_cells(spec: PageSpec, panel_size: tuple[int, int]) -> list[list[Cell]]:
    """The cells of one page, row by row; margins around and between all cells."""
    rows = page_rows(spec, panel_size)
    m = spec.margin
    row_h = (spec.height - m * (len(rows) + 1)) // len(rows)
    top = (spec.height - (row_h * len(rows) + m * (len(rows) + 1))) // 2 + m  # centre the leftover pixels
    grid = []
    for r, count in enumerate(rows):
        cell_w = (spec.width - m * (count + 1)) // count  # equal integer cells: panels of a row match
        left = (spec.width - (cell_w * count + m * (count + 1))) // 2 + m
        y = top + r * (row_h + m)
        grid.append([Cell(left + c * (cell_w + m), y, cell_w, row_h) for c in range(count)])
    return grid


def split_captions(captions: str | list[str] | None, count: int) -> list[str]:
    """One caption per panel: a string splits on newlines (empty lines = no caption), padded with ''."""
    if captions is None:
        lines: list[str] = []
    elif isinstance(captions, str):
        lines = captions.replace("\r\n", "\n").replace("\r", "\n").split("\n") if captions else []
    else:
        lines = [str(c) for c in captions]
    extra = [c for c in lines[count:] if c.strip()]
    if extra:
        raise ValueError(
            f"{len(lines)} caption lines for {count} panels (one caption line per panel, in order); "
            f"the first unmatched caption is {extra[0]!r}"
        )
    return (lines + [""] * count)[:count]


def _fit(image: Image.Image, w: int, h: int) -> Image.Image:
    scale = min(w / image.width, h / image.height)
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def _caption_lines(spec: PageSpec, captions: list[str], cell: Cell) -> list[tuple[Any, list[str]]]:
    """(font, wrapped lines) per caption; at most MAX_CAPTION_SHARE of the cell height."""
    if spec.caption_position == "none":
        return [(None, []) for _ in captions]
    pad = _padding(spec)
    text_w = max(1, cell.w - 2 * pad)
    out = []
    for caption in captions:
        font = font_for_text(caption, spec.font_size, spec.font_path)
        max_lines = max(1, int((cell.h * MAX_CAPTION_SHARE - 2 * pad) // line_height(font)))
        out.append((font, fit_lines(wrap_text(caption, font, text_w), font, text_w, max_lines)))
    return out


def _draw_row(
    page: Image.Image, spec: PageSpec, row: list[Cell], panels: list[Image.Image], captions: list[str]
) -> None:
    """One row: every panel with its caption block, centred in its cell, captions on the chosen side."""
    draw = ImageDraw.Draw(page)
    pad = _padding(spec)
    texts = _caption_lines(spec, captions, row[0])
    lh = max((line_height(f) for f, lines in texts if lines), default=0)
    n_lines = max(len(lines) for _, lines in texts)
    band = n_lines * lh + 2 * pad if n_lines else 0  # one band height per row keeps the panels aligned
    over = spec.caption_position == "over"
    for cell, panel, (font, lines) in zip(row, panels, texts, strict=False):
        fitted = _fit(panel, cell.w, max(1, cell.h - band))
        top = cell.y + (cell.h - fitted.height - band) // 2
        x = cell.x + (cell.w - fitted.width) // 2
        img_top = top + band if over else top
        page.paste(fitted, (x, img_top))
        if spec.border:
            draw.rectangle(
                (x, img_top, x + fitted.width - 1, img_top + fitted.height - 1),
                outline=INK,
                width=spec.border,
            )
        text_top = top + pad if over else img_top + fitted.height + pad
        for i, line in enumerate(lines):
            draw.text(
                (cell.x + (cell.w - font.getlength(line)) / 2, text_top + i * lh), line, font=font, fill=INK
            )


def render_pages(panels: list[Image.Image], captions: list[str], spec: PageSpec) -> list[Image.Image]:
    """Lay `panels` (PIL images) with their `captions` onto as many pages as needed."""
    spec.validate()
    if not panels:
        raise ValueError("no panels to lay out")
    captions = split_captions(captions, len(panels))
    size = panels[0].size
    grid = page_cells(spec, size)
    per_page = sum(len(r) for r in grid)
    pages = []
    for start in range(0, len(panels), per_page):
        page = Image.new("RGB", (spec.width, spec.height), BACKGROUND)
        i = start
        for row in grid:
            take = panels[i : i + len(row)]
            if not take:
                break
            _draw_row(
                page, spec, row[: len(take)], [p.convert("RGB") for p in take], captions[i : i + len(take)]
            )
            i += len(take)
        pages.append(page)
    return pages


def page_count(n_panels: int, spec: PageSpec, panel_size: tuple[int, int]) -> int:
    return math.ceil(n_panels / panels_per_page(spec, panel_size))
