"""Object Isolated Attention inside a DiT's joint attention (pure torch, no ComfyUI import).

A joint block attends one sequence [text | image | tail] (tail: reference latents); self- and
cross-attention are one softmax. Isolation therefore works on the sequence itself:

* **Segments**: the text stream is extended with each character's own prompt (and the scene
  prompt, when given) as separate segments after the sampler's prompt:
  [prompt T | seg_0 | seg_1 | ... | image | tail]. Text positions of Flux.1 are all 0, so a
  segment's tokens carry exactly the positions they would have alone.
* **Base mask** (the original branch, every row): the prompt's and the image's rows see
  [prompt | image | tail] only; segment s's rows see [seg_s | image | tail] only, i.e. each
  segment evolves through the blocks as its prompt would alone beside this image. Blocked
  columns get a finite very negative bias whose exp() underflows to exactly 0, so the original
  branch equals the unextended attention.
* **Isolated mask** (image rows of a panel with regions; keys [sequence | references]): rows in
  character c's region see [seg_c | image | tail | c's references] (references re-weighted by
  log(1 + γ·â), as on UNets) and never the prompt, another segment or another character's
  references; background rows see [scene segment or prompt | image | tail].
* **Padding** (Qwen-Image): a segment's rows may hold contexts of different lengths per panel
  (regional prompts), zero-padded to the longest instead of tiled (tiling would put the copies at
  later RoPE positions there); `padding` names each panel's padded columns, which every row of
  that panel is kept from (the segment then attends exactly its own prompt).
* **Text padding** (Qwen-Image on a host that passes the conditioning's text mask): the Story
  Prompt zero-pads panels of different lengths to the longest, on the right, with a mask
  (`text_lengths` reads each panel's real length from it). The mask is extended over the
  segments (`extend_text_mask`: a segment's own padding masked too) and added to both branches'
  masks (`with_key_mask`), so no row attends its panel's padding, as the host's blocks do alone.
* **Maps**: per image row, the softmax probabilities (base mask) on the prompt's columns,
  head-averaged; the glue folds them to characters with `cross_maps.selection_matrix`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .isolated_self import blocked_value

SCENE = -1  # owner of the scene prompt's segment


@dataclass(frozen=True)
class Segments:
    """The extended text of one model call: the prompt (length `prompt`) then the segments."""

    prompt: int
    lengths: tuple[int, ...] = ()
    owners: tuple[int, ...] = ()  # character index per segment, SCENE for the scene prompt
    valid: tuple[tuple[int, ...] | None, ...] = ()  # per segment: its valid length per panel (None: all)

    @property
    def text(self) -> int:
        return self.prompt + sum(self.lengths)

    def span(self, s: int) -> slice:
        a = self.prompt + sum(self.lengths[:s])
        return slice(a, a + self.lengths[s])

    def of(self, owner: int) -> slice | None:
        return next((self.span(s) for s, o in enumerate(self.owners) if o == owner), None)


def padding(seg: Segments, panels: int, width: int, device=None) -> torch.Tensor | None:
    """[panels, width] bool: the segments' padded key columns of each panel (None when none are)."""
    if not any(v for v in seg.valid):
        return None
    out = torch.zeros(panels, width, dtype=torch.bool, device=device)
    for s, lengths in enumerate(seg.valid):
        if lengths:
            span = seg.span(s)
            for p in range(panels):
                out[p, span.start + lengths[p % len(lengths)] : span.stop] = True
    return out


PADDING_BELOW = -1e4  # an additive text-mask value at or below this is padding (its exp() is 0)


def text_lengths(mask: torch.Tensor) -> list[int] | None:
    """Per row of a text attention mask [B, T] (bool or integer: 1 = token, 0 = padding; float:
    additive, 0 = token, very negative = padding): its number of tokens when the row is tokens
    then padding (a prompt zero-padded on the right), else None (not a text padding mask)."""
    if mask.ndim != 2:
        return None
    if mask.is_floating_point():
        keep = mask == 0
        if not bool((keep | (mask <= PADDING_BELOW)).all()):
            return None
    else:
        keep = mask != 0
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            return None
    n = keep.sum(1)
    if not torch.equal(torch.arange(mask.shape[1], device=mask.device)[None] < n[:, None], keep):
        return None
    return [int(x) for x in n.tolist()]


