"""From a STORY and a CLIP to what the isolated branch needs: token positions, contexts, masks.

Errors name the node, the input and the fix (StoryError), and are raised before sampling.
"""

from __future__ import annotations

import math

import torch

from ..attention.cross_maps import find_phrase, phrase_occurrences
from ..attention.isolated_run import CharacterPlan, first_appearances
from .common import StoryError


def story_prompts(story) -> list[str]:
    """The exact texts the Story Prompt encoded (styled); the unstyled panel prompts otherwise."""
    return list(story.encoded_prompts) if story.encoded_prompts else [p.prompt for p in story.panels]


def _flat_tokens(clip, text: str, key: str | None = None) -> list[tuple[int, int]]:
    """(token, word id) of `text` in the tokenizer `key` (the one the model's context comes from:
    "l" on UNets, "t5xxl" on Flux); CLIP-L, else the first, when None."""
    toks = clip.tokenize(text, return_word_ids=True)
    if key is not None and key not in toks:
        raise StoryError(
            f"the clip input has no {key!r} tokenizer (it has {sorted(toks)}); connect this checkpoint's own "
            f"text encoder."
        )
    key = key if key is not None else ("l" if "l" in toks else next(iter(toks)))
    return [(t[0], t[2]) for window in toks[key] for t in window]


def _phrase_ids(clip, text: str, key: str | None = None) -> list[int]:
    return [tok for tok, word in _flat_tokens(clip, text, key) if word != 0]


def written_name_positions(
    clip, story, p: int, text: str, name: str, key: str | None = None
) -> list[int] | None:
    """Token positions of `name` where the Story Prompt wrote it into panel p's text (its tags),
    never where the name occurs inside a description ("[Alice]: a woman, Bob's sister").

    The k-th written mention is the c-th occurrence of the name's tokens in the whole text, where
    c counts the occurrences in the text up to the end of that mention (the tokenizer splits a
    name from the ', ' that follows it, so the prefix tokenizes like the whole). None when the
    story carries no mentions (built by hand) or its prompt is not inside `text`.
    """
    panel = story.panels[p] if p < len(story.panels) else None
    offsets = [at for who, at in getattr(panel, "mentions", ()) if who == name]
    base = text.find(panel.prompt) if panel is not None else -1
    if not offsets or base < 0:
        return None
    phrase = _phrase_ids(clip, name, key)
    occurrences = phrase_occurrences(_flat_tokens(clip, text, key), phrase)
    out: list[int] = []
    for at in offsets:
        end = base + at + len(name)
        c = len(phrase_occurrences(_flat_tokens(clip, text[:end], key), phrase))
        if not 0 < c <= len(occurrences):
            return None
        out.extend(occurrences[c - 1])
    return sorted(set(out))


def check_story(node: str, story) -> list[str]:
    if story is None or not hasattr(story, "tags") or not hasattr(story, "characters"):
        raise StoryError(
            f"{node}: the story input is not a STORY; connect the story output of a Story Prompt node."
        )
    names = list(story.characters)
    for p, tags in enumerate(story.tags):
        for name in tags:
            if name not in story.characters or not str(story.characters[name]).strip():
                raise StoryError(
                    f"{node}: panel {p + 1} tags [{name}] but the story has no description for it; declare "
                    f"it in the Story "
                    f"Prompt with a line '[{name}]: description'."
                )
    return names


def build_plan(node: str, clip, story, key: str | None = None) -> CharacterPlan:
    """Which character is in which panel, and where its tokens sit in each panel's context."""
    if clip is None:
        raise StoryError(
            f"{node}: the clip input is empty; connect the CLIP of your checkpoint (it tokenizes the "
            f"prompts)."
        )
    names = check_story(node, story)
    prompts = story_prompts(story)
    present, positions, lengths = [], [], []
    for p, (tags, text) in enumerate(zip(story.tags, prompts, strict=False)):
        flat = _flat_tokens(clip, text, key)
        lengths.append(len(flat))
        row_present, row_pos = [], []
        for name in names:
            if name not in tags:
                row_present.append(False)
                row_pos.append([])
                continue
            pos = (
                written_name_positions(clip, story, p, text, name, key)
                or find_phrase(flat, _phrase_ids(clip, name, key))
                or find_phrase(flat, _phrase_ids(clip, story.characters[name], key))
            )
            if not pos:
                raise StoryError(
                    f"{node}: panel {p + 1} tags [{name}] but neither the name nor the description of "
                    f"[{name}] is found in "
                    f"that panel's prompt tokens; write the name into the panel line (the Story Prompt does "
                    f"this for [{name}] tags)."
                )
            row_present.append(True)
            row_pos.append(pos)
        present.append(row_present)
        positions.append(row_pos)
    return CharacterPlan(
        names=names,
        present=present,
        positions=positions,
        lengths=lengths,
        ref_panel=first_appearances(present),
    )


