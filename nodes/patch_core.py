"""The pack's patching seam: how a feature gets into a ComfyUI MODEL, for every model family.

Every MODEL -> MODEL node of the pack builds one `FeaturePatch` and calls `install(model, patch)`.
The model families (families/, one module each) say which layers exist and how ComfyUI keys
their replaces.

Interface of a feature patch (subclass `FeaturePatch`):

* `feature`: one name per feature ("consistent", "isolated"): a MODEL holds at most one patch per
  feature; installing again replaces the earlier one (its attention patches and wrappers are
  removed), so applying a node twice equals applying it once.
* `node`: the node's display name (errors name it); `families`: the `Family` objects it supports.
  `install` checks the model's family first and raises `StoryError` naming the family it got and
  the families supported.
* `state`: the per-run state holder (any object with `reset(clock)` and `release()`); `begin(noise)`
  runs when sampling starts (checks, then `state.reset(clock)` with the model's noise schedule
  from the guider), `end(completed)` in `finally` (`state.release()`), through an OUTER_SAMPLE
  wrapper: a cancelled run leaves nothing stale.
* `layer_hooks(model, family) -> list[LayerHook]`: which replace slots ("attn1", "attn2", or a
  DiT family's "dit") and layer keys the feature wraps, and `make(previous) -> replace`.
  The replaces are not stored in the MODEL: an APPLY_MODEL wrapper injects them into the
  per-call `transformer_options` at call time, after every other pack has patched, wrapping
  whatever replace the graph holds for that layer at any key granularity (`family.lookup`: a
  UNet looks up (block, id, depth) then (block, id)). A pack applied before *or* after ours
  therefore runs inside ours on every block, and ours always runs.
* `attention_patches() -> {"attn1_patch": [fn], ...}`: list patches, appended after the ones
  already there (lists compose by themselves).
* `default_attention(q, k, v, extra, mask=None)`: the one attention fallback; it always passes
  `transformer_options`, so an `optimized_attention_override` set by another pack is honoured.

The patch object is shared by every clone (`__deepcopy__` returns self) and reachable from a
MODEL with `installed(model, feature)`. No global state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

from ..attention.steps import NoiseClock
from ..families.base import Family, Replace
from .common import StoryError

PATCHES_KEY = "storydiff_patches"  # transformer_options[PATCHES_KEY][feature] -> FeaturePatch


class RunState(Protocol):
    def reset(self, clock: NoiseClock | None = None) -> None: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class LayerHook:
    slot: str  # patches_replace slot: "attn1", "attn2" (UNet), "dit" (DiT families)
    key: tuple  # the full key ComfyUI looks up first
    make: Callable[[Replace | None], Replace]  # previous replace (or None) -> this feature's replace


def default_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ComfyUI's attention with the block's options (precision, a kernel override of another pack)."""
    return comfy_attention.optimized_attention(
        q,
        k,
        v,
        extra["n_heads"],
        mask=mask,
        attn_precision=extra.get("attn_precision"),
        transformer_options=extra,
    )


def noise_clock(executor) -> NoiseClock | None:
    """The sampled model's noise schedule (attention/steps.py) from an OUTER_SAMPLE executor, whose
    class_obj is the guider: step windows then follow the sigma, not the stage's own step count."""
    patcher = getattr(getattr(executor, "class_obj", None), "model_patcher", None)
    sampling = patcher.get_model_object("model_sampling") if patcher is not None else None
    if sampling is None or not hasattr(sampling, "percent_to_sigma") or not hasattr(sampling, "sigma_max"):
        return None
    return NoiseClock(sampling.percent_to_sigma, float(sampling.sigma_max))


def model_family_name(model) -> str:
    """What the user loaded, in words: the ComfyUI model config's class (SDXL, Flux, ...)."""
    inner = getattr(model, "model", None)
    config = getattr(inner, "model_config", None)
    if config is not None:
        return type(config).__name__
    dm = model.get_model_object("diffusion_model") if hasattr(model, "get_model_object") else None
    return type(dm).__name__ if dm is not None else type(model).__name__


def require_family(model, node: str, families: tuple[Family, ...]) -> Family:
    """The first supported family the MODEL belongs to, else a StoryError naming got and supported."""
    if not hasattr(model, "get_model_object"):
        raise StoryError(
            f"{node}: the model input is not a MODEL; connect a checkpoint loader's MODEL output."
        )
    dm = model.get_model_object("diffusion_model")
    for family in families:
        if family.matches(dm):
            return family
    supported = "; ".join(f.name for f in families)
    raise StoryError(
        f"{node}: this MODEL is a {model_family_name(model)} model, which {node} does not support "
        f"(supported: {supported}). Connect the MODEL of a supported checkpoint."
    )


