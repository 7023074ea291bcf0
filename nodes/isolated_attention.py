"""Isolated Attention node (Object Isolated Attention, arXiv 2503.23353) : MODEL -> MODEL."""

from __future__ import annotations

from ..attention.isolated_branch import CAPTURE_LAYERS, IsolatedBranch, IsolatedConfig
from ..attention.isolated_merge import DEFAULT_LAMBDA
from ..attention.isolated_run import IsolatedRun
from ..attention.steps import StepWindow
from ..families import supporting
from .character_plan import build_plan, character_contexts, conditioning_tensor, user_masks
from .common import CATEGORY_ROOT, StoryError, check_step_window, finite, step_window_inputs
from .isolated_inputs import GUARD_DEFAULTS, GUARD_INPUTS, check_identity_bank
from .model_signature import check_bank_fits
from .patch_core import install, require_family
from .patch_isolated import FEATURE, IsolatedPatch
from .patch_isolated_joint import JointIsolatedPatch
from .qwen_tokens import KEY as QWEN_KEY
from .qwen_tokens import qwen_character_contexts, qwen_plan
from .regional_prompts import regional_prompt_warnings
from .user_warnings import warn

NODE = "Isolated Attention"
SLOTS = 4


def plain_contexts(node: str, clip, story, overrides: dict) -> tuple[list, list]:
    return character_contexts(node, clip, story, overrides), []


# where a character's tokens are found, by the tokenizer a family's context comes from
# (Family.token_key): by text span in Qwen-Image's BPE context, else by the tokenizer's word ids
TOKENS = {QWEN_KEY: (lambda node, clip, story, key: qwen_plan(node, clip, story), qwen_character_contexts)}


