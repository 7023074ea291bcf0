"""Consistent self-attention on a ComfyUI MODEL through ModelPatcher attention hooks.

One `CSAPatch` per patched clone:
* an attn1 *patch* (runs on the pre-projection tokens after norm1): in a bank write run it
  records the shared tokens of each identity image; in a read run it appends the bank tokens
  of the batch's characters to the context, so the layer itself projects them;
* an attn1 *replace* per transformer layer of the chosen blocks, wrapping whatever replace was
  there before: it gathers the already-projected shared keys/values of the other images of the
  same guidance chunk (and the row's bank tokens) and runs one SDPA-class call per key layout;
* an OUTER_SAMPLE wrapper that resets the per-run state and releases it in `finally`.
Steps are recognised by sigma (extra_options["sigmas"] within "sample_sigmas"), never counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention.consistent import consistent_attention, downscale_level, reference_table
from ..attention.identity_bank import IdentityBank
from ..attention.token_sampling import (
    ProbabilitySchedule, gate_draw, sample_token_indices, step_progress, step_sigma,
)
from .common import sampler_time_error

WRAPPER_KEY = "storydiff_csa"
OPTIONS_KEY = "storydiff_csa"  # transformer_options key holding the installed CSAPatch
PLAN_KEY = "storydiff_csa_plan"  # per-block-call note from the attn1 patch to the replace


@dataclass(frozen=True)
class CSAConfig:
    keep_rates: tuple = (0.5, 0.5, 0.5, 0.5)  # at latent/1, /2, /4, /8 (image 1/8, 1/16, 1/32, 1/64)
    blocks: str = "up"  # "up" (output blocks, as the official code) or "all"
    warmup_steps: int = 1
    start_percent: float = 0.0
    end_percent: float = 100.0
    schedule: ProbabilitySchedule = ProbabilitySchedule(((0.0, 0.7), (0.4, 0.9)))
    window: int = 0
    seed: int = 0
    strength: float = 1.0

    def keep_rate(self, level) -> float:
        if level is None:
            return 0.0
        return self.keep_rates[min(level, len(self.keep_rates) - 1)]

    def covers(self, block) -> bool:
        return self.blocks == "all" or (block is not None and block[0] == "output")


@dataclass
class Mode:
    kind: str = "plain"  # "plain" | "write" | "read"
    bank: IdentityBank | None = None
    labels: tuple = ()  # write: character per image (None = not an identity image); read: tuple of names per image
    node: str = "Consistent Self-Attention"


@dataclass
class Plan:
    sigma: float
    layer: tuple
    chunks: list  # cond_or_uncond labels
    images: int
    active: bool
    indices: torch.Tensor | None = None
    refs: list | None = None
    base_len: int = 0  # context length before the bank tokens
    bank_len: int = 0
    segments: dict | None = None  # character -> (start, end) inside the bank part


class RunState:
    """Per-run caches of one patch; reset when sampling starts, dropped in `finally`."""

    def __init__(self):
        self.indices: dict = {}  # (step sigma, tokens, images, keep-rate) -> LongTensor [B, k]
        self.gather: dict = {}  # gather indices reused by the layers of one shape
        self.repeated: dict = {}  # indices repeated over the guidance chunks
        self.steps: dict = {}  # sigma -> (step index, progress, step sigma)
        self.staging: IdentityBank | None = None

    def reset(self, mode: Mode):
        self.indices, self.gather, self.repeated, self.steps = {}, {}, {}, {}
        self.staging = IdentityBank(dtype=mode.bank.dtype) if mode.kind == "write" else None


class CSAPatch:
    def __init__(self, config: CSAConfig, mode: Mode | None = None):
        self.config = config
        self.mode = mode or Mode()
        self.state = RunState()

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options up to 0.3.75
        return self

    # ---- per-run lifecycle -------------------------------------------------------------
    def outer_sample(self, executor, *args, **kwargs):
        noise = args[0] if args else kwargs.get("noise")
        self._check_batch(int(noise.shape[0]) if noise is not None else None)
        self.state.reset(self.mode)
        ok = False
        try:
            out = executor(*args, **kwargs)
            ok = True
            return out
        finally:
            if ok and self.mode.kind == "write" and self.state.staging is not None:
                self.mode.bank.update_from(self.state.staging)
            self.state = RunState()

    def _check_batch(self, batch):
        mode = self.mode
        if mode.kind == "plain" or batch is None:
            return
        if len(mode.labels) not in (1, batch):
            raise sampler_time_error(
                mode.node, f"{len(mode.labels)} panels/characters are given but the latent batch is {batch}",
                "connect the Story Prompt's panel_count to the latent's batch_size (or give one name per image).")
        if mode.kind == "read":
            missing = sorted({c for names in mode.labels for c in names} - set(mode.bank.characters))
            if missing:
                have = ", ".join(f"[{c}]" for c in mode.bank.characters) or "nothing yet"
                raise sampler_time_error(
                    mode.node, f"the identity bank has no tokens for {', '.join(f'[{c}]' for c in missing)} "
                    f"(it holds {have})", "run an Identity Bank Write for them first (connect its LATENT to "
                    "'after' so it samples before this run), load a bank that has them, or untag them.")

    def _labels(self, images: int) -> tuple:
        labels = self.mode.labels
        return tuple(labels) * images if len(labels) == 1 else tuple(labels)

    # ---- planning (shared by the attn1 patch and the replace of one block call) ----------
    def plan(self, rows: int, tokens: int, extra: dict) -> Plan | None:
        plan = extra.get(PLAN_KEY)
        if plan is not None:
            return plan
        cfg = self.config
        block = extra.get("block")
        shape = extra.get("activations_shape")
        if not cfg.covers(block) or shape is None or extra.get("sigmas") is None:
            return None
        h, w = int(shape[-2]), int(shape[-1])
        if rows != int(shape[0]) or tokens != h * w:
            return None  # an SVD temporal block, or an unknown layout
        chunks = list(extra.get("cond_or_uncond") or [0])
        if rows % len(chunks):
            return None
        images = rows // len(chunks)
        sample_sigmas = extra.get("sample_sigmas")
        sigma_now = float(extra["sigmas"].reshape(-1)[0])
        if sigma_now not in self.state.steps:
            t, progress = step_progress(sigma_now, sample_sigmas)
            self.state.steps[sigma_now] = (t, progress, step_sigma(sigma_now, sample_sigmas))
        t, progress, sigma = self.state.steps[sigma_now]
        layer = (block[0], int(block[1]), int(extra.get("block_index", 0)))
        pct = progress * 100.0
        active = (cfg.strength > 0 and t >= cfg.warmup_steps and cfg.start_percent <= pct
                  and (pct < cfg.end_percent or cfg.end_percent >= 100.0)
                  and gate_draw(cfg.seed, sigma, layer) < cfg.schedule.at(progress))
        original = extra.get("original_shape")
        level = downscale_level(tuple(original[-2:]), (h, w)) if original is not None else None
        rate = cfg.keep_rate(level)
        plan = Plan(sigma=sigma, layer=layer, chunks=chunks, images=images, active=active)
        if rate > 0 and ((active and self.mode.kind == "plain") or self.mode.kind == "write"):
            key = (sigma, tokens, images, rate)
            if key not in self.state.indices:
                if len(self.state.indices) > 64:  # a new step: earlier draws are done with
                    self.state.indices, self.state.gather, self.state.repeated = {}, {}, {}
                self.state.indices[key] = sample_token_indices(images, tokens, rate, cfg.seed, sigma)
            plan.indices = self.state.indices[key]
        if self.mode.kind == "plain":
            plan.refs = reference_table(images, cfg.window)
        elif self.mode.kind == "write":
            plan.refs = reference_table(images, cfg.window, groups=self._labels(images))
        else:
            plan.refs = [()] * images
        extra[PLAN_KEY] = plan
        return plan

    # ---- attn1 patch: record (write) or append bank tokens (read) ---------------------
    def attn1_patch(self, n, context, value, extra):
        plan = self.plan(n.shape[0], n.shape[1], extra)
        if plan is None:
            return n, context, value
        if self.mode.kind == "write" and plan.indices is not None and self.state.staging is not None:
            self._record(n, plan)
        if self.mode.kind == "read" and plan.active:
            return self._append_bank(n, context, value, plan)
        return n, context, value

    def _record(self, n, plan: Plan):
        labels = self._labels(plan.images)
        idx = plan.indices.to(n.device)
        for c, half in enumerate(plan.chunks):
            chunk = n[c * plan.images:(c + 1) * plan.images]
            for name in sorted({lab for lab in labels if lab is not None}):
                rows = [i for i, lab in enumerate(labels) if lab == name]
                toks = torch.cat([chunk[i, idx[i]] for i in rows], 0)
                self.state.staging.record(name, plan.sigma, plan.layer, toks, half=int(half))

    def _append_bank(self, n, context, value, plan: Plan):
        if context is not value and not torch.equal(context, value):
            return n, context, value  # another patch set distinct values: leave the bank out
        names = sorted({c for row in self._labels(plan.images) for c in row})
        if not names:
            return n, context, value
        bank = self.mode.bank
        per_half, segments = {}, {}
        for half in set(plan.chunks):
            parts, pos = [], 0
            for name in names:
                toks = bank.tokens(name, plan.sigma, plan.layer, half=int(half) if int(half) in (0, 1) else 0)
                if toks is None:
                    toks = bank.tokens(name, plan.sigma, plan.layer, half=0)
                if toks is None or toks.shape[-1] != n.shape[-1]:
                    continue
                parts.append(toks)
                segments[name] = (pos, pos + toks.shape[0])
                pos += toks.shape[0]
            per_half[half] = torch.cat(parts, 0) if parts else None
        lengths = {t.shape[0] if t is not None else 0 for t in per_half.values()}
        if len(lengths) != 1 or 0 in lengths:
            return n, context, value
        rows = torch.cat([per_half[h].to(device=n.device, dtype=n.dtype).unsqueeze(0).expand(plan.images, -1, -1)
                          for h in plan.chunks], 0)
        plan.base_len = context.shape[1]
        plan.bank_len = rows.shape[1]
        plan.segments = segments
        ctx = torch.cat([context, rows], 1)
        return n, ctx, ctx

    # ---- attn1 replace ------------------------------------------------------------------
    def attention(self, previous, q, k, v, extra):
        def attn(q_, k_, v_, heads):
            if previous is not None:
                return previous(q_, k_, v_, extra)
            return _optimized_attention(q_, k_, v_, heads, extra)

        heads = extra["n_heads"]
        plan = self.plan(q.shape[0], q.shape[1], extra)
        if plan is None or not plan.active:
            return attn(q, k, v, heads)
        bank_part = plan.bank_len if plan.segments else 0
        if bank_part:
            lo, hi = plan.base_len, plan.base_len + plan.bank_len
            bank_k, bank_v = k[:, lo:hi], v[:, lo:hi]
            k = k[:, :lo] if hi == k.shape[1] else torch.cat([k[:, :lo], k[:, hi:]], 1)
            v = v[:, :lo] if hi == v.shape[1] else torch.cat([v[:, :lo], v[:, hi:]], 1)
        # all guidance chunks in one call, rows in ComfyUI's order (an earlier replace sees the
        # batch layout it expects); references never cross a chunk
        b, chunks = plan.images, len(plan.chunks)
        refs = [tuple(c * b + j for j in plan.refs[i]) for c in range(chunks) for i in range(b)]
        indices = self._batch_indices(plan, chunks)
        row_extra = None
        if bank_part:
            labels = self._labels(b)
            row_extra = [self._row_bank(bank_k[c * b], bank_v[c * b], plan, labels[i], c)
                         for c in range(chunks) for i in range(b)]
        out = consistent_attention(q, k, v, heads, indices, refs, row_extra, attn, index_cache=self.state.gather)
        s = self.config.strength
        if s < 1.0:
            plain = attn(q, k, v, heads)
            out = plain + (out - plain) * s
        return out

    def _batch_indices(self, plan: Plan, chunks: int) -> torch.Tensor:
        if plan.indices is None:
            return torch.zeros(plan.images * chunks, 0, dtype=torch.long)
        key = (id(plan.indices), chunks)  # plan.indices stays alive in state.indices meanwhile
        if key not in self.state.repeated:
            self.state.repeated[key] = plan.indices.repeat(chunks, 1)
        return self.state.repeated[key]

    @staticmethod
    def _row_bank(bank_k, bank_v, plan: Plan, names, chunk: int):
        spans = [plan.segments[n] for n in names if n in plan.segments]
        if not spans:
            return None
        ks = torch.cat([bank_k[a:b] for a, b in spans], 0)
        vs = torch.cat([bank_v[a:b] for a, b in spans], 0)
        return ks, vs, (chunk, tuple(names))


def _optimized_attention(q, k, v, heads, extra):
    import comfy.ldm.modules.attention as comfy_attention

    return comfy_attention.optimized_attention(
        q, k, v, heads, attn_precision=extra.get("attn_precision"), transformer_options=extra)


class LayerReplace:
    """The attn1 replace of one layer: CSA around the replace previously installed there (if any)."""

    def __init__(self, patch: CSAPatch, previous):
        self.patch, self.previous = patch, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        return self.patch.attention(self.previous, q, k, v, extra_options)


def transformer_layers(model_patcher, blocks: str) -> list[tuple]:
    """Every (block_name, block_id, depth index) holding a self-attention layer in the chosen blocks."""
    dm = model_patcher.get_model_object("diffusion_model")
    groups = []
    if blocks == "all":
        groups += [("input", i, b) for i, b in enumerate(getattr(dm, "input_blocks", []))]
        if getattr(dm, "middle_block", None) is not None:
            groups.append(("middle", 0, dm.middle_block))
    groups += [("output", i, b) for i, b in enumerate(getattr(dm, "output_blocks", []))]
    keys = []
    for name, block_id, block in groups:
        for module in block:
            depth = len(getattr(module, "transformer_blocks", []) or [])
            keys += [(name, block_id, d) for d in range(depth)]
    return keys


def installed_patch(model_patcher) -> CSAPatch | None:
    return model_patcher.model_options.get("transformer_options", {}).get(OPTIONS_KEY)


def install(model_patcher, patch: CSAPatch):
    """Patch a clone of model_patcher with `patch`; an earlier CSAPatch of this pack is replaced,
    every other patch (attn1 patches, replaces of other packs) is kept and composed with."""
    import comfy.patcher_extension

    m = model_patcher.clone()
    topts = m.model_options.setdefault("transformer_options", {})
    old = topts.get(OPTIONS_KEY)
    patches = dict(topts.get("patches", {}))
    attn1_list = [p for p in patches.get("attn1_patch", []) if old is None or getattr(p, "__self__", None) is not old]
    patches["attn1_patch"] = attn1_list + [patch.attn1_patch]
    replaces_all = dict(topts.get("patches_replace", {}))
    replaces = dict(replaces_all.get("attn1", {}))
    for key, fn in list(replaces.items()):
        if old is not None and isinstance(fn, LayerReplace) and fn.patch is old:
            if fn.previous is None:
                del replaces[key]
            else:
                replaces[key] = fn.previous
    for key in transformer_layers(m, patch.config.blocks):
        previous = replaces.get(key, replaces.get(key[:2]))
        replaces[key] = LayerReplace(patch, previous)
    replaces_all["attn1"] = replaces
    topts["patches"] = patches
    topts["patches_replace"] = replaces_all
    topts[OPTIONS_KEY] = patch
    outer = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    m.remove_wrappers_with_key(outer, WRAPPER_KEY)
    m.add_wrapper_with_key(outer, WRAPPER_KEY, patch.outer_sample)
    return m
