"""Isolated Attention's character_N inputs: a regional prompt typed for one story is easily left
wired after the story renames its characters. From the queued graph (ComfyUI's hidden PROMPT),
the literal text of the node feeding each character_N is checked to name that character."""

from __future__ import annotations

import re

TEXT_INPUTS = ("text", "text_g", "text_l", "prompt")  # CLIPTextEncode, CLIPTextEncodeSDXL and the like


def _source_text(prompt: dict, link) -> tuple[str, str] | None:
    """(node label, literal text) of the node a link comes from, when it holds typed text."""
    if not (isinstance(link, list) and len(link) == 2):
        return None
    node_id = str(link[0])
    node = prompt.get(node_id) or {}
    texts = [
        v for k, v in node.get("inputs", {}).items() if k in TEXT_INPUTS and isinstance(v, str) and v.strip()
    ]
    if not texts:
        return None
    title = (node.get("_meta") or {}).get("title") or node.get("class_type", "?")
    return f"{title} (#{node_id})", " ".join(texts)


def _names(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, flags=re.IGNORECASE) is not None


def regional_prompt_warnings(
    node: str, characters: list[str], prompt: dict | None, unique_id, slots: int
) -> list[str]:
    """One message per connected character_N whose typed text does not name the story's
    character N (in declaration order), or is connected beyond the story's characters."""
    if not prompt or unique_id is None or str(unique_id) not in prompt:
        return []
    inputs = prompt[str(unique_id)].get("inputs", {})
    out = []
    for i in range(1, slots + 1):
        source = _source_text(prompt, inputs.get(f"character_{i}"))
        if source is None or i > len(characters):
            continue
        label, text = source
        name = characters[i - 1]
        if _names(text, name):
            continue
        others = [c for c in characters if c != name and _names(text, c)]
        hint = (
            f"it names [{others[0]}], the story's character {characters.index(others[0]) + 1}: swap the wires"
            if others
            else "the story may have renamed its characters"
        )
        short = text if len(text) <= 60 else text[:57] + "..."
        out.append(
            f"{node}: character_{i} is the story's [{name}], but its regional prompt {label} "
            f"reads '{short}' and does not name {name}; {hint}. Fix the text, or disconnect character_{i} "
            f"to use the story's own description of {name}."
        )
    return out
