"""Random pictures of the world and their captions (each caption omits attributes at random,
so an under-specified prompt such as "a girl on the beach" has many valid pictures)."""

from __future__ import annotations

import random

from .vocabulary import ACTIONS, HAIR, KINDS, NAMES, PATTERNS, SCENE_WORDS, SCENES, SHIRT, Character, Picture


def random_character(rng: random.Random, position: str) -> Character:
    return Character(
        kind=rng.choice(KINDS),
        hair=rng.choice(tuple(HAIR)),
        shirt=rng.choice(tuple(SHIRT)),
        pattern=rng.choice(PATTERNS),
        position=position,
        scale=rng.uniform(0.85, 1.1),
        dx=rng.randint(-5, 5),
        dy=rng.randint(-4, 4),
    )


def random_picture(rng: random.Random, two_probability: float = 0.3) -> Picture:
    scene = rng.choice(SCENES)
    if rng.random() < two_probability:
        chars = (random_character(rng, "left"), random_character(rng, "right"))
    else:
        chars = (random_character(rng, rng.choice(("left", "right"))),)
    return Picture(scene=scene, characters=chars, variant=rng.randrange(1 << 30))


def describe(c: Character, rng: random.Random | None = None, keep: float = 1.0) -> str:
    """'a girl with red hair and a striped blue shirt' (each attribute kept with probability keep)."""
    rng = rng or random.Random(0)
    hair = rng.random() < keep
    shirt = rng.random() < keep
    pattern = shirt and rng.random() < keep and c.pattern == "striped"
    text = f"a {c.kind}"
    parts = []
    if hair:
        parts.append(f"{c.hair} hair")
    if shirt:
        words = f"{'striped ' if pattern else ''}{c.shirt} shirt"
        parts.append(("an " if words[0] in "aeiou" else "a ") + words)
    if parts:
        text += " with " + " and ".join(parts)
    return text


def caption(p: Picture, rng: random.Random, keep: float = 0.6) -> str:
    """A caption in the Story Prompt's style: optional name, description, action, scene, position."""
    scene = rng.choice(SCENE_WORDS[p.scene]) if rng.random() < 0.85 else ""
    if len(p.characters) == 1:
        c = p.characters[0]
        who = describe(c, rng, keep)
        if rng.random() < 0.3:
            who = f"{rng.choice(NAMES)}, {who}"
        action = rng.choice(ACTIONS)
        where = f"on the {c.position}" if rng.random() < 0.5 else ""
        parts = [who + (f" {action}" if action else ""), scene, where]
    else:
        a, b = p.characters
        left, right = describe(a, rng, keep), describe(b, rng, keep)
        if rng.random() < 0.3:  # as the Story Prompt writes tagged characters: "Name, description"
            n1, n2 = rng.sample(NAMES, 2)
            left, right = f"{n1}, {left}", f"{n2}, {right}"
        parts = [f"{left} on the left and {right} on the right", scene]
    return ", ".join(x for x in parts if x)


def dataset_item(index: int, seed: int = 0, keep: float = 0.6) -> tuple[Picture, str]:
    """The index-th (picture, caption) pair of the world's stream: a pure function of (seed, index)."""
    rng = random.Random(seed * 1_000_003 + index)
    p = random_picture(rng)
    return p, caption(p, rng, keep)
