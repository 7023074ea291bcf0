"""Object Isolated Attention on Flux.1 and Qwen-Image through the seam (the math:
attention/joint_isolated.py).

* APPLY_MODEL wrapper: finds the step (by sigma), and on an isolating step (masks from the
  steps so far exist, λ ≠ 0, inside the node's window) extends the model's text input with each
  character's own prompt (and the scene prompt) as segments; it puts the call's context into
  `transformer_options` for the blocks.
* `dit` replaces on every double and single block hand the real block an attention override
  (patch_dit.block_replace): the override masks the segments out of the original branch, runs the
  isolated branch for the cond rows of panels with regions and merges λ·iso + (1−λ)·orig on the
  image rows; in the double blocks it captures the image→prompt maps of each character's tokens.
* Qwen-Image gives text tokens sequential RoPE positions (from `txt_start` on), so appended
  segments would sit after the prompt; its replaces hand the block (and any replace inside ours)
  a `pe` where each segment carries the rotations of positions txt_start, txt_start + 1, ..., as
  that prompt alone would: the first rows of the model's own text rotations (every needed one is
  there, a segment being shorter than the whole text). Flux.1's text positions are all 0.
* Panels of different prompt lengths (Qwen-Image): the Story Prompt zero-pads them on the right
  with a text `attention_mask`; the plan keeps each panel's real length (the maps select its
  tokens only), and where the host passes the mask to the model it is checked against the story,
  extended over the segments (their padding masked too) and added to both branches' masks, so no
  row attends its panel's padding, as without the node.
* Steps that do not isolate leave the model's input and every attention call unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..attention.isolated_branch import IsolatedBranch, IsolationInputError, _chunk_rows
from ..attention.isolated_merge import merge
from ..attention.isolated_self import blocked_value
from ..attention.joint_isolated import (
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
from .common import StoryError
from .patch_core import Family, LayerHook
from .patch_dit import (
    CALL_KEY,
    FLUX,
    QWEN_IMAGE,
    attention_override,
    block_keys,
    block_replace,
    call_context,
)
from .patch_isolated import IsolatedPatch

ISO_KEY = "storydiff_dit_isolated"  # transformer_options: this model call's IsolatedCall


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
        if key not in self.masks:
            mask = base_bias(self.segments, length, dtype, device, appended)[None, None]
            pad = self.padded(panels, length + appended, device) if panels else None
            if pad is not None:
                rows = torch.arange(len(self.chunks) * panels, device=device) % panels
                mask = mask.masked_fill(pad[rows][:, None, None], blocked_value(dtype))
            self.masks[key] = mask
        return self.masks[key]

    def padded(self, panels: int, width: int, device) -> torch.Tensor | None:
        return padding(self.segments, panels, width, device)

    def segment_positions(self, pe: torch.Tensor) -> torch.Tensor:
        """pe [B, 1, L, ...] with each segment's rows = the first rows of the text (its own positions)."""
        if self.positions is None or self.positions[0] is not pe:
            seg = self.segments
            parts = [pe[:, :, : seg.prompt], *(pe[:, :, :n] for n in seg.lengths), pe[:, :, seg.text :]]
            self.positions = (pe, torch.cat(parts, 2))
        return self.positions[1]


def own_positions(replace):
    """A Qwen-Image `dit` replace giving the segments their own text positions (see the module doc)."""

    def positioned(args: dict, extra: dict) -> dict:
        info = (args.get("transformer_options") or {}).get(ISO_KEY)
        if info is None or info.segments is None or "pe" not in args:
            return replace(args, extra)
        return replace({**args, "pe": info.segment_positions(args["pe"])}, extra)

    return positioned