def regional_texts(story, name: str) -> list[str] | None:
    """The text each panel's region of `name` attends to: the Story Prompt's regional prompt of
    that panel (description + the panel's action, styled), 'Name, description' where the panel
    does not tag the character. None for a story without regional prompts (built by hand)."""
    regional = list(getattr(story, "encoded_regional", None) or [])
    if len(regional) != len(story.tags):
        return None
    plain = f"{name}, {story.characters[name]}"
    return [row.get(name, plain) for row in regional]


def _encode_rows(clip, texts: list[str]) -> torch.Tensor:
    """[len(texts), T, C] contexts, each tiled to the LCM of their lengths (as ComfyUI batches them)."""
    cache: dict[str, torch.Tensor] = {}
    for text in texts:
        if text not in cache:
            cache[text] = clip.encode_from_tokens(clip.tokenize(text), return_dict=True)["cond"]
    length = math.lcm(*[c.shape[1] for c in cache.values()])
    return torch.cat([cache[t].repeat(1, length // cache[t].shape[1], 1) for t in texts], 0)


def character_contexts(node: str, clip, story, overrides: dict[int, list]) -> list[torch.Tensor]:
    """Per character: the context its regions attend to, [1 or P, T, C]. A connected CONDITIONING
    wins; otherwise each panel's regional prompt from the story (`regional_texts`), or, for a story
    without them, 'Name, description' encoded with the clip."""
    names = list(story.characters)
    P = len(story.tags)
    out = []
    for k, name in enumerate(names):
        cond = overrides.get(k)
        if cond is not None:
            ctx = conditioning_tensor(node, f"character_{k + 1}", cond, P)
        else:
            texts = regional_texts(story, name) or [f"{name}, {story.characters[name]}"]
            ctx = _encode_rows(clip, texts)
        out.append(ctx)
    for k in overrides:
        if k >= len(names):
            raise StoryError(
                f"{node}: character_{k + 1} is connected but the story declares only {len(names)} "
                f"character(s); "
                f"disconnect it or declare another character."
            )
    return out


def conditioning_tensor(node: str, input_name: str, cond, panels: int) -> torch.Tensor:
    if not cond or not isinstance(cond[0], (list, tuple)) or not torch.is_tensor(cond[0][0]):
        raise StoryError(f"{node}: {input_name} is not a CONDITIONING; connect a CLIP Text Encode output.")
    if len(cond) > 1:
        raise StoryError(
            f"{node}: {input_name} holds {len(cond)} combined conditionings; connect a single CLIP Text "
            f"Encode."
        )
    ctx = cond[0][0]
    if ctx.shape[0] not in (1, panels):
        raise StoryError(
            f"{node}: {input_name} has a batch of {ctx.shape[0]} but the story has {panels} panels; use "
            f"batch 1 (shared) "
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
            raise StoryError(
                f"{node}: {name} is connected but the story declares only {K} character(s); disconnect it."
            )
        m = m[None] if m.ndim == 2 else m
        if m.shape[0] not in (1, P):
            raise StoryError(
                f"{node}: {name} has a batch of {m.shape[0]} masks but the story has {P} panels; give 1 mask "
                f"(used for "
                f"every panel) or exactly one per panel."
            )
        out[k] = m.float()
    return out


LATENT_SCALE = 8  # image pixels per latent pixel of the UNet families the pack patches


def check_mask_aspect(node: str, masks: dict[int, torch.Tensor], latent_hw: tuple[int, int]) -> None:
    """Refuse a user mask whose aspect ratio differs from the image's (it would be stretched).

    Masks are scaled to the latent grid; a mask of the same aspect at any size is fine, and so is
    a difference of up to one latent pixel (rounding of odd sizes)."""
    lh, lw = int(latent_hw[0]), int(latent_hw[1])
    for k, m in sorted(masks.items()):
        mh, mw = int(m.shape[-2]), int(m.shape[-1])
        if abs(mh * lw / mw - lh) <= 1.0 and abs(mw * lh / mh - lw) <= 1.0:
            continue
        raise StoryError(
            f"{node}: mask_{k + 1} is {mw}×{mh} px (width×height) but the image is {lw * LATENT_SCALE}×"
            f"{lh * LATENT_SCALE} (latent {lw}×{lh}): its aspect ratio differs, so it would be stretched. "
            f"Give a mask "
            f"of the image's aspect ratio (e.g. the image's own size; crop or pad it first)."
        )
