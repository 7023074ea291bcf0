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
    columns; q, k [H, L, D] of one sequence, bias [L, L] (additive) or None."""
    scale = q.shape[-1] ** -0.5
    logits = (q[:, rows].float() @ k.float().transpose(-1, -2)) * scale
    if bias is not None:
        logits = logits + bias[rows].float()
    return logits.softmax(-1)[..., :cols].mean(0)
