"""The world's attributes, their colours and their words (one table for drawing, captions and the reader)."""

from __future__ import annotations

from dataclasses import dataclass, field

SIZE = 64  # images are SIZE x SIZE RGB (drawn on a CANVAS x CANVAS canvas, then reduced)
CANVAS = 128

KINDS = ("boy", "girl")  # a girl has long hair, a boy short hair
HAIR = {"black": (25, 22, 20), "red": (200, 40, 30), "yellow": (240, 210, 40), "white": (245, 245, 245)}
SHIRT = {
    "red": (210, 35, 35),
    "blue": (40, 80, 220),
    "green": (40, 170, 60),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
}
PATTERNS = ("plain", "striped")
SCENES = ("beach", "forest", "city", "night", "room")
SCENE_WORDS = {  # how a caption places the panel in its scene (several wordings each)
    "beach": ("on the beach", "at the beach", "by the sea"),
    "forest": ("in the forest", "in the woods", "among the trees"),
    "city": ("in the city", "on a city street", "downtown"),
    "night": ("at night", "under the stars", "in the night"),
    "room": ("in a room", "at home", "indoors"),
}
POSITIONS = ("left", "right")
ACTIONS = (
    "",
    "walks",
    "stands",
    "waits",
    "smiles",
    "looks around",
    "wakes up",
    "reads a letter",
    "runs",
    "waves",
)
NAMES = ("Bob", "Alice", "Tom", "Mia", "Leo", "Zoe", "Sam", "Ana")

# attribute -> its classes, in the reader's order
CLASSES = {
    "kind": KINDS,
    "hair": tuple(HAIR),
    "shirt": tuple(SHIRT),
    "pattern": PATTERNS,
    "scene": SCENES,
}
CHARACTER_ATTRIBUTES = ("kind", "hair", "shirt", "pattern")


@dataclass(frozen=True)
class Character:
    kind: str
    hair: str
    shirt: str
    pattern: str
    position: str  # "left" | "right"
    scale: float = 1.0  # drawn size, 0.85..1.1
    dx: int = 0  # small horizontal jitter in pixels
    dy: int = 0  # small vertical jitter in pixels

    def attributes(self) -> dict:
        return {a: getattr(self, a) for a in CHARACTER_ATTRIBUTES}


@dataclass(frozen=True)
class Picture:
    scene: str
    characters: tuple[Character, ...] = field(default_factory=tuple)
    variant: int = 0  # seeds the scene's incidental details (trees, windows, stars)
