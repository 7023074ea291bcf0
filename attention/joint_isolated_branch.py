"""Object Isolated Attention inside a DiT's joint attention, per model call and attention call.

Pure torch (no ComfyUI import); the masks and biases are attention/joint_isolated.py, the
reference gathering (`panel_references`), the caches (masks at a grid, activations, the map
selection) and the merge are the UNet branch's (attention/isolated_branch.py, isolated_merge.py).
The glue (nodes/patch_isolated_joint.py) calls, per model call, `text_mask` (the host's text
padding, checked against the story) and `extend` (the characters' and the scene's prompts as
segments after the prompt), and per joint attention call `attention`:

* the original branch keeps every row from the segments (a segment attends only itself, the image
  and the tail), so it equals the unextended attention, the host's text padding kept;
* in double blocks, on capturing steps, the image->prompt maps of each character's tokens are
  added to the run (head-averaged probabilities on the prompt's columns, folded to characters);
* on isolating steps, each cond row of a panel with regions runs the isolated branch (its
  region's rows see their own segment, the image and their character's references) and the image
  rows are merged as lambda*iso + (1 - lambda)*orig.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .isolated_branch import IsolatedBranch, IsolatedInputError, chunk_rows, panel_references
from .isolated_merge import merge
from .isolated_self import blocked_value
from .joint_isolated import (
    SCENE,
    Segments,
    base_bias,
    extend_text_mask,
    isolated_bias,
    padding,
    text_lengths,
    text_probabilities,
    with_key_mask,
)


@dataclass
class IsolatedCall:
    step: int
    chunks: list[int]  # cond_or_uncond
    segments: Segments | None  # None: not isolating in this call (input unchanged)
    tokens: torch.Tensor | None  # [P, K, n] bool regions on the image grid
    masks: dict = field(default_factory=dict)  # (L, dtype, device) -> base mask, shared by the blocks
    positions: tuple | None = None  # Qwen-Image: (the model's pe, the pe with the segments' own positions)
    padded_text: bool = False  # the call's attention mask is the text padding of the story's prompts

    def base(self, length: int, appended: int, dtype, device, panels: int = 0) -> torch.Tensor:
        """[1, 1, L, L + appended] mask of the original branch; with `panels`, [B, 1, L, ...] that
        also keeps each row from its panel's padded segment columns (when any are padded)."""
        key = (length, appended, dtype, str(device), panels)
        assert self.segments is not None  # only isolating calls build the masks
        if key not in self.masks:
            mask = base_bias(self.segments, length, dtype, device, appended)[None, None]
            pad = self.padded(panels, length + appended, device) if panels else None
            if pad is not None:
                rows = torch.arange(len(self.chunks) * panels, device=device) % panels
                mask = mask.masked_fill(pad[rows][:, None, None], blocked_value(dtype))
            self.masks[key] = mask
        return self.masks[key]

    def padded(self, panels: int, width: int, device) -> torch.Tensor | None:
        return padding(self.segments, panels, width, device) if self.segments is not None else None

    def segment_positions(self, pe: torch.Tensor) -> torch.Tensor:
        """pe [B, 1, L, ...] with each segment's rows = the first rows of the text (its own positions)."""
        if self.positions is None or self.positions[0] is not pe:
            seg = self.segments
            assert seg is not None  # only isolating calls reposition the segments
            parts = [pe[:, :, : seg.prompt], *(pe[:, :, :n] for n in seg.lengths), pe[:, :, seg.text :]]
            self.positions = (pe, torch.cat(parts, 2))
        return self.positions[1]


