"""What every model family says about itself (the fields of `Family`).

A family is recognised by its diffusion model's class (`matches`), finds a layer's current
replace in ComfyUI's `patches_replace` (`lookup`), lists the features it supports, and says how
its text is batched and where a character's tokens are found:

* `text_encoders`: (module, class, side, label) of the CLIP text-encoder models
  (`cond_stage_model`) whose panels Story Prompt pads instead of tiling, on `side` ("right" |
  "left", the host's own convention), `label` naming the encoder in warnings; empty: tiled
  (cross-attention, exact there);
* `mask_honoured`: whether the host's model gives right-padding no weight (left padding is the
  host's own convention, exact anyway);
* `token_key`: the tokenizer whose tokens make the model's context (None: CLIP-L, else the first).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Replace = Callable[..., Any]


def host_class(module: str, name: str) -> Any:
    """A class of the host by module path (None when this ComfyUI lacks it); imports lazily."""
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return found if isinstance(found, type) else None


def instance_of(module: str, name: str) -> Callable[[Any], bool]:
    """A `matches` test: the diffusion model is an instance of the host's module.name."""

    def matches(dm) -> bool:
        cls = host_class(module, name)
        return cls is not None and isinstance(dm, cls)

    return matches


def exact_lookup(slot: dict, key: tuple) -> Replace | None:
    return slot.get(key)


def never() -> bool:
    return False


@dataclass(frozen=True)
class Family:
    """A model family; subclasses (UNetFamily, JointFamily) add how its attention is reached."""

    name: str  # shown in errors, e.g. "SD1.5/SD2/SDXL-family UNet"
    matches: Callable[[Any], bool]  # diffusion_model -> bool
    lookup: Callable[[dict, tuple], Replace | None] = exact_lookup  # (patches_replace[slot], key) -> replace
    features: frozenset = frozenset({"consistent", "bank"})  # "consistent", "bank", "isolated", "capture"
    text_encoders: tuple = ()  # ((module, class, side, label), ...): Story Prompt pads these on `side`
    mask_honoured: Callable[[], bool] = never  # the host's model gives right-padding no weight
    token_key: str | None = None  # tokenizer of the model's context; None: CLIP-L, else the first

    def self_attention_widths(self, model) -> dict[tuple, int]:
        """Layer -> token width of the layers a bank records, checked before a read (empty: unknown
        until the read, whose width check then decides)."""
        return {}
