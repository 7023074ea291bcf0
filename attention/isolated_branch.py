"""The isolated branch of Object Isolated Attention, per attention call (pure torch).

The ComfyUI glue (nodes/patch_isolated.py) calls `IsolatedBranch.attn2` from each attn2 replace
and `IsolatedBranch.attn1` from each attn1 replace, injecting the attention kernel
(`Kernel(q, k, v, heads, mask=None)`, ComfyUI's attention with the block's transformer_options)
and the replace it wraps (`original(q, k, v)`, the original branch).

* attn2 captures the original branch's cross-attention maps (cond rows only, layers chosen by
  `capture`) and, in up-sampling blocks, runs the isolated cross-attention (`regional_blend`);
* attn1, in up-sampling blocks, runs the isolated self-attention (`isolated_self_attention`);
* a wrapped replace (IP-Adapter and the like) stays the original branch, and the isolated branch
  keeps its non-text contribution (iso = regional text attention + (prev(q,k,v) - attention(q,k,v)));
* uncond rows (cond_or_uncond == 1) are never modified, whatever the order or count of chunks;
* when a layer both captures maps and isolates (and no other replace is wrapped), the captured
  per-head probabilities also give the cond rows' original attention (probs @ v), so capture
  costs no second q·kᵀ there; a capture-only layer returns the untouched original output.

`IsolatedBranch` is the per-run state holder: `reset()` when sampling starts, `release()` after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .cross_maps import attend, character_maps, head_probs, selection_matrix
from .isolated_cross import regional_blend
from .isolated_merge import is_isolation_block, merge
from .isolated_run import IsolatedRun
from .isolated_self import isolated_self_attention
from .otsu import masks_to_tokens, normalise
from .steps import StepWindow

CAPTURE_LAYERS = ("up, lowest resolution", "up, all", "all blocks")
Kernel = Callable[..., torch.Tensor]  # (q, k, v, heads, mask=None) -> [b, n, h·d]
Original = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class IsolatedInputError(ValueError):
    """An input that does not fit the run (the message names the node and the fix)."""


@dataclass
class IsolatedConfig:
    node: str = "Isolated Attention"
    isolate: bool = True
    lam: float = 1.1
    gamma: float = 1.0
    steps: StepWindow = StepWindow()
    capture: str = CAPTURE_LAYERS[0]
    scene: torch.Tensor | None = None  # [1 or P, T, C] scene context, None = the sampler's positive
    characters: list = field(default_factory=list)  # per character: [1 or P, T, C] description context
    # per character: valid tokens of each panel's row of `characters` (zero-padded rows), None = all
    character_lengths: list = field(default_factory=list)
    identity_bank: Any = None  # duck-typed: .characters, .tokens(character, sigma, layer)
    story_cond: object = None  # the Story Prompt's positive tensor: finds the story's own cond rows


def _ceil_div(x: int, d: int) -> int:
    return -(-x // d)


def captures(mode: str, key: tuple, hw, grid) -> bool:
    if mode == CAPTURE_LAYERS[2]:
        return True
    if key[0] != "output":
        return False
    if mode == CAPTURE_LAYERS[1]:
        return True
    return tuple(hw) == (_ceil_div(_ceil_div(grid[0], 2), 2), _ceil_div(_ceil_div(grid[1], 2), 2))


def wants_attn2(config: IsolatedConfig, key: tuple) -> bool:
    return config.capture == CAPTURE_LAYERS[2] or key[0] == "output"


def wants_attn1(config: IsolatedConfig, key: tuple) -> bool:
    return config.isolate and is_isolation_block(key)


def _rows(ctx: torch.Tensor, P: int, device, dtype) -> torch.Tensor:
    ctx = ctx.to(device=device, dtype=dtype)
    return ctx.expand(P, -1, -1) if ctx.shape[0] == 1 else ctx


def chunk_rows(chunks, P: int, device) -> torch.Tensor:
    return torch.cat([torch.arange(c * P, (c + 1) * P) for c in chunks]).to(device)


def panel_references(plan, tok, p: int, activation, region, dim: int, from_bank=None) -> tuple | None:
    """(keys, values, owner [R], activation [R]) of the references of the characters present in panel
    p (tok [P, K, n]: each character's region on the image tokens), every model family's rule: a
    character's identity-bank tokens (`from_bank(name)` -> (keys, values) or None) with activation 1,
    else its region in its reference panel (its first panel; none in that panel itself):
    `region(rp, sel)` -> (keys, values) of the selected tokens, with their normalised
    cross-attention (`activation()` -> [P, K, n] or None = 1). Keys and values are concatenated along
    `dim` (the token axis of the family's layout); None when no character has references."""
    ks, vs, owner, acts = [], [], [], []
    for ch, name in enumerate(plan.names):
        if not bool(tok[p, ch].any()):
            continue
        found = from_bank(name) if from_bank is not None else None
        if found is not None:
            kr, vr = found
            act = torch.ones(kr.shape[dim], device=kr.device)
        else:
            rp = plan.ref_panel[ch] if ch < len(plan.ref_panel) else None
            if rp is None or rp == p:
                continue
            sel = tok[rp, ch] > 0.5
            if not bool(sel.any()):
                continue
            kr, vr = region(rp, sel)
            maps = activation()
            act = maps[rp, ch][sel] if maps is not None else torch.ones(int(sel.sum()), device=kr.device)
        ks.append(kr)
        vs.append(vr)
        acts.append(act)
        owner.append(torch.full((kr.shape[dim],), ch, dtype=torch.long, device=kr.device))
    if not ks:
        return None
    return torch.cat(ks, dim), torch.cat(vs, dim), torch.cat(owner), torch.cat(acts)


class IsolatedBranch:
    """Config + per-run state shared by every replace of one patched MODEL."""

    def __init__(self, config: IsolatedConfig, run: IsolatedRun):
        self.config, self.run = config, run
        # uuids of the sampler's cond entries that are the story's own (set when sampling starts);
        # None = every positive chunk (no sampler information)
        self.story_uuids: set | None = None
        self._clear()

    def _clear(self) -> None:
        self._sel: dict = {}
        self._act: dict = {}
        self._proj: dict = {}
        self._tok: dict = {}

    def reset(self, clock=None) -> None:
        self.run.reset(clock)
        self._clear()

    def release(self) -> None:
        self.run.release()
        self._clear()
        release = getattr(self.config.identity_bank, "release", None)
        if release is not None:  # the tokens this run read from the bank
            release()

    # ---- per-run caches ----------------------------------------------------------------
    def project(self, key, which, module, ctx, P, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """to_k/to_v of a constant context (scene or character), cached per layer for the run."""
        ck = (key, which, device, dtype)
        if ck not in self._proj:
            rows = _rows(ctx, P, device, dtype)
            self._proj[ck] = (module.to_k(rows), module.to_v(rows))
        return self._proj[ck]

    def selection(self, T: int, device, period: int | None = None) -> torch.Tensor:
        """[P, T, K] (cross_maps.selection_matrix); `period`: the panels' contexts are zero-padded
        to that many tokens (a joint-attention DiT's Story Prompt batch), else tiled."""
        key = (T, str(device), period)
        if key not in self._sel:
            try:
                plan = self.run.plan
                self._sel[key] = selection_matrix(
                    plan.positions, plan.lengths, T, device=device, period=period
                )
            except ValueError:
                raise IsolatedInputError(
                    f"{self.config.node}: the positive conditioning does not come from the story's prompts "
                    f"(context length {T} does not fit their token counts); connect the Story Prompt's "
                    "positive output to the sampler."
                ) from None
        return self._sel[key]

    def tokens(self, step: int, masks: torch.Tensor, hw) -> torch.Tensor:
        """Masks at a block's token grid, [P, K, h·w] (bool), cached per step and size."""
        key = (step, tuple(hw))
        if key not in self._tok:
            if step not in {s for s, _ in self._tok}:
                self._tok = {}
            self._tok[key] = masks_to_tokens(masks, hw)
        return self._tok[key]

    def activation(self, step: int, hw, device) -> torch.Tensor | None:
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
                small = torch.nn.functional.interpolate(
                    maps, size=tuple(hw), mode="bilinear", align_corners=False
                )
                P, K = small.shape[:2]
                out = torch.ones(P, K, hw[0] * hw[1], device=device)
                for p in range(P):
                    for c in range(K):
                        n = normalise(small[p, c])
                        if n is not None:
                            out[p, c] = n.reshape(-1).to(device)
                self._act[key] = out
        return self._act[key]

    def _cond_chunks(self, q: torch.Tensor, extra: dict) -> tuple[list[int], int]:
        """The chunks of this call that are the story's own positive rows (never an uncond, an
        area-restricted cond or another cond combined with the story's), and the panel count."""
        cou = extra["cond_or_uncond"]
        uuids = extra.get("uuids")
        mine = self.story_uuids
        if mine is not None and uuids is not None and len(uuids) == len(cou):
            cou = [c if c != 0 or uuids[i] in mine else -1 for i, c in enumerate(cou)]
        P = self.run.plan.panels
        per = q.shape[0] // len(cou)
        if per != P:
            raise IsolatedInputError(
                f"{self.config.node}: the latent batch has {per} images but the story has {P} panels; "
                "connect the Story Prompt's panel_count to the latent's batch_size."
            )
        return [i for i, c in enumerate(cou) if c == 0], P

    def isolating(self, step: int) -> bool:
        cfg = self.config
        # no `step > 0` rule: online masks come from earlier steps' maps, so a run's first step has
        # none anyway, while given masks isolate from the first step of every stage of a split run
        return cfg.lam != 0 and cfg.steps.contains(self.run.fraction(step))

    # ---- attn2: capture + isolated cross-attention --------------------------------------
    def _character_outputs(self, key, module, qc, tok_any, heads: int, attn: Kernel) -> torch.Tensor:
        """[K, P, n, C] cross-attention of each panel's queries with each present character's own
        description (zeros where the character is absent); one attention call per context length."""
        K, P = len(tok_any[0]), qc.shape[0]
        groups: dict = {}
        for ch in range(K):
            panels = [p for p in range(P) if tok_any[p][ch]]
            if panels:
                ck, cv = self.project(key, ch, module, self.config.characters[ch], P, qc.device, qc.dtype)
                groups.setdefault(ck.shape[1], []).append((ch, panels, ck[panels], cv[panels]))
        out = qc.new_zeros(K, *qc.shape)
        for items in groups.values():
            qs = torch.cat([qc[panels] for _, panels, _, _ in items])
            o = attn(qs, torch.cat([i[2] for i in items]), torch.cat([i[3] for i in items]), heads)
            at = 0
            for ch, panels, _, _ in items:
                out[ch, panels] = o[at : at + len(panels)]
                at += len(panels)
        return out

    def attn2(
        self, key, module, q, k, v, extra: dict, original: Original, attn: Kernel, wraps: bool
    ) -> torch.Tensor:
        hw = tuple(extra["activations_shape"][-2:])
        if q.shape[1] != hw[0] * hw[1]:
            return original(q, k, v)
        run, cfg = self.run, self.config
        conds, P = self._cond_chunks(q, extra)
        if not conds:
            return original(q, k, v)
        step = run.step(extra["sigmas"], extra.get("sample_sigmas"))
        grid = tuple(extra["original_shape"][-2:])
        heads = extra["n_heads"]
        capture = captures(cfg.capture, key, hw, grid) and run.capturing(step)
        masks = None
        if cfg.isolate and is_isolation_block(key) and self.isolating(step):
            masks = run.masks(step, grid, q.device)  # from steps < step: unaffected by this call's capture
            masks = masks if masks is not None and bool(masks.any()) else None
        cond_idx = chunk_rows(conds, P, q.device)
        maps = None
        if capture and masks is not None and not wraps:
            # the output changes anyway: reuse the captured probabilities for the cond rows' attention
            probs = head_probs(q[cond_idx], k[cond_idx], heads)
            orig = torch.empty_like(q)
            orig[cond_idx] = attend(probs, v[cond_idx]).to(q.dtype)
            unc = [i for i in range(len(extra["cond_or_uncond"])) if i not in conds]
            if unc:
                unc_idx = chunk_rows(unc, P, q.device)
                orig[unc_idx] = original(q[unc_idx], k[unc_idx], v[unc_idx])
            maps = probs.mean(1)
        else:
            orig = original(q, k, v)
        if capture:
            sel = self.selection(k.shape[1], q.device)
            per_chunk = character_maps(q[cond_idx], k[cond_idx], heads, sel, hw, probs=maps)
            run.add_maps(step, per_chunk.reshape(len(conds), P, *per_chunk.shape[1:]).mean(0), grid)
        if masks is None:
            return orig
        tok = self.tokens(step, masks, hw)  # [P, K, n]
        tok_any = tok.any(-1).tolist()
        m = tok.transpose(0, 1).to(q.dtype)  # [K, P, n]
        active = tok.any(1).any(1).view(P, 1, 1)
        out = orig.clone()
        for c in conds:
            rows = slice(c * P, (c + 1) * P)
            qc = q[rows]
            plain = attn(qc, k[rows], v[rows], heads) if wraps else orig[rows]
            if cfg.scene is None:
                scene = plain
            else:
                sk, sv = self.project(key, "scene", module, cfg.scene, P, q.device, q.dtype)
                scene = attn(qc, sk, sv, heads)
            chars = self._character_outputs(key, module, qc, tok_any, heads, attn)
            iso = regional_blend(scene, chars, m)  # all panels at once
            if wraps:  # keep what the wrapped replace adds on top of text attention (e.g. IP-Adapter)
                iso = iso + (orig[rows] - plain)
            out[rows] = torch.where(active, merge(iso, orig[rows], cfg.lam), orig[rows])
        return out

    # ---- attn1: isolated self-attention -------------------------------------------------
    def _references(self, key, module, k, v, tok, c, P, p, step, sigma, hw) -> tuple | None:
        """Reference keys/values of the characters present in panel p (bank first, else earlier panel)."""
        bank, n = self.config.identity_bank, hw[0] * hw[1]

        def from_bank(name: str):
            toks = (
                bank.tokens(name, sigma, key) if bank is not None and name in list(bank.characters) else None
            )
            if toks is None or toks.shape[0] == 0:
                return None
            width = getattr(module.to_k, "in_features", toks.shape[-1])
            if toks.ndim != 2 or toks.shape[-1] != width:
                raise IsolatedInputError(
                    f"{self.config.node}: identity_bank gives [{name}] tokens of shape "
                    f"{tuple(toks.shape)} for layer {key}, but this model's layer takes [N, {width}]; "
                    "build the identity bank with the same model."
                )
            x = toks.to(device=k.device, dtype=k.dtype)
            return module.to_k(x), module.to_v(x)

        def region(rp: int, sel: torch.Tensor) -> tuple:
            return k[c * P + rp, :n][sel], v[c * P + rp, :n][sel]

        return panel_references(
            self.run.plan, tok, p, lambda: self.activation(step, hw, k.device), region, 0, from_bank
        )

    def attn1(self, key, module, q, k, v, extra: dict, orig: torch.Tensor, attn: Kernel) -> torch.Tensor:
        hw = tuple(extra["activations_shape"][-2:])
        run = self.run
        if q.shape[1] != hw[0] * hw[1] or not wants_attn1(self.config, key):
            return orig
        conds, P = self._cond_chunks(q, extra)
        step = run.step(extra["sigmas"], extra.get("sample_sigmas"))
        if not conds or not self.isolating(step):
            return orig
        masks = run.masks(step, tuple(extra["original_shape"][-2:]), q.device)
        if masks is None or not masks.any():
            return orig
        tok = self.tokens(step, masks, hw)  # [P, K, n] bool
        sigma = float(extra["sigmas"].reshape(-1)[0])
        out = orig.clone()
        for c in conds:
            for p in range(P):
                refs = self._references(key, module, k, v, tok.float(), c, P, p, step, sigma, hw)
                if refs is None:
                    continue
                rk, rv, owner, act = refs
                r = c * P + p
                iso = isolated_self_attention(
                    q[r : r + 1],
                    k[r : r + 1],
                    v[r : r + 1],
                    rk,
                    rv,
                    owner,
                    tok[p],
                    extra["n_heads"],
                    attn_fn=attn,
                    activation=act,
                    gamma=self.config.gamma,
                )
                out[r] = merge(iso[0], orig[r], self.config.lam)
        return out
