"""ComfyUI glue of the isolated branch: attn1/attn2 replaces on a MODEL clone, run lifecycle.

The math lives in attention/ (pure); this file only wires it into ModelPatcher hooks:

* attn2 replaces capture the original branch's cross-attention maps (cond rows only, layers
  chosen by `capture`) and, in up-sampling blocks, run the isolated cross-attention;
* attn1 replaces in up-sampling blocks run the isolated self-attention;
* an existing replace for the same key (IP-Adapter and the like) is wrapped, never dropped:
  the original branch is its output, and the isolated branch keeps its non-text contribution
  (iso = regional text attention + (prev(q,k,v) - attention(q,k,v)));
* uncond rows (cond_or_uncond == 1) are never modified, whatever the order or count of chunks;
* when a layer both captures maps and isolates (and no other replace is wrapped), the captured
  per-head probabilities also give the cond rows' original attention (probs @ v), so capture
  costs no second q·kᵀ there; a capture-only layer returns the untouched original output;
* an OUTER_SAMPLE wrapper resets the run state when sampling starts and releases it in
  `finally`; the state object survives clone() (`__deepcopy__` returns self).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

from ..attention.branch_merge import is_isolation_block, merge
from ..attention.cross_maps import attend, head_mean_probs, head_probs, selection_matrix
from ..attention.isolated_cross import regional_blend
from ..attention.isolated_self import isolated_self_attention
from ..attention.isolation_run import IsolationRun
from ..attention.otsu import masks_to_tokens, normalise
from .character_plan import check_mask_aspect
from .common import StoryError, sampler_time_error

STATE_KEY = "storydiff_isolation"
WRAPPER_KEY = "storydiff_isolation"
CAPTURE_LAYERS = ("up, lowest resolution", "up, all", "all blocks")


@dataclass
class IsolationConfig:
    node: str = "Isolated Attention"
    isolate: bool = True
    lam: float = 1.1
    gamma: float = 1.0
    iso_range: tuple = (0.0, 1.0)
    capture: str = CAPTURE_LAYERS[0]
    scene: torch.Tensor | None = None  # [1 or P, T, C] scene context, None = the sampler's positive
    characters: list = field(default_factory=list)  # per character: [1 or P, T, C] description context
    identity_bank: object = None  # duck-typed: .characters, .tokens(character, sigma, layer)
    attn_fn: object = None  # None = ComfyUI's optimized_attention (tests inject a recorder)


class IsolationState:
    """Config + per-run state shared by every replace of one patched MODEL."""

    def __init__(self, config: IsolationConfig, run: IsolationRun):
        self.config, self.run = config, run
        self._sel: dict = {}
        self._act: dict = {}
        self._proj: dict = {}
        self._tok: dict = {}

    def project(self, key, which, module, ctx, P, device, dtype):
        """to_k/to_v of a constant context (scene or character), cached per layer for the run."""
        ck = (key, which, device, dtype)
        if ck not in self._proj:
            rows = _rows(ctx, P, device, dtype)
            self._proj[ck] = (module.to_k(rows), module.to_v(rows))
        return self._proj[ck]

    def __deepcopy__(self, memo):
        return self

    def attention(self, q, k, v, heads, extra, mask=None):
        fn = self.config.attn_fn or comfy_attention.optimized_attention
        return fn(q, k, v, heads, mask=mask, attn_precision=extra.get("attn_precision"))

    def selection(self, T, device):
        key = (T, str(device))
        if key not in self._sel:
            plan = self.run.plan
            try:
                self._sel[key] = selection_matrix(plan.positions, plan.lengths, T, device=device)
            except ValueError:
                raise StoryError(
                    f"{self.config.node}: the positive conditioning does not come from the story's prompts (context length "
                    f"{T} does not fit their token counts); connect the Story Prompt's positive output to the sampler."
                ) from None
        return self._sel[key]

    def tokens(self, step, masks, hw):
        """Masks at a block's token grid, [P, K, h·w] (bool), cached per step and size."""
        key = (step, tuple(hw))
        if key not in self._tok:
            if step not in {s for s, _ in self._tok}:
                self._tok = {}
            self._tok[key] = masks_to_tokens(masks, hw)
        return self._tok[key]

    def activation(self, step, hw, device):
        """[P, K, h·w] min-max normalised maps of the steps so far at a block's size (re-weighting)."""
        key = (step, tuple(hw))
        if key not in self._act:
            acc = self.run.acc
            maps = acc.mean(before_step=step) if acc is not None else None
            if step not in {s for s, _ in self._act}:
                self._act = {}
            if maps is None:
                self._act[key] = None
            else:
                small = torch.nn.functional.interpolate(maps, size=tuple(hw), mode="bilinear", align_corners=False)
                P, K = small.shape[:2]
                out = torch.ones(P, K, hw[0] * hw[1], device=device)
                for p in range(P):
                    for c in range(K):
                        n = normalise(small[p, c])
                        if n is not None:
                            out[p, c] = n.reshape(-1).to(device)
                self._act[key] = out
        return self._act[key]


