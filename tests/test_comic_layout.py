"""Comic page layout and caption text (pure Pillow, no ComfyUI)."""

import numpy as np
import pytest
from PIL import Image, ImageFont

from pack_loader import pure

layout = pure("story.comic_layout")
text = pure("story.comic_text")
PageSpec = layout.PageSpec


def solid(color, size=(64, 64)):
    return Image.new("RGB", size, color)


COLORS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (200, 200, 0), (0, 200, 200), (200, 0, 200), (90, 40, 10)]


def color_boxes(page: Image.Image, color) -> tuple[int, int, int, int] | None:
    """Bounding box (x0, y0, x1, y1) of the pixels close to `color`."""
    arr = np.asarray(page).astype(int)
    hit = np.abs(arr - np.array(color)).sum(-1) < 30
    if not hit.any():
        return None
    ys, xs = np.nonzero(hit)
    return xs.min(), ys.min(), xs.max(), ys.max()


def ink_rows(page, box):
    """Rows inside box holding dark (text) pixels."""
    x0, y0, x1, y1 = box
    arr = np.asarray(page.convert("L"))[y0:y1, x0:x1]
    return np.nonzero((arr < 100).any(1))[0] + y0


@pytest.mark.parametrize("name,per_page", [("four panel", 4), ("classic strip", 5)])
def test_fixed_layouts_hold_their_panel_count_and_overflow_to_more_pages(name, per_page):
    spec = PageSpec(layout=name, width=512, height=512, margin=8, font_size=14)
    panels = [solid(c) for c in COLORS]
    pages = layout.render_pages(panels, [f"caption {i}" for i in range(7)], spec)
    assert len(pages) == -(-7 // per_page)
    assert all(p.size == (512, 512) and p.mode == "RGB" for p in pages)
    # every panel appears exactly once, on the page it belongs to
    for i, color in enumerate(COLORS):
        for k, page in enumerate(pages):
            assert (color_boxes(page, color) is not None) == (k == i // per_page), (name, i, k)


def test_four_panel_is_a_two_by_two_grid_in_reading_order():
    spec = PageSpec(layout="four panel", width=400, height=400, margin=10, caption_position="none")
    pages = layout.render_pages([solid(c) for c in COLORS[:4]], "", spec)
    boxes = [color_boxes(pages[0], c) for c in COLORS[:4]]
    (ax, ay, *_), (bx, by, *_), (cx, cy, *_), (dx, dy, *_) = boxes
    assert ay == by < cy == dy and ax == cx < bx == dx
    # square panels in square cells, no caption: they fill the 185px cell (inside the margins),
    # framed by a 2px border
    assert boxes[0][0] == 10 + spec.border and boxes[0][2] - boxes[0][0] + 1 == 185 - 2 * spec.border


def test_classic_strip_rows_of_three_then_two_wider_panels():
    spec = PageSpec(layout="classic strip", width=900, height=600, margin=10, caption_position="none")
    panels = [solid(c, (96, 64)) for c in COLORS[:5]]
    page = layout.render_pages(panels, None, spec)[0]
    boxes = [color_boxes(page, c) for c in COLORS[:5]]
    tops = [b[1] for b in boxes]
    assert tops[0] == tops[1] == tops[2] < tops[3] == tops[4]
    widths = [b[2] - b[0] for b in boxes]
    assert widths[3] > widths[0] * 1.2  # the second row's panels are wider


def test_single_column_fits_as_many_full_width_panels_as_the_page_height_allows():
    tall = PageSpec(layout="single column", width=300, height=1000, margin=10, font_size=12)
    assert layout.panels_per_page(tall, (64, 64)) == 3  # 280px-high panels + caption line
    short = PageSpec(layout="single column", width=300, height=200, margin=10, font_size=12)
    assert layout.panels_per_page(short, (64, 64)) == 1  # never zero: the panel shrinks
    pages = layout.render_pages([solid(c) for c in COLORS[:4]], "a\nb\nc\nd", tall)
    assert len(pages) == 2
    b0, b1 = color_boxes(pages[0], COLORS[0]), color_boxes(pages[0], COLORS[1])
    assert b0[0] == b1[0] and b1[1] > b0[3]  # stacked in one column


@pytest.mark.parametrize("position", ["under", "over"])
def test_caption_is_drawn_on_the_requested_side(position):
    spec = PageSpec(
        layout="four panel", width=400, height=400, margin=10, font_size=16, caption_position=position
    )
    page = layout.render_pages([solid(COLORS[0])], ["Hello there"], spec)[0]
    x0, y0, x1, y1 = color_boxes(page, COLORS[0])
    cell_bottom = 10 + (400 - 30) // 2
    above, below = (
        ink_rows(page, (x0 + 4, 10, x1 - 4, y0 - 3)),
        ink_rows(page, (x0 + 4, y1 + 3, x1 - 4, cell_bottom)),
    )
    if position == "under":
        assert len(below) > 5 and len(above) == 0
    else:
        assert len(above) > 5 and len(below) == 0


def test_no_caption_position_none_and_empty_captions_leave_the_panel_full_height():
    spec = PageSpec(layout="four panel", width=400, height=400, margin=10, font_size=16)
    with_text = layout.render_pages([solid(COLORS[0])], "some caption", spec)[0]
    empty = layout.render_pages([solid(COLORS[0])], "", spec)[0]
    none = layout.render_pages(
        [solid(COLORS[0])], "some caption", PageSpec(**{**spec.__dict__, "caption_position": "none"})
    )[0]
    h = lambda p: color_boxes(p, COLORS[0])[3] - color_boxes(p, COLORS[0])[1]  # noqa: E731
    assert h(empty) == h(none) > h(with_text)
    assert np.array_equal(np.asarray(empty), np.asarray(none))


def test_captions_are_plain_text_and_markup_is_drawn_literally():
    font = text.load_font(20)
    assert text.wrap_text("<b>bold</b> *x* [Bob] {y}", font, 1000) == ["<b>bold</b> *x* [Bob] {y}"]
    assert text.clean_caption("tab\there\rcr\x00nul") == "tab here cr nul"


def test_long_caption_wraps_within_the_width_and_breaks_long_words():
    font = text.load_font(16)
    caption = (
        "The bus is late again and the rain does not stop " * 3 + "Supercalifragilisticexpialidocious" * 3
    )
    lines = text.wrap_text(caption, font, 150)
    assert len(lines) > 4
    assert all(font.getlength(line) <= 150 for line in lines)
    assert "".join(lines).replace(" ", "") == " ".join(caption.split()).replace(" ", "")


def test_overlong_caption_is_cut_with_an_ellipsis_inside_the_cell():
    spec = PageSpec(layout="four panel", width=300, height=300, margin=6, font_size=14)
    page = layout.render_pages([solid(COLORS[2])], ["word " * 400], spec)[0]
    x0, y0, x1, y1 = color_boxes(page, COLORS[2])
    cell_h = (300 - 18) // 2
    assert y1 - y0 >= cell_h * (1 - layout.MAX_CAPTION_SHARE) - 4  # the panel keeps >= 60 % of the cell
    ink = ink_rows(page, (6, y1 + 3, 6 + (300 - 18) // 2, 6 + cell_h))
    assert len(ink) and ink.max() < 6 + cell_h  # text stays in its cell
    lines = text.fit_lines(text.wrap_text("word " * 400, text.load_font(14), 100), text.load_font(14), 100, 3)
    assert len(lines) == 3 and lines[-1].endswith(text.ELLIPSIS)


def test_unicode_captions_render_with_a_truetype_font():
    path = text.find_font_file()
    if path is None:
        pytest.skip("no TrueType font on this machine (install fonts-dejavu-core)")
    font = text.load_font(20, path)
    assert isinstance(font, ImageFont.FreeTypeFont) and not font.getname()[0].startswith("Aileron")
    spec = PageSpec(layout="four panel", width=300, height=300, margin=6, font_size=20, font_path=path)
    for caption in ("Grüße, Ærøskøbing — naïve café", "Привет, мир", "Ωμέγα λ≠μ"):
        page = layout.render_pages([solid(COLORS[1])], [caption], spec)[0]
        assert len(ink_rows(page, (6, 100, 150, 150))) > 5, caption


def test_fallback_font_is_pillows_builtin_scalable_font(monkeypatch, tmp_path):
    monkeypatch.setenv(text.FONT_ENV, "")
    assert text.find_font_file(candidates=(str(tmp_path / "missing.ttf"),)) is None
    font = text._load(None, 30)
    assert font.getbbox("Hg")[3] > text._load(None, 10).getbbox("Hg")[3]  # the size is honoured
    own = tmp_path / "mine.ttf"
    if text.find_font_file():
        own.write_bytes(open(text.find_font_file(), "rb").read())
        monkeypatch.setenv(text.FONT_ENV, str(own))
        assert text.find_font_file() == str(own)


def test_caption_lines_must_match_the_panels():
    assert layout.split_captions("a\n\nc", 4) == ["a", "", "c", ""]
    assert layout.split_captions("a\r\nb\n", 2) == ["a", "b"]  # a trailing newline is not a caption
    with pytest.raises(ValueError, match="3 caption lines for 2 panels"):
        layout.split_captions("a\nb\nc", 2)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layout": "manga"}, "layout must be one of"),
        ({"caption_position": "left"}, "caption position"),
        ({"width": 40, "margin": 16}, "no room for panels"),
    ],
)
def test_bad_page_specs_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        layout.render_pages([solid(COLORS[0])], "", PageSpec(**kwargs))


def test_cjk_captions_get_a_cjk_font_when_one_is_installed(tmp_path):
    base = text.find_font_file()
    if base is None:
        pytest.skip("no TrueType font on this machine")
    stand_in = tmp_path / "cjk.ttf"  # any TrueType file stands in for the CJK font here
    stand_in.write_bytes(open(base, "rb").read())
    assert (
        text.has_cjk("你好")
        and text.has_cjk("こんにちは")
        and text.has_cjk("안녕")
        and not text.has_cjk("Grüße Ωμέγα")
    )
    cjk = text.font_for_text("你好，世界", 20, cjk_candidates=(str(tmp_path / "missing.ttc"), str(stand_in)))
    assert cjk.path == str(stand_in)
    assert text.font_for_text("hello", 20, cjk_candidates=(str(stand_in),)).path == base
    assert text.font_for_text("你好", 20, cjk_candidates=()).path == base  # none installed: the usual font
    assert (
        text.font_for_text("你好", 20, path=base, cjk_candidates=(str(stand_in),)).path == base
    )  # a chosen font wins


def test_panel_and_caption_are_centred_together_in_their_cell():
    spec = PageSpec(
        layout="single column", width=300, height=900, margin=10, font_size=14, caption_position="over"
    )
    page = layout.render_pages([solid(COLORS[0], (256, 256))], ["top caption"], spec)[0]
    rows = layout.page_rows(spec, (256, 256))
    cell = layout.page_cells(spec, (256, 256))[0][0]
    x0, y0, x1, y1 = color_boxes(page, COLORS[0])
    ink = ink_rows(page, (cell.x, cell.y, cell.x + cell.w, y0 - 3))
    assert len(rows) == 2 and len(ink)
    above, below = ink.min() - cell.y, cell.y + cell.h - y1
    assert abs(above - below) <= spec.font_size  # the block (caption + panel) sits in the middle
