"""From a STORY and a CLIP to what the isolated branch needs: token positions, contexts, masks.

Errors name the node, the input and the fix (StoryError), and are raised before sampling.
"""

from __future__ import annotations

import torch

from ..attention.cross_maps import find_phrase
from ..attention.isolated_run import CharacterPlan, first_appearances
from .common import StoryError


def story_prompts(story) -> list[str]:
    """The exact texts the Story Prompt encoded (styled); the unstyled panel prompts otherwise."""
    return list(story.encoded_prompts) if story.encoded_prompts else [p.prompt for p in story.panels]


def _flat_tokens(clip, text: str) -> list[tuple[int, int]]:
    toks = clip.tokenize(text, return_word_ids=True)
    key = "l" if "l" in toks else next(iter(toks))
    return [(t[0], t[2]) for window in toks[key] for t in window]


def _phrase_ids(clip, text: str) -> list[int]:
    return [tok for tok, word in _flat_tokens(clip, text) if word != 0]


def check_story(node: str, story) -> list[str]:
    if story is None or not hasattr(story, "tags") or not hasattr(story, "characters"):
        raise StoryError(f"{node}: the story input is not a STORY; connect the story output of a Story Prompt node.")
    names = list(story.characters)
    for p, tags in enumerate(story.tags):
        for name in tags:
            if name not in story.characters or not str(story.characters[name]).strip():
                raise StoryError(
                    f"{node}: panel {p + 1} tags [{name}] but the story has no description for it; declare it in the Story "
                    f"Prompt with a line '[{name}]: description'."
                )
    return names


def build_plan(node: str, clip, story) -> CharacterPlan:
    """Which character is in which panel, and where its tokens sit in each panel's context."""
    if clip is None:
        raise StoryError(f"{node}: the clip input is empty; connect the CLIP of your checkpoint (it tokenizes the prompts).")
    names = check_story(node, story)
    prompts = story_prompts(story)
    present, positions, lengths = [], [], []
    for p, (tags, text) in enumerate(zip(story.tags, prompts)):
        flat = _flat_tokens(clip, text)
        lengths.append(len(flat))
        row_present, row_pos = [], []
        for name in names:
            if name not in tags:
                row_present.append(False)
                row_pos.append([])
                continue
            pos = find_phrase(flat, _phrase_ids(clip, name)) or find_phrase(flat, _phrase_ids(clip, story.characters[name]))
            if not pos:
                raise StoryError(
                    f"{node}: panel {p + 1} tags [{name}] but neither the name nor the description of [{name}] is found in "
                    f"that panel's prompt tokens; write the name into the panel line (the Story Prompt does this for [{name}] tags)."
                )
            row_present.append(True)
            row_pos.append(pos)
        present.append(row_present)
        positions.append(row_pos)
    return CharacterPlan(names=names, present=present, positions=positions, lengths=lengths,
                         ref_panel=first_appearances(present))


def character_contexts(node: str, clip, story, overrides: dict[int, list]) -> list[torch.Tensor]:
    """Per character: the description context [1 or P, T, C]; a connected CONDITIONING wins,
    otherwise 'Name, description' from the story is encoded with the clip."""
    names = list(story.characters)
    P = len(story.tags)
    out = []
    for k, name in enumerate(names):
        cond = overrides.get(k)
        if cond is not None:
            ctx = conditioning_tensor(node, f"character_{k + 1}", cond, P)
        else:
            enc = clip.encode_from_tokens(clip.tokenize(f"{name}, {story.characters[name]}"), return_dict=True)
            ctx = enc["cond"]
        out.append(ctx)
    for k in overrides:
        if k >= len(names):
            raise StoryError(
                f"{node}: character_{k + 1} is connected but the story declares only {len(names)} character(s); "
                f"disconnect it or declare another character."
            )
    return out


def conditioning_tensor(node: str, input_name: str, cond, panels: int) -> torch.Tensor:
    if not cond or not isinstance(cond[0], (list, tuple)) or not torch.is_tensor(cond[0][0]):
        raise StoryError(f"{node}: {input_name} is not a CONDITIONING; connect a CLIP Text Encode output.")
    if len(cond) > 1:
        raise StoryError(f"{node}: {input_name} holds {len(cond)} combined conditionings; connect a single CLIP Text Encode.")
    ctx = cond[0][0]
    if ctx.shape[0] not in (1, panels):
        raise StoryError(
            f"{node}: {input_name} has a batch of {ctx.shape[0]} but the story has {panels} panels; use batch 1 (shared) "
            f"or one row per panel."
        )
    return ctx


def user_masks(node: str, masks: dict[int, torch.Tensor], story) -> dict[int, torch.Tensor]:
    P, K = len(story.tags), len(story.characters)
    out = {}
    for k, m in masks.items():
        if m is None:
            continue
        name = f"mask_{k + 1}"
        if k >= K:
            raise StoryError(f"{node}: {name} is connected but the story declares only {K} character(s); disconnect it.")
        m = m[None] if m.ndim == 2 else m
        if m.shape[0] not in (1, P):
            raise StoryError(
                f"{node}: {name} has a batch of {m.shape[0]} masks but the story has {P} panels; give 1 mask (used for "
                f"every panel) or exactly one per panel."
            )
        out[k] = m.float()
    return out
