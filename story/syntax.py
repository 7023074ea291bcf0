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
* Square brackets are only for tags: an unclosed ``[`` or a stray ``]`` is an error at its line.

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
    # (name, offset): where this parser wrote each tagged character's name into `prompt`. The
    # attention nodes use only these occurrences: a name inside another character's description
    # ("[Alice]: a woman, Bob's sister") is not Bob.
    mentions: tuple[tuple[str, int], ...] = ()
    # (name, text) per tagged character: the regional prompt of that character's region in this
    # panel for Isolated Attention: the panel line with only this character's tag substituted and
    # the other characters' tags removed ("[Bob] and [Alice] walk" -> "Bob, <his description> and
    # walk"), so the region keeps the panel's action and style, not the description alone.
    regional: tuple[tuple[str, str], ...] = ()


@dataclass
class Story:
    characters: dict[str, str] = field(default_factory=dict)  # name -> description
    panels: list[Panel] = field(default_factory=list)
    # The exact (styled) texts the Story Prompt node encoded, one per panel; attention nodes
    # find character tokens in these. Empty for a story that was only parsed.
    encoded_prompts: list[str] = field(default_factory=list)
    # Per panel, name -> the styled regional prompt (Panel.regional through the same style).
    encoded_regional: list[dict[str, str]] = field(default_factory=list)
    # The positive conditioning tensor the Story Prompt returned (the sampler's story rows are the
    # cond entry holding this very tensor); None for a story that was only parsed.
    positive: object = field(default=None, repr=False, compare=False)

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
            f"line {line_no}: '[{raw}]' is not a valid character name; use letters, digits or spaces inside "
            f"the brackets, e.g. [Bob]."
        )
    return name


PLACEHOLDER = "\x00"  # marks a substituted name until whitespace is normalised (never in user text)
PLACEHOLDER_RE = re.compile(f"{PLACEHOLDER}(\\d+){PLACEHOLDER}")


def _place_names(prompt: str, written: list[str]) -> tuple[str, tuple[tuple[str, int], ...]]:
    """Replace the name placeholders by the names; return the text and (name, offset) of each."""
    out, mentions, at = [], [], 0
    for match in PLACEHOLDER_RE.finditer(prompt):
        out.append(prompt[at : match.start()])
        name = written[int(match.group(1))]
        mentions.append((name, sum(len(x) for x in out)))
        out.append(name)
        at = match.end()
    out.append(prompt[at:])
    return "".join(out), tuple(mentions)


def _check_brackets(body: str, line_no: int) -> None:
    """A '[' or ']' left over once the well-formed [tags] are taken out is a tag typo: an unclosed
    tag would otherwise become literal prompt text on an untagged panel."""
    rest = TAG_RE.sub(lambda m: " " * len(m.group(0)), body)
    opening, closing = rest.find("["), rest.find("]")
    if opening >= 0 and (closing < 0 or opening < closing):
        fragment = body[opening:].strip()
        fragment = fragment if len(fragment) <= 40 else fragment[:37] + "..."
        raise StorySyntaxError(
            f"line {line_no}: '{fragment}' has no closing ']'; close the tag as in '[Name]' (or '[Name]: "
            f"description' "
            "for a declaration). Square brackets are only for character tags."
        )
    if closing >= 0:
        raise StorySyntaxError(
            f"line {line_no}: ']' without an opening '[' ('{body.strip()[:40]}'); write the tag as '[Name]'. "
            "Square brackets are only for character tags."
        )


def _regional_prompt(body: str, name: str, characters: dict[str, str], known: dict[str, str]) -> str:
    """The panel line with only `name`'s tag substituted; other tags (and [NC]) removed."""

    def keep_one(match: re.Match) -> str:
        canonical = known.get(match.group(1).strip().casefold())
        return f"{name}, {characters[name]}" if canonical == name else ""

    text = re.sub(r"\s+", " ", TAG_RE.sub(keep_one, body))
    text = re.sub(r"\s*,(\s*,)+", ",", text)
    text = re.sub(r",\s*([:;.!?])", r"\1", re.sub(r"\s+,", ",", text))
    return text.strip(" ,")


def parse_story(text: str) -> Story:
    """Parse a story text into declarations and panels (see the module docstring)."""
    if not isinstance(text, str):
        raise StorySyntaxError("the story must be text")
    text = text.replace(PLACEHOLDER, "")
    story = Story()
    panel_lines: list[tuple[int, str]] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
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
                    f"line {line_no}: character [{name}] is declared without a description; write '[{name}]: "
                    f"a short description of their look'."
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
        _check_brackets(body, line_no)
        names: list[str] = []
        written: list[str] = []  # name per placeholder, in order of appearance
        no_character = False

        def substitute(match: re.Match, line_no=line_no, names=names, written=written) -> str:
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
                    f"line {line_no}: unknown character tag [{raw}] (declared: {declared}); fix the spelling "
                    f"or {hint}."
                )
            if canonical not in names:
                names.append(canonical)
            written.append(canonical)
            return f"{PLACEHOLDER}{len(written) - 1}{PLACEHOLDER}, {story.characters[canonical]}"

        prompt = TAG_RE.sub(substitute, body)
        prompt = re.sub(r"\s+", " ", prompt).strip(" ,")
        prompt, mentions = _place_names(prompt, written)
        regional = tuple((name, _regional_prompt(body, name, story.characters, known)) for name in names)
        if no_character and names:
            raise StorySyntaxError(
                f"line {line_no}: [NC] marks a panel with no character, but the line also tags {names}; "
                f"remove one of them."
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
                mentions=mentions,
                regional=regional,
            )
        )
    return story
