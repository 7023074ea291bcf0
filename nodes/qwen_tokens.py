"""Where each character's tokens sit in a Qwen-Image context (the glue of Isolated Attention there).

Qwen-Image's text encoder wraps the prompt in a chat template, tokenizes the whole of it with the
Qwen2 byte-level BPE at once, and hands the model only the tokens from the user's text on: it drops
the template's prefix up to the second `<|im_start|>` and, when `user` `\\n` follow it, those two
as well (`comfy/text_encoders/qwen_image.py`). Token positions in the model's context therefore
count from that point, and a name is one or more sub-word pieces whose text depends on what
precedes it ("Bob" at the start, " Bob" after a word). So positions are found by text span: every
context piece whose bytes overlap the bytes of the name where the Story Prompt wrote it.
"""

from __future__ import annotations

import re

import torch

from ..attention.isolated_run import CharacterPlan, first_appearances
from .character_plan import character_contexts, check_story, regional_texts, story_prompts
from .common import StoryError

KEY = "qwen25_7b"  # the tokenizer (and conditioning) name of Qwen-Image's text encoder
IM_START, USER, NEWLINE = 151644, 872, 198


def _byte_map() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table, used by Qwen2's tokenizer):
    printable Latin-1 bytes stand for themselves, the 68 others for chr(256 + n) in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTES = _byte_map()


def template_end(ids: list) -> int:
    """The number of leading tokens Qwen-Image's text encoder drops (its rule, on the same ids)."""
    end, seen = -1, 0
    for i, tok in enumerate(ids):
        if isinstance(tok, int) and tok == IM_START and seen < 2:
            end, seen = i, seen + 1
    if len(ids) > end + 3 and ids[end + 1] == USER and ids[end + 2] == NEWLINE:
        end += 3
    return end


def _tokenizer(node: str, clip):
    inner = getattr(getattr(clip, "tokenizer", None), KEY, None)
    hf = getattr(inner, "tokenizer", None)
    if hf is None or not hasattr(hf, "convert_ids_to_tokens"):
        raise StoryError(
            f"{node}: the clip input is not Qwen-Image's text encoder (no {KEY!r} tokenizer); connect the "
            "CLIP loaded for this Qwen-Image checkpoint (qwen_2.5_vl_7b, type qwen_image)."
        )
    return hf


def context_spans(node: str, clip, text: str) -> list[tuple[int, int]]:
    """Per token of the model's context for `text`: its byte span [start, end) in `text`'s UTF-8."""
    hf = _tokenizer(node, clip)
    ids = [t[0] for window in clip.tokenize(text)[KEY] for t in window]
    if not all(isinstance(t, int) for t in ids):
        raise StoryError(
            f"{node}: a prompt holds a textual-inversion embedding, whose tokens have no text to find a "
            "character's name in on Qwen-Image; write the prompt without 'embedding:'."
        )
    pieces = [bytes(_BYTES[c] for c in piece) for piece in hf.convert_ids_to_tokens(ids)]
    full = b"".join(pieces)
    template = getattr(clip.tokenizer, "llama_template", "{}")
    prefix = b"" if text.startswith("<|im_start|>") else template.split("{}")[0].encode()
    body = text.encode()
    if full[len(prefix) : len(prefix) + len(body)] != body:
        raise StoryError(
            f"{node}: Qwen-Image's tokenizer does not reproduce the prompt {text[:60]!r} (escaped "
            "brackets?), so the characters' tokens cannot be located; remove backslash escapes from it."
        )
    starts, at = [], -len(prefix)
    for piece in pieces:
        starts.append(at)
        at += len(piece)
    first = template_end(ids)
    if first < 0:
        raise StoryError(f"{node}: the prompt {text[:60]!r} has no chat template Qwen-Image can read.")
    return [(starts[i], starts[i] + len(pieces[i])) for i in range(first, len(ids))]


def _overlapping(spans: list[tuple[int, int]], text: str, a: int, b: int) -> list[int]:
    lo, hi = len(text[:a].encode()), len(text[:b].encode())
    return [j for j, (s, e) in enumerate(spans) if s < hi and e > lo]


def _occurrences(text: str, phrase: str) -> list[tuple[int, int]]:
    phrase = phrase.strip()
    if not phrase:
        return []
    return [(m.start(), m.end()) for m in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", text)]


def qwen_plan(node: str, clip, story) -> CharacterPlan:
    """`character_plan.build_plan` for Qwen-Image: positions in the context the model gets."""
    if clip is None:
        raise StoryError(
            f"{node}: the clip input is empty; connect the CLIP of your checkpoint (it tokenizes the "
            "prompts)."
        )
    names = check_story(node, story)
    present, positions, lengths = [], [], []
    for p, (tags, text) in enumerate(zip(story.tags, story_prompts(story), strict=False)):
        spans = context_spans(node, clip, text)
        lengths.append(len(spans))
        panel = story.panels[p] if p < len(story.panels) else None
        base = text.find(panel.prompt) if panel is not None else -1
        row_present, row_pos = [], []
        for name in names:
            if name not in tags:
                row_present.append(False)
                row_pos.append([])
                continue
            written = [at for who, at in getattr(panel, "mentions", ()) if who == name] if base >= 0 else []
            found = [(base + at, base + at + len(name)) for at in written]
            found = found or _occurrences(text, name) or _occurrences(text, story.characters[name])
            pos = sorted({j for a, b in found for j in _overlapping(spans, text, a, b)})
            if not pos:
                raise StoryError(
                    f"{node}: panel {p + 1} tags [{name}] but neither the name nor the description of "
                    f"[{name}] is found in that panel's prompt; write the name into the panel line (the "
                    f"Story Prompt does this for [{name}] tags)."
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


def qwen_character_contexts(node: str, clip, story, overrides: dict[int, list]) -> tuple[list, list]:
    """Per character: the context its regions attend to, [1 or P, T, C], and its valid length per
    panel (None: every row is whole). As `character_plan.character_contexts`, but the story's
    regional prompts are zero-padded to the longest, never tiled."""
    contexts = character_contexts(node, clip, story, overrides) if overrides else []
    out, lengths = [], []
    for k, name in enumerate(story.characters):
        if k in overrides:
            out.append(contexts[k])
            lengths.append(None)
            continue
        texts = regional_texts(story, name) or [f"{name}, {story.characters[name]}"]
        cache = {}
        for text in texts:
            if text not in cache:
                cache[text] = clip.encode_from_tokens(clip.tokenize(text), return_dict=True)["cond"]
        rows = [cache[t] for t in texts]
        width = max(r.shape[1] for r in rows)
        if all(r.shape[1] == width for r in rows):
            out.append(torch.cat(rows, 0) if len(cache) > 1 else rows[0])
            lengths.append(None)
            continue
        out.append(torch.cat([torch.nn.functional.pad(r, (0, 0, 0, width - r.shape[1])) for r in rows], 0))
        lengths.append([r.shape[1] for r in rows])
    return out, lengths
