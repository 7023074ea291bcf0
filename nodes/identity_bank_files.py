"""Save Identity Bank and Load Identity Bank: the bank as a .safetensors file."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..attention.identity_bank import IdentityBank, sanitize_name
from .common import CATEGORY_ROOT, StoryError

FOLDER = "identity_banks"  # models/identity_banks and output/identity_banks
EXT = ".safetensors"
CATEGORY = f"{CATEGORY_ROOT}/identity bank"


def bank_folders() -> list[str]:
    return [
        os.path.join(folder_paths.models_dir, FOLDER),
        os.path.join(folder_paths.get_output_directory(), FOLDER),
    ]


def _register_folder() -> None:
    for path in bank_folders():
        folder_paths.add_model_folder_path(FOLDER, path)
    folder_paths.folder_names_and_paths[FOLDER][1].add(EXT)


_register_folder()


class SaveIdentityBank:
    DESCRIPTION = (
        f"Saves an identity bank as a .safetensors file in ComfyUI's output folder (output/{FOLDER}/), so a "
        f"story can continue later or on another ComfyUI server (copy it into output/{FOLDER} or "
        f"models/{FOLDER} there)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("Where the bank was written.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "bank": ("IDENTITY_BANK", {"tooltip": "The bank to save."}),
                "name": (
                    "STRING",
                    {
                        "default": "story_bank",
                        "tooltip": "File name (letters, digits, - _ . kept; an existing file of that name "
                        "is replaced).",
                    },
                ),
            },
            "optional": {
                "latent": (
                    "LATENT",
                    {
                        "tooltip": "Only for workflows of the deprecated write node: the LATENT of its "
                        "KSampler, so saving waits for that run. Identity Bank Write's bank output needs "
                        "nothing."
                    },
                ),
            },
        }

    def save(self, bank, name, latent=None) -> dict:
        if len(bank) == 0:
            raise StoryError(
                "Save Identity Bank: the bank is empty; connect the bank output of Identity Bank Write (it "
                "samples and fills the bank before this node runs)."
            )
        path = Path(folder_paths.get_output_directory()) / FOLDER / (sanitize_name(name) + EXT)
        bank.save(path)
        return {"ui": {"text": [f"{path.name}: {bank.summary()}"]}, "result": (str(path),)}


class LoadIdentityBank:
    DESCRIPTION = (
        f"Loads an identity bank saved by Save Identity Bank, from output/{FOLDER}/ or models/{FOLDER}/, to "
        "continue a story with Identity Bank Read."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("IDENTITY_BANK",)
    RETURN_NAMES = ("bank",)
    OUTPUT_TOOLTIPS = ("The loaded bank (characters, steps and layers as recorded).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        files = sorted(folder_paths.get_filename_list(FOLDER))
        return {
            "required": {
                "bank_file": (files, {"tooltip": f"A bank file in output/{FOLDER} or models/{FOLDER}."})
            }
        }

    @classmethod
    def IS_CHANGED(cls, bank_file) -> float | str:
        path = folder_paths.get_full_path(FOLDER, bank_file)
        return os.path.getmtime(path) if path else ""

    def load(self, bank_file) -> tuple:
        path = folder_paths.get_full_path(FOLDER, bank_file)
        if path is None:
            raise StoryError(
                f"Load Identity Bank: {bank_file!r} is not in output/{FOLDER} or models/{FOLDER}."
            )
        try:
            return (IdentityBank.load(path),)
        except (ValueError, OSError) as e:
            raise StoryError(f"Load Identity Bank: cannot read {bank_file}: {e}") from None


NODE_CLASS_MAPPINGS = {
    "StoryDiffSaveIdentityBank": SaveIdentityBank,
    "StoryDiffLoadIdentityBank": LoadIdentityBank,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StoryDiffSaveIdentityBank": "Save Identity Bank",
    "StoryDiffLoadIdentityBank": "Load Identity Bank",
}
