"""The template browser's thumbnail for a UI-format workflow: a drawing of its nodes (Pillow)."""

from __future__ import annotations

from workflow_graph import PACK_ID


def _font(size: int, bold: bool = False):
    from PIL import ImageFont

    for name in (("DejaVuSans-Bold.ttf",) if bold else ()) + ("DejaVuSans.ttf",):
        try:
            return ImageFont.truetype(f"/usr/share/fonts/truetype/dejavu/{name}", size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def draw_thumbnail(ui: dict, heading: str, size=(512, 384)):
    """The template browser's thumbnail: the workflow's nodes as a flow of titled boxes
    (pack nodes in purple), in execution order, three to a row."""
    from PIL import Image, ImageDraw

    nodes = sorted((n for n in ui["nodes"] if n["type"] != "MarkdownNote"), key=lambda n: n["order"])
    img = Image.new("RGB", size, (30, 32, 38))
    draw = ImageDraw.Draw(img)
    head, label = _font(24, bold=True), _font(15, bold=True)
    draw.text((16, 12), heading, font=head, fill=(245, 245, 245))
    cols, pad, top = 3, 16, 56
    rows = -(-len(nodes) // cols)
    bw = (size[0] - pad * (cols + 1)) // cols
    bh = min(70, (size[1] - top - pad * rows) // max(rows, 1))
    centres = []
    for i, _ in enumerate(nodes):
        r, c = divmod(i, cols)
        c = c if r % 2 == 0 else cols - 1 - c  # snake, so consecutive boxes stay side by side
        x, y = pad + c * (bw + pad), top + r * (bh + pad)
        centres.append((x, y, x + bw, y + bh))
    for a, b in zip(centres, centres[1:], strict=False):
        draw.line(
            [((a[0] + a[2]) / 2, (a[1] + a[3]) / 2), ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)],
            fill=(150, 210, 130),
            width=4,
        )
    for n, box in zip(nodes, centres, strict=False):
        ours = n["properties"].get("cnr_id") == PACK_ID
        draw.rounded_rectangle(
            box, radius=8, fill=(96, 70, 160) if ours else (62, 66, 78), outline=(220, 220, 230), width=2
        )
        words, lines, line = (n.get("title") or n["type"]).split(), [], ""
        for w in words:
            trial = f"{line} {w}".strip()
            if label.getlength(trial) > bw - 12 and line:
                lines.append(line)
                line = w
            else:
                line = trial
        lines.append(line)
        lines = lines[:3]
        y = (box[1] + box[3]) / 2 - 9 * len(lines)
        for k, text in enumerate(lines):
            draw.text(
                ((box[0] + box[2]) / 2 - label.getlength(text) / 2, y + 18 * k),
                text,
                font=label,
                fill=(245, 245, 245),
            )
    return img