class IsolatedAttention:
    DESCRIPTION = (
        "Object Isolated Attention for multi-character stories. In the up-sampling blocks an extra branch "
        "runs: each character's region (found online from the model's own cross-attention, "
        "Otsu-thresholded, or from your masks) attends only to that character's references (its first "
        "panel, or an identity bank) and to that character's own description; the background keeps the "
        "scene prompt. Merged with the original branch as λ·isolated + (1-λ)·original. λ = 0 leaves the "
        "model untouched."
    )
    CATEGORY = f"{CATEGORY_ROOT}/attention"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = (
        "The model with the isolated branch; connect it to a KSampler or Story Attention Masks.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        optional = {
            "scene": (
                "CONDITIONING",
                {
                    "tooltip": "Scene prompt for the background of the isolated branch (batch 1 or one per "
                    "panel). Empty: the sampler's positive."
                },
            ),
            "identity_bank": (
                "IDENTITY_BANK",
                {
                    "tooltip": "Reference tokens per character from the Consistent Self-Attention identity "
                    "bank; characters it lacks use their first panel instead."
                },
            ),
        }
        for i in range(1, SLOTS + 1):
            optional[f"character_{i}"] = (
                "CONDITIONING",
                {
                    "tooltip": f"Regional prompt of the story's character #{i} (in declaration order), e.g. "
                    "its description alone. Empty: each panel's own line with only this character's tag "
                    "filled in (the panel's action and style kept, other characters removed), encoded with "
                    "the clip."
                },
            )
        for i in range(1, SLOTS + 1):
            optional[f"mask_{i}"] = (
                "MASK",
                {
                    "tooltip": f"Region of character #{i} (1 mask for every panel or one per panel), of the "
                    "image's aspect ratio (any size). Empty: computed online from the model's "
                    "cross-attention during sampling."
                },
            )
        optional.update(GUARD_INPUTS)
        return {
            "required": {
                "model": (
                    "MODEL",
                    {"tooltip": f"The model to patch ({'; '.join(f.name for f in supporting(FEATURE))})."},
                ),
                "clip": (
                    "CLIP",
                    {
                        "tooltip": "The checkpoint's CLIP: tokenizes the panel prompts to find each "
                        "character's tokens."
                    },
                ),
                "story": ("STORY", {"tooltip": "The Story Prompt's story output: who is in which panel."}),
                "strength": (
                    "FLOAT",
                    {
                        "default": DEFAULT_LAMBDA,
                        "min": 0.0,
                        "max": 2.0,
                        "step": 0.05,
                        "tooltip": "λ of F = λ·isolated + (1-λ)·original (paper: 1.1). 0 disables the node.",
                    },
                ),
                "reweight": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.1,
                        "tooltip": "γ: attention on a character's reference tokens is multiplied by 1 + "
                        "γ·(its normalised cross-attention activation). 0 = no re-weighting.",
                    },
                ),
                **step_window_inputs(
                    "Isolate from this fraction of the model's noise schedule (online masks exist from "
                    "the 2nd step; given masks from the 1st).",
                    "Isolate until this fraction of the steps.",
                ),
            },
            "optional": optional,
            # the queued graph: a character_N fed by typed text is checked to name its character
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    def patch(
        self,
        model,
        clip,
        story,
        strength,
        reweight,
        start_percent,
        end_percent,
        scene=None,
        identity_bank=None,
        prompt=None,
        unique_id=None,
        **slots,
    ) -> tuple:
        family = require_family(model, NODE, supporting(FEATURE))
        check_step_window(NODE, start_percent, end_percent)
        strength, reweight = finite(NODE, "strength", strength), finite(NODE, "reweight", reweight)
        for name in ("min_area", "min_separation"):
            if name in slots:
                finite(NODE, name, slots[name])
        if strength == 0:
            return (model,)
        glue = IsolatedPatch if family in IsolatedPatch.families else JointIsolatedPatch
        if identity_bank is not None and "bank" not in glue.reads:
            raise StoryError(
                f"{NODE}: identity_bank is not read by the isolated branch on {family.name} yet "
                "(characters use their first panel as reference there); disconnect identity_bank."
            )
        planner, contexts = TOKENS.get(family.token_key, (build_plan, plain_contexts))
        plan = planner(NODE, clip, story, family.token_key)
        if not plan.names:
            raise StoryError(
                f"{NODE}: the story declares no character; declare characters with '[Name]: description'."
            )
        for message in regional_prompt_warnings(NODE, list(story.characters), prompt, unique_id, SLOTS):
            warn(NODE, message, unique_id)
        P = plan.panels
        overrides = {
            i - 1: slots.get(f"character_{i}")
            for i in range(1, SLOTS + 1)
            if slots.get(f"character_{i}") is not None
        }
        masks = user_masks(NODE, {i - 1: slots.get(f"mask_{i}") for i in range(1, SLOTS + 1)}, story)
        characters, lengths = contexts(NODE, clip, story, overrides)
        config = IsolatedConfig(
            node=NODE,
            isolate=True,
            lam=float(strength),
            gamma=float(reweight),
            steps=StepWindow(start_percent, end_percent),
            capture=CAPTURE_LAYERS[0],
            characters=characters,
            character_lengths=lengths,
            scene=conditioning_tensor(NODE, "scene", scene, P) if scene is not None else None,
            identity_bank=check_identity_bank(identity_bank),
            story_cond=getattr(story, "positive", None),
        )
        guard = {name: slots.get(name, default) for name, default in GUARD_DEFAULTS.items()}
        run = IsolatedRun(
            plan,
            user_masks=masks,
            min_area=float(guard["min_area"]),
            min_separation=float(guard["min_separation"]),
            evidence_steps=int(guard["evidence_steps"]),
        )
        if identity_bank is not None:
            check_bank_fits(NODE, identity_bank, model)
        return (install(model, glue(IsolatedBranch(config, run))),)


NODE_CLASS_MAPPINGS = {"StoryDiffIsolatedAttention": IsolatedAttention}
NODE_DISPLAY_NAME_MAPPINGS = {"StoryDiffIsolatedAttention": "Isolated Attention"}