class FeaturePatch:
    feature: str = ""
    node: str = ""
    families: tuple[Family, ...] = ()

    def __init__(self, state: RunState):
        self.state = state
        self.clock: NoiseClock | None = None  # the model's noise schedule, set when sampling starts
        self.guider = None  # the sampler's guider while it samples (its conds), else None
        self.family: Family | None = None
        self.hooks: list[LayerHook] = []

    def __deepcopy__(self, memo):  # ModelPatcher.clone() deep-copies model_options up to 0.3.75
        return self

    # ---- to be given by the feature ----------------------------------------------------
    def layer_hooks(self, model, family: Family) -> list[LayerHook]:
        return []

    def attention_patches(self) -> dict[str, list]:
        return {}

    def begin(self, noise: torch.Tensor | None) -> None:
        self.state.reset(self.clock)

    def end(self, completed: bool) -> None:
        self.state.release()

    # ---- wrappers --------------------------------------------------------------------
    def outer_sample(self, executor, *args, **kwargs) -> Any:
        self.clock = noise_clock(executor)
        self.guider = getattr(executor, "class_obj", None)  # the sampler's conds, for begin()
        self.begin(args[0] if args else kwargs.get("noise"))
        completed = False
        try:
            out = executor(*args, **kwargs)
            completed = True
            return out
        finally:
            self.guider = None
            self.end(completed)

    def apply_model(self, executor, *args, **kwargs) -> Any:
        args, kwargs = with_transformer_options(args, kwargs, self.inject)
        return executor(*args, **kwargs)

    def inject(self, transformer_options: dict) -> dict:
        """A copy of the call's transformer_options with this feature's replaces wrapped around
        whatever replace each layer holds now (at any key granularity)."""
        options = dict(transformer_options)
        replaces = dict(options.get("patches_replace", {}))
        for slot in {hook.slot for hook in self.hooks}:
            replaces[slot] = dict(replaces.get(slot, {}))
        for hook in self.hooks:
            slot = replaces[hook.slot]
            slot[hook.key] = hook.make(self.family.lookup(slot, hook.key))
        options["patches_replace"] = replaces
        return options


# ---- the arguments of an APPLY_MODEL wrapper (BaseModel._apply_model(x, t, c_concat, c_crossattn,
# control, transformer_options, **kwargs)), read and changed in one place -------------------------
def model_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, Any, dict]:
    """(x, the text context c_crossattn, transformer_options) of an APPLY_MODEL call."""
    x = args[0] if args else kwargs["x"]
    context = args[3] if len(args) > 3 else kwargs.get("c_crossattn")
    topts = args[5] if len(args) > 5 else kwargs.get("transformer_options") or {}
    return x, context, topts


def with_context(args: tuple, kwargs: dict, context) -> tuple[tuple, dict]:
    """The call's arguments with another text context."""
    if len(args) > 3:
        return (*args[:3], context, *args[4:]), kwargs
    return args, {**kwargs, "c_crossattn": context}


def with_transformer_options(args: tuple, kwargs: dict, change: Callable[[dict], dict]) -> tuple[tuple, dict]:
    """The call's arguments with `change(transformer_options)` in place of its transformer_options."""
    if len(args) > 5:
        return (*args[:5], change(args[5]), *args[6:]), kwargs
    return args, {**kwargs, "transformer_options": change(kwargs.get("transformer_options") or {})}


def installed(model, feature: str) -> FeaturePatch | None:
    return model.model_options.get("transformer_options", {}).get(PATCHES_KEY, {}).get(feature)


def install(model, patch: FeaturePatch) -> Any:
    """A clone of `model` with `patch`: family checked, this feature's earlier patch removed, every
    other patch kept (list patches appended after, replaces wrapped at call time)."""
    patch.family = require_family(model, patch.node, patch.families)
    m = model.clone()
    topts = m.model_options.setdefault("transformer_options", {})
    ours = dict(topts.get(PATCHES_KEY, {}))
    old = ours.get(patch.feature)
    lists = dict(topts.get("patches", {}))
    new = patch.attention_patches()
    for name in set(lists) | set(new):
        kept = [p for p in lists.get(name, []) if old is None or getattr(p, "__self__", None) is not old]
        lists[name] = kept + list(new.get(name, []))
    topts["patches"] = lists
    patch.hooks = patch.layer_hooks(m, patch.family)
    ours[patch.feature] = patch
    topts[PATCHES_KEY] = ours
    key = f"storydiff_{patch.feature}"
    for kind, fn in (
        (comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, patch.outer_sample),
        (comfy.patcher_extension.WrappersMP.APPLY_MODEL, patch.apply_model),
    ):
        m.remove_wrappers_with_key(kind, key)
        m.add_wrapper_with_key(kind, key, fn)
    return m
