"""The fixed, under-specified stories the consistency benchmark and the effect tests draw (pure data)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OneCharacterStory:
    name: str
    description: str  # deliberately under-specified: the rest is left to the model (and to consistency)
    scenes: tuple[str, ...]  # world scenes, one panel each

    def text(self) -> str:
        words = {
            "beach": "on the beach",
            "forest": "in the forest",
            "city": "in the city",
            "night": "at night",
            "room": "in a room",
        }
        lines = [f"[{self.name}]: {self.description}"] + [
            f"[{self.name}] {words[s]} #{s}" for s in self.scenes
        ]
        return "\n".join(lines)

    def write_text(self, panels: int = 2) -> str:
        """Identity images for the bank: solo panels of the same character."""
        return "\n".join([f"[{self.name}]: {self.description}"] + [f"[{self.name}] stands"] * panels)


@dataclass(frozen=True)
class TwoCharacterStory:
    left: tuple[str, dict]  # (name, attributes)
    right: tuple[str, dict]
    scenes: tuple[str, ...]

    @staticmethod
    def describe(attrs: dict) -> str:
        text = f"a {attrs['kind']}"
        parts = []
        if "hair" in attrs:
            parts.append(f"{attrs['hair']} hair")
        if "shirt" in attrs:
            shirt = attrs["shirt"] + " shirt"
            parts.append(("an " if shirt[0] in "aeiou" else "a ") + shirt)
        return text + (" with " + " and ".join(parts) if parts else "")

    def text(self) -> str:
        (a, aa), (b, bb) = self.left, self.right
        words = {
            "beach": "on the beach",
            "forest": "in the forest",
            "city": "in the city",
            "night": "at night",
            "room": "in a room",
        }
        lines = [f"[{a}]: {self.describe(aa)}", f"[{b}]: {self.describe(bb)}"]
        lines += [f"[{a}] on the left and [{b}] on the right, {words[s]}" for s in self.scenes]
        return "\n".join(lines)


ONE_CHARACTER = (
    OneCharacterStory("Mia", "a girl", ("beach", "forest", "city", "night")),
    OneCharacterStory("Leo", "a boy", ("room", "beach", "night", "forest")),
    OneCharacterStory("Zoe", "a girl with red hair", ("city", "room", "forest", "beach")),
    OneCharacterStory("Sam", "a boy with a blue shirt", ("night", "city", "beach", "room")),
)

TWO_CHARACTERS = (
    TwoCharacterStory(
        ("Bob", {"kind": "boy", "hair": "red", "shirt": "blue"}),
        ("Ana", {"kind": "girl", "hair": "yellow", "shirt": "green"}),
        ("beach", "city", "forest"),
    ),
    TwoCharacterStory(
        ("Tom", {"kind": "boy", "hair": "black", "shirt": "orange"}),
        ("Mia", {"kind": "girl", "hair": "white", "shirt": "purple"}),
        ("room", "night", "beach"),
    ),
)
