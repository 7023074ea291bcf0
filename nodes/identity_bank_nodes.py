"""Identity bank nodes: write a character's tokens, read them in later frames, save and load banks."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..attention.identity_bank import IdentityBank, sanitize_name
from .common import CATEGORY_ROOT, StoryError
from .csa_hooks import CSAConfig, CSAPatch, Mode, install, installed_patch
from .dit_settings import JointMode, install_bank_dit, is_dit

FOLDER = "identity_banks"  # models/identity_banks and output/identity_banks
EXT = ".safetensors"
CATEGORY = f"{CATEGORY_ROOT}/identity bank"


def bank_folders() -> list[str]:
    return [os.path.join(folder_paths.models_dir, FOLDER), os.path.join(folder_paths.get_output_directory(), FOLDER)]


def _register_folder():
    for path in bank_folders():
        folder_paths.add_model_folder_path(FOLDER, path)
    folder_paths.folder_names_and_paths[FOLDER][1].add(EXT)


_register_folder()


def _settings_of(model) -> CSAConfig:
    """CSA settings from a Consistent Self-Attention node upstream, else the defaults."""
    patch = installed_patch(model)
    return patch.config if patch is not None else CSAConfig()


def _split_entries(names: str) -> list[str]:
    return [e.strip() for e in str(names).replace("\n", ",").split(",")]


def write_labels(story, names: str, node: str) -> tuple:
    """Per identity image, the character it shows (None: not recorded)."""
    if story is not None:
        labels = tuple(p.characters[0] if len(p.characters) == 1 else None for p in story.panels)
        if not any(labels):
            raise StoryError(f"{node}: no panel of the story shows exactly one character; identity images are solo "
                             "panels, e.g. '[Bob] portrait, front view'.")
        return labels
    entries = [e for e in _split_entries(names)]
    if not any(entries):
        raise StoryError(f"{node}: connect a Story Prompt's story or type the character name(s) in 'names' "
                         "(one name for the whole batch, or one per image separated by commas).")
    return tuple(e or None for e in entries)


def read_labels(story, names: str, node: str) -> tuple:
    """Per frame, the characters whose bank tokens it attends to."""
    if story is not None:
        return tuple(tuple(p.characters) for p in story.panels)
    entries = _split_entries(names)
    if not any(entries):
        raise StoryError(f"{node}: connect a Story Prompt's story or type the character name(s) in 'names' "
                         "(one entry per frame, several characters joined with '+', e.g. 'Bob, Bob+Alice').")
    return tuple(tuple(n.strip() for n in e.split("+") if n.strip() and n.strip().upper() != "NC") for e in entries)


_STORY_TIP = "The Story Prompt's story: the character tags of each panel."


class IdentityBankWrite:
    DESCRIPTION = (
        "Write run of the identity bank: sample the characters' identity images (solo panels, one batch) with this "
        "model and it records their shared self-attention tokens per step and layer into an IDENTITY_BANK (CPU, "
        "fp16). Uses the settings of a Consistent Self-Attention node upstream (else its defaults); images of the "
        "same character share tokens while they are drawn.")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "IDENTITY_BANK")
    RETURN_NAMES = ("model", "bank")
    OUTPUT_TOOLTIPS = ("Sample the identity images with this model (KSampler).",
                       "Filled when that KSampler has run: connect it to Identity Bank Read / Save Identity Bank.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "The model (ideally after Consistent Self-Attention)."})},
                "optional": {
                    "story": ("STORY", {"tooltip": _STORY_TIP + " Each solo panel is an identity image of its character."}),
                    "names": ("STRING", {"default": "", "tooltip": "Without a story: the character name for the whole "
                                         "batch, or one name per image separated by commas."}),
                    "bank": ("IDENTITY_BANK", {"tooltip": "An existing bank to extend: its other characters are kept."}),
                }}

    def patch(self, model, story=None, names="", bank=None):
        node = "Identity Bank Write"
        labels = write_labels(story, names, node)
        out_bank = IdentityBank()
        if bank is not None:
            out_bank.update_from(bank)
        if is_dit(model):
            return (install_bank_dit(model, JointMode(kind="write", bank=out_bank, labels=labels, node=node)), out_bank)
        mode = Mode(kind="write", bank=out_bank, labels=labels, node=node)
        return (install(model, CSAPatch(_settings_of(model), mode)), out_bank)


class IdentityBankRead:
    DESCRIPTION = (
        "Read run of the identity bank: every frame attends to its own tokens plus the recorded tokens of the "
        "characters tagged in its panel, so any number of later frames keep the characters of the bank. Frames "
        "tagged [NC] or with no character are unchanged. Uses the CSA settings upstream (steps, layers, seed).")
    CATEGORY = CATEGORY
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("Sample the later frames with this model.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {"tooltip": "The model (ideally after Consistent Self-Attention)."}),
                             "bank": ("IDENTITY_BANK", {"tooltip": "From Identity Bank Write or Load Identity Bank."})},
                "optional": {
                    "story": ("STORY", {"tooltip": _STORY_TIP}),
                    "names": ("STRING", {"default": "", "tooltip": "Without a story: per frame the characters, comma "
                                         "separated, several joined with '+' (e.g. 'Bob, Bob+Alice'); one entry = all frames."}),
                    "after": ("LATENT", {"tooltip": "Optional: the write run's LATENT, so that run samples (and fills the "
                                         "bank) before this one when both are in one workflow."}),
                }}

    def patch(self, model, bank, story=None, names="", after=None):
        node = "Identity Bank Read"
        labels = read_labels(story, names, node)
        if is_dit(model):
            return (install_bank_dit(model, JointMode(kind="read", bank=bank, labels=labels, node=node)),)
        mode = Mode(kind="read", bank=bank, labels=labels, node=node)
        return (install(model, CSAPatch(_settings_of(model), mode)),)


class SaveIdentityBank:
    DESCRIPTION = ("Saves an identity bank as a .safetensors file in ComfyUI's output folder "
                   f"(output/{FOLDER}/), so a story can continue later or on another ComfyUI server "
                   f"(copy it into output/{FOLDER} or models/{FOLDER} there).")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the bank was written.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "bank": ("IDENTITY_BANK", {"tooltip": "The bank to save."}),
            "latent": ("LATENT", {"tooltip": "The write run's LATENT: saving waits until that run has filled the bank."}),
            "name": ("STRING", {"default": "story_bank", "tooltip": "File name (letters, digits, - _ . kept; an existing "
                                "file of that name is replaced)."}),
        }}

    def save(self, bank, latent, name):
        if len(bank) == 0:
            raise StoryError("Save Identity Bank: the bank is empty; connect the LATENT of the KSampler that sampled "
                             "with the Identity Bank Write model so the write run happens first.")
        path = Path(folder_paths.get_output_directory()) / FOLDER / (sanitize_name(name) + EXT)
        bank.save(path)
        return {"ui": {"text": [f"{path.name}: {bank.summary()}"]}, "result": (str(path),)}


class LoadIdentityBank:
    DESCRIPTION = (f"Loads an identity bank saved by Save Identity Bank, from output/{FOLDER}/ or models/{FOLDER}/, "
                   "to continue a story with Identity Bank Read.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IDENTITY_BANK",)
    RETURN_NAMES = ("bank",)
    OUTPUT_TOOLTIPS = ("The loaded bank (characters, steps and layers as recorded).",)

    @classmethod
    def INPUT_TYPES(cls):
        files = sorted(folder_paths.get_filename_list(FOLDER))
        return {"required": {"bank_file": (files, {"tooltip": f"A bank file in output/{FOLDER} or models/{FOLDER}."})}}

    @classmethod
    def IS_CHANGED(cls, bank_file):
        path = folder_paths.get_full_path(FOLDER, bank_file)
        return os.path.getmtime(path) if path else ""

    def load(self, bank_file):
        path = folder_paths.get_full_path(FOLDER, bank_file)
        if path is None:
            raise StoryError(f"Load Identity Bank: {bank_file!r} is not in output/{FOLDER} or models/{FOLDER}.")
        try:
            return (IdentityBank.load(path),)
        except (ValueError, OSError) as e:
            raise StoryError(f"Load Identity Bank: cannot read {bank_file}: {e}") from None


NODE_CLASS_MAPPINGS = {
    "StoryDiffIdentityBankWrite": IdentityBankWrite,
    "StoryDiffIdentityBankRead": IdentityBankRead,
    "StoryDiffSaveIdentityBank": SaveIdentityBank,
    "StoryDiffLoadIdentityBank": LoadIdentityBank,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StoryDiffIdentityBankWrite": "Identity Bank Write",
    "StoryDiffIdentityBankRead": "Identity Bank Read",
    "StoryDiffSaveIdentityBank": "Save Identity Bank",
    "StoryDiffLoadIdentityBank": "Load Identity Bank",
}