class DiTIsolatedPatch(IsolatedPatch):
    families = (FLUX, QWEN_IMAGE)

    def __init__(self, branch: IsolatedBranch):
        super().__init__(branch)
        self.dm = None

    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        self.dm = model.get_model_object("diffusion_model")
        keys = block_keys(family, self.dm, family.blocks(self.dm, "all"))
        return [LayerHook("dit", key, self._replace_for(key)) for key in keys]

    def _replace_for(self, key: tuple):
        if self.family is QWEN_IMAGE:
            return lambda previous: own_positions(block_replace(key, previous, self._override))
        return lambda previous: block_replace(key, previous, self._override)

    def _override(self, block, previous):
        return attention_override(self.family, self.dm, block, previous, self._handle, appended=True)

    # ---- per model call ---------------------------------------------------------------
    def apply_model(self, executor, *args, **kwargs):
        args = list(args)
        topts = args[5] if len(args) > 5 else kwargs.get("transformer_options") or {}
        x, context = args[0], args[3] if len(args) > 3 else kwargs.get("c_crossattn")
        branch, run = self.branch, self.branch.run
        chunks = [int(c) for c in topts.get("cond_or_uncond") or [0]]
        P = run.plan.panels
        if x.shape[0] != P * len(chunks):
            raise StoryError(
                f"{self.node}: the latent batch has {x.shape[0] // len(chunks)} images but the story has {P} "
                "panels; connect the Story Prompt's panel_count to the latent's batch_size."
            )
        step = run.step(topts["sigmas"], topts.get("sample_sigmas"))
        call = call_context(self.dm, x, context)
        segments, tokens = None, None
        mask = kwargs.get("attention_mask")
        text = self._text_mask(mask, context, chunks, P) if mask is not None and 0 in chunks else None
        if 0 in chunks and branch._isolating(step):
            masks = run.masks(step, call.grid, x.device)
            if masks is not None and bool(masks.any()):
                if mask is not None and text is None:
                    raise StoryError(
                        f"{self.node}: the positive or negative conditioning carries an attention mask "
                        f"(regional conditioning), which the isolated branch on {self.family.name} replaces; "
                        "remove the mask node or set strength 0."
                    )
                tokens = branch.tokens(step, masks, call.grid)
                context, segments = self._extend(context, P)
                if text is not None:  # the host masks the text it is given: the segments' too
                    kwargs["attention_mask"] = extend_text_mask(text, segments, P)
                call = call_context(self.dm, x, context)
        if len(args) > 3:
            args[3] = context
        else:
            kwargs["c_crossattn"] = context
        options = self.inject(topts)
        options[CALL_KEY] = call
        options[ISO_KEY] = IsolatedCall(step, chunks, segments, tokens, padded_text=text is not None)
        if len(args) > 5:
            args[5] = options
        else:
            kwargs["transformer_options"] = options
        return executor(*args, **kwargs)

    def _text_mask(self, mask: torch.Tensor, context: torch.Tensor, chunks: list, P: int):
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
                raise StoryError(
                    f"{self.node}: the positive conditioning does not come from the story's prompts (its "
                    f"text mask gives the panels {got} tokens, the story's prompts encode to {list(story)}); "
                    "connect the Story Prompt's positive output to the sampler."
                )
        return mask

    def _extend(self, context: torch.Tensor, P: int) -> tuple[torch.Tensor, Segments]:
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
                raise StoryError(
                    f"{self.node}: a character or scene prompt has width {ctx.shape[-1]} but the model's "
                    f"text has {context.shape[-1]}; encode it with this checkpoint's text encoder."
                )
            out.append(ctx.expand(P, -1, -1)[rows] if ctx.shape[0] == 1 else ctx[rows])
            lengths.append(ctx.shape[1])
            owners.append(owner)
            valids.append(tuple(int(x) for x in n) if n else None)
        return torch.cat(out, 1), Segments(context.shape[1], tuple(lengths), tuple(owners), tuple(valids))

    # ---- per attention call -----------------------------------------------------------
    def _handle(self, q, k, v, mask, block, layout, call, topts, kernel):
        info: IsolatedCall | None = topts.get(ISO_KEY)
        if info is None or topts.get("sigmas") is None:
            return kernel(q, k, v, mask)
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
            try:
                self._capture(q, k, bias, mask, conds, P, start, n, layout.grid, info)
            except IsolationInputError as e:
                raise StoryError(str(e)) from None
        if seg is None or cfg.lam == 0:
            return out
        tok = info.tokens
        act = self.branch.activation(info.step, layout.grid, q.device)
        pad = info.padded(P, L + extra, q.device)
        for c in conds:
            for p in range(P):
                if not bool(tok[p].any()):
                    continue
                r = c * P + p
                refs = self._references(k, v, tok, act, c, P, p, start, n)
                rk, rv, owner, a = refs
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

    def _references(self, k, v, tok, act, c, P, p, start, n):
        """Keys/values [H, R, D] of each present character's region in its reference panel (its
        first panel, same guidance chunk), with owners and activations."""
        plan = self.branch.run.plan
        ks, vs, owner, acts = [], [], [], []
        for ch in range(len(plan.names)):
            rp = plan.ref_panel[ch] if ch < len(plan.ref_panel) else None
            if not bool(tok[p, ch].any()) or rp is None or rp == p or not bool(tok[rp, ch].any()):
                continue
            sel = tok[rp, ch].nonzero().flatten() + start
            ks.append(k[c * P + rp][:, sel])
            vs.append(v[c * P + rp][:, sel])
            owner.append(torch.full((sel.numel(),), ch, dtype=torch.long, device=k.device))
            acts.append(
                act[rp, ch][tok[rp, ch]] if act is not None else torch.ones(sel.numel(), device=k.device)
            )
        if not ks:
            e = k.new_zeros(k.shape[1], 0, k.shape[3])
            return e, e, torch.zeros(0, dtype=torch.long, device=k.device), None
        return torch.cat(ks, 1), torch.cat(vs, 1), torch.cat(owner), torch.cat(acts)

    def _capture(self, q, k, bias, mask, conds, P, start, n, grid, info: IsolatedCall) -> None:
        """Adds the image→prompt maps of the story's characters; `bias`: the call's [b, 1, L, Lk] mask
        (segments), else the host's text padding `mask` is used (any other conditioning mask is not)."""
        T = info.segments.prompt if info.segments is not None else start
        plan = self.branch.run.plan
        sel = self.branch.selection(T, q.device, max(plan.lengths))  # [P, T, K]: contexts padded, not tiled
        if bias is None and mask is not None and info.padded_text:
            bias = with_key_mask(q.new_zeros(1, 1, 1, k.shape[2]), mask)
        rows = _chunk_rows(conds, P, q.device).tolist()
        maps = torch.stack(
            [
                text_probabilities(q[r], k[r], _row_bias(bias, r), slice(start, start + n), T) @ sel[r % P]
                for r in rows
            ]
        )  # [C·P, n, K]
        maps = maps.reshape(len(conds), P, n, -1).mean(0).transpose(1, 2).reshape(P, -1, *grid)
        self.branch.run.add_maps(info.step, maps, grid)


def _row(mask: torch.Tensor, r: int) -> torch.Tensor:
    """Batch row r of an attention call's mask (a mask without rows is every row's)."""
    return mask[r : r + 1] if mask.ndim >= 3 and mask.shape[0] > 1 else mask


def _row_bias(bias: torch.Tensor | None, r: int) -> torch.Tensor | None:
    """Row r of a [b, 1, Lq or 1, Lk] bias as [Lq or 1, Lk]."""
    return None if bias is None else bias[r if bias.shape[0] > 1 else 0, 0]
