"""Isolated Attention's guard inputs (online masks: area, separation, evidence) and its bank check."""

from __future__ import annotations

from .common import StoryError

NODE = "Isolated Attention"


def check_identity_bank(bank) -> object:
    if bank is None:
        return None
    if not hasattr(bank, "characters") or not callable(getattr(bank, "tokens", None)):
        raise StoryError(
            f"{NODE}: identity_bank does not look like an IDENTITY_BANK (needs .characters and .tokens()); "
            "connect the identity bank output of the Consistent Self-Attention nodes."
        )
    return bank


GUARD_DEFAULTS = {"min_area": 0.01, "min_separation": 0.8, "evidence_steps": 2}
GUARD_INPUTS = {
    "min_area": (
        "FLOAT",
        {
            "default": GUARD_DEFAULTS["min_area"],
            "min": 0.0,
            "max": 0.9,
            "step": 0.005,
            "tooltip": "Guard: an online mask covering less than this fraction of the panel is dropped "
            "(that character is not isolated there).",
        },
    ),
    "min_separation": (
        "FLOAT",
        {
            "default": GUARD_DEFAULTS["min_separation"],
            "min": 0.0,
            "max": 1.0,
            "step": 0.01,
            "tooltip": "Guard: how clearly a character's cross-attention map must split into region and "
            "background (Otsu's separation: a clear blob ≈ 0.95, noise 0.6-0.75) before its mask is used. "
            "Otsu finds a 'region' in any map, noise included. 0 = no guard.",
        },
    ),
    "evidence_steps": (
        "INT",
        {
            "default": GUARD_DEFAULTS["evidence_steps"],
            "min": 1,
            "max": 100,
            "tooltip": "Guard: online masks are used once the maps of this many steps are averaged (1 = "
            "from the first step's map alone, as the paper). Given masks are used from the first step.",
        },
    ),
}