class JointIsolatedBranch:
    """The joint-attention twin of `IsolatedBranch` (whose config, run and caches it uses)."""

    def __init__(self, branch: IsolatedBranch):
        self.branch = branch

    def prepare(
        self, rows: int, grid, context, mask, chunks: list, sigmas, sample_sigmas, device, model: str
    ):
        """Per model call: (the text context, its attention mask, the call's `IsolatedCall`). On an
        isolating step (masks of the steps so far, lambda != 0, inside the window) the context is
        extended by the segments and a text-padding mask over them; otherwise both are unchanged."""
        branch, run = self.branch, self.branch.run
        P = run.plan.panels
        if rows != P * len(chunks):
            raise IsolatedInputError(
                f"{branch.config.node}: the latent batch has {rows // len(chunks)} images but the story has "
                f"{P} panels; connect the Story Prompt's panel_count to the latent's batch_size."
            )
        step = run.step(sigmas, sample_sigmas)
        segments, tokens = None, None
        text = self.text_mask(mask, context, chunks, P) if mask is not None and 0 in chunks else None
        if 0 in chunks and branch.isolating(step):
            masks = run.masks(step, grid, device)
            if masks is not None and bool(masks.any()):
                if mask is not None and text is None:
                    raise IsolatedInputError(
                        f"{branch.config.node}: the positive or negative conditioning carries an attention "
                        f"mask (regional conditioning), which the isolated branch on {model} replaces; "
                        "remove the mask node or set strength 0."
                    )
                tokens = branch.tokens(step, masks, grid)
                context, segments = self.extend(context, P)
                if text is not None:  # the host masks the text it is given: the segments' too
                    mask = extend_text_mask(text, segments, P)
        return context, mask, IsolatedCall(step, chunks, segments, tokens, padded_text=text is not None)

    def text_mask(self, mask: torch.Tensor, context: torch.Tensor, chunks: list, P: int):
        """The call's mask as [B, T] when it is the text padding of the story's prompts (the Story
        Prompt pads panels of different lengths on the right); None for any other mask."""
        lengths = text_lengths(mask) if mask.shape[-1] == context.shape[1] else None
        if lengths is None:
            return None
        B = context.shape[0]
        if len(lengths) == 1 and B > 1:
            mask, lengths = mask.expand(B, -1), lengths * B
        story = self.branch.run.plan.lengths
        for c, label in enumerate(chunks):
            got = lengths[c * P : (c + 1) * P]
            if label == 0 and got != list(story):
                raise IsolatedInputError(
                    f"{self.branch.config.node}: the positive conditioning does not come from the story's "
                    f"prompts (its text mask gives the panels {got} tokens, the story's prompts encode to "
                    f"{list(story)}); "
                    "connect the Story Prompt's positive output to the sampler."
                )
        return mask

    def extend(self, context: torch.Tensor, P: int) -> tuple[torch.Tensor, Segments]:
        cfg = self.branch.config
        valid = list(cfg.character_lengths) + [None] * len(cfg.characters)
        parts = [(k, ctx, valid[k]) for k, ctx in enumerate(cfg.characters)]
        if cfg.scene is not None:
            parts.append((SCENE, cfg.scene, None))
        B = context.shape[0]
        rows = torch.arange(B) % P
        out, lengths, owners, valids = [context], [], [], []
        for owner, ctx, n in parts:
            ctx = ctx.to(device=context.device, dtype=context.dtype)
            if ctx.shape[-1] != context.shape[-1]:
                raise IsolatedInputError(
                    f"{self.branch.config.node}: a character or scene prompt has width {ctx.shape[-1]} but "
                    f"the model's text has {context.shape[-1]}; encode it with this checkpoint's text "
                    "encoder."
                )
            out.append(ctx.expand(P, -1, -1)[rows] if ctx.shape[0] == 1 else ctx[rows])
            lengths.append(ctx.shape[1])
            owners.append(owner)
            valids.append(tuple(int(x) for x in n) if n else None)
        return torch.cat(out, 1), Segments(context.shape[1], tuple(lengths), tuple(owners), tuple(valids))

    # ---- per attention call -----------------------------------------------------------
    def attention(self, q, k, v, mask, block, layout, info: IsolatedCall, kernel):
        """One joint attention call (q, k, v [B, H, L, D]) of a block: the segments masked out of the
        original branch, maps captured (double blocks), the isolated branch merged on the image rows."""
        run, cfg = self.branch.run, self.branch.config
        P, L, start, n = run.plan.panels, q.shape[2], layout.img_start, layout.img_len
        seg = info.segments
        extra = k.shape[2] - L  # keys another override appended (Consistent Self-Attention)
        whole = q.shape[0] == P * len(info.chunks)  # else a row subset (another override's grouping)
        bias = None if seg is None else info.base(L, extra, q.dtype, q.device, P if whole else 0)
        if bias is not None:  # the call's own mask (the host's text padding) kept
            bias = with_key_mask(bias, mask)
        out = kernel(q, k, v, mask if bias is None else bias)
        if not whole:  # the segments stay hidden from the prompt and image; not isolated nor captured
            return out
        conds = [i for i, c in enumerate(info.chunks) if c == 0]
        if block[0] == "double" and conds and run.capturing(info.step):
            self.capture(q, k, bias, mask, conds, P, start, n, layout.grid, info)
        if seg is None or cfg.lam == 0:
            return out
        tok = info.tokens
        assert tok is not None  # isolating calls carry their regions
        act = self.branch.activation(info.step, layout.grid, q.device)
        pad = info.padded(P, L + extra, q.device)
        for c in conds:
            for p in range(P):
                if not bool(tok[p].any()):
                    continue
                r = c * P + p
                refs = panel_references(run.plan, tok, p, lambda: act, region(k, v, c, P, start), 1)
                rk, rv, owner, a = refs if refs is not None else no_references(k)
                ib = isolated_bias(seg, L, start, tok[p], owner, a, cfg.gamma, q.dtype, extra)
                if pad is not None:
                    ib[:, : L + extra].masked_fill_(pad[p], blocked_value(q.dtype))
                if mask is not None:  # the row's own mask (its prompt's padding)
                    ib[:, : L + extra] = with_key_mask(ib[None, None, :, : L + extra], _row(mask, r))[0, 0]
                kk, vv = torch.cat([k[r : r + 1], rk[None]], 2), torch.cat([v[r : r + 1], rv[None]], 2)
                iso = kernel(q[r : r + 1], kk, vv, ib[None, None])
                out[r, start : start + n] = merge(
                    iso[0, start : start + n], out[r, start : start + n], cfg.lam
                )
        return out

    def capture(self, q, k, bias, mask, conds, P, start, n, grid, info: IsolatedCall) -> None:
        """Adds the image→prompt maps of the story's characters; `bias`: the call's [b, 1, L, Lk] mask
        (segments), else the host's text padding `mask` is used (any other conditioning mask is not)."""
        T = info.segments.prompt if info.segments is not None else start
        plan = self.branch.run.plan
        sel = self.branch.selection(T, q.device, max(plan.lengths))  # [P, T, K]: contexts padded, not tiled
        if bias is None and mask is not None and info.padded_text:
            bias = with_key_mask(q.new_zeros(1, 1, 1, k.shape[2]), mask)
        rows = chunk_rows(conds, P, q.device).tolist()
        maps = torch.stack(
            [
                text_probabilities(q[r], k[r], _row_bias(bias, r), slice(start, start + n), T) @ sel[r % P]
                for r in rows
            ]
        )  # [C·P, n, K]
        maps = maps.reshape(len(conds), P, n, -1).mean(0).transpose(1, 2).reshape(P, -1, *grid)
        self.branch.run.add_maps(info.step, maps, grid)


def region(k: torch.Tensor, v: torch.Tensor, c: int, P: int, start: int):
    """A reference panel's region as keys/values [H, R, D] of its image tokens (same guidance chunk)."""

    def take(rp: int, sel: torch.Tensor) -> tuple:
        cols = sel.nonzero().flatten() + start
        return k[c * P + rp][:, cols], v[c * P + rp][:, cols]

    return take


def no_references(k: torch.Tensor) -> tuple:
    e = k.new_zeros(k.shape[1], 0, k.shape[3])
    return e, e, torch.zeros(0, dtype=torch.long, device=k.device), None


def _row(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Batch row r of an attention call's mask (a mask without rows is every row's)."""
    return mask[r : r + 1] if mask.ndim >= 3 and mask.shape[0] > 1 else mask


def _row_bias(bias: torch.Tensor | None, r: int) -> torch.Tensor | None:
    """Row r of a [b, 1, Lq or 1, Lk] bias as [Lq or 1, Lk]."""
    return None if bias is None else bias[r if bias.shape[0] > 1 else 0, 0]