# ---- helpers ------------------------------------------------------------------------
def transformer_blocks(diffusion_model):
    """Yield ((block_name, block_id, depth_index), BasicTransformerBlock) for every UNet transformer."""
    groups = (("input", diffusion_model.input_blocks), ("middle", [diffusion_model.middle_block]),
              ("output", diffusion_model.output_blocks))
    for name, blocks in groups:
        for i, block in enumerate(blocks):
            for layer in block:
                for j, tb in enumerate(getattr(layer, "transformer_blocks", [])):
                    yield (name, i, j), tb


def _ceil_div(x, d):
    return -(-x // d)


def captures(mode: str, key, hw, grid) -> bool:
    if mode == CAPTURE_LAYERS[2]:
        return True
    if key[0] != "output":
        return False
    if mode == CAPTURE_LAYERS[1]:
        return True
    return tuple(hw) == (_ceil_div(_ceil_div(grid[0], 2), 2), _ceil_div(_ceil_div(grid[1], 2), 2))


def _layout(state, q, extra):
    cou = extra["cond_or_uncond"]
    P = state.run.plan.panels
    per = q.shape[0] // len(cou)
    if per != P:
        raise sampler_time_error(
            state.config.node, f"the latent batch has {per} images but the story has {P} panels",
            "connect the Story Prompt's panel_count to the latent's batch_size, or give the node the story of this "
            "batch.")
    return [i for i, c in enumerate(cou) if c == 0], P


def _rows(ctx, P, device, dtype):
    ctx = ctx.to(device=device, dtype=dtype)
    return ctx.expand(P, -1, -1) if ctx.shape[0] == 1 else ctx


# ---- attn2: capture + isolated cross-attention --------------------------------------
def _character_outputs(state, key, module, qc, tok_any, extra):
    """[K, P, n, C] cross-attention of each panel's queries with each present character's own
    description (zeros where the character is absent); one attention call per context length."""
    cfg, heads = state.config, extra["n_heads"]
    K, P = len(tok_any[0]), qc.shape[0]
    groups: dict = {}
    for ch in range(K):
        panels = [p for p in range(P) if tok_any[p][ch]]
        if panels:
            ck, cv = state.project(key, ch, module, cfg.characters[ch], P, qc.device, qc.dtype)
            groups.setdefault(ck.shape[1], []).append((ch, panels, ck[panels], cv[panels]))
    out = qc.new_zeros(K, *qc.shape)
    for items in groups.values():
        qs = torch.cat([qc[panels] for _, panels, _, _ in items])
        o = state.attention(qs, torch.cat([i[2] for i in items]), torch.cat([i[3] for i in items]), heads, extra)
        at = 0
        for ch, panels, _, _ in items:
            out[ch, panels] = o[at:at + len(panels)]
            at += len(panels)
    return out


def attn2_step(state, key, module, q, k, v, extra, prev):
    def original(qq, kk, vv):
        return prev(qq, kk, vv, extra) if prev is not None else _default_attention(qq, kk, vv, extra)

    hw = tuple(extra["activations_shape"][-2:])
    if q.shape[1] != hw[0] * hw[1]:
        return original(q, k, v)
    run, cfg = state.run, state.config
    conds, P = _layout(state, q, extra)
    if not conds:
        return original(q, k, v)
    step = run.step(extra["sigmas"], extra.get("sample_sigmas"))
    grid = tuple(extra["original_shape"][-2:])
    heads = extra["n_heads"]
    capture = captures(cfg.capture, key, hw, grid) and run.capturing(step)
    masks = None
    if cfg.isolate and is_isolation_block(key) and _in_range(cfg, run, step):
        masks = run.masks(step, grid, q.device)  # from steps < step: unaffected by this call's capture
        masks = masks if masks is not None and bool(masks.any()) else None
    cond_idx = torch.cat([torch.arange(c * P, (c + 1) * P) for c in conds]).to(q.device)
    if capture and masks is not None and prev is None:
        # the output changes anyway: reuse the captured probabilities for the cond rows' attention
        probs = head_probs(q[cond_idx], k[cond_idx], heads)
        orig = torch.empty_like(q)
        orig[cond_idx] = attend(probs, v[cond_idx]).to(q.dtype)
        unc = [i for i, c in enumerate(extra["cond_or_uncond"]) if c != 0]
        if unc:
            unc_idx = torch.cat([torch.arange(c * P, (c + 1) * P) for c in unc]).to(q.device)
            orig[unc_idx] = original(q[unc_idx], k[unc_idx], v[unc_idx])
        maps = probs.mean(1)
    else:
        orig = original(q, k, v)
        maps = head_mean_probs(q[cond_idx], k[cond_idx], heads) if capture else None
    if capture:
        sel = state.selection(k.shape[1], q.device)
        per_chunk = (maps @ sel.to(maps.dtype)).transpose(1, 2).reshape(len(conds), P, sel.shape[2], *hw)
        run.add_maps(step, per_chunk.mean(0), grid)
    if masks is None:
        return orig
    tok = state.tokens(step, masks, hw)  # [P, K, n] float
    tok_any = tok.any(-1).tolist()
    m = tok.transpose(0, 1).unsqueeze(-1).to(q.dtype)  # [K, P, n, 1]
    active = tok.any(1).any(1).view(P, 1, 1)
    out = orig.clone()
    for c in conds:
        rows = slice(c * P, (c + 1) * P)
        qc = q[rows]
        plain = state.attention(qc, k[rows], v[rows], heads, extra) if prev is not None else orig[rows]
        if cfg.scene is None:
            scene = plain
        else:
            sk, sv = state.project(key, "scene", module, cfg.scene, P, q.device, q.dtype)
            scene = state.attention(qc, sk, sv, heads, extra)
        chars = _character_outputs(state, key, module, qc, tok_any, extra)
        iso = regional_blend(scene, chars, m[..., 0])  # all panels at once
        if prev is not None:  # keep what the wrapped replace adds on top of text attention (e.g. IP-Adapter)
            iso = iso + (orig[rows] - plain)
        out[rows] = torch.where(active, merge(iso, orig[rows], cfg.lam), orig[rows])
    return out


def _in_range(cfg, run, step):
    f = run.fraction(step)
    return step > 0 and cfg.iso_range[0] <= f <= cfg.iso_range[1] and cfg.lam != 0


# ---- attn1: isolated self-attention -------------------------------------------------
def _references(state, key, module, k, v, tok, c, P, p, step, extra, hw):
    """Reference keys/values of the characters present in panel p (bank first, else earlier panel)."""
    plan, bank = state.run.plan, state.config.identity_bank
    n = hw[0] * hw[1]
    ks, vs, owner, acts = [], [], [], []
    sigma = float(extra["sigmas"].reshape(-1)[0]) if bank is not None else None
    for ch, name in enumerate(plan.names):
        if not bool(tok[p, ch].any()):
            continue
        toks = None
        if bank is not None and name in list(bank.characters):
            toks = bank.tokens(name, sigma, key)
        if toks is not None and toks.shape[0] > 0:
            width = getattr(module.to_k, "in_features", toks.shape[-1])
            if toks.ndim != 2 or toks.shape[-1] != width:
                raise StoryError(
                    f"{state.config.node}: identity_bank gives [{name}] tokens of shape {tuple(toks.shape)} for layer {key}, "
                    f"but this model's layer takes [N, {width}]; build the identity bank with the same model."
                )
            x = toks.to(device=k.device, dtype=k.dtype)
            ks.append(module.to_k(x))
            vs.append(module.to_v(x))
            acts.append(torch.ones(x.shape[0], device=k.device))
        else:
            rp = plan.ref_panel[ch] if ch < len(plan.ref_panel) else None
            if rp is None or rp == p:
                continue
            sel = tok[rp, ch] > 0.5
            if not bool(sel.any()):
                continue
            ks.append(k[c * P + rp, :n][sel])
            vs.append(v[c * P + rp, :n][sel])
            act = state.activation(step, hw, k.device)
            acts.append(act[rp, ch][sel] if act is not None else torch.ones(int(sel.sum()), device=k.device))
        owner.append(torch.full((ks[-1].shape[0],), ch, dtype=torch.long, device=k.device))
    if not ks:
        return None
    return torch.cat(ks), torch.cat(vs), torch.cat(owner), torch.cat(acts)


def attn1_step(state, key, module, q, k, v, extra, orig):
    hw = tuple(extra["activations_shape"][-2:])
    run, cfg = state.run, state.config
    if q.shape[1] != hw[0] * hw[1] or not (cfg.isolate and is_isolation_block(key)):
        return orig
    conds, P = _layout(state, q, extra)
    step = run.step(extra["sigmas"], extra.get("sample_sigmas"))
    if not conds or not _in_range(cfg, run, step):
        return orig
    grid = tuple(extra["original_shape"][-2:])
    masks = run.masks(step, grid, q.device)
    if masks is None or not masks.any():
        return orig
    tok = state.tokens(step, masks, hw)  # [P, K, n] bool
    out = orig.clone()
    fn = cfg.attn_fn or comfy_attention.optimized_attention
    for c in conds:
        for p in range(P):
            refs = _references(state, key, module, k, v, tok.float(), c, P, p, step, extra, hw)
            if refs is None:
                continue
            rk, rv, owner, act = refs
            r = c * P + p
            iso = isolated_self_attention(q[r:r + 1], k[r:r + 1], v[r:r + 1], rk, rv, owner, tok[p], extra["n_heads"],
                                          attn_fn=fn, activation=act, gamma=cfg.gamma,
                                          attn_precision=extra.get("attn_precision"))
            out[r] = merge(iso[0], orig[r], cfg.lam)
    return out


# ---- installation -------------------------------------------------------------------
def _default_attention(q, k, v, extra):
    return comfy_attention.optimized_attention(q, k, v, extra["n_heads"], attn_precision=extra.get("attn_precision"),
                                               transformer_options=extra)


def _make_replace(state, key, module, prev, which):
    def replace(q, k, v, extra):
        if which == "attn2":
            return attn2_step(state, key, module, q, k, v, extra, prev)
        orig = prev(q, k, v, extra) if prev is not None else _default_attention(q, k, v, extra)
        return attn1_step(state, key, module, q, k, v, extra, orig)

    return replace


def install(model, state: IsolationState):
    """Patch a *clone* of `model` (returned) with the state's capture/isolation replaces."""
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    existing = to.get("patches_replace", {})
    dm = m.get_model_object("diffusion_model")
    for key, tb in transformer_blocks(dm):
        for which, module in (("attn2", tb.attn2), ("attn1", tb.attn1)):
            if which == "attn1" and not (state.config.isolate and is_isolation_block(key)):
                continue
            if which == "attn2" and not (state.config.capture == CAPTURE_LAYERS[2] or key[0] == "output"):
                continue
            slot = existing.get(which, {})
            prev = slot.get(key, slot.get(key[:2]))
            setter = m.set_model_attn2_replace if which == "attn2" else m.set_model_attn1_replace
            setter(_make_replace(state, key, module, prev, which), key[0], key[1], key[2])
    m.model_options["transformer_options"][STATE_KEY] = state

    def outer_sample(executor, *args, **kwargs):
        noise = args[0] if args else kwargs.get("noise")
        if noise is not None and noise.ndim >= 4:
            check_mask_aspect(state.config.node, state.run.user_masks, tuple(noise.shape[-2:]))
        state.run.reset()
        state._sel, state._act, state._proj, state._tok = {}, {}, {}, {}
        try:
            return executor(*args, **kwargs)
        finally:
            state.run.release()
            state._act, state._proj, state._tok = {}, {}, {}

    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, outer_sample)
    return m


def find_state(model) -> IsolationState | None:
    return model.model_options.get("transformer_options", {}).get(STATE_KEY)
