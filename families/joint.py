"""Joint-attention DiTs (text and image in one attention): how a feature reaches their attention.

The families (flux.py, qwen_image.py, sd3.py, lumina2.py) are `JointFamily` objects; this module
is what they share. A feature reaches a DiT's joint attention without re-implementing any block:

* ComfyUI's DiTs call `patches_replace["dit"][("double_block", i)]` / `("single_block", i)` per
  block with `{"original_block": ...}`; the seam (nodes/patch_core.py) puts the feature's replace
  around whatever replace the graph holds for that block at call time. `block_replace` is that
  replace: it hands the graph's replace (or calls directly) an `original_block` that runs the
  real block with an attention override in a copy of the block's `transformer_options`.
* The override (`transformer_options["optimized_attention_override"]`, honoured by every
  attention kernel of the host) sees the block's q, k, v after the norms and RoPE and chains to
  an override another pack set (or the kernel itself), so attention back-ends stay in effect.
* A family without block replaces (`replaces=False`, Z-Image / Lumina 2) gets the override for
  the whole model call; its `locate` tells the joint calls from the others.

Layouts (text first everywhere): Flux/Chroma/Flux.2 and Qwen-Image [txt | img | reference
latents]; SD3 [context (+ registers) | img], SD3.5 Medium's image-only self-attention [img];
Lumina 2 [caption (padded) | img | padding]. A family overrides `locate` where its layout differs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..attention.joint_consistent import JointLayout, slot_offsets
from .base import Family, Replace

OVERRIDE = "optimized_attention_override"
CALL_KEY = "storydiff_joint_call"  # transformer_options: the per-model-call context
Handler = Callable[..., torch.Tensor]  # (q, k, v, mask, block, layout, call, topts, kernel) -> output


# ---- per model call -------------------------------------------------------------------------
@dataclass
class CallContext:
    """What one model call tells about its token layout (made by the feature's APPLY_MODEL wrapper)."""

    grid: tuple[int, int]
    txt_len: int  # text tokens the model was given (before any padding)
    tail: int | None = None  # tokens after the image (reference latents); None until a double block saw it
    joint_calls: int = 0  # Lumina 2: joint attention calls so far in this model call
    rotations: dict = field(default_factory=dict)


def call_context(dm, x: torch.Tensor, context) -> CallContext:
    p = int(getattr(dm, "patch_size", 2) or 1)
    grid = (math.ceil(x.shape[-2] / p), math.ceil(x.shape[-1] / p))
    return CallContext(grid=grid, txt_len=int(context.shape[1]) if context is not None else 0)


def block_keys(family: JointFamily, dm, covered: frozenset) -> list[tuple]:
    """The `dit` replace keys of the covered blocks ("self" attention lives in its double block)."""
    d, s = family.counts(dm)
    keys = {("double_block" if kind in ("double", "self") else "single_block", i) for kind, i in covered}
    return sorted(
        k for k in keys if (k[0] == "double_block" and k[1] < d) or (k[0] == "single_block" and k[1] < s)
    )


def block_replace(key: tuple, previous: Replace | None, make_override: Callable) -> Replace:
    """The `dit` replace of one block: runs `previous` (another pack's) around the real block, and the
    real block with `make_override(block, override_before)` set in its transformer_options."""
    block = ("double" if key[0] == "double_block" else "single", key[1])

    def replace(args: dict, extra: dict) -> dict:
        original = extra["original_block"]

        def run(a: dict) -> dict:
            topts = dict(a.get("transformer_options") or {})
            call = topts.get(CALL_KEY)
            if call is not None and block[0] == "double" and call.tail is None and "txt" in a:
                call.tail = max(0, int(a["img"].shape[1]) - call.grid[0] * call.grid[1])
            topts[OVERRIDE] = make_override(block, topts.get(OVERRIDE))
            return original({**a, "transformer_options": topts})

        if previous is not None:
            return previous(args, {**extra, "original_block": run})
        return run(args)

    return replace


def attention_override(
    family: JointFamily, dm, block: tuple | None, previous, handler: Handler, appended: bool = False
):
    """An `optimized_attention_override` calling `handler` on the joint calls of a covered block
    (q, k, v as [B, H, L, D]) with `kernel(q, k, v, mask)` = the attention as it would have run.
    `appended`: also calls whose keys another override extended after the sequence (k longer)."""

    def override(func, *args, **kwargs):
        def passthrough(*a, **kw):
            return previous(func, *a, **kw) if previous is not None else func(*a, **kw)

        topts = kwargs.get("transformer_options") or {}
        call = topts.get(CALL_KEY)
        if call is None or topts.get("sigmas") is None:
            return passthrough(*args, **kwargs)
        q, k, v = args[:3]
        rest = dict(kwargs)
        heads = int(args[3] if len(args) > 3 else rest.pop("heads"))
        rest.pop("heads", None)
        mask = args[4] if len(args) > 4 else rest.pop("mask", None)
        rest.pop("mask", None)
        if not rest.pop("skip_reshape", False):  # [B, L, H*D] -> [B, H, L, D]
            q, k, v = (t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        lk = q.shape[2] if appended and k.shape[2] > q.shape[2] else k.shape[2]
        found = family.locate(dm, block, call, q.shape[2]) if q.shape[2] == lk else None
        if found is None:
            return passthrough(*args, **kwargs)
        q0, k0, v0 = q, k, v

        def kernel(q_, k_, v_, mask_):
            if q_ is q0 and k_ is k0 and v_ is v0 and mask_ is mask:
                return passthrough(*args, **kwargs)  # nothing changed: the call exactly as the block made it
            return passthrough(q_, k_, v_, heads, mask=mask_, skip_reshape=True, **rest)

        return handler(q, k, v, mask, found[0], found[1], call, topts, kernel)

    return override


@dataclass(frozen=True)
class JointFamily(Family):
    """A joint-attention DiT: its block lists, positions, and where a joint call's image tokens are."""

    double: str | None = None  # attribute of the double-stream / joint block list
    single: str | None = None  # attribute of the single-stream block list
    rope: bool = True  # positions in q/k by RoPE (else absolute, added at the input)
    replaces: bool = True  # the host calls patches_replace["dit"] for its blocks
    up: Callable[[int, int], set] | None = None  # (doubles, singles) -> the blocks of the "up" choice
    sequential_text: bool = False  # text tokens at positions 0, 1, 2, ... (else all at one position)

    def counts(self, dm) -> tuple[int, int]:
        d = len(getattr(dm, self.double)) if self.double else 0
        s = len(getattr(dm, self.single)) if self.single else 0
        return d, s

    def blocks(self, dm, choice: str) -> frozenset:
        """(kind, index) of the blocks a choice covers; kind "self" = SD3.5 Medium's image attention."""
        d, s = self.counts(dm)
        if choice == "all" or self.up is None:
            every = {("double", i) for i in range(d)} | {("single", i) for i in range(s)}
            return frozenset(every | {("self", i) for i in range(d)})
        return frozenset(self.up(d, s))

    def locate(self, dm, block: tuple | None, call: CallContext, lq: int) -> tuple | None:
        """(block, layout) of a joint attention call of `lq` tokens, None when it is not one to share
        in. The default layout: [text | image | tail]."""
        if block is None:
            return None
        gh, gw = call.grid
        start = lq - gh * gw - (call.tail or 0)
        return (block, JointLayout(start, gh * gw, (gh, gw))) if start >= 0 else None

    def slot_rotations(self, dm, call: CallContext, mode: str, slots: int, head_dim: int) -> list:
        """RoPE rotation [D/2, 2, 2] per borrowed slot, from the model's own embedder (None: unrotated)."""
        if not self.rope or mode == "same" or slots == 0:
            return [None] * slots
        key = (mode, slots, call.grid)
        if key not in call.rotations:
            emb = getattr(dm, "pe_embedder", None) or dm.rope_embedder
            scale = float(getattr(getattr(dm, "params", None), "ref_index_scale", 1.0) or 1.0)
            offsets = slot_offsets(mode, slots, call.grid, len(emb.axes_dim), scale)
            freqs = emb(torch.tensor(offsets, dtype=torch.float32).unsqueeze(0)).reshape(
                slots, head_dim // 2, 2, 2
            )
            call.rotations[key] = [freqs[m].float() for m in range(slots)]
        return call.rotations[key]


def singles(d: int, s: int) -> set:  # the single-stream blocks: the later part (as CharaConsist on Flux)
    return {("single", i) for i in range(s)}


def second_half(d: int, s: int) -> set:  # one block list: its second half, as the UNet's up blocks
    return {(kind, i) for i in range(d // 2, d) for kind in ("double", "self")}
