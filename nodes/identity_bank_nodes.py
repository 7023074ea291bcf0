"""Identity Bank Write (samples, returns LATENT + IDENTITY_BANK) and Identity Bank Read.

The write node samples the identity images itself, so write -> save -> read is plain dataflow.
The earlier write node (MODEL + an IDENTITY_BANK filled by a later KSampler) is kept, deprecated,
so saved workflows keep loading and running.
"""

from __future__ import annotations

import logging

from ..attention.bank_storage import DEFAULT, BankSettings
from ..attention.consistent_run import ConsistentConfig, Mode
from ..attention.identity_bank import IdentityBank
from .common import CATEGORY_ROOT, DENOISE_INPUT, ksample, sampler_inputs
from .identity_bank_options import (
    BANK_OPTIONS,
    SIZE_FORMULA,
    STORY_TIP,
    bank_settings,
    read_labels,
    write_labels,
)
from .model_signature import check_bank_fits, model_family, self_attention_widths
from .patch_consistent import FEATURE, consistent_patch
from .patch_core import install, installed

CATEGORY = f"{CATEGORY_ROOT}/identity bank"


def _settings_of(model) -> ConsistentConfig:
    """CSA settings from a Consistent Self-Attention node upstream, else the defaults."""
    patch = installed(model, FEATURE) if hasattr(model, "model_options") else None
    return patch.config if patch is not None else ConsistentConfig()


def write_model(model, story, names: str, bank, node: str, settings: BankSettings = DEFAULT) -> tuple:
    """(the model patched for a write run, the bank it fills when that run completes)."""
    labels = write_labels(story, names, node)
    out_bank = IdentityBank(
        settings=settings, family=model_family(model), widths=self_attention_widths(model)
    )
    if bank is not None:
        check_bank_fits(node, bank, model)
        out_bank.update_from(bank)
    tags = tuple(tuple(p.characters) for p in story.panels) if story is not None else None
    mode = Mode(kind="write", bank=out_bank, labels=labels, node=node, tags=tags)
    return install(model, consistent_patch(model, _settings_of(model), mode)), out_bank


class IdentityBankWrite:
    DESCRIPTION = (
        "Write run of the identity bank: samples the characters' identity images (solo panels, one batch) "
        "like a KSampler and records their self-attention tokens per step and layer into the IDENTITY_BANK "
        "it returns (CPU). Uses the settings of a Consistent Self-Attention node upstream (else its "
        "defaults); images of the same character share tokens while they are drawn. The bank remembers the "
        "model family and widths and only works with them. bank_steps, bank_keep_rate, precision, "
        "guidance_halves and between_steps trade size for fidelity. " + SIZE_FORMULA + " After the run "
        "the size per character and per identity image is shown on the node and logged."
    )
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "IDENTITY_BANK")
    RETURN_NAMES = ("latent", "bank")
    OUTPUT_TOOLTIPS = (
        "The identity images (decode them as usual).",
        "The recorded bank: connect it to Identity Bank Read or Save Identity Bank.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (ideally after Consistent Self-Attention)."}),
                **sampler_inputs("One latent per identity image (batch = panel_count)."),
            },
            "optional": {
                "story": (
                    "STORY",
                    {"tooltip": STORY_TIP + " Each solo panel is an identity image of its character."},
                ),
                "names": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Without a story: the character name for the whole batch, or one name "
                        "per image separated by commas. With a story: the characters to record (empty: "
                        "every solo panel's).",
                    },
                ),
                "bank": (
                    "IDENTITY_BANK",
                    {"tooltip": "An existing bank to extend: its other characters are kept."},
                ),
                "denoise": DENOISE_INPUT,
                **BANK_OPTIONS,
            },
        }

    def sample(self, model, story=None, names="", bank=None, **inputs) -> dict:
        node = "Identity Bank Write"
        settings = bank_settings(node, **{k: inputs.pop(k) for k in BANK_OPTIONS if k in inputs})
        patched, out_bank = write_model(model, story, names, bank, node, settings)
        latent = ksample(patched, **inputs)
        text = out_bank.summary()
        logging.info("%s: %s", node, text)
        return {"ui": {"text": [text]}, "result": (latent, out_bank)}


class IdentityBankWritePatch:
    """Deprecated: kept so saved workflows load and run; Identity Bank Write samples by itself."""

    DEPRECATED = True
    DESCRIPTION = (
        "Deprecated (use Identity Bank Write, which samples and returns the bank). Patches the model for a "
        "write run; the bank output is filled only when a KSampler has sampled with that model."
    )
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "IDENTITY_BANK")
    RETURN_NAMES = ("model", "bank")
    OUTPUT_TOOLTIPS = (
        "Sample the identity images with this model (KSampler).",
        "Filled when that KSampler has run.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (ideally after Consistent Self-Attention)."})
            },
            "optional": {
                "story": ("STORY", {"tooltip": STORY_TIP}),
                "names": (
                    "STRING",
                    {"default": "", "tooltip": "Without a story: one name, or one per image."},
                ),
                "bank": ("IDENTITY_BANK", {"tooltip": "An existing bank to extend."}),
            },
        }

    def patch(self, model, story=None, names="", bank=None) -> tuple:
        return write_model(model, story, names, bank, "Identity Bank Write (deprecated)")


class IdentityBankRead:
    DESCRIPTION = (
        "Read run of the identity bank: every frame attends to its own tokens plus the recorded tokens of "
        "the characters tagged in its panel, so any number of later frames keep the characters of the bank. "
        "Frames tagged [NC] or with no character are unchanged. Uses the CSA settings upstream (steps, "
        "layers, seed)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("Sample the later frames with this model.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (ideally after Consistent Self-Attention)."}),
                "bank": ("IDENTITY_BANK", {"tooltip": "From Identity Bank Write or Load Identity Bank."}),
            },
            "optional": {
                "story": ("STORY", {"tooltip": STORY_TIP}),
                "names": (
                    "STRING",
                    {
                        "default": "",
                        "tooltip": "Without a story: per frame the characters, comma separated, several "
                        "joined with '+' (e.g. 'Bob, Bob+Alice'); one entry = all frames.",
                    },
                ),
                "after": (
                    "LATENT",
                    {
                        "tooltip": "Only for workflows of the deprecated write node: its KSampler's LATENT, "
                        "so that run fills the bank first. Not needed with Identity Bank Write."
                    },
                ),
            },
        }

    def patch(self, model, bank, story=None, names="", after=None) -> tuple:
        node = "Identity Bank Read"
        labels = read_labels(story, names, node)
        check_bank_fits(node, bank, model)
        mode = Mode(kind="read", bank=bank, labels=labels, node=node)
        return (install(model, consistent_patch(model, _settings_of(model), mode)),)


# The sampling write node takes a new id; the old id keeps the deprecated patch-only node, so a
# saved workflow gets exactly the node it was built with.
NODE_CLASS_MAPPINGS = {
    "StoryDiffIdentityBankWriteSample": IdentityBankWrite,
    "StoryDiffIdentityBankWrite": IdentityBankWritePatch,
    "StoryDiffIdentityBankRead": IdentityBankRead,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StoryDiffIdentityBankWriteSample": "Identity Bank Write",
    "StoryDiffIdentityBankWrite": "Identity Bank Write (deprecated)",
    "StoryDiffIdentityBankRead": "Identity Bank Read",
}