def extend_text_mask(mask: torch.Tensor, seg: Segments, panels: int) -> torch.Tensor:
    """The prompt's text mask [B, T] (convention of `text_lengths`) extended over the segments,
    [B, seg.text]: a segment's tokens kept, its padding in the row's panel (`padding`) not."""
    keep = torch.ones(mask.shape[0], seg.text - seg.prompt, dtype=torch.bool, device=mask.device)
    pad = padding(seg, panels, seg.text, mask.device)
    if pad is not None:
        keep &= ~pad[torch.arange(mask.shape[0], device=mask.device) % panels][:, seg.prompt :]
    if mask.is_floating_point():
        ext = torch.zeros(keep.shape, dtype=mask.dtype, device=mask.device)
        ext = ext.masked_fill(~keep, torch.finfo(mask.dtype).min)
    else:
        ext = keep.to(mask.dtype)
    return torch.cat([mask, ext], 1)


def with_key_mask(bias: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`bias` [b, 1, L, Lk] plus the attention call's own mask (the host's text padding: [B, Lk']
    broadcast as the host's kernel does, [B, Lq or 1, Lk'] or [B, H, Lq, Lk']; bool: True = attend),
    clamped to the blocked value; key columns past the mask's width are left as they are."""
    if mask is None:
        return bias
    m = mask[None, None] if mask.ndim == 2 else mask.unsqueeze(1) if mask.ndim == 3 else mask
    blocked = blocked_value(bias.dtype)
    if m.dtype == torch.bool:
        m = torch.zeros(m.shape, dtype=bias.dtype, device=bias.device).masked_fill(~m, blocked)
    m = m.to(device=bias.device, dtype=bias.dtype)
    if m.shape[-1] < bias.shape[-1]:
        m = torch.nn.functional.pad(m, (0, bias.shape[-1] - m.shape[-1]))
    return (bias + m).clamp_min(blocked)


def base_bias(
    seg: Segments, length: int, dtype=torch.float32, device=None, appended: int = 0
) -> torch.Tensor:
    """[L, L + appended] additive mask of the original branch over [text (prompt + segments) |
    image | tail] and `appended` keys another feature added after the sequence (Consistent
    Self-Attention's other panels): those stay visible to the prompt and the image, not to a segment."""
    blocked = blocked_value(dtype)
    bias = torch.zeros(length, length + appended, dtype=dtype, device=device)
    bias[:, seg.prompt : seg.text] = blocked  # nobody but a segment itself sees a segment
    for s in range(len(seg.lengths)):
        span = seg.span(s)
        bias[span, : seg.text] = blocked
        bias[span, length:] = blocked
        bias[span, span] = 0
    return bias


def isolated_bias(
    seg: Segments,
    length: int,
    img_start: int,
    region: torch.Tensor,
    ref_owner: torch.Tensor,
    activation: torch.Tensor | None = None,
    gamma: float = 0.0,
    dtype=torch.float32,
    appended: int = 0,
) -> torch.Tensor:
    """[L, L + appended + R] additive mask of the isolated branch for one panel (keys: the
    sequence, keys another feature appended, then the references).

    region: [K, n] bool, image token t lies in character k's region (disjoint over k);
    ref_owner: [R] long, the character of each reference column (appended after the sequence);
    activation: [R] in [0, 1] (â) for re-weighting, None = 1."""
    device = region.device
    blocked = blocked_value(dtype)
    R = int(ref_owner.numel())
    n = region.shape[1]
    width = length + appended
    bias = torch.full((length, width + R), blocked, dtype=dtype, device=device)
    bias[:, :width] = base_bias(seg, length, dtype, device, appended)
    rows = slice(img_start, img_start + n)
    img = bias[rows]  # a view: image rows
    scene = seg.of(SCENE)
    if scene is not None:
        img[:, : seg.prompt] = blocked
        img[:, scene] = 0
    act = torch.ones(R, device=device) if activation is None else activation.to(device).float()
    boost = torch.log1p(gamma * act.clamp(min=0)) if gamma > 0 else torch.zeros_like(act)
    for k in range(region.shape[0]):
        inside = region[k].to(device)
        if not bool(inside.any()):
            continue
        own = seg.of(k)
        block_text = img[inside]
        block_text[:, : seg.text] = blocked  # every text column, then the own one
        if own is not None:
            block_text[:, own] = 0
        else:  # no own prompt: keep the prompt (as the original branch)
            block_text[:, : seg.prompt] = 0
        mine = (ref_owner.to(device) == k).nonzero().flatten()
        if mine.numel():
            block_text[:, width + mine] = boost[mine].to(dtype)
        img[inside] = block_text
    return bias


def text_probabilities(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor | None, rows: slice, cols: int):
    """Head-averaged softmax probabilities [n, cols] of query rows `rows` on the first `cols` key
    columns; q, k [H, L, D] of one sequence, bias [L or 1, Lk] (additive) or None."""
    scale = q.shape[-1] ** -0.5
    logits = (q[:, rows].float() @ k.float().transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + (bias if bias.shape[0] == 1 else bias[rows]).float()
    return logits.softmax(-1)[..., :cols].mean(0)
