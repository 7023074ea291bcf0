"""The DiT families (Flux.1, Flux.2, Chroma, Qwen-Image, SD3/SD3.5, Z-Image/Lumina 2): blocks, layouts, hooks.

How a feature gets into a DiT's joint attention, without re-implementing any block:

* ComfyUI's DiTs call `patches_replace["dit"][("double_block", i)]` / `("single_block", i)` per
  block with `{"original_block": ...}`. At call time (an APPLY_MODEL wrapper, after every other
  pack has patched) the feature's replace is put around whatever replace the graph holds for that
  block, so a pack applied before *or* after ours runs on every block and ours always runs: ours
  hands the foreign replace an `original_block` that runs the real block with an attention
  override in a copy of the block's `transformer_options`.
* That override (`transformer_options["optimized_attention_override"]`, honoured by every
  attention kernel of the host) sees the block's q, k, v after the norms and RoPE; it chains to
  an override another pack set (or the kernel itself), so attention back-ends stay in effect.
* Z-Image / Lumina 2 have no block replaces in the host: there the override is set for the whole
  model call and joint calls are told apart from the refiners' by their length (caption + image),
  counted in execution order per model call.

Layouts (text first everywhere): Flux/Chroma/Flux.2 [txt | img | reference latents]; Qwen-Image
[txt | img | reference latents]; SD3 [context (+ registers) | img], SD3.5 Medium's image-only
self-attention [img]; Lumina 2 [caption (padded) | img | padding].
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import comfy.patcher_extension
import torch

from ..attention.joint_consistent import JointLayout, slot_offsets
from ..attention.joint_consistent_run import JointCall, JointConsistentRun
from .common import StoryError

OVERRIDE = "optimized_attention_override"
CALL_KEY = "storydiff_dit_call"  # transformer_options: the per-model-call context
WRAPPER_KEY = "storydiff_dit_consistent"


@dataclass(frozen=True)
class DiTFamily:
    name: str
    matches: Callable[[Any], bool]
    double: str | None  # attribute of the double-stream / joint block list
    single: str | None  # attribute of the single-stream block list
    rope: bool  # positions in q/k by RoPE (else absolute, added at the input)
    replaces: bool = True  # the host calls patches_replace["dit"] for its blocks
    default_up: Callable[[int, int], set] | None = None  # (doubles, singles) -> blocks of the "up" choice

    def embedder(self, dm):
        return getattr(dm, "pe_embedder", None) or getattr(dm, "rope_embedder", None)

    def axes(self, dm) -> int:
        emb = self.embedder(dm)
        return len(emb.axes_dim) if emb is not None else 0

    def index_scale(self, dm) -> float:
        params = getattr(dm, "params", None)
        return float(getattr(params, "ref_index_scale", 1.0) or 1.0)

    def counts(self, dm) -> tuple[int, int]:
        d = len(getattr(dm, self.double)) if self.double else 0
        s = len(getattr(dm, self.single)) if self.single else 0
        return d, s

    def blocks(self, dm, choice: str) -> frozenset:
        d, s = self.counts(dm)
        if choice == "all" or self.default_up is None:
            return frozenset(
                {("double", i) for i in range(d)}
                | {("single", i) for i in range(s)}
                | {("self", i) for i in range(d)}
            )
        return frozenset(self.default_up(d, s))


def _cls(path: str, name: str):
    def matches(dm) -> bool:
        import importlib

        try:
            cls = getattr(importlib.import_module(path), name)
        except (ImportError, AttributeError):
            return False
        return isinstance(dm, cls)

    return matches


def _flux_family(flux2: bool):
    def matches(dm) -> bool:
        return _cls("comfy.ldm.flux.model", "Flux")(dm) and (len(dm.params.axes_dim) == 4) == flux2

    return matches


def _singles(d, s):  # the single-stream blocks: the later part of the network (as CharaConsist on Flux)
    return {("single", i) for i in range(s)}


def _second_half(
    d, s
):  # one block list: its second half (the decoder-like half, as StoryDiffusion's up blocks)
    return {(kind, i) for i in range(d // 2, d) for kind in ("double", "self")}


def _chroma(dm) -> bool:
    return _cls("comfy.ldm.chroma.model", "Chroma")(dm) and not _cls(
        "comfy.ldm.chroma_radiance.model", "ChromaRadiance"
    )(dm)


FLUX = DiTFamily(
    "Flux.1 (dev, schnell, Kontext)",
    _flux_family(False),
    "double_blocks",
    "single_blocks",
    True,
    default_up=_singles,
)
FLUX2 = DiTFamily("Flux.2", _flux_family(True), "double_blocks", "single_blocks", True, default_up=_singles)
CHROMA = DiTFamily("Chroma", _chroma, "double_blocks", "single_blocks", True, default_up=_singles)
QWEN_IMAGE = DiTFamily(
    "Qwen-Image",
    _cls("comfy.ldm.qwen_image.model", "QwenImageTransformer2DModel"),
    "transformer_blocks",
    None,
    True,
    default_up=_second_half,
)
SD3 = DiTFamily(
    "SD3 / SD3.5 (MMDiT)",
    _cls("comfy.ldm.modules.diffusionmodules.mmdit", "OpenAISignatureMMDITWrapper"),
    "joint_blocks",
    None,
    False,
    default_up=_second_half,
)
LUMINA2 = DiTFamily(
    "Z-Image / Lumina 2",
    _cls("comfy.ldm.lumina.model", "NextDiT"),
    "layers",
    None,
    True,
    replaces=False,
    default_up=_second_half,
)
DIT_FAMILIES = (FLUX, FLUX2, CHROMA, QWEN_IMAGE, SD3, LUMINA2)


def dit_family(model) -> DiTFamily | None:
    dm = model.get_model_object("diffusion_model")
    return next((f for f in DIT_FAMILIES if f.matches(dm)), None)


# ---- per model call -------------------------------------------------------------------------
@dataclass
class CallContext:
    """What one model call tells about its token layout (made by the APPLY_MODEL wrapper)."""

    grid: tuple[int, int]
    txt_len: int  # text tokens the model was given (before any padding)
    tail: int | None = None  # tokens after the image (reference latents, padding); None until seen
    joint_calls: int = 0  # Lumina 2: joint attention calls so far in this model call
    rotations: dict = field(default_factory=dict)


def _grid(dm, x: torch.Tensor) -> tuple[int, int]:
    p = int(getattr(dm, "patch_size", 2) or 1)
    return math.ceil(x.shape[-2] / p), math.ceil(x.shape[-1] / p)


def _attention_args(args: tuple, kwargs: dict):
    """(q, k, v, heads, mask, skip_reshape, rest-kwargs) of one optimized_attention call."""
    q, k, v = args[:3]
    rest = dict(kwargs)
    heads = args[3] if len(args) > 3 else rest.pop("heads")
    rest.pop("heads", None)
    mask = args[4] if len(args) > 4 else rest.pop("mask", None)
    rest.pop("mask", None)
    skip = bool(rest.pop("skip_reshape", False))
    return q, k, v, int(heads), mask, skip, rest


class DiTConsistentPatch:
    """Consistent Self-Attention (and the identity bank) on one DiT family."""

    def __init__(self, run: JointConsistentRun, family: DiTFamily, node: str):
        self.state, self.family, self.node = run, family, node

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options up to 0.3.75
        return self

    # ---- run lifecycle ----------------------------------------------------------------
    def outer_sample(self, executor, *args, **kwargs):
        noise = args[0] if args else kwargs.get("noise")
        self._check_batch(int(noise.shape[0]) if noise is not None else None)
        self.state.reset()
        completed = False
        try:
            out = executor(*args, **kwargs)
            completed = True
            return out
        finally:
            mode = self.state.mode
            if completed and mode.kind == "write" and self.state.staging is not None:
                mode.bank.update_from(self.state.staging)
            self.state.release()

    def _check_batch(self, batch: int | None) -> None:
        mode = self.state.mode
        if mode.kind == "plain" or batch is None:
            return
        if len(mode.labels) not in (1, batch):
            raise StoryError(
                f"{mode.node}: {len(mode.labels)} panels/characters are given but the latent batch is "
                f"{batch}; connect the Story Prompt's panel_count to the latent's batch_size (or give one "
                "name per image)."
            )
        if mode.kind == "read":
            missing = sorted({c for names in mode.labels for c in names} - set(mode.bank.characters))
            if missing:
                have = ", ".join(f"[{c}]" for c in mode.bank.characters) or "nothing yet"
                tags = ", ".join(f"[{c}]" for c in missing)
                raise StoryError(
                    f"{mode.node}: the identity bank has no tokens for {tags} (it holds {have}). "
                    "Write them first, load a bank that has them, or untag them."
                )

    # ---- per model call ---------------------------------------------------------------
    def apply_model(self, executor, *args, **kwargs):
        x = args[0] if args else kwargs["x"]
        options = args[5] if len(args) > 5 else kwargs.get("transformer_options") or {}
        ctx_in = args[3] if len(args) > 3 else kwargs.get("c_crossattn")
        options = self.inject(options, x, ctx_in)
        if len(args) > 5:
            args = (*args[:5], options, *args[6:])
        else:
            kwargs["transformer_options"] = options
        return executor(*args, **kwargs)

    def inject(self, transformer_options: dict, x: torch.Tensor, context) -> dict:
        dm = self.dm
        options = dict(transformer_options)
        options[CALL_KEY] = CallContext(
            grid=_grid(dm, x), txt_len=int(context.shape[1]) if context is not None else 0
        )
        if not self.family.replaces:
            options[OVERRIDE] = self._override(None, options.get(OVERRIDE))
            return options
        replaces = dict(options.get("patches_replace", {}))
        slot = dict(replaces.get("dit", {}))
        for kind, i in sorted(self.block_keys):
            key = (f"{kind}_block", i)
            slot[key] = self._replace_around(key, slot.get(key))
        replaces["dit"] = slot
        options["patches_replace"] = replaces
        return options

    @property
    def dm(self):
        return self._dm

    def bind(self, model) -> None:
        self._dm = model.get_model_object("diffusion_model")
        covered = self.state.config.blocks
        keys = (
            {(kind if kind != "self" else "double", i) for kind, i in covered}
            if covered is not None
            else self.family.blocks(self._dm, "all")
        )
        d, s = self.family.counts(self._dm)
        self.block_keys = {(k, i) for k, i in keys if (k == "double" and i < d) or (k == "single" and i < s)}

    def _replace_around(self, key: tuple, previous):
        kind = "double" if key[0] == "double_block" else "single"
        index = key[1]

        def replace(args: dict, extra: dict):
            original = extra["original_block"]

            def ours(a: dict):
                topts = dict(a.get("transformer_options") or {})
                call = topts.get(CALL_KEY)
                if call is not None and kind == "double" and call.tail is None and "txt" in a:
                    call.tail = max(0, int(a["img"].shape[1]) - call.grid[0] * call.grid[1])
                topts[OVERRIDE] = self._override((kind, index), topts.get(OVERRIDE))
                return original({**a, "transformer_options": topts})

            if previous is not None:
                return previous(args, {**extra, "original_block": ours})
            return ours(args)

        return replace

    # ---- the attention override ---------------------------------------------------------
    def _override(self, block: tuple | None, previous):
        def override(func, *args, **kwargs):
            def passthrough(*a, **kw):
                return previous(func, *a, **kw) if previous is not None else func(*a, **kw)

            topts = kwargs.get("transformer_options") or {}
            call_ctx = topts.get(CALL_KEY)
            q, k, v, heads, mask, skip, rest = _attention_args(args, kwargs)
            if call_ctx is None or topts.get("sigmas") is None:
                return passthrough(*args, **kwargs)
            if not skip:  # [B, L, H*D] -> [B, H, L, D]
                b = q.shape[0]
                q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
            found = self._locate(block, call_ctx, q.shape[2], k.shape[2])
            if found is None:
                return passthrough(*args, **kwargs)
            blk, layout = found

            q0, k0, v0 = q, k, v

            def kernel(q_, k_, v_, mask_):
                if q_ is q0 and k_ is k0 and v_ is v0 and mask_ is mask:
                    return passthrough(
                        *args, **kwargs
                    )  # nothing shared: the call exactly as the block made it
                return passthrough(q_, k_, v_, heads, mask=mask_, skip_reshape=True, **rest)

            jcall = JointCall(
                block=blk,
                layout=layout,
                chunks=tuple(int(c) for c in topts.get("cond_or_uncond") or [0]),
                sigma=float(topts["sigmas"].reshape(-1)[0]),
                sample_sigmas=topts.get("sample_sigmas"),
            )
            return self.state.attention(
                q, k, v, jcall, kernel, lambda n: self._rotations(call_ctx, n, q.shape[-1]), mask
            )

        return override

    def _locate(self, block: tuple | None, ctx: CallContext, lq: int, lk: int):
        """(block, layout) of a joint attention call, or None when it is not one to share in."""
        if lq != lk:
            return None
        gh, gw = ctx.grid
        img = gh * gw
        fam = self.family
        if fam is LUMINA2:
            mult = int(getattr(self.dm, "pad_tokens_multiple", None) or 1)
            cap = ctx.txt_len + (-ctx.txt_len) % mult
            pad = (-img) % mult
            if lq != cap + img + pad:
                return None
            index = ctx.joint_calls
            ctx.joint_calls += 1
            return ("double", index), JointLayout(cap, img, (gh, gw))
        if block is None:
            return None
        if fam is SD3:
            if lq == img and block[0] == "double":
                return ("self", block[1]), JointLayout(0, img, (gh, gw))
            return (block, JointLayout(lq - img, img, (gh, gw))) if lq > img else None
        tail = ctx.tail or 0
        start = lq - img - tail
        if start < 0:
            return None
        return block, JointLayout(start, img, (gh, gw))

    def _rotations(self, ctx: CallContext, slots: int, head_dim: int) -> list:
        mode = self.state.config.positions
        if not self.family.rope or mode == "same" or slots == 0:
            return [None] * slots
        key = (mode, slots, ctx.grid)
        if key not in ctx.rotations:
            emb = self.family.embedder(self.dm)
            offsets = slot_offsets(
                mode, slots, ctx.grid, self.family.axes(self.dm), self.family.index_scale(self.dm)
            )
            ids = torch.tensor(offsets, dtype=torch.float32).unsqueeze(0)  # [1, slots, axes]
            freqs = emb(ids).reshape(slots, head_dim // 2, 2, 2).float()
            ctx.rotations[key] = [freqs[m] for m in range(slots)]
        return ctx.rotations[key]


def install_dit(model, run: JointConsistentRun, node: str):
    """A clone of a DiT `model` with Consistent Self-Attention; an earlier one of this pack is replaced."""
    family = dit_family(model)
    if family is None:
        raise StoryError(
            f"{node}: this MODEL is not a DiT family the pack supports "
            f"(supported: {'; '.join(f.name for f in DIT_FAMILIES)})."
        )
    patch = DiTConsistentPatch(run, family, node)
    m = model.clone()
    patch.bind(m)
    topts = m.model_options.setdefault("transformer_options", {})
    topts[WRAPPER_KEY] = patch
    for kind, fn in (
        (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, patch.outer_sample),
        (comfy.patcher_extension.WrappersMP.APPLY_MODEL, patch.apply_model),
    ):
        m.remove_wrappers_with_key(kind, WRAPPER_KEY)
        m.add_wrapper_with_key(kind, WRAPPER_KEY, fn)
    return m


def installed_dit(model) -> DiTConsistentPatch | None:
    return model.model_options.get("transformer_options", {}).get(WRAPPER_KEY)
