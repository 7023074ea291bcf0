"""The Story Prompt syntax, parsed without ComfyUI.

One text, one panel per line, in the familiar StoryDiffusion form::

    [Bob]: a man with short black hair, wearing a red jacket   <- character declaration
    [Alice]: a woman with long silver hair, green dress

    [Bob] wakes up in a small flat #Monday again.              <- a panel; text after # is the caption
    [Bob] and [Alice] meet at the station
    [NC] an empty street at night, rain                         <- a panel with no character

* A declaration is a line ``[Name]: description``; in panels every ``[Name]`` is replaced by
  ``Name, description`` so each panel carries the full look of its characters.
* ``[NC]`` marks a panel without a character (it takes no part in identity sharing).
* ``#`` starts the caption: it is shown under the panel on a comic page, never encoded.
* Empty lines and lines starting with ``//`` are ignored.

Errors name the line and the fix (``StorySyntaxError``); the node reports them at
validation time, before anything is queued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NO_CHARACTER = "NC"
TAG_RE = re.compile(r"\[([^\[\]\n]*)\]")
DECLARATION_RE = re.compile(r"^\s*\[([^\[\]\n]+)\]\s*:\s*(.*)$")
NAME_RE = re.compile(r"^[^\s\[\]#:][^\[\]#:]*$")
# "[Bob: a man ..." : a declaration whose name misses its closing bracket
UNCLOSED_DECLARATION_RE = re.compile(r"^\s*\[([^\[\]\n#:]+):\s*(.*)$")
# a '[' with no ']' before the next '[' or the end of the text
UNCLOSED_TAG_RE = re.compile(r"\[[^\[\]\n]*(?=\[|$)")


class StorySyntaxError(ValueError):
    """A story text that cannot be parsed; the message names the line and the fix."""


@dataclass(frozen=True)
class Panel:
    index: int  # 0-based panel number
    line: int  # 1-based line in the story text
    prompt: str  # text to encode, tags substituted, style not yet applied
    characters: tuple[str, ...]  # names tagged in this panel, in order of appearance
    caption: str
    no_character: bool


@dataclass
class Story:
    characters: dict[str, str] = field(default_factory=dict)  # name -> description
    panels: list[Panel] = field(default_factory=list)
    # The exact (styled) texts the Story Prompt node encoded, one per panel; attention nodes
    # find character tokens in these. Empty for a story that was only parsed.
    encoded_prompts: list[str] = field(default_factory=list)

    @property
    def tags(self) -> list[list[str]]:
        return [list(p.characters) for p in self.panels]

    @property
    def captions(self) -> list[str]:
        return [p.caption for p in self.panels]


def _clean_name(raw: str, line_no: int) -> str:
    name = raw.strip()
    if not name or not NAME_RE.match(name):
        raise StorySyntaxError(
            f"line {line_no}: '[{raw}]' is not a valid character name; use letters, digits or spaces inside the brackets, e.g. [Bob]."
        )
    return name


def parse_story(text: str) -> Story:
    """Parse a story text into declarations and panels (see the module docstring)."""
    if not isinstance(text, str):
        raise StorySyntaxError("the story must be text")
    story = Story()
    panel_lines: list[tuple[int, str]] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        unclosed = UNCLOSED_DECLARATION_RE.match(line)
        if unclosed:
            name, rest = unclosed.group(1).strip(), unclosed.group(2).strip()
            raise StorySyntaxError(
                f"line {line_no}: the declaration '[{unclosed.group(1)}:' misses its closing ']'; write '[{name}]: {rest or 'description'}'."
            )
        decl = DECLARATION_RE.match(line)
        if decl and "#" not in line.split(":", 1)[0]:
            name = _clean_name(decl.group(1), line_no)
            if name.upper() == NO_CHARACTER:
                raise StorySyntaxError(
                    f"line {line_no}: [NC] is reserved for panels with no character; pick another name."
                )
            description = decl.group(2).strip()
            if not description:
                raise StorySyntaxError(
                    f"line {line_no}: character [{name}] is declared without a description; write '[{name}]: a short description of their look'."
                )
            if name in story.characters:
                raise StorySyntaxError(
                    f"line {line_no}: character [{name}] is declared twice; keep one declaration."
                )
            story.characters[name] = description
            continue
        panel_lines.append((line_no, line))

    if not panel_lines:
        raise StorySyntaxError(
            "the story has no panels; write one line per panel, e.g. '[Bob] walks to work #Monday'."
        )

    known = {n.casefold(): n for n in story.characters}
    for index, (line_no, line) in enumerate(panel_lines):
        body, sep, caption = line.partition("#")
        caption = caption.strip() if sep else ""
        open_tag = UNCLOSED_TAG_RE.search(body)
        if open_tag:
            fragment = open_tag.group(0).strip()
            raise StorySyntaxError(
                f"line {line_no}: '{fragment}' has no closing ']'; close the tag, e.g. [Bob]."
            )
        names: list[str] = []
        no_character = False

        def substitute(match: re.Match, line_no=line_no) -> str:
            nonlocal no_character
            raw = match.group(1)
            name = raw.strip()
            if name.upper() == NO_CHARACTER:
                no_character = True
                return ""
            canonical = known.get(name.casefold())
            if canonical is None:
                declared = ", ".join(f"[{n}]" for n in story.characters) or "none"
                hint = (
                    f"declare it with a line '[{name}]: description'"
                    if name
                    else "write a name inside the brackets"
                )
                raise StorySyntaxError(
                    f"line {line_no}: unknown character tag [{raw}] (declared: {declared}); fix the spelling or {hint}."
                )
            if canonical not in names:
                names.append(canonical)
            return f"{canonical}, {story.characters[canonical]}"

        prompt = TAG_RE.sub(substitute, body)
        prompt = re.sub(r"\s+", " ", prompt).strip(" ,")
        if no_character and names:
            raise StorySyntaxError(
                f"line {line_no}: [NC] marks a panel with no character, but the line also tags {names}; remove one of them."
            )
        if not prompt:
            raise StorySyntaxError(
                f"line {line_no}: the panel has no prompt text before '#'; describe the scene."
            )
        story.panels.append(
            Panel(
                index=index,
                line=line_no,
                prompt=prompt,
                characters=tuple(names),
                caption=caption,
                no_character=no_character,
            )
        )
    return story
