"""Identity Bank Write's and Read's inputs: which character each image is, and the bank's storage options."""

from __future__ import annotations

from ..attention.bank_storage import BETWEEN, DEFAULT, HALVES, PRECISIONS, BankSettings
from .common import StoryError


def _split_entries(names: str) -> list[str]:
    return [e.strip() for e in str(names).replace("\n", ",").split(",")]


def write_labels(story, names: str, node: str) -> tuple:
    """Per identity image, the character it shows (None: not recorded). With a story, `names` (when
    given) chooses which of its characters are recorded; a name the story lacks is an error."""
    if story is not None:
        chosen = {e for e in _split_entries(names) if e}
        unknown = sorted(chosen - set(story.characters))
        if unknown:
            raise StoryError(
                f"{node}: names lists {', '.join(unknown)}, which the connected story does not declare (it "
                f"declares {', '.join(story.characters) or 'no character'}); name the story's characters "
                "to record, or leave names empty to record every solo panel."
            )
        labels = tuple(p.characters[0] if len(p.characters) == 1 else None for p in story.panels)
        labels = tuple(lab if not chosen or lab in chosen else None for lab in labels)
        if not any(labels):
            raise StoryError(
                f"{node}: no panel of the story shows exactly one character; identity images are solo "
                "panels, e.g. '[Bob] portrait, front view'."
            )
        return labels
    entries = [e for e in _split_entries(names)]
    if not any(entries):
        raise StoryError(
            f"{node}: connect a Story Prompt's story or type the character name(s) in 'names' (one name for "
            "the whole batch, or one per image separated by commas)."
        )
    return tuple(e or None for e in entries)


def read_labels(story, names: str, node: str) -> tuple:
    """Per frame, the characters whose bank tokens it attends to."""
    if story is not None:
        return tuple(tuple(p.characters) for p in story.panels)
    entries = _split_entries(names)
    if not any(entries):
        raise StoryError(
            f"{node}: connect a Story Prompt's story or type the character name(s) in 'names' (one entry per "
            "frame, several characters joined with '+', e.g. 'Bob, Bob+Alice')."
        )
    return tuple(
        tuple(n.strip() for n in e.split("+") if n.strip() and n.strip().upper() != "NC") for e in entries
    )


STORY_TIP = "The Story Prompt's story: the character tags of each panel."


SIZE_FORMULA = (
    "Size per identity image = recorded steps x guidance halves (2 with CFG, 1 with 'cond only') x the sum "
    "over the patched self-attention layers of round(keep-rate x tokens) x bytes per token (2 x width in "
    "fp16, width + 4 in int8). SDXL at 1024x1024, 30 steps, CFG, CSA keep-rate 0.5: the full bank (every "
    "step, CSA's keep-rate, fp16) is 3.08 GiB per identity image (105 MiB per step); the defaults (5 steps, "
    "CSA's keep-rate, int8, both halves) store 264 MiB."
)

BANK_OPTIONS = {
    "bank_steps": (
        "INT",
        {
            "default": DEFAULT.steps,
            "min": 0,
            "max": 1000,
            "tooltip": "Steps recorded, spread evenly over the steps after CSA's warm-up; a read between "
            "them takes the nearest (or interpolates). 0 = every step (largest bank).",
        },
    ),
    "bank_keep_rate": (
        "FLOAT",
        {
            "default": DEFAULT.keep_rate,
            "min": 0.0,
            "max": 1.0,
            "step": 0.05,
            "tooltip": "Share of each identity image's tokens stored per layer (at the resolutions where "
            "CSA shares tokens). 0 = CSA's keep-rates.",
        },
    ),
    "precision": (
        list(PRECISIONS),
        {
            "default": DEFAULT.precision,
            "tooltip": "int8: 8-bit tokens with one scale per token (half the size of fp16, almost the "
            "same read).",
        },
    ),
    "guidance_halves": (
        list(HALVES),
        {
            "default": DEFAULT.halves,
            "tooltip": "both: tokens of the positive and negative CFG halves; cond only: half the size, "
            "the negative half of a read attends to the positive half's tokens.",
        },
    ),
    "between_steps": (
        list(BETWEEN),
        {
            "default": DEFAULT.between,
            "tooltip": "A read step between two recorded steps takes the nearest one, or interpolates "
            "them in sigma (then the same token positions are stored at every step).",
        },
    ),
}


def bank_settings(
    node: str,
    bank_steps=DEFAULT.steps,
    bank_keep_rate=DEFAULT.keep_rate,
    precision=DEFAULT.precision,
    guidance_halves=DEFAULT.halves,
    between_steps=DEFAULT.between,
) -> BankSettings:
    try:
        return BankSettings(
            steps=int(bank_steps),
            keep_rate=float(bank_keep_rate),
            precision=precision,
            halves=guidance_halves,
            between=between_steps,
        )
    except ValueError as e:
        raise StoryError(f"{node}: {e}") from None
